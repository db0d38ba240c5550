"""The nulls of the explainability measures have their known values on synthetic cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from surgery_lib.eval.metrics import map_scores
from surgery_lib.eval.nulls import (
    area_chance,
    centre_prior_map,
    null_meter,
    null_scores,
    random_map,
    sign_flip_test,
)


def _square(size: int = 64, side: int = 16, top: int = 24, left: int = 24) -> torch.Tensor:
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[top : top + side, left : left + side] = True
    return mask


def test_area_chance_is_the_objects_share():
    assert area_chance(_square()) == pytest.approx(256 / 4096)
    assert area_chance(np.ones((3, 4), dtype=bool)) == 1.0
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        area_chance(torch.ones(2, 3, 4, dtype=torch.bool))


@pytest.mark.parametrize("grid", [None, (14, 14)], ids=["per-pixel", "token-grid"])
def test_a_random_map_scores_chance(grid):
    """No information: SC about 0, opposite about half the time, the pointing game at the object's area."""
    mask = _square(side=24)
    scores = null_scores(mask, "random", samples=600, grid=grid, seed=1)
    sc = np.array([s.score_contrast for s in scores])
    hits = np.array([s.pointing_hit for s in scores])
    assert abs(sc.mean()) < 3 * sc.std() / np.sqrt(len(sc)) + 0.05
    assert 0.4 < (sc < 0).mean() < 0.6
    area = area_chance(mask)
    assert abs(hits.mean() - area) < 4 * np.sqrt(area * (1 - area) / len(hits))


def test_random_maps_are_normalised_and_reproducible():
    first = random_map((30, 40), (7, 7), torch.Generator().manual_seed(3))
    again = random_map((30, 40), (7, 7), torch.Generator().manual_seed(3))
    assert first.shape == (30, 40) and torch.equal(first, again)
    assert float(first.min()) == 0.0 and float(first.max()) == 1.0
    with pytest.raises(ValueError, match="two positive integers"):
        random_map((30, 0))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        random_map((30,))


def test_the_centre_prior_wins_on_a_centred_object_and_is_opposite_on_a_border():
    centred = map_scores(centre_prior_map((64, 64)), _square())
    assert centred.score_contrast > 30 and centred.pointing_hit == 1.0
    border = torch.ones(64, 64, dtype=torch.bool)
    border[8:56, 8:56] = False
    framed = map_scores(centre_prior_map((64, 64)), border)
    assert framed.score_contrast < 0 and framed.pointing_hit == 0.0
    assert null_scores(_square(), "centre") == [centred]
    with pytest.raises(ValueError, match="sigma"):
        centre_prior_map((8, 8), sigma=float("nan"))


def test_the_null_meter_gives_the_null_row_of_a_table():
    pairs = [("cat", _square(side=24)), ("dog", _square(side=16, top=4, left=4))]
    summary = null_meter(pairs, "random", samples=300, grid=None, seed=0).summary()
    assert summary["classes"] == 2 and summary["pairs"] == 600
    assert abs(summary["mSC"]) < 2.0 and 40 < summary["opposite_rate"] < 60
    expected_pointing = 100 * np.mean([area_chance(m) for _, m in pairs])
    assert summary["pointing_game"] == pytest.approx(expected_pointing, abs=4.0)
    # on the token grid the maximum sits near a cell centre: the chance is the share of cell centres
    # in the mask, not its area (the corner square: about 2 % against an area of 6 %)
    corner = null_meter(pairs[1:], "random", samples=400, grid=(14, 14), seed=0).summary()
    assert corner["pointing_game"] < 100 * area_chance(pairs[1][1]) - 2
    centre = null_meter(pairs, "centre").summary()
    assert centre["pairs"] == 2
    with pytest.raises(ValueError, match="unknown null"):
        null_meter(pairs, "uniform")
    with pytest.raises(ValueError, match=r"no .* pairs"):
        null_meter([])


def test_sign_flip_test_exact_and_sampled():
    # three positive differences: 2 of the 8 sign patterns are as extreme (all + and all -)
    assert sign_flip_test([3, 2, 4], [1, 1, 1]) == (pytest.approx(2.0), pytest.approx(0.25))
    assert sign_flip_test([1, 2, 3], [1, 2, 3])[1] == 1.0  # no difference
    rng = np.random.default_rng(0)
    base = rng.normal(size=40)
    shifted = sign_flip_test(base + 1.0, base + rng.normal(scale=0.1, size=40), resamples=2000)
    assert shifted[0] > 0.9 and shifted[1] < 0.01
    same = sign_flip_test(base + rng.normal(scale=0.5, size=40), base, resamples=2000)
    assert same[1] > 0.01
    with pytest.raises(ValueError, match="equally long"):
        sign_flip_test([1, 2], [1])
    with pytest.raises(ValueError, match="NaN"):
        sign_flip_test([1, float("nan")], [1, 2])


def test_cell_centre_chance_counts_the_token_cells_whose_centre_is_in_the_mask():
    from surgery_lib.eval.nulls import cell_centre_chance

    left = torch.zeros(64, 64, dtype=torch.bool)
    left[:, :32] = True  # whole cells: the same as the object's pixel share
    assert cell_centre_chance(left, (4, 4)) == pytest.approx(0.5) == pytest.approx(area_chance(left))
    strip = torch.zeros(64, 64, dtype=torch.bool)
    strip[:, 14:18] = True  # 6 % of the pixels, between the centres (8, 24) of a 4-wide grid: no centre
    assert area_chance(strip) > 0.05 and cell_centre_chance(strip, (4, 4)) == 0.0
    strip[:, 24] = True  # now one column of centres
    assert cell_centre_chance(strip, (4, 4)) == pytest.approx(0.25)
    # the random-map null on that grid points into the mask at the cell-centre rate, not the area rate
    square = _square(64, 16, 0, 0)  # exactly the top-left cell of a 4 × 4 grid
    summary = null_meter([("a", square)], "random", samples=400, grid=(4, 4), seed=1).summary()
    assert abs(summary["pointing_game"] - 100 * cell_centre_chance(square, (4, 4))) < 8
    with pytest.raises(ValueError, match="mask"):
        cell_centre_chance(torch.ones(2, 3, 4, dtype=torch.bool), (2, 2))
    with pytest.raises(ValueError, match="shape"):
        cell_centre_chance(square, (0, 4))


def test_position_permutation_test_finds_a_shared_pattern_and_not_noise():
    from surgery_lib.eval.nulls import position_permutation_test

    rng = np.random.default_rng(0)
    pattern = rng.normal(size=49)
    x = pattern + 0.5 * rng.normal(size=(6, 49))  # 6 images, one fixed-position pattern plus noise
    y = pattern + 0.5 * rng.normal(size=(6, 49))
    r, p = position_permutation_test(x, y, resamples=500)
    assert r > 0.6 and p < 0.01
    r, p = position_permutation_test(rng.normal(size=(6, 49)), rng.normal(size=(6, 49)), resamples=500)
    assert abs(r) < 0.2 and p > 0.05  # independent: at chance
    r, p = position_permutation_test(pattern, -pattern, resamples=200)
    assert r == pytest.approx(-1.0) and p < 0.01  # two-sided; one row is a plain permutation test
    assert position_permutation_test(x, y, resamples=100, seed=3) == position_permutation_test(
        x, y, resamples=100, seed=3
    )
    with pytest.raises(ValueError, match="same"):
        position_permutation_test(x, y[:, :10])
    with pytest.raises(ValueError, match="constant"):
        position_permutation_test(np.ones((2, 5)), np.arange(10.0).reshape(2, 5))
