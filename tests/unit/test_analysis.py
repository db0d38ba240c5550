"""The notebooks' analysis functions: exact decompositions and hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.data.shipped import example_images
from surgery_lib.eval import analysis
from surgery_lib.maps.explain import encode_image_tokens
from surgery_lib.maps.features import cosine_similarity
from surgery_lib.maps.text import text_features
from surgery_lib.model import dual_path_decomposition
from surgery_lib.ui.claims import check_claims


@pytest.fixture(scope="module")
def loaded(toy_vit):
    return toy_vit  # the small shipped ViT: fast; shared by the session


@pytest.fixture(scope="module")
def data():
    classes, items = example_images("composites", limit=4)
    return classes, [it for it in items if it.masks]


def test_cell_regions_take_the_class_covering_most_of_each_cell():
    mask = np.zeros((40, 40), bool)
    mask[:20, :20] = True  # exactly the top-left cell of a 2 × 2 grid
    mask[20:31, 20:40] = True  # 55 % of the bottom-right cell
    item = AnnotatedImage("x", Image.new("RGB", (40, 40)), {"cat": mask})
    regions, names = analysis._cell_regions(item, (2, 2))
    assert names == ["background", "cat"] and regions.tolist() == [1, 0, 0, 1]


def test_summarise_averages_per_class_then_over_classes():
    rows = [
        {
            "method": "m",
            "class": "a",
            "iou": 10.0,
            "score_contrast": 1.0,
            "pointing_hit": 1.0,
            "opposite": False,
        },
        {
            "method": "m",
            "class": "a",
            "iou": 30.0,
            "score_contrast": 3.0,
            "pointing_hit": 0.0,
            "opposite": False,
        },
        {
            "method": "m",
            "class": "b",
            "iou": 60.0,
            "score_contrast": -4.0,
            "pointing_hit": 1.0,
            "opposite": True,
        },
    ]
    (row,) = analysis.summarise(rows)
    assert row["mIoU"] == pytest.approx((20.0 + 60.0) / 2)  # per class first: a = 20, b = 60
    assert row["mSC"] == pytest.approx((2.0 - 4.0) / 2)
    assert row["pointing_game"] == pytest.approx(100 * (0.5 + 1.0) / 2)
    assert row["opposite_rate"] == pytest.approx(100 / 3) and row["pairs"] == 3


@pytest.mark.slow
def test_map_records_score_every_present_class_for_every_method(loaded, data):
    classes, items = data
    methods = {"raw": SurgeryConfig.off(), "surgery": SurgeryConfig.paper()}
    records = analysis.map_records(loaded, items, classes, methods)
    expected = sum(len(it.masks) for it in items) * 2
    assert len(records) == expected
    assert {r["method"] for r in records} == {"raw", "surgery"}
    for r in records:
        assert 0.0 <= r["iou"] <= 100.0 and -100.0 <= r["score_contrast"] <= 100.0
        assert r["opposite"] == (r["score_contrast"] < 0)


def test_identity_attention_is_at_chance_once_the_query_is_left_out(loaded, data):
    """Counting the query's own patch made self-self attention local by construction (identity: 1.0)."""
    _, items = data
    kinds = ("identity", "qk", "vv")
    counted = analysis.attention_locality(loaded, items[:2], blocks=[0, 5], kinds=kinds, exclude="none")
    identity = [r for r in counted if r["kind"] == "identity"]
    assert identity and all(r["own_mass"] == pytest.approx(1.0) for r in identity)
    assert all(r["self_mass"] == pytest.approx(1.0) for r in identity)
    for exclude in ("self", "3x3"):
        records = analysis.attention_locality(loaded, items[:2], blocks=[0, 5], kinds=kinds, exclude=exclude)
        identity = [r for r in records if r["kind"] == "identity"]
        assert identity and all(r["own_mass"] == pytest.approx(r["chance"]) for r in identity)
        assert {r["region"] for r in records} == {"object", "background"}
        assert all(0.0 <= r["own_mass"] <= 1.0 + 1e-6 and 0.0 < r["chance"] < 1.0 for r in records)
    # leaving the query out lowers v-v's locality (its diagonal counted for it) ...
    vv = lambda rs: np.mean([r["own_mass"] for r in rs if r["kind"] == "vv"])  # noqa: E731
    selfless = analysis.attention_locality(loaded, items[:2], blocks=[5], kinds=kinds)
    assert vv(selfless) < vv([r for r in counted if r["block"] == 5])
    # ... and the chance level is over the patches left: a 3x3 exclusion changes it
    wide = analysis.attention_locality(loaded, items[:1], blocks=[5], kinds=("qk",), exclude="3x3")
    narrow = analysis.attention_locality(loaded, items[:1], blocks=[5], kinds=("qk",))
    assert [r["chance"] for r in wide] != [r["chance"] for r in narrow]
    with pytest.raises(ValueError, match="exclude must be one of"):
        analysis.attention_locality(loaded, items[:1], blocks=[5], exclude="diagonal")


