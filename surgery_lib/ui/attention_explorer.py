"""The attention explorer: one query token's attention under each attention kind, per block."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from surgery_lib.config import ATTENTION_KINDS
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.maps.images import ImageLike
from surgery_lib.model import LoadedCLIP, attention_maps, max_depth
from surgery_lib.ui import viz
from surgery_lib.ui.explorer_base import _LRU, _one_or_many, _PickedImageView, _picker, _widgets, rendered_png


def _query_token(row: int, col: int, grid: tuple[int, int]) -> int:
    return 1 + row * grid[1] + col


CLASS_TOKEN = "cls"
"""``AttentionExplorer(query=CLASS_TOKEN)``: the class token is the query."""


class AttentionExplorer(_PickedImageView):
    """Pick an image, a block, a head (or the mean of the heads) and a query token: its attention over
    the patches for each attention kind ticked (``qk``, ``vv``, ``qq``, ``kk``, ``identity``, ``qq+kk``,
    ``gem``).

    The query is a patch (row and column sliders; marked +) or the class token ("class token as
    query"). Picking the query by clicking on the image is not offered: an ``ipywidgets.Image`` has no
    click events and ``ipyevents`` is not a dependency. The class token's own weight is dropped so the
    patch weights fill the scale. The traced forward pass (vanilla CLIP's stream, as the paper
    analyses) is computed once per (image, block); the attention of every query is kept, so moving the
    sliders costs no forward pass.

    Args:
        image: one image, or annotated images / ``{name: image}`` for an image picker.
        kinds: the kinds ticked at start (in this order; the others follow, unticked).
        block: the starting block (negative counts from the end).
        query: ``(row, col)`` of the query patch (the grid's centre by default), or ``"cls"``.
        head: ``"mean"`` or a head index.
    """

    def __init__(
        self,
        loaded: LoadedCLIP,
        image: ImageLike | Sequence[AnnotatedImage] | Mapping[str, ImageLike],
        kinds: Sequence[str] = ("qk", "qq", "kk", "vv"),
        block: int = -1,
        query: tuple[int, int] | str | None = None,
        head: int | str = "mean",
    ) -> None:
        w = _widgets()
        self.loaded = loaded
        self.images = {item.name: item for item in _one_or_many(image)}
        blocks = max_depth(loaded.model)
        if (
            isinstance(block, bool)
            or not isinstance(block, (int, np.integer))
            or not -blocks <= block < blocks
        ):
            raise ValueError(
                f"block {block!r} is out of range: this model has {blocks} blocks (0..{blocks - 1})"
            )
        kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
        unknown = [kind for kind in kinds if kind not in ATTENTION_KINDS]
        if unknown:
            raise ValueError(f"unknown attention kinds {unknown}; expected some of {ATTENTION_KINDS}")
        self._batches: dict[str, torch.Tensor] = {}
        self._weights: dict[tuple[str, int, str], torch.Tensor] = _LRU(64)
        self._png: dict[tuple, bytes] = _LRU(256)
        names = list(self.images)
        self.picker = _picker(w, names)
        block = int(block) % blocks
        full = self._full(names[0], block, kinds[:1] or ("qk",))
        heads = next(iter(full.values())).shape[0]
        h, wd = self.grid
        if isinstance(query, str):
            if query != CLASS_TOKEN:
                raise ValueError(f"query must be (row, col) or {CLASS_TOKEN!r}, got {query!r}")
            row, col = h // 2, wd // 2
        else:
            row, col = query if query is not None else (h // 2, wd // 2)
        if not (0 <= row < h and 0 <= col < wd):
            raise ValueError(
                f"query {(row, col)} is off the {h}×{wd} token grid: row must be in 0..{h - 1}, "
                f"col in 0..{wd - 1}"
            )
        if head != "mean" and not (isinstance(head, (int, np.integer)) and 0 <= head < heads):
            raise ValueError(f"head must be 'mean' or 0..{heads - 1}, got {head!r}")
        self.block = w.IntSlider(
            value=block, min=0, max=blocks - 1, description="block", continuous_update=False
        )
        self.head = w.Dropdown(
            options=[("mean of heads", "mean"), *((f"head {i}", i) for i in range(heads))],
            value=head if head == "mean" else int(head),
            description="head",
        )
        self.cls_query = w.Checkbox(
            value=query == CLASS_TOKEN, description="class token as query", indent=False
        )
        self.cls_query.layout.width = "auto"
        self.row = w.IntSlider(value=row, min=0, max=h - 1, description="query row")
        self.col = w.IntSlider(value=col, min=0, max=wd - 1, description="query col")
        order = [*kinds, *(kind for kind in ATTENTION_KINDS if kind not in kinds)]
        self.kind_boxes = {
            kind: w.Checkbox(
                value=kind in kinds, description=kind, indent=False, layout=w.Layout(width="auto")
            )
            for kind in order
        }
        self.status = w.HTML()
        self.image = w.Image(format="png")
        controls = [self.picker, self.block, self.head, self.cls_query, self.row, self.col]
        for control in [*controls, *self.kind_boxes.values()]:
            control.observe(self._on_change, names="value")
        wrap = w.Layout(flex_flow="row wrap")
        self.widget = w.VBox(
            [
                w.HBox([self.picker, self.block, self.head], layout=wrap),
                w.HBox([self.cls_query, self.row, self.col], layout=wrap),
                w.HBox([w.Label("kinds:"), *self.kind_boxes.values()], layout=wrap),
                self.status,
                self.image,
            ]
        )
        self.redraw()

    @property
    def kinds(self) -> tuple[str, ...]:
        """The attention kinds ticked."""
        return tuple(kind for kind, box in self.kind_boxes.items() if box.value)

    def _batch(self, name: str) -> torch.Tensor:
        if name not in self._batches:
            self._batches[name] = self.loaded.reference_preprocess(self.images[name].image).unsqueeze(0)
        return self._batches[name]

    def _full(self, name: str, block: int, kinds: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{kind: (heads, 1 + N, 1 + N)}`` attention of every query of image ``name`` at ``block``."""
        missing = [kind for kind in kinds if (name, block, kind) not in self._weights]
        if missing:
            weights, self.grid = attention_maps(self.loaded.model, self._batch(name), block, None, missing)
            for kind, a in weights.items():
                self._weights[(name, block, kind)] = a[0]
        return {kind: self._weights[(name, block, kind)] for kind in kinds}

    def attention(
        self, block: int, query: int, head: int | str = "mean"
    ) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """``{kind: (h·w,)}`` patch weights of token ``query`` (0: the class token) at ``block``, of one
        head or averaged over the heads (``"mean"``), on the image shown; and the grid."""
        out = {}
        for kind, a in self._full(self.picker.value, block, self.kinds).items():
            weights = a[:, query]
            out[kind] = (weights.mean(dim=0) if head == "mean" else weights[int(head)])[1:]
        return out, self.grid

    def _query(self) -> tuple[int, tuple[int, int] | None]:
        if self.cls_query.value:
            return 0, None
        row, col = self.row.value, self.col.value
        return _query_token(row, col, self.grid), (row, col)

    def figure(self):
        """The current view as a matplotlib ``Figure``."""
        if not self.kinds:
            raise ValueError("tick at least one attention kind")
        token, marker = self._query()
        weights, grid = self.attention(self.block.value, token, self.head.value)
        fig = viz.attention_figure(self.picture, weights, grid, marker)
        first = fig.axes[0]
        head = "mean of heads" if self.head.value == "mean" else f"head {self.head.value}"
        first.set_title(f"{first.get_title()} · block {self.block.value}\n{head}", fontsize=8)
        return fig

    def redraw(self) -> None:
        """Show the current image, block, head, query and kinds (each state rendered once)."""
        self.row.disabled = self.col.disabled = self.cls_query.value
        token, marker = self._query()
        key = (self.picker.value, self.block.value, self.head.value, token, self.kinds)
        if key not in self._png:
            self._png[key] = rendered_png(self.figure())
        self.image.value = self._png[key]
        where = "the class token" if marker is None else f"patch {marker}"
        self.status.value = (
            f"{html.escape(self.picker.value)} · block {self.block.value} · query {where} · "
            f"{len(self.kinds)} kinds · pick the query with the sliders (a click on the image cannot be "
            "read: ipywidgets images have no click events)"
        )
