"""Figures of the mechanism notebook (03): lines with interval bands, and a per-image scatter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from surgery_lib.ui.style import _pyplot, figure_style, page_width, series_colors

_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def interval_lines(
    x: Sequence[float],
    series: Mapping[str, Sequence[tuple[float, float, float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    reference: Mapping[str, float] | None = None,
    width: str | float = 3.4,
) -> Figure:
    """One line per series with its interval as a band: ``series[name][i] = (value, low, high)`` at
    ``x[i]``; ``reference`` draws labelled horizontal dashed lines (e.g. ``{"raw CLIP": -9.8}``).

    Raises:
        ValueError: a series with another length than ``x``.
    """
    plt = _pyplot()
    with figure_style():
        fig, ax = plt.subplots(figsize=(page_width(width), 2.6))
        colors = series_colors(list(series))
        for i, (name, values) in enumerate(series.items()):
            if len(values) != len(x):
                raise ValueError(f"series {name!r} has {len(values)} values for {len(x)} x positions")
            mid = [v[0] for v in values]
            ax.fill_between(
                list(x), [v[1] for v in values], [v[2] for v in values], color=colors[i], alpha=0.15
            )
            ax.plot(
                list(x), mid, marker=_MARKERS[i % len(_MARKERS)], markersize=3.5, label=name, color=colors[i]
            )
        for j, (name, value) in enumerate((reference or {}).items()):
            ax.axhline(value, color="grey", linestyle=("--", ":", "-.")[j % 3], linewidth=0.8, label=name)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        ax.legend(frameon=False, fontsize=6)
        fig.tight_layout()
    return fig


def scatter(
    x: Sequence[float],
    y: Sequence[float],
    xlabel: str,
    ylabel: str,
    title: str = "",
    width: str | float = 3.0,
) -> Figure:
    """Paired values as points (e.g. one per image), with the zero lines.

    Raises:
        ValueError: ``x`` and ``y`` of different lengths.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} values, y {len(y)}")
    plt = _pyplot()
    with figure_style():
        fig, ax = plt.subplots(figsize=(page_width(width), 2.6))
        ax.axhline(0.0, color="grey", linewidth=0.6)
        ax.axvline(0.0, color="grey", linewidth=0.6)
        ax.scatter(list(x), list(y), s=10, color=series_colors(["points"])[0])
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        if title:
            ax.set_title(title)
        fig.tight_layout()
    return fig