@pytest.mark.parametrize("config", [SurgeryConfig.off(), SurgeryConfig.paper()], ids=["raw", "surgery"])
def test_contributions_add_up_to_the_map_contrast(loaded, data, config):
    """The parts' contrasts (embedding, bias, every block's attention and FFN) sum to the cosine map's."""
    classes, items = data
    records = analysis.contribution_records(loaded, items[:2], classes, config)
    texts = text_features(loaded.model, loaded.tokenizer, classes)
    for item in items[:2]:
        batch = loaded.reference_preprocess(item.image).unsqueeze(0)
        tokens, grid = encode_image_tokens(loaded.model, batch, config)
        sim = cosine_similarity(tokens, texts)[0, 1:]
        regions, names = analysis._cell_regions(item, grid)
        for label in item.masks:
            fg = regions == names.index(label)
            if not 0 < int(fg.sum()) < len(fg):
                continue
            column = sim[:, classes.index(label)]
            want = float(column[fg].mean() - column[~fg].mean())
            parts = [r for r in records if r["image"] == item.name and r["class"] == label]
            assert len(parts) == 2 + 2 * 8
            assert sum(r["contrast"] for r in parts) == pytest.approx(want, abs=1e-5)
    if config.skip_ffn:
        skipped = [r for r in records if r["part"] == "ffn" and r["block"] >= 8 - config.depth]
        assert skipped and all(r["contrast"] == 0.0 and r["magnitude"] == 0.0 for r in skipped)


def test_contributions_refuse_a_resnet(data, toy_rn):
    classes, items = data
    with pytest.raises(TypeError, match="ViT"):
        analysis.contribution_records(toy_rn, items[:1], classes)


def test_redundancy_of_a_single_class_is_fully_shared(loaded, data):
    classes, items = data
    one = analysis.redundancy_records(loaded, items[:1], classes[:1])
    assert all(r["shared_fraction"] == pytest.approx(1.0, abs=1e-5) for r in one)
    many = analysis.redundancy_records(loaded, items[:1], classes)
    assert len(many) == 1 + 8 * 8 and many[0]["region"] == "class token"
    assert all(0.0 < r["shared_fraction"] <= 1.0 + 1e-6 and -1.0 <= r["empty_cosine"] <= 1.0 for r in many)
    # the shared similarity is the class-mean cosine similarity of the token
    batch = loaded.reference_preprocess(items[0].image).unsqueeze(0)
    tokens, _ = encode_image_tokens(loaded.model, batch, SurgeryConfig.paper())
    mean_sim = cosine_similarity(tokens, text_features(loaded.model, loaded.tokenizer, classes)).mean(-1)[0]
    got = torch.tensor([r["shared_similarity"] for r in many])
    torch.testing.assert_close(got, mean_sim / len(classes) * len(classes), atol=1e-5, rtol=1e-4)


def test_check_claims_marks_each_claim():
    text = check_claims({"a holds": True, "b fails": np.False_})
    assert text.splitlines() == ["✓ a holds", "✗ b fails", "1 of 2 claims hold on this model"]
    with pytest.raises(ValueError, match="no claims"):
        check_claims({})


def test_dual_path_decomposition_holds_to_float_precision(loaded, data):
    """The new path is the copied stream plus the v-v outputs computed from the original stream; with
    q-k attention it is the original path minus the surgery blocks' FFN outputs."""
    _, items = data
    batch = torch.stack([loaded.reference_preprocess(it.image) for it in items[:2]])
    exact, from_original, from_new_path, minus_ffn = dual_path_decomposition(loaded, batch)
    for row in (exact, from_original, minus_ffn):
        assert row["max_abs_error"] <= 1e-4 * row["scale"], row
    assert from_new_path["max_abs_error"] > 0.1 * from_new_path["scale"]  # the other stream would differ
    with pytest.raises(ValueError, match="dual path"):
        dual_path_decomposition(loaded, batch, SurgeryConfig.paper().replace(dual_path=False))


def test_config_summary_puts_zero_shot_next_to_the_map_scores(loaded, data):
    classes, items = data
    configs = {"vanilla": SurgeryConfig.off(), "surgery": SurgeryConfig.paper()}
    rows = analysis.config_summary(loaded, items, classes, configs, fields=("dual_path",))
    by_name = {r["method"]: r for r in rows}
    assert by_name["surgery"]["dual_path"] is True and by_name["vanilla"]["dual_path"] is False
    assert by_name["vanilla"]["same_top1"] == by_name["surgery"]["same_top1"] == 100.0  # dual path
    assert by_name["vanilla"]["zero_shot_top1"] == by_name["surgery"]["zero_shot_top1"]
    (want,) = analysis.summarise(
        analysis.map_records(loaded, items, classes, {"surgery": configs["surgery"]})
    )
    assert by_name["surgery"]["mSC"] == pytest.approx(want["mSC"], abs=1e-4)


