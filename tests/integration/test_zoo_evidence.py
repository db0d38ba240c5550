"""A fair zoo in the explainability evaluation (issue 23): gradient explainers scored by ``--task
explain``, feature surgery as a switch of every dense method (``<name>+fs`` / ``<name>-fs``), the nulls
as rows (``null:random``, ``null:centre``), the official protocols' explain part, rankings with a paired
test between the top two."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO

from surgery_lib.data.datasets import load_dataset
from surgery_lib.eval import experiments, presets, runner
from surgery_lib.eval.metrics import ExplainabilityMeter, masked_map_scores
from surgery_lib.eval.nulls import centre_prior_map
from surgery_lib.eval.tables import beats, paired_test, ranking, row_label
from surgery_lib.methods import GRADIENT_METHODS, METHODS
from surgery_lib.model.adapters import UnsupportedModelError

ROOT = REPO / "data" / "composites" / "seen_instances"


def _run(tmp_path, method: str, loaded, limit: int = 2, **options) -> dict:
    out = tmp_path / runner.run_folder_name(method)
    return runner.evaluate(
        "explain", "composites", ROOT, out, "toy-vit", "default", method, loaded,
        limit=limit, quiet=True, device="cpu", **options,
    )  # fmt: skip


def test_feature_surgery_is_a_switch_of_every_dense_method():
    for name, config in METHODS.items():
        assert presets.resolve_eval_method(f"{name}+fs") == config.replace(feature_surgery=True)
        assert presets.resolve_eval_method(f"{name}-fs") == config.replace(feature_surgery=False)
        for on in (True, False):
            variant = presets.with_feature_surgery(name, on)
            assert presets.resolve_eval_method(variant).feature_surgery is on
            assert presets.resolve_eval_method(variant) == config.replace(feature_surgery=on)
    assert presets.with_feature_surgery("surgery", True) == "surgery"
    assert presets.with_feature_surgery("maskclip", True) == "maskclip+fs"
    assert presets.resolve_eval_method("surgery-fs") == METHODS["surgery-no-fs"]
    assert presets.resolve_eval_method("raw+fs") == METHODS["feature-surgery-only"]
    for bad in ("gradcam+fs", "null:random-fs"):
        with pytest.raises(ValueError, match="no feature surgery"):
            presets.resolve_eval_method(bad)
    with pytest.raises(ValueError, match="unknown method 'nope\\+fs'"):
        presets.resolve_eval_method("nope+fs")
    with pytest.raises(ValueError, match="dense methods"):
        presets.with_feature_surgery("chefer", True)


def test_gradient_and_null_methods_are_explain_only(tmp_path):
    for method in (*GRADIENT_METHODS, *presets.NULL_METHODS):
        runner.EvalSettings(task="explain", dataset="composites", root=ROOT, out=tmp_path, method=method)
        for task in ("segment", "multilabel"):
            with pytest.raises(ValueError, match="explain task only"):
                runner.EvalSettings(task=task, dataset="composites", root=ROOT, out=tmp_path, method=method)
        with pytest.raises(ValueError, match="default prompt ensemble"):
            runner.EvalSettings(
                task="explain",
                dataset="composites",
                root=ROOT,
                out=tmp_path,
                method=method,
                templates="single",
            )
    assert not any(tmp_path.iterdir())


def test_explain_protocol_says_what_applies():
    assert presets.explain_protocol(None) == ({}, [])
    used, unused = presets.explain_protocol("sclip", "voc")
    assert used == {"templates": "openai80"}
    assert {"protocol", "window", "stride", "logit_scale", "bg_threshold", "pamr_steps"} == set(unused)
    assert presets.explain_protocol("maskclip")[0] == {"image_size": 512, "templates": "surgery85"}
    assert presets.explain_protocol("gem")[0] == {"image_size": 448, "templates": "single"}
    assert presets.explain_protocol("clearclip")[0]["image_size"] == 448
    with pytest.raises(ValueError, match="unknown protocol preset"):
        presets.explain_protocol("nope")


def test_a_gradient_explainer_is_scored_like_a_dense_method(tmp_path, toy_vit):
    result = _run(tmp_path, "chefer-all-layers", toy_vit)
    dense = _run(tmp_path, "raw", toy_vit)
    assert result["config"] == {"explainer": "chefer", "start_layer": 0}
    # the same (image, class) pairs are scored, with scores in range
    pairs = runner.image_records(tmp_path / "chefer-all-layers")
    assert [[p["class"] for p in r["pairs"]] for r in pairs] == [
        [p["class"] for p in r["pairs"]] for r in runner.image_records(tmp_path / "raw")
    ]
    assert result["summary"]["pairs"] == dense["summary"]["pairs"] > 0
    assert 0.0 <= result["summary"]["mIoU"] <= 100.0
    assert result["summary"]["mIoU"] != dense["summary"]["mIoU"]


def test_feature_surgery_variant_equals_the_registry_preset(tmp_path, toy_vit):
    a = _run(tmp_path, "raw+fs", toy_vit)
    b = _run(tmp_path, "feature-surgery-only", toy_vit)
    assert a["summary"] == b["summary"]
    c = _run(tmp_path, "maskclip+fs", toy_vit)
    d = _run(tmp_path, "maskclip", toy_vit)
    assert c["config"]["feature_surgery"] and not d["config"]["feature_surgery"]
    assert c["summary"]["mSC"] != d["summary"]["mSC"]  # the switch really acts on MaskCLIP's maps
    # two runs of one config: the paired test finds no difference
    rows = [{"method": m, "out": str(tmp_path / m), "images": 2} for m in ("raw+fs", "feature-surgery-only")]
    test = paired_test(rows[0], rows[1])
    assert test["difference"] == 0.0 and test["p_value"] == 1.0 and test["images"] == 2
    rows = [{**row, "mSC": r["summary"]["mSC"]} for row, r in zip(rows, (a, b), strict=True)]
    claim = beats(rows[0], rows[1])  # equal maps: no difference, so the claim does not hold
    assert not claim.holds and "p = 1" in claim.measured and "+0.0" in claim.measured
    assert row_label({"method": "maskclip+fs", "preset": None}).endswith(" + FS")
    assert row_label({"method": "naclip", "preset": "naclip"}).endswith("@ own protocol")


def test_centre_null_row_is_the_centre_prior_scored_on_the_same_pairs(tmp_path, toy_vit):
    result = _run(tmp_path, "null:centre", toy_vit, limit=3)
    dataset = load_dataset("composites", ROOT)
    meter = ExplainabilityMeter()
    for i in range(3):
        sample = dataset[i]
        label = torch.from_numpy(sample.label)
        for c in dataset.foreground:
            if bool((label == c).any()):
                heat = centre_prior_map(tuple(label.shape))
                meter.add_scores(dataset.class_names[c], masked_map_scores(heat, label == c, label != 255))
    expected = meter.summary()
    for key in ("mIoU", "mSC", "pointing_game", "opposite_rate"):
        assert result["summary"][key] == pytest.approx(expected[key], rel=1e-6)


def test_random_null_draws_per_pair_and_does_not_depend_on_the_batch(tmp_path, toy_vit):
    a = _run(tmp_path / "a", "null:random", toy_vit, limit=3, batch_size=1)
    b = _run(tmp_path / "b", "null:random", toy_vit, limit=3, batch_size=8)
    centre = _run(tmp_path, "null:centre", toy_vit, limit=3)
    assert a["summary"] == b["summary"]
    assert a["summary"]["pairs"] == runner.NULL_DRAWS * centre["summary"]["pairs"]
    # no information: the mean score contrast over many draws is 0 up to noise
    sc = [p["sc"] for r in runner.image_records(tmp_path / "a" / "null_random") for p in r["pairs"]]
    assert abs(np.mean(sc)) < 4 * np.std(sc) / np.sqrt(len(sc)) + 1e-9


def test_table_skips_unsupported_methods_and_ranks_with_a_paired_test(tmp_path):
    datasets = {"composites-seen": ("composites", ROOT)}
    methods = ["raw", "maskclip", "gradcam", "null:centre"]
    with pytest.raises(UnsupportedModelError):
        experiments.evaluation_table(
            "explain", ["toy-rn"], datasets, tmp_path, methods, limit=2, device="cpu"
        )
    rows = experiments.evaluation_table(
        "explain", ["toy-rn"], datasets, tmp_path, methods, limit=2, device="cpu", skip_unsupported=True,
        presets={"raw": None, "gradcam": None},
    )  # fmt: skip
    assert [r["method"] for r in rows] == ["raw", "gradcam", "null:centre"]
    ranked, test = ranking(rows, "mSC")
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    values = [r["mSC"] for r in ranked]
    assert values == sorted(values, reverse=True)
    assert test["a"] == ranked[0]["method"] and test["b"] == ranked[1]["method"]
    assert 0.0 < test["p_value"] <= 1.0 and test["images"] == 2
    with_preset = experiments.evaluation_table(
        "explain",
        ["toy-vit"],
        datasets,
        tmp_path,
        ["sclip"],
        limit=2,
        device="cpu",
        presets={"sclip": "sclip"},
    )
    assert with_preset[0]["preset"] == "sclip" and with_preset[0]["out"].endswith("@sclip")


def test_spatial_prior_on_attention_weights_is_naclips_attention():
    from surgery_lib.model import with_spatial_prior
    from surgery_lib.model.attention import spatial_prior

    grid, sigma = (3, 4), 5.0
    logits = torch.randn(2, 4, 13, 13, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.softmax(logits + spatial_prior(grid, sigma, logits), dim=-1)
    found = with_spatial_prior(torch.softmax(logits, dim=-1), grid, sigma)
    torch.testing.assert_close(found, expected)
    # the prior pulls mass towards the query's neighbours: on uniform weights the nearest patch wins
    uniform = torch.full((13, 13), 1 / 13, dtype=torch.float64)
    row = with_spatial_prior(uniform, grid, 1.0)[1]  # query patch (0, 0)
    assert row[1] == row.max() and row[2] > row[12]
    with pytest.raises(ValueError, match="must be"):
        with_spatial_prior(uniform[0], grid, sigma)
    with pytest.raises(ValueError, match="sigma"):
        with_spatial_prior(uniform, grid, 0.0)
