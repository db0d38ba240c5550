"""Charts: grouped bars with intervals, lines with error bands, precision-recall curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from surgery_lib.ui.style import (
    _MARKERS,
    _as_array,
    _pyplot,
    figure_style,
    page_width,
    plain_text,
    series_colors,
)


def bar_chart(
    values: Mapping[str, Mapping[str, float]],
    ylabel: str,
    title: str = "",
    xlabel: str = "",
    errors: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
    width: str | float = "double",
    top_k: int | None = None,
) -> Figure:
    """Grouped bars ``values[group][series]`` that fit the page.

    Few groups: vertical grouped bars across ``width`` (:data:`PAGE_WIDTHS` name or inches). Many
    groups (per-class results: 31, 59, 171 classes): horizontal bars sorted by the first series, the
    ``top_k`` best shown (default: as many as fit) and the rest summarised in one "other" row
    (their mean), so the figure never grows wider than ``width``.

    Args:
        errors: ``errors[group][series] = (low, high)`` confidence limits (e.g. :func:`~surgery_lib.eval.
            metrics.bootstrap_ci`), drawn as error bars.
    """
    groups = list(values)
    if not groups:
        raise ValueError("no values to plot")
    inches = page_width(width)
    series = list(dict.fromkeys(s for g in groups for s in values[g]))
    colors = series_colors(series)
    plt = _pyplot()
    bars = len(groups) * len(series)
    horizontal = bars * 0.18 + 0.8 > inches
    with figure_style():
        if not horizontal:
            fig, ax = plt.subplots(figsize=(inches, 2.4))
            step = 0.8 / len(series)
            x = np.arange(len(groups))
            for i, name in enumerate(series):
                heights = np.array([values[g].get(name, np.nan) for g in groups], dtype=float)
                err = _error_bars(errors, groups, name, heights)
                ax.bar(x + (i - (len(series) - 1) / 2) * step, heights, step, label=plain_text(name),
                       color=colors[i], yerr=err, capsize=1.5, error_kw={"linewidth": 0.6})  # fmt: skip
            ax.set_xticks(x, [plain_text(g) for g in groups], rotation=30 if max(map(len, groups)) > 6 else 0,
                          ha="right" if max(map(len, groups)) > 6 else "center")  # fmt: skip
            ax.axhline(0.0, color="black", linewidth=0.6)
            ax.set_ylabel(ylabel)
            if xlabel:
                ax.set_xlabel(xlabel)
        else:
            first = series[0]
            ordered = sorted(groups, key=lambda g: -np.nan_to_num(values[g].get(first, np.nan), nan=-np.inf))
            fit = max(1, int((9.0 - 0.8) / (0.12 * len(series) + 0.04)))  # rows that fit a page's height
            k = min(len(ordered), top_k or fit)
            shown, rest = ordered[:k], ordered[k:]
            rows = [*shown, f"other ({len(rest)}, mean)"] if rest else shown
            height = min(9.0, 0.8 + len(rows) * (0.12 * len(series) + 0.04))
            fig, ax = plt.subplots(figsize=(inches, height))
            step = 0.8 / len(series)
            y = np.arange(len(rows))[::-1]
            for i, name in enumerate(series):
                lengths = [values[g].get(name, np.nan) for g in shown]
                if rest:
                    lengths.append(float(np.nanmean([values[g].get(name, np.nan) for g in rest])))
                lengths = np.array(lengths, dtype=float)
                err = _error_bars(errors, shown, name, lengths[: len(shown)])
                if err is not None and rest:
                    err = np.concatenate([err, np.zeros((2, 1))], axis=1)
                ax.barh(y - (i - (len(series) - 1) / 2) * step, lengths, step, label=plain_text(name),
                        color=colors[i], xerr=err, capsize=1.5, error_kw={"linewidth": 0.6})  # fmt: skip
            ax.set_yticks(y, [plain_text(r) for r in rows])
            ax.axvline(0.0, color="black", linewidth=0.6)
            ax.set_xlabel(ylabel)
            if xlabel:
                ax.set_ylabel(xlabel)
        if title:
            ax.set_title(plain_text(title))
        if len(series) > 1:
            ax.legend(frameon=False)
        fig.tight_layout()
    return fig


def _error_bars(errors, groups: Sequence[str], name: str, centres: np.ndarray) -> np.ndarray | None:
    """``(2, n)`` distances below/above each bar from ``errors[group][name] = (low, high)``."""
    if not errors:
        return None
    limits = np.array([errors.get(g, {}).get(name, (np.nan, np.nan)) for g in groups], dtype=float)
    return np.stack([centres - limits[:, 0], limits[:, 1] - centres]).clip(min=0.0)


def line_chart(
    x: Sequence[float],
    series: Mapping[str, Sequence[float]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    xscale: str = "linear",
    width: str | float = 3.4,
) -> Figure:
    """One line per series over a shared x (e.g. a value per block), each in its method's colour
    (:func:`series_colors`) with its own marker shape.

    Args:
        xscale: ``"linear"`` or ``"log"`` (x values > 0, drawn on a logarithmic axis: e.g. thresholds
            spanning decades).
    """
    if xscale not in ("linear", "log"):
        raise ValueError(f"unknown xscale {xscale!r}; expected 'linear' or 'log'")
    if xscale == "log" and any(not v > 0 for v in x):
        raise ValueError("a log x axis needs x values > 0")
    plt = _pyplot()
    with figure_style():
        fig, ax = plt.subplots(figsize=(page_width(width), 2.4))
        colors = series_colors(list(series))
        for i, (name, ys) in enumerate(series.items()):
            if len(ys) != len(x):
                raise ValueError(f"series {name!r} has {len(ys)} values for {len(x)} x positions")
            ax.plot(list(x), list(ys), marker=_MARKERS[i % len(_MARKERS)], markersize=3.5, label=name,
                    color=colors[i])  # fmt: skip
        ax.set_xscale(xscale)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.legend(frameon=False)
        fig.tight_layout()
    return fig


def pr_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], title: str = "", width: str | float = 3.2
) -> Figure:
    """Precision-recall curves: ``{name: (precision, recall)}`` (steps, as average precision integrates)."""
    if not curves:
        raise ValueError("no curves to plot")
    plt = _pyplot()
    with figure_style():
        fig, ax = plt.subplots(figsize=(page_width(width), 2.8))
        for name, (precision, recall) in curves.items():
            p, r = _as_array(precision), _as_array(recall)
            if p.shape != r.shape:
                raise ValueError(f"curve {name!r}: precision {p.shape} and recall {r.shape} differ")
            ax.step(
                np.concatenate([[0.0], r]),
                np.concatenate([[p[0] if len(p) else 1.0], p]),
                where="pre",
                label=name,
            )
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        if title:
            ax.set_title(title)
        ax.legend(frameon=False, fontsize=6)
        fig.tight_layout()
    return fig