def test_maps_for_over_a_vocabulary_equals_the_vocabulary_columns(loaded, data):
    classes, items = data
    labels = [items[0].labels[0], next(c for c in classes if c not in items[0].masks)]
    shown = analysis.maps_for(loaded, items[0], labels, SurgeryConfig.paper(), vocabulary=classes)
    every = analysis.maps_for(loaded, items[0], classes, SurgeryConfig.paper())
    torch.testing.assert_close(shown, every[..., [classes.index(c) for c in labels]])
    alone = analysis.maps_for(loaded, items[0], labels, SurgeryConfig.paper())
    torch.testing.assert_close(alone[..., 1], 1 - alone[..., 0], atol=1e-5, rtol=0)  # two labels alone


def test_vocabulary_sweep_sizes_and_the_full_list(loaded, data):
    classes, items = data
    records = analysis.vocabulary_sweep_records(loaded, items[:2], classes, sizes=(1, 2, None))
    assert {r["vocabulary"] for r in records} == {1, 2, len(classes)}
    full = [r for r in records if r["vocabulary"] == len(classes)]
    want = analysis.map_records(loaded, items[:2], classes, {"s": SurgeryConfig.paper()})
    assert [r["score_contrast"] for r in full] == pytest.approx([r["score_contrast"] for r in want], abs=1e-4)
    with pytest.raises(ValueError, match="feature_surgery"):
        analysis.vocabulary_sweep_records(loaded, items, classes, config=SurgeryConfig.off())


def test_redundancy_controls_and_subtraction(loaded, data):
    classes, items = data
    controls = analysis.redundancy_controls(loaded, classes)
    assert set(controls) == {"empty prompt", "class mean", "random direction"}
    assert all(v.ndim == 2 and v.shape[0] == 1 for v in controls.values())
    records = analysis.redundancy_subtraction_records(loaded, items[:1], classes, {"none": None, **controls})
    assert {r["method"] for r in records} == {"none", *controls}
    # nothing subtracted = the architecture surgery's own cosine maps
    arch = SurgeryConfig.paper().replace(feature_surgery=False)
    want = analysis.map_records(loaded, items[:1], classes, {"none": arch})
    got = [r for r in records if r["method"] == "none"]
    assert [r["iou"] for r in got] == pytest.approx([r["iou"] for r in want])


@pytest.mark.slow
def test_multilabel_variants_reproduce_the_runner(loaded, tmp_path):
    """The two combinations the runner compares give the runner's mAP; the other six separate the score
    from its normalisation (on a ViT's dual path both presets share the class token)."""
    from surgery_lib.data.datasets import load_dataset
    from surgery_lib.eval.experiments import dataset_specs
    from surgery_lib.eval.runner import evaluate

    name, root = dataset_specs("")["composites-seen"]
    rows = analysis.multilabel_variants(loaded, load_dataset(name, root), limit=8)
    assert len(rows) == 8
    got = {(r["tokens"], r["score"], r["softmax"]): r["mAP"] for r in rows}
    for score in analysis.MULTILABEL_SCORES:
        for soft in (False, True):
            assert got[("raw", score, soft)] == pytest.approx(got[("surgery", score, soft)], abs=1e-6)
    for r in rows:
        if r["runner"]:
            result = evaluate(
                "multilabel",
                name,
                root,
                tmp_path / r["runner"],
                method=r["runner"],
                loaded=loaded,
                limit=8,
                quiet=True,
            )
            assert r["mAP"] == pytest.approx(result["summary"]["mAP"], abs=1e-3)


def test_summarise_intervals_resample_images_and_hold_the_mean():
    rng = np.random.default_rng(0)
    records = [
        {"image": f"im{i}", "method": "m", "class": c, "iou": float(rng.uniform(0, 100)),
         "score_contrast": float(rng.normal()), "pointing_hit": float(rng.integers(0, 2)), "opposite": False}
        for i in range(12)
        for c in ("a", "b")
    ]  # fmt: skip
    (plain,) = analysis.summarise(records)
    (row,) = analysis.summarise(records, intervals=True)
    assert {k: row[k] for k in plain} == plain  # the means do not change
    for metric in ("mIoU", "mSC", "pointing_game", "opposite_rate"):
        assert row[f"{metric}_low"] <= row[metric] <= row[f"{metric}_high"]
    assert row["mIoU_high"] > row["mIoU_low"]
    assert analysis.summarise(records, intervals=True) == [row]  # deterministic for the seed
    same = [{**r, "image": "one"} for r in records]  # one image: nothing to resample
    (single,) = analysis.summarise(same, intervals=True)
    assert single["mIoU_low"] == pytest.approx(single["mIoU_high"])
    with pytest.raises(KeyError, match="'image' name"):
        analysis.summarise([{k: v for k, v in r.items() if k != "image"} for r in records], intervals=True)


