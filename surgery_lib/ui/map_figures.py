"""Figures of maps: grids of images × labels × methods, attention, segmentation, points, caption words;
maps are ``(H, W)`` arrays in [0, 1] drawn over the image they explain, with a shared colorbar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from surgery_lib.data.shipped import voc_palette

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
from surgery_lib.ui.style import (
    _SCALE_LABELS,
    COLORMAPS,
    DEFAULT_CMAP,
    DIVERGING_CMAP,
    SCALES,
    _as_array,
    _fit_panel,
    _pyplot,
    figure_style,
    method_title,
    page_width,
    plain_text,
)


def _fitted(image: Image.Image, hw: tuple[int, int]) -> np.ndarray:
    if (image.height, image.width) != hw:
        image = image.resize((hw[1], hw[0]), Image.BICUBIC)
    return np.asarray(image.convert("RGB"))


def _bare(ax: Axes) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _check_cmap(cmap: str) -> None:
    import matplotlib

    if cmap not in matplotlib.colormaps:
        raise ValueError(f"unknown colormap {cmap!r}; e.g. one of {COLORMAPS}")


def _overlay(
    ax: Axes,
    image: Image.Image | None,
    heat: np.ndarray,
    cmap: str,
    alpha: float,
    limits: tuple[float, float] = (0.0, 1.0),
    signed: bool = False,
    grey_image: bool = False,
):
    """Draw ``heat`` over ``image`` with value-weighted opacity: each pixel's opacity is ``alpha`` times
    its normalised value (for ``signed`` maps, times its distance from 0), so low values leave the image
    untinted instead of washing it with the colormap's low colour."""
    import matplotlib

    if image is not None:
        base = _fitted(image.convert("L") if grey_image else image, heat.shape)
        ax.imshow(base, cmap="gray" if grey_image else None, vmin=0, vmax=255)
    low, high = limits
    norm = np.clip((np.asarray(heat, dtype=np.float64) - low) / max(high - low, 1e-12), 0.0, 1.0)
    rgba = matplotlib.colormaps[cmap](norm)
    if image is not None:
        weight = np.abs(2.0 * norm - 1.0) if signed else norm
        rgba[..., 3] = alpha * weight
    shown = ax.imshow(rgba)
    _bare(ax)
    return shown


def _limits(maps: Sequence[np.ndarray], scale: str, vmin: float | None, vmax: float | None) -> list:
    """Per map (row-major list of ``(H, W)`` arrays of one row), the value limits of ``scale``."""
    if scale == "per-map":
        return [(float(m.min()), float(m.max())) for m in maps]
    if scale == "shared":
        low = min(float(m.min()) for m in maps)
        high = max(float(m.max()) for m in maps)
        return [(low, high)] * len(maps)
    if scale == "absolute":
        low = min(float(m.min()) for m in maps) if vmin is None else vmin
        high = max(float(m.max()) for m in maps) if vmax is None else vmax
        return [(low, high)] * len(maps)
    bound = max(float(np.abs(m).max()) for m in maps) if vmax is None else vmax
    return [(-bound, bound)] * len(maps)


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; expected one of {SCALES}")


