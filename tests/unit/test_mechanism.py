"""The mechanism factorial (notebook 03): coinciding cells, block patching, intervals, correlation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surgery_lib.config import SurgeryConfig
from surgery_lib.eval import mechanism as M
from surgery_lib.eval.analysis import _batch, config_summary, summarise
from surgery_lib.model.surgery import dense_forward, max_depth


@pytest.fixture(scope="module")
def data(composites3):
    classes, items = composites3
    return classes, [it for it in items if it.masks]


@pytest.fixture(scope="module")
def images(toy_vit, data):
    return torch.cat([_batch(toy_vit, it) for it in data[1][:2]])


def test_depths_are_relative_to_the_tower():
    assert M.mechanism_depths(8) == [1, 2, 4, 8]
    assert M.mechanism_depths(12) == [1, 3, 6, 12]
    assert M.mechanism_depths(1) == [1]
    with pytest.raises(ValueError):
        M.mechanism_depths(0)


def test_factorial_cells_cover_every_combination():
    cells = M.factorial_cells(8)
    assert cells[0] == M.RAW and len(cells) == 1 + 3 * 2 * 2 * 4
    assert M.factorial_cells(1, resnet=True) == [M.RAW] + [
        M.Cell(a, False, False, 1) for a in ("qk", "vv", "identity")
    ]
    with pytest.raises(ValueError, match="outside"):
        M.factorial_cells(8, depths=[9])


def test_coinciding_cell_rules():
    assert M.coinciding_cell(M.Cell("qk", False, True, 4)) == (M.RAW, M.RAW)  # new path repeats the old
    assert M.coinciding_cell(M.Cell("qk", False, False, 8)) == (M.RAW, M.RAW)
    dual1 = M.Cell("vv", True, True, 1)
    assert M.coinciding_cell(dual1) == (M.Cell("vv", True, False, 1), M.RAW)
    dual4 = M.Cell("identity", True, True, 4)
    assert M.coinciding_cell(dual4) == (dual4, M.RAW)
    single = M.Cell("vv", False, False, 2)
    assert M.coinciding_cell(single) == (single, single)
    assert M.coinciding_cell(M.Cell("vv", True, True, 1), resnet=True)[0] == M.Cell("vv", False, False, 1)
    assert M.coinciding_cell(M.Cell("qk", True, True, 1), resnet=True) == (M.RAW, M.RAW)


@torch.no_grad()
def test_cells_identical_by_construction_are_detected_numerically(toy_vit, images):
    """Every cell's forward equals its coinciding cell's (patch and class tokens); cells said to differ
    do differ."""
    model = toy_vit.model
    n = max_depth(model)
    cache = {}

    def tokens(cell):
        if cell not in cache:
            cache[cell] = dense_forward(model, images, cell.config)[0]
        return cache[cell]

    for cell in M.factorial_cells(n, depths=[1, n // 2]):
        patch_as, class_as = M.coinciding_cell(cell)
        torch.testing.assert_close(tokens(cell)[:, 1:], tokens(patch_as)[:, 1:], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(tokens(cell)[:, :1], tokens(class_as)[:, :1], atol=1e-4, rtol=1e-4)
    # not coinciding: the dual path of depth n/2 has other patch tokens than the single path's
    a, b = M.Cell("vv", True, True, n // 2), M.Cell("vv", True, False, n // 2)
    assert (tokens(a)[:, 1:] - tokens(b)[:, 1:]).abs().max() > 1e-3
    assert M.Cell("vv", True, False, 1).config == SurgeryConfig.paper().replace(
        depth=1, dual_path=False, feature_surgery=False
    )


@torch.no_grad()
@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("skip", [False, True])
def test_patching_the_last_d_blocks_equals_the_config(toy_vit, images, dual, skip):
    model = toy_vit.model
    n = max_depth(model)
    for d in (1, n // 2, n):
        kinds = [None] * (n - d) + ["vv"] * d
        patched, grid = M.patched_tokens(model, images, kinds, dual, skip)
        config = SurgeryConfig(depth=d, dual_path=dual, skip_ffn=skip, feature_surgery=False)
        expected, expected_grid = dense_forward(model, images, config)
        assert grid == expected_grid
        torch.testing.assert_close(patched, expected, atol=1e-4, rtol=1e-4)
    vanilla, _ = dense_forward(model, images, SurgeryConfig.off())
    torch.testing.assert_close(M.patched_tokens(model, images, [None] * n)[0], vanilla, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="one entry per block"):
        M.patched_tokens(model, images, [None])


def test_patching_needs_a_vit(toy_rn, images):
    with pytest.raises(TypeError, match="ViT"):
        M.patched_tokens(toy_rn.model, images, [None])


def test_pair_bootstrap_matches_summarise_and_a_constant_has_no_spread():
    records = [
        {
            "image": f"i{i}",
            "class": c,
            "method": "m",
            "iou": 10.0 * i,
            "score_contrast": float(i),
            "pointing_hit": True,
        }
        for i in range(6)
        for c in ("a", "b")
    ]
    records += [
        {"image": "i0", "class": "c", "method": "m", "iou": 50.0, "score_contrast": 3.0, "pointing_hit": True}
    ]
    (row,) = summarise(records)
    value, low, high = M.pair_bootstrap(records, "mSC")
    assert value == pytest.approx(row["mSC"]) and low <= value <= high
    assert M.pair_bootstrap(records, "mIoU")[0] == pytest.approx(row["mIoU"])
    same = [{**r, "score_contrast": 2.0} for r in records]
    assert M.pair_bootstrap(same) == pytest.approx((2.0, 2.0, 2.0))
    with pytest.raises(ValueError):
        M.pair_bootstrap(records, "pointing")


def test_paired_difference_of_a_method_with_itself_is_zero_and_a_shift_is_found():
    rng = np.random.default_rng(0)
    records = [{"image": f"i{i}", "class": "a", "score_contrast": float(rng.normal())} for i in range(20)]
    same = M.paired_difference(records, records)
    assert same["difference"] == 0.0 and same["low"] == same["high"] == 0.0 and same["p"] == 1.0
    shifted = [{**r, "score_contrast": r["score_contrast"] + 1.0} for r in records]
    d = M.paired_difference(shifted, records)
    assert d["difference"] == pytest.approx(1.0) and d["low"] == pytest.approx(1.0) and d["p"] < 0.001
    with pytest.raises(ValueError, match="same images"):
        M.paired_difference(records, records[:5])


def test_bootstrap_correlation_on_known_cases():
    x = np.arange(10.0)
    exact = M.bootstrap_correlation(x, 2 * x + 1)
    assert exact["r"] == pytest.approx(1.0) and exact["low"] == pytest.approx(1.0) and exact["p"] < 0.01
    rng = np.random.default_rng(1)
    noise = M.bootstrap_correlation(rng.normal(size=200), rng.normal(size=200))
    assert noise["low"] < 0 < noise["high"] and noise["p"] > 0.05
    assert np.isnan(M.bootstrap_correlation(x, np.ones(10))["r"])
    with pytest.raises(ValueError):
        M.bootstrap_correlation([1, 2], [1, 2])


def test_locality_contrast_pairs_images():
    locality = [
        {"image": img, "block": b, "kind": kind, "region": "object", "own_mass": mass, "chance": 0.2}
        for img, gain in (("x", 0.1), ("y", 0.3))
        for b in (0, 1)
        for kind, mass in (("vv", 0.4 + gain), ("qk", 0.4))
    ]
    a = [{"image": "x", "score_contrast": 1.0}, {"image": "y", "score_contrast": 3.0}]
    b = [{"image": "x", "score_contrast": 0.5}, {"image": "y", "score_contrast": 0.0}]
    rows = {r["image"]: r for r in M.locality_contrast(locality, a, b)}
    assert rows["x"]["locality_gain"] == pytest.approx(0.1) and rows["y"]["contrast_gain"] == pytest.approx(
        3.0
    )
    assert rows["x"]["chance"] == pytest.approx(0.2)


def test_factorial_rows_agree_with_config_summary(toy_vit, data):
    """A cell of the factorial (identity attention, v-v, raw) scores what config_summary gives its config."""
    classes, items = data
    n = max_depth(toy_vit.model)
    cells = [
        M.Cell("identity", True, True, n // 2),
        M.Cell("vv", False, False, n // 2),
        M.Cell("qk", False, True, 1),
    ]
    result = M.factorial(toy_vit, items, classes, cells, resamples=50)
    assert result.rows[0]["label"] == "raw CLIP" and len(result.rows) == 4
    reference = config_summary(toy_vit, items, classes, {c.label: c.config for c in [M.RAW, *cells]})
    for ref in reference:
        row = next(r for r in result.rows if r["label"] == ref["method"])
        for key in ("mSC", "mIoU", "zero_shot_top1", "same_top1"):
            assert row[key] == pytest.approx(ref[key], abs=1e-3), key
        assert row["mSC_low"] <= row["mSC"] <= row["mSC_high"]
    dual = result.row(cells[0])
    assert dual["class_token_as"] == "raw CLIP" and dual["same_top1"] == 100.0


def test_block_patching_baselines_are_factorial_cells(toy_vit, data):
    classes, items = data
    n = max_depth(toy_vit.model)
    rows, _ = M.block_patching(
        toy_vit, items, classes, ("single path, FFN kept", "dual path, FFN skipped"), resamples=20
    )
    assert len(rows) == 2 * (n + 1)
    cells = [M.Cell("qk", True, True, n)]
    fact = M.factorial(toy_vit, items, classes, cells, resamples=20)
    raw, dual = fact.row(M.RAW), fact.row(cells[0])
    base = {r["variant"]: r for r in rows if r["block"] == -1}
    assert base["single path, FFN kept"]["mSC"] == pytest.approx(raw["mSC"], abs=1e-4)
    assert base["dual path, FFN skipped"]["mSC"] == pytest.approx(dual["mSC"], abs=1e-4)
    with pytest.raises(ValueError, match="unknown variants"):
        M.block_patching(toy_vit, items, classes, ("sideways",))


def test_collapse_dual_path_keeps_the_class_token(toy_vit, images):
    n = max_depth(toy_vit.model)
    rows = M.collapse_records(toy_vit, images, depth=n // 2)
    by = {(r["path"], r["block"]): r for r in rows}
    assert all(by[("dual", b)]["class_cosine"] == pytest.approx(1.0, abs=1e-5) for b in range(n + 2))
    assert all(by[("vanilla", b)]["class_cosine"] == pytest.approx(1.0, abs=1e-5) for b in range(n + 2))
    start = n - n // 2
    assert by[("single", start)]["class_cosine"] == pytest.approx(1.0, abs=1e-5)  # before the surgery
    assert by[("single", n + 1)]["class_cosine"] < 0.999  # after it the class token has moved
    with pytest.raises(ValueError):
        M.collapse_records(toy_vit, images, depth=0)


def test_mechanism_figures_draw_one_line_per_series_and_check_lengths():
    from surgery_lib.ui.mechanism_figures import interval_lines, scatter

    fig = interval_lines([1, 2], {"a": [(0, -1, 1), (1, 0, 2)], "b": [(2, 1, 3), (3, 2, 4)]}, "x", "y",
                         reference={"raw": 0.0})  # fmt: skip
    assert len(fig.axes[0].lines) == 3
    with pytest.raises(ValueError, match="x positions"):
        interval_lines([1], {"a": [(0, 0, 0), (1, 1, 1)]}, "x", "y")
    assert len(scatter([1, 2], [3, 4], "x", "y").axes[0].collections) == 1
    with pytest.raises(ValueError):
        scatter([1], [1, 2], "x", "y")


def test_factorial_on_a_modified_resnet_reduces_to_the_attention_pool(toy_rn, data):
    classes, items = data
    result = M.factorial(toy_rn, items, classes, resamples=20)
    assert [r["label"] for r in result.rows] == [c.label for c in M.factorial_cells(1, resnet=True)]
    assert result.row(M.Cell("qk", False, False, 1))["maps_as"] == "raw CLIP" and result.forwards == 3
    effects = M.component_effects(result, 1, resamples=20)
    assert [e["comparison"] for e in effects] == list(M.comparisons_at(1, resnet=True))
    assert "attention pool" in M.verdict(result, 1, 1, "toy-rn")


def _fake(values: dict) -> M.Factorial:
    rows = [
        {"label": cell.label, "mSC": m, "mSC_low": m - 1.0, "mSC_high": m + 1.0} for cell, m in values.items()
    ]
    return M.Factorial(rows, {cell: [] for cell in values}, {}, [])


def test_verdict_is_computed_from_the_intervals():
    qk, vv, both = M.Cell("qk", True, True, 4), M.Cell("vv", False, True, 4), M.Cell("vv", True, True, 4)
    ffn = M.verdict(_fake({M.RAW: -5.0, qk: 3.0, vv: -4.0, both: 8.0}), 4, 8, "m")
    assert "on its own, skipping the FFN (q-k attention kept) turns the maps around" in ffn and "50 %" in ffn
    together = M.verdict(_fake({M.RAW: -5.0, qk: 0.0, vv: -4.0, both: 8.0}), 4, 8, "m")
    assert "neither component turns the maps around on its own; both together do" in together
    nothing = M.verdict(_fake({M.RAW: 0.0, qk: 3.0, vv: 3.0, both: 8.0}), 4, 8, "m")
    assert "not opposite" in nothing