def test_null_records_give_a_null_row_beside_the_methods(loaded, data):
    """A map with no information: opposite about half the time, SC about 0 — the row a method beats."""
    classes, items = data
    nulls = analysis.null_records(items, classes, "random", samples=40, grid=(14, 14))
    pairs = sum(1 for it in items for c, m in it.masks.items() if c in classes and 0 < m.sum() < m.size)
    assert len(nulls) == 40 * pairs and {r["method"] for r in nulls} == {"null:random"}
    centre = analysis.null_records(items, classes, "centre")
    rows = {r["method"]: r for r in analysis.summarise(nulls + centre)}
    assert 30 < rows["null:random"]["opposite_rate"] < 70 and abs(rows["null:random"]["mSC"]) < 5
    assert rows["null:centre"]["pairs"] == pairs
    again = analysis.null_records(items, classes, "random", samples=40, grid=(14, 14))
    assert again == nulls  # deterministic for a seed


def _records(method: str, values: dict[str, list[float]]) -> list[dict]:
    return [
        {"image": image, "class": "c", "method": method, "score_contrast": v}
        for image, vs in values.items()
        for v in vs
    ]


def test_paired_difference_pairs_images_and_tests_the_mean_difference():
    a = _records("a", {"i1": [2.0, 4.0], "i2": [5.0], "i3": [7.0], "only-a": [100.0]})
    b = _records("b", {"i1": [1.0], "i2": [3.0], "i3": [4.0]})
    out = analysis.paired_difference(a + b, "a", "b")
    assert out["units"] == 3 and out["a"] == pytest.approx(5.0) and out["b"] == pytest.approx(8 / 3)
    assert out["difference"] == pytest.approx(7 / 3)  # per image 2, 2, 3: "only-a" is left out
    assert out["low"] == pytest.approx(2.0) and out["high"] == pytest.approx(3.0)
    assert out["p"] == pytest.approx(0.25)  # 2 of the 8 sign patterns are as extreme
    same = analysis.paired_difference(b + _records("c", {"i1": [1.0], "i2": [3.0], "i3": [4.0]}), "b", "c")
    assert same["difference"] == 0.0 and same["p"] == 1.0
    with pytest.raises(ValueError, match="both"):
        analysis.paired_difference(a, "a", "b")


def test_pointing_chance_is_the_object_share_or_the_cell_centre_share():
    mask = np.zeros((40, 40), bool)
    mask[:20, :20] = True  # a quarter of the image, exactly one cell of a 2 × 2 grid
    thin = np.zeros((40, 40), bool)
    thin[:, 12:16] = True  # 10 % of the pixels, no centre of a 4 × 4 grid (centres at 5, 15, ...)
    thin[:, 15] = False
    items = [
        AnnotatedImage("x", Image.new("RGB", (40, 40)), {"cat": mask}),
        AnnotatedImage("y", Image.new("RGB", (40, 40)), {"dog": thin, "cow": mask}),
    ]
    assert analysis.pointing_chance(items, ["cat", "dog"]) == pytest.approx(100 * (0.25 + 0.075) / 2)
    assert analysis.pointing_chance(items, ["cat", "dog"], (2, 2)) == pytest.approx(100 * (0.25 + 0.0) / 2)
    with pytest.raises(ValueError, match="no scorable"):
        analysis.pointing_chance(items, ["horse"])


def test_token_grid_is_the_towers_grid(loaded):
    side = loaded.image_size
    _, grid = encode_image_tokens(loaded.model, torch.zeros(1, 3, side, side), SurgeryConfig.off())
    assert analysis.token_grid(loaded) == tuple(grid) and analysis.token_grid(loaded, 2 * side) == tuple(
        2 * g for g in grid
    )


def test_compare_interval_words_follow_the_numbers():
    assert analysis.compare_interval(51.0, 60.0, 50.0) == "above"
    assert analysis.compare_interval(10.0, 20.0, 50.0) == "below"
    assert analysis.compare_interval(45.0, 55.0, 50.0) == "not distinguishable from"
    with pytest.raises(ValueError, match="exceed"):
        analysis.compare_interval(3.0, 2.0, 0.0)