def _opaque(cmap: str, limits: tuple[float, float] = (0.0, 1.0)):
    """A mappable for a colorbar in full colour (the overlays themselves are translucent)."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    return ScalarMappable(Normalize(*limits), cmap)


def _check_maps(maps: np.ndarray, labels: Sequence[str], what: str) -> None:
    if maps.ndim != 3 or maps.shape[-1] != len(labels):
        raise ValueError(f"{what} must be (H, W, T) with T = {len(labels)} labels, got shape {maps.shape}")


def map_grid(
    images: Sequence[Image.Image],
    maps: Sequence[torch.Tensor | np.ndarray],
    labels: Sequence[str],
    row_titles: Sequence[str] | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.7,
    show_image: bool = True,
    panel_size: float = 1.6,
    scale: str = "per-map",
    vmin: float | None = None,
    vmax: float | None = None,
    masks: Sequence[Mapping[str, np.ndarray]] | None = None,
    threshold: float | None = None,
    grey_image: bool = True,
    width: str | float | None = None,
) -> Figure:
    """Rows of images, one column per label: each map over its image, a shared colorbar.

    Args:
        images: R images (PIL; resized to their maps).
        maps: R arrays ``(H, W, T)``, one per image (sizes may differ between rows); in [0, 1] for the
            default scale.
        labels: the T labels (column titles).
        row_titles: R titles shown left of each row (e.g. image names or methods).
        show_image: add a first column with the plain image.
        cmap: a matplotlib colormap (:data:`DEFAULT_CMAP`; ``"jet"`` for the paper's look; a signed
            scale uses :data:`DIVERGING_CMAP` unless another is given).
        alpha: opacity of the hottest pixel (opacity grows with the value, see :func:`_overlay`).
        scale: one of :data:`SCALES`; the colorbar names it. ``vmin``/``vmax``: limits of ``absolute``
            (and ``vmax`` the bound of ``signed``).
        masks: per row, ground-truth masks by label; the label's mask is outlined on its map.
        threshold: show the thresholded mask ``map >= threshold`` (after scaling to [0, 1]) instead of
            the map: the region a segmentation would keep.
        grey_image: draw the images in greyscale under the maps (the default: colours then belong to the
            map alone); False keeps the photo's colours (``show_image`` always shows them).
        width: the figure's width (``"single"``, ``"double"`` or inches; panels are sized to fill it);
            None: ``panel_size`` panels, shrunk to fit the double-column width.
    """
    if len(images) != len(maps) or not images:
        raise ValueError(f"need one map array per image, got {len(images)} images and {len(maps)} maps")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_scale(scale)
    if scale == "signed" and cmap == DEFAULT_CMAP:
        cmap = DIVERGING_CMAP
    _check_cmap(cmap)
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"need one mask mapping per image, got {len(masks)} for {len(images)} images")
    arrays = [_as_array(m) for m in maps]
    for i, m in enumerate(arrays):
        _check_maps(m, labels, f"maps[{i}]")
    rows, cols = len(images), len(labels) + int(show_image)
    panel_size = _fit_panel(panel_size, cols, 0.6, width)
    bar_limits = (0.0, 1.0)
    plt = _pyplot()
    with figure_style():
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(panel_size * cols + 0.6, panel_size * rows + 0.3),
            squeeze=False,  # fitted above
        )
        for r, (image, m) in enumerate(zip(images, arrays, strict=True)):
            offset = 0
            if show_image:
                axes[r, 0].imshow(_fitted(image, m.shape[:2]))
                _bare(axes[r, 0])
                offset = 1
            limits = _limits([m[:, :, t] for t in range(len(labels))], scale, vmin, vmax)
            for t, label in enumerate(labels):
                ax = axes[r, t + offset]
                heat, lim = m[:, :, t], limits[t]
                if threshold is not None:
                    scaled = (heat - lim[0]) / max(lim[1] - lim[0], 1e-12)
                    heat, lim = (scaled >= threshold).astype(np.float64), (0.0, 1.0)
                _overlay(ax, image, heat, cmap, alpha, lim, signed=scale == "signed", grey_image=grey_image)
                if masks is not None and label in masks[r]:
                    truth = np.asarray(masks[r][label], dtype=float)
                    if truth.shape != heat.shape:
                        truth = _fitted_mask(truth, heat.shape)
                    ax.contour(truth, levels=[0.5], colors="white", linewidths=0.8)
                    ax.contour(truth, levels=[0.5], colors="black", linewidths=0.4, linestyles="dashed")
                if r == 0:
                    ax.set_title(plain_text(label))
            if scale in ("absolute", "signed"):
                bar_limits = limits[0]
            if row_titles is not None:
                axes[r, 0].set_ylabel(plain_text(row_titles[r]))
        if show_image:
            axes[0, 0].set_title("image")
        label = "thresholded map (kept: 1)" if threshold is not None else _SCALE_LABELS[scale]
        fig.colorbar(
            _opaque(cmap, bar_limits), ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label=label
        )
    return fig


def _fitted_mask(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A mask resized (nearest) to ``hw``."""
    image = Image.fromarray((np.asarray(mask) > 0.5).astype(np.uint8) * 255)
    return np.asarray(image.resize((hw[1], hw[0]), Image.NEAREST), dtype=float) / 255.0


