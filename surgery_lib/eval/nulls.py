"""Nulls for the explainability measures: what a map with no information about the object scores.

A number such as "mSC 12" or "pointing game 60 %" means little without the score of a map that knows
nothing about the image: the pointing game's chance is the object's share of the image, not 0; a map
with no information has SC < 0 about half the time, so an "opposite" share of 50 % is chance, not a
finding. These are this project's baselines (the paper reports none):

* :func:`random_map` — noise, drawn on the token grid and upsampled bilinearly as CLIP's maps are (or
  per pixel), min-max normalised: the *random-map* null;
* :func:`centre_prior_map` — a Gaussian at the image centre: the *centre-prior* baseline (photographers
  centre their objects; a method that only learned "the middle" scores this);
* :func:`area_chance` — the chance of a uniformly random point landing in a mask: the pointing game's
  chance for a per-pixel null and the SAM point precision's chance level (a map upsampled from a token
  grid peaks near a cell centre, so its pointing chance is the share of cell centres in the mask —
  :func:`null_meter` with ``grid`` estimates it);
* :func:`null_meter` — an :class:`~surgery_lib.eval.metrics.ExplainabilityMeter` filled with a null's
  scores on the same (class, mask) pairs a method was scored on, so its ``summary()`` is the null row of
  a table (mIoU, mSC, pointing game, opposite rate);
* :func:`sign_flip_test` — a paired permutation test (random sign flips of per-image differences) for
  "method A scores higher than method B on the same images";
* :func:`cell_centre_chance` — the pointing game's chance for a map drawn on a token grid: the share of
  cell centres in the mask;
* :func:`position_permutation_test` — a permutation test (positions shuffled within each image) of the
  correlation between two per-position quantities, e.g. token norms and the empty prompt's map.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from surgery_lib.eval.metrics import ExplainabilityMeter, MapScores, map_scores

NULL_KINDS = ("random", "centre")


def _min_max(heat: torch.Tensor) -> torch.Tensor:
    low, high = heat.min(), heat.max()
    return (heat - low) / (high - low) if float(high - low) > 0 else torch.zeros_like(heat)


def random_map(
    shape: tuple[int, int], grid: tuple[int, int] | None = (14, 14), generator: torch.Generator | None = None
) -> torch.Tensor:
    """A map with no information: uniform noise on ``grid`` (``(h, w)`` tokens) upsampled bilinearly to
    ``shape`` (``(H, W)``), or per pixel when ``grid`` is None; min-max normalised, ``(H, W)`` float32."""
    height, width = _shape(shape)
    if grid is None:
        return _min_max(torch.rand(height, width, generator=generator))
    h, w = _shape(grid)
    noise = torch.rand(1, 1, h, w, generator=generator)
    return _min_max(F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)[0, 0])


def centre_prior_map(shape: tuple[int, int], sigma: float = 0.25) -> torch.Tensor:
    """A Gaussian centred on the image, standard deviation ``sigma`` × each side, min-max normalised:
    ``(H, W)`` float32."""
    height, width = _shape(shape)
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive fraction of the image side, got {sigma!r}")
    y = (torch.arange(height, dtype=torch.float32) + 0.5) / height - 0.5
    x = (torch.arange(width, dtype=torch.float32) + 0.5) / width - 0.5
    heat = torch.exp(-(y[:, None] ** 2 + x[None, :] ** 2) / (2 * sigma**2))
    return _min_max(heat)


def area_chance(mask: torch.Tensor | np.ndarray) -> float:
    """The chance that a uniformly random pixel lies in ``mask`` (``(H, W)`` bool): the object's share of
    the image — the pointing game's chance level, and a random point's precision for SAM prompts."""
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool()
    if mask.ndim != 2 or mask.numel() == 0:
        raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
    return float(mask.float().mean())


def null_scores(
    mask: torch.Tensor | np.ndarray,
    kind: str = "random",
    samples: int = 100,
    grid: tuple[int, int] | None = (14, 14),
    seed: int = 0,
) -> list[MapScores]:
    """The scores of a null map against one ``(H, W)`` mask: ``samples`` draws of :func:`random_map`
    (``kind="random"``), or the one :func:`centre_prior_map` (``kind="centre"``)."""
    if kind not in NULL_KINDS:
        raise ValueError(f"unknown null {kind!r}; expected one of {NULL_KINDS}")
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool()
    if mask.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
    if kind == "centre":
        return [map_scores(centre_prior_map(tuple(mask.shape)), mask)]
    if not (isinstance(samples, int) and 1 <= samples <= 100_000):
        raise ValueError(f"samples must be an int in [1, 100000], got {samples!r}")
    generator = torch.Generator().manual_seed(seed)
    return [map_scores(random_map(tuple(mask.shape), grid, generator), mask) for _ in range(samples)]


def null_meter(
    pairs: Iterable[tuple[str, torch.Tensor | np.ndarray]],
    kind: str = "random",
    samples: int = 100,
    grid: tuple[int, int] | None = (14, 14),
    seed: int = 0,
) -> ExplainabilityMeter:
    """A meter holding a null's scores on the ``(class, mask)`` pairs a method was scored on.

    Its ``summary()`` is the null row beside the method's: per class, then over classes, as for any map
    (for ``"random"`` every draw counts as a pair, so ``opposite_rate`` is the expected share of opposite
    maps and ``pairs`` counts draws). Each pair gets its own seed (``seed`` + its position).
    """
    meter = ExplainabilityMeter()
    for position, (label, mask) in enumerate(pairs):
        for scores in null_scores(mask, kind, samples, grid, seed + position):
            meter.add_scores(label, scores)
    if not len(meter):
        raise ValueError("null_meter got no (class, mask) pairs")
    return meter


def sign_flip_test(
    a: Iterable[float], b: Iterable[float], resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """A paired two-sided permutation test of "the mean of ``a`` differs from the mean of ``b``", the
    values paired by position (e.g. per image, two methods). Returns ``(mean difference a − b,
    p-value)``. Under the null the sign of each difference is a coin flip: all ``2**n`` sign patterns are
    enumerated for n ≤ 16, otherwise ``resamples`` random ones are drawn (p counts the observed one,
    so it is never 0).
    """
    x, y = np.asarray(list(a), dtype=np.float64), np.asarray(list(b), dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or x.size == 0:
        raise ValueError(f"a and b must be two equally long, non-empty lists, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("sign_flip_test got NaN or infinite values")
    d = x - y
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))
    if d.size <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        extreme = np.abs((signs * d).mean(axis=1)) >= observed - tolerance
        return float(d.mean()), float(extreme.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(resamples, d.size))
    extreme = int((np.abs((signs * d).mean(axis=1)) >= observed - tolerance).sum())
    return float(d.mean()), (extreme + 1) / (resamples + 1)


def _shape(shape: tuple[int, int]) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise ValueError(f"shape must be (H, W), got {shape!r}") from None
    if height < 1 or width < 1 or (height, width) != tuple(shape):
        raise ValueError(f"shape must be two positive integers (H, W), got {shape!r}")
    return height, width


def cell_centre_chance(mask: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> float:
    """The pointing game's chance for a map drawn on a token ``grid`` (``(h, w)``) and upsampled: the
    share of the grid's cell centres that lie in ``mask`` (``(H, W)`` bool). A token-grid map peaks at
    (about) one cell's centre, each cell equally likely under noise, so this, not the object's pixel
    share (:func:`area_chance`), is its chance level; the two agree for a mask made of whole cells.
    """
    mask = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).bool()
    if mask.ndim != 2 or mask.numel() == 0:
        raise ValueError(f"mask must be (H, W), got shape {tuple(mask.shape)}")
    h, w = _shape(grid)
    height, width = mask.shape
    rows = ((torch.arange(h, dtype=torch.float64) + 0.5) * height / h).long().clamp(max=height - 1)
    cols = ((torch.arange(w, dtype=torch.float64) + 0.5) * width / w).long().clamp(max=width - 1)
    return float(mask[rows][:, cols].float().mean())


def position_permutation_test(
    x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Do two per-position quantities go together? ``x`` and ``y`` are ``(n, N)``: n images (rows), N
    token positions. The statistic is the mean over rows of the Pearson correlation across positions;
    under the null the positions of ``x`` are shuffled independently in each row (``resamples``
    random permutations). Returns ``(mean r, two-sided p)``; p counts the observed statistic, so it is
    never 0. One row (e.g. position-wise means over images) is a plain permutation test of one r.

    Raises:
        ValueError: shapes differ, fewer than 3 positions, NaN/inf, or a constant row (r undefined).
    """
    a = np.atleast_2d(np.asarray(x, dtype=np.float64))
    b = np.atleast_2d(np.asarray(y, dtype=np.float64))
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] < 3:
        raise ValueError(f"x and y must be the same (n, N) with N >= 3, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("position_permutation_test got NaN or infinite values")
    if not (isinstance(resamples, int) and resamples >= 1):
        raise ValueError(f"resamples must be a positive int, got {resamples!r}")
    za, zb = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    na, nb = np.linalg.norm(za, axis=1), np.linalg.norm(zb, axis=1)
    if (na == 0).any() or (nb == 0).any():
        raise ValueError("a row of x or y is constant: its correlation is undefined")
    za, zb = za / na[:, None], zb / nb[:, None]
    observed = float((za * zb).sum(1).mean())
    rng = np.random.default_rng(seed)
    rows = np.arange(a.shape[0])[:, None]
    null = np.empty(resamples)
    for i in range(resamples):
        order = np.argsort(rng.random(a.shape), axis=1)
        null[i] = (za[rows, order] * zb).sum(1).mean()
    tolerance = 1e-12
    extreme = int((np.abs(null) >= abs(observed) - tolerance).sum())
    return observed, (extreme + 1) / (resamples + 1)