def panel_grid(
    images: Sequence[Image.Image],
    columns: Mapping[str, Sequence[torch.Tensor | np.ndarray]],
    row_titles: Sequence[str] | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    panel_size: float = 1.6,
    width: str | float | None = None,
) -> Figure:
    """Rows of images; per named column, one ``(H, W)`` map in [0, 1] per row, over that row's image.

    Use it when each row shows a different class (e.g. each image's own object, raw vs surgery).
    """
    for name, maps in columns.items():
        if len(maps) != len(images):
            raise ValueError(f"column {name!r} has {len(maps)} maps for {len(images)} images")
    stacked = [
        np.stack([_as_array(columns[name][r]) for name in columns], axis=-1) for r in range(len(images))
    ]
    return map_grid(
        images, stacked, list(columns), row_titles, cmap, alpha, panel_size=panel_size, width=width
    )


def method_comparison(
    image: Image.Image,
    maps_by_method: Mapping[str, torch.Tensor | np.ndarray],
    labels: Sequence[str],
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    width: str | float | None = None,
) -> Figure:
    """One image, one row per method (e.g. raw CLIP vs CLIP Surgery), one column per label: the image
    once on the left (spanning the rows), each map min-max normalised on its own.

    Args:
        maps_by_method: ``{method: (H, W, T)}`` maps (any scale); rows are named by
            :func:`method_title` (``raw`` → "raw CLIP"; other names as they are).
    """
    methods = list(maps_by_method)
    arrays = _method_arrays({m: [maps_by_method[m]] for m in methods}, 1, labels)
    scaled = {}
    for method in methods:  # min-max per map, as the colorbar says
        m = arrays[method][0].astype(np.float64)
        low, high = m.min(axis=(0, 1), keepdims=True), m.max(axis=(0, 1), keepdims=True)
        scaled[method] = (m - low) / np.maximum(high - low, 1e-12)
    return method_label_grid(
        image, scaled, labels, cmap=cmap, alpha=alpha, show_image=True, grey_image=True, width=width
    )


def attention_figure(
    image: Image.Image,
    attention: Mapping[str, torch.Tensor | np.ndarray],
    grid: tuple[int, int],
    query: tuple[int, int] | None,
    cmap: str = "viridis",
    width: str | float | None = None,
) -> Figure:
    """The attention of one query token for each attention kind, over the image.

    Args:
        attention: ``{kind: (h·w,)}`` weights over the patch tokens (heads averaged), any scale.
        grid: the token grid ``(h, w)``.
        query: ``(row, col)`` of the query patch (marked with a cross), or None for the class token.
    """
    kinds = list(attention)
    h, w = grid
    plt = _pyplot()
    with figure_style():
        side = _fit_panel(1.9, len(kinds) + 1, 0.8, width)
        fig, axes = plt.subplots(
            1, len(kinds) + 1, figsize=(side * (len(kinds) + 1), side + 0.2), squeeze=False
        )
        axes = axes[0]
        scale = max(1, -(-224 // max(h, w)))  # integer upsampling keeps the token cells visible
        side = (h * scale, w * scale)
        axes[0].imshow(_fitted(image, side))
        axes[0].set_title("query" if query else "query: class token")
        for ax, kind in zip(axes[1:], kinds, strict=True):
            weights = _as_array(attention[kind]).reshape(h, w)
            span = weights.max() - weights.min()
            heat = (weights - weights.min()) / span if span > 0 else np.zeros_like(weights)
            up = np.repeat(np.repeat(heat, scale, axis=0), scale, axis=1)
            _overlay(ax, image, up, cmap, 0.6)
            ax.set_title(f"{'-'.join(kind)} attention" if len(kind) == 2 else kind)
        for ax in axes:
            _bare(ax)
            if query is not None:
                y, x = (query[0] + 0.5) * side[0] / h, (query[1] + 0.5) * side[1] / w
                ax.plot([x], [y], marker="+", color="white", markersize=10, markeredgewidth=2)
        fig.tight_layout()
    return fig


def caption_figure(
    tokens: Sequence[str],
    importance: torch.Tensor | np.ndarray | Sequence[float],
    title: str = "",
    cmap: str = "Reds",
    width: str | float = 6.0,
) -> Figure:
    """The caption's words, each on a box shaded by its importance in [0, 1], with a colorbar.

    Args:
        tokens: the K words (e.g. :attr:`~surgery_lib.maps.multimodal.CaptionTokens.words`).
        importance: ``(K,)`` values in [0, 1] (e.g. :func:`~surgery_lib.maps.multimodal.word_importance`).
        width: figure width (inches or a name of :data:`PAGE_WIDTHS`); long captions wrap onto further lines.
    """
    values = _as_array(importance).astype(float).reshape(-1)
    if _as_array(importance).ndim != 1 or len(values) != len(tokens):
        raise ValueError(
            f"need one importance per word: {len(tokens)} words, importance shape {values.shape}"
        )
    if not len(tokens):
        raise ValueError("no words to draw")
    width = page_width(width)
    plt = _pyplot()
    colormap = plt.get_cmap(cmap)
    with figure_style():
        fig = plt.figure(figsize=(width, 1.0))
        ax = fig.add_axes((0.02, 0.45, 0.96, 0.5))
        ax.set_axis_off()
        texts = []
        for word, value in zip(tokens, values, strict=True):
            shade = float(np.clip(value, 0.0, 1.0))
            box = {"boxstyle": "round,pad=0.25", "facecolor": colormap(shade), "edgecolor": "none"}
            color = "white" if shade > 0.6 else "black"
            texts.append(ax.text(0, 0, plain_text(word), color=color, bbox=box, va="center"))
        renderer = fig.canvas.get_renderer()
        axes_width = ax.get_window_extent(renderer).width
        gap = 0.025
        lines, x = [[]], 0.0
        for text in texts:  # wrap: a word goes on the next line when it would pass the right edge
            w = text.get_window_extent(renderer).width / axes_width + gap
            if x > 0 and x + w > 1.0:
                lines.append([])
                x = 0.0
            lines[-1].append((text, x))
            x += w
        line_height, top, bar, below = 0.24, 0.3 if title else 0.05, 0.1, 0.4  # inches (8 pt words)
        words_height = line_height * len(lines)
        height = top + words_height + 0.1 + bar + below
        fig.set_size_inches(width, height)
        ax.set_position((0.02, (below + bar + 0.1) / height, 0.96, words_height / height))
        for row, line in enumerate(lines):
            for text, x in line:
                text.set_position((x + 0.005, 1.0 - (row + 0.5) / len(lines)))
        cax = fig.add_axes((0.3, below / height, 0.4, bar / height))
        fig.colorbar(_opaque(cmap), cax=cax, orientation="horizontal", label="word importance")
        if title:
            ax.set_title(plain_text(title))
    return fig


def word_maps_figure(
    image: Image.Image,
    words: Sequence[str],
    maps: torch.Tensor | np.ndarray,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.5,
    panel_size: float = 1.3,
    width: str | float | None = None,
) -> Figure:
    """A strip: the image, then one map per word of a caption over it.

    Args:
        maps: ``(H, W, K)`` per-word maps in [0, 1], one per word (see :func:`map_grid`).
    """
    array = _as_array(maps)
    _check_maps(array, words, "maps")
    return map_grid([image], [array], list(words), cmap=cmap, alpha=alpha, panel_size=panel_size, width=width)


POINT_STYLES: dict[str, dict[str, object]] = {
    "object": {"marker": "*", "color": "#56B4E9", "size": 110},
    "background": {"marker": "X", "color": "#FFFFFF", "size": 55},
}
"""How SAM point prompts are drawn: positive (object) and negative (background) points differ in
shape (star / cross) and in colour (Okabe-Ito sky blue / white), each edged in black."""


def _point_handle(plt, kind: str, count: int):
    style = POINT_STYLES[kind]
    size = float(style["size"]) ** 0.5  # scatter sizes are areas (pt²), legend sizes lengths (pt)
    return plt.Line2D(
        [], [], marker=style["marker"], ls="", color=style["color"], mec="black", mew=0.6, ms=size,
        label=f"{kind} ({count})",
    )  # fmt: skip


def points_figure(
    image: Image.Image,
    heat: torch.Tensor | np.ndarray,
    points: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    mask: np.ndarray | torch.Tensor | None = None,
    title: str = "",
    ax: Axes | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.45,
    legend: bool = True,
) -> Figure:
    """A map over its image with SAM point prompts, told apart by shape as well as colour
    (:data:`POINT_STYLES`: positives sky-blue stars, negatives white crosses, both edged in black so
    they show on any map and in greyscale), and the SAM mask (white outline, light fill) when given.

    Args:
        heat: ``(H, W)`` map in [0, 1]; the image is resized to it.
        points: ``(K, 2)`` pixel coordinates ``[x, y]`` in the map's frame; labels: ``(K,)`` 1 / 0.
        mask: ``(H, W)`` bool, or None.
        ax: draw into these axes (e.g. one panel of a grid; make it with ``layout="constrained"`` so
            the legend below each panel keeps its room); a new figure otherwise.
    """
    heat_a, raw_points, lab = _as_array(heat), _as_array(points), _as_array(labels).reshape(-1)
    if heat_a.ndim != 2:
        raise ValueError(f"the map must be (H, W), got shape {heat_a.shape}")
    if (raw_points.size and (raw_points.ndim != 2 or raw_points.shape[1] != 2)) or len(raw_points) != len(
        lab
    ):
        raise ValueError(f"need (K, 2) points and K labels, got {raw_points.shape} and {lab.shape}")
    pts = raw_points.reshape(-1, 2)
    plt = _pyplot()
    with figure_style():
        if ax is None:
            fig, ax = plt.subplots(figsize=(2.6, 2.8), layout="constrained")
        else:
            fig = ax.figure
        _overlay(ax, image, heat_a, cmap, alpha)
        if mask is not None:
            m = _as_array(mask).astype(bool)
            if m.shape != heat_a.shape:
                raise ValueError(f"the mask {m.shape} must match the map {heat_a.shape}")
            ax.imshow(np.ma.masked_where(~m, np.ones(m.shape)), cmap="gray", vmin=0, vmax=1, alpha=0.35)
            ax.contour(m.astype(float), levels=[0.5], colors="white", linewidths=1.2)
        pos, neg = pts[lab == 1], pts[lab == 0]
        for kind, where in (("object", pos), ("background", neg)):
            style = POINT_STYLES[kind]
            ax.scatter(where[:, 0], where[:, 1], marker=style["marker"], s=style["size"], c=style["color"],
                       edgecolors="black", linewidths=0.6)  # fmt: skip
        ax.set_xlim(-0.5, heat_a.shape[1] - 0.5)
        ax.set_ylim(heat_a.shape[0] - 0.5, -0.5)
        if title:
            ax.set_title(plain_text(title))
        if legend:
            handles = [
                _point_handle(plt, kind, len(where)) for kind, where in (("object", pos), ("background", neg))
            ]
            if mask is not None:
                handles.append(
                    plt.Line2D(
                        [],
                        [],
                        color="white",
                        mec="black",
                        lw=0,
                        marker="s",
                        ms=7,
                        alpha=0.6,
                        label="SAM mask",
                    )
                )
            ax.legend(
                handles=handles,
                loc="upper center",
                bbox_to_anchor=(0.5, -0.01),
                ncol=len(handles),
                frameon=False,
                fontsize=6,
                handletextpad=0.2,
                columnspacing=0.8,
            )
    return fig


def label_colors(n: int) -> np.ndarray:
    """``(n, 3)`` uint8 distinct colours for class indices: the PASCAL VOC palette
    (:func:`surgery_lib.data.shipped.voc_palette`), repeated beyond 256 classes."""
    palette = np.asarray(voc_palette(), dtype=np.uint8).reshape(256, 3)
    return palette[np.arange(n) % 256]


def segmentation_figure(
    image: Image.Image,
    label: np.ndarray | torch.Tensor,
    predictions: Mapping[str, np.ndarray | torch.Tensor],
    class_names: Sequence[str],
    ignore_index: int = 255,
    panel_size: float = 2.0,
    width: str | float | None = None,
) -> Figure:
    """The image, its ground truth and each method's prediction as colour-coded class maps.

    Args:
        label: ``(H, W)`` ground-truth class indices (``ignore_index``: drawn white).
        predictions: ``{method: (H, W)}`` predicted class indices.
        class_names: names of the class indices; the legend lists the classes that appear.
    """
    label = _as_array(label).astype(np.int64)
    preds = {k: _as_array(v).astype(np.int64) for k, v in predictions.items()}
    for name, pred in preds.items():
        if pred.shape != label.shape:
            raise ValueError(f"prediction {name!r} is {pred.shape}, the label map {label.shape}")
    colors = label_colors(len(class_names))

    def paint(classes: np.ndarray) -> np.ndarray:
        rgb = np.full((*classes.shape, 3), 255, dtype=np.uint8)
        valid = (classes >= 0) & (classes < len(class_names))
        rgb[valid] = colors[classes[valid]]
        return rgb

    plt = _pyplot()
    panels = {"image": None, "ground truth": label, **preds}
    with figure_style():
        panel_size = _fit_panel(panel_size, len(panels), 0.0, width)
        fig, axes = plt.subplots(1, len(panels), figsize=(panel_size * len(panels), panel_size + 0.6))
        for ax, (title, classes) in zip(np.atleast_1d(axes), panels.items(), strict=True):
            ax.imshow(_fitted(image, label.shape) if classes is None else paint(classes))
            ax.set_title(title)
            _bare(ax)
        shown = sorted(
            {int(c) for m in (label, *preds.values()) for c in np.unique(m) if 0 <= c < len(class_names)}
        )
        from matplotlib.patches import Patch

        handles = [Patch(color=colors[c] / 255.0, label=class_names[c]) for c in shown]
        fig.legend(handles=handles, loc="lower center", ncol=min(6, max(1, len(handles))), frameon=False)
        fig.tight_layout(rect=(0, 0.08 + 0.04 * (len(handles) // 6), 1, 1))
    return fig


_MAP_LABEL = "map (min-max per map)"
"""The colorbar label of the method figures (similarities, or a gradient method's relevance)."""


def _label_index(label: str, labels: Sequence[str]) -> int:
    labels = list(labels)
    if label not in labels:
        shown = ", ".join(map(repr, labels[:12])) + (", ..." if len(labels) > 12 else "")
        raise ValueError(f"label {label!r} is not among the maps' {len(labels)} labels: {shown}")
    return labels.index(label)


def _outline(ax: Axes, mask: np.ndarray | torch.Tensor | None, hw: tuple[int, int]) -> None:
    """The outline of a ground-truth mask (resized to the map ``hw`` by nearest neighbour), drawn as
    :func:`map_grid` draws its ``masks``."""
    if mask is None:
        return
    m = _as_array(mask).astype(float)
    if m.ndim != 2:
        raise ValueError(f"an outline mask must be (H, W), got shape {m.shape}")
    if m.shape != hw:
        m = _fitted_mask(m, hw)
    if (m > 0.5).any() and not (m > 0.5).all():
        ax.contour(m, levels=[0.5], colors="white", linewidths=0.8)
        ax.contour(m, levels=[0.5], colors="black", linewidths=0.4, linestyles="dashed")


def _method_arrays(maps_by_method: Mapping[str, object], rows: int, labels: Sequence[str]) -> dict:
    """``{method: [R arrays (H, W, T)]}``, checked: one map per row, T = ``len(labels)``."""
    if not maps_by_method:
        raise ValueError("no methods to draw: maps_by_method is empty")
    arrays = {}
    for method, maps in maps_by_method.items():
        per_row = [_as_array(m) for m in maps]
        if len(per_row) != rows:
            raise ValueError(f"method {method!r} has {len(per_row)} maps for {rows} images")
        for r, m in enumerate(per_row):
            _check_maps(m, labels, f"maps of {method!r}[{r}]")
        arrays[method] = per_row
    return arrays


def method_grid(
    images: Sequence[Image.Image],
    maps_by_method: Mapping[str, torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray]],
    label: str | Sequence[str],
    labels: Sequence[str],
    row_titles: Sequence[str] | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.7,
    panel_size: float = 1.4,
    outlines: Sequence[np.ndarray | torch.Tensor | None] | None = None,
    grey_image: bool = True,
    width: str | float | None = None,
) -> Figure:
    """Methods side by side for one label: rows = images; columns = the image, then one map per method.

    Args:
        images: R images (PIL; resized to their maps).
        maps_by_method: ``{method: maps}`` with the R maps ``(H, W, T)`` in [0, 1] of each method, as an
            ``(R, H, W, T)`` array (e.g. :attr:`~surgery_lib.maps.explain.Explanation.maps`) or a
            sequence. Column titles are the methods' display names (:func:`method_title`).
        label: the label shown, one of ``labels`` (the figure's title); or R labels, one per row (e.g.
            each image's own object; shown left of each row).
        labels: the T labels along the maps' last axis.
        row_titles: R titles shown left of each row (e.g. image names).
        outlines: R ground-truth masks ``(H, W)`` (or None), outlined on every panel of their row (e.g.
            each image's mask of the label shown).
        cmap, alpha, grey_image: as in :func:`map_grid` (the maps are drawn as given, in [0, 1]).
    Raises:
        ValueError: a label not among ``labels`` (naming it), or maps that do not fit the images.
    """
    if not images:
        raise ValueError("no images to draw")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_cmap(cmap)
    rows = len(images)
    single = isinstance(label, str)
    row_labels = [label] * rows if single else list(label)
    if len(row_labels) != rows:
        raise ValueError(f"need one label per image: {rows} images, {len(row_labels)} labels")
    if row_titles is not None and len(row_titles) != rows:
        raise ValueError(f"need one row title per image: {rows} images, {len(row_titles)} titles")
    if outlines is not None and len(outlines) != rows:
        raise ValueError(f"need one outline (or None) per image: {rows} images, {len(outlines)} outlines")
    index = [_label_index(name, labels) for name in row_labels]
    arrays = _method_arrays(maps_by_method, rows, labels)
    methods = list(arrays)
    cols = 1 + len(methods)
    panel_size = _fit_panel(panel_size, cols, 0.7, width)
    plt = _pyplot()
    with figure_style():
        fig, axes = plt.subplots(
            rows,
            cols,
            figsize=(panel_size * cols + 0.7, panel_size * rows + (0.45 if single else 0.25)),
            squeeze=False,
            layout="constrained",
        )
        for r, image in enumerate(images):
            axes[r, 0].imshow(_fitted(image, arrays[methods[0]][r].shape[:2]))
            _bare(axes[r, 0])
            for c, method in enumerate(methods, start=1):
                heat = arrays[method][r][:, :, index[r]]
                _overlay(axes[r, c], image, heat, cmap, alpha, grey_image=grey_image)
            for ax in axes[r] if outlines is not None else ():
                _outline(ax, outlines[r], arrays[methods[0]][r].shape[:2])
            left = [row_titles[r]] if row_titles is not None else []
            left += [] if single else [row_labels[r]]
            if left:
                axes[r, 0].set_ylabel(plain_text("\n".join(left)))
        axes[0, 0].set_title("image")
        for c, method in enumerate(methods, start=1):
            axes[0, c].set_title(plain_text(method_title(method)))
        if single:
            fig.suptitle(plain_text(f"maps of “{label}”"), fontsize=9)
        fig.colorbar(_opaque(cmap), ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label=_MAP_LABEL)
    return fig


def method_label_grid(
    image: Image.Image,
    maps_by_method: Mapping[str, torch.Tensor | np.ndarray],
    labels: Sequence[str],
    map_labels: Sequence[str] | None = None,
    cmap: str = DEFAULT_CMAP,
    alpha: float = 0.7,
    panel_size: float = 1.4,
    titles: Sequence[str] | None = None,
    outlines: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    grey_image: bool = True,
    show_image: bool = False,
    width: str | float | None = None,
) -> Figure:
    """One image, methods × labels: rows = methods (display names on the left), columns = labels;
    with ``show_image``, the image once on the left, spanning the rows.

    Args:
        maps_by_method: ``{method: (H, W, T)}`` maps in [0, 1] of the image (e.g.
            ``Explanation.maps[0]``).
        labels: the labels shown, one column each.
        map_labels: the T labels along the maps' last axis (default: ``labels``), e.g. the dataset's
            whole class list when the maps were computed over it and a few are shown.
        titles: column titles (default: ``labels``), e.g. to mark a label that is not in the image.
        outlines: ``{label: (H, W) mask}``: ground-truth masks outlined in their label's column.
        cmap, alpha, grey_image: as in :func:`map_grid` (the maps are drawn as given, in [0, 1]).
    Raises:
        ValueError: a label not among ``map_labels`` (naming it), or maps of the wrong shape.
    """
    labels = list(labels)
    if not labels:
        raise ValueError("no labels to draw")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    _check_cmap(cmap)
    map_labels = labels if map_labels is None else list(map_labels)
    titles = labels if titles is None else list(titles)
    if len(titles) != len(labels):
        raise ValueError(f"need one title per label: {len(labels)} labels, {len(titles)} titles")
    index = [_label_index(name, map_labels) for name in labels]
    arrays = _method_arrays({m: [maps] for m, maps in maps_by_method.items()}, 1, map_labels)
    methods = list(arrays)
    plt = _pyplot()
    cols = len(labels) + int(show_image)
    side = _fit_panel(panel_size, cols, 0.9, width)
    with figure_style():
        fig = plt.figure(figsize=(side * cols + 0.9, side * len(methods) + 0.25), layout="constrained")
        grid = fig.add_gridspec(len(methods), cols)
        axes = np.array(
            [
                [fig.add_subplot(grid[r, c + int(show_image)]) for c in range(len(labels))]
                for r in range(len(methods))
            ]
        )
        if show_image:
            picture = fig.add_subplot(grid[:, 0])
            picture.imshow(_fitted(image, arrays[methods[0]][0].shape[:2]))
            picture.set_title("image")
            _bare(picture)
        for r, method in enumerate(methods):
            for c, j in enumerate(index):
                _overlay(axes[r, c], image, arrays[method][0][:, :, j], cmap, alpha, grey_image=grey_image)
                _outline(axes[r, c], (outlines or {}).get(labels[c]), arrays[method][0].shape[:2])
            axes[r, 0].set_ylabel(plain_text(method_title(method)))
        for c, name in enumerate(titles):
            axes[0, c].set_title(plain_text(name))
        fig.colorbar(_opaque(cmap), ax=axes.ravel().tolist(), fraction=0.02, pad=0.01, label=_MAP_LABEL)
    return fig
