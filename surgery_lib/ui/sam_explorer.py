"""The text -> SAM explorer: a word, its similarity map, the point prompts and SAM's mask."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.maps.explain import explain
from surgery_lib.maps.images import ImageLike
from surgery_lib.maps.text import validate_labels
from surgery_lib.methods import method_names, resolve_method
from surgery_lib.model import LoadedCLIP
from surgery_lib.ui import viz
from surgery_lib.ui.caption_explorer import _dense_or_named
from surgery_lib.ui.explorer_base import (
    _LRU,
    CUSTOM,
    Method,
    _one_or_many,
    _PickedImageView,
    _picker,
    _widgets,
    display_size,
    rendered_png,
)


class SamExplorer(_PickedImageView):
    """Type a target word (or ``"a+b"``): its map on the image with the SAM point prompts, and SAM's
    mask when a :class:`~surgery_lib.maps.sam.SamSegmenter` is given.

    Args:
        loaded: a model from :func:`surgery_lib.model.loading.load_clip`.
        image: the image (PIL), or annotated images / ``{name: image}`` for an image picker; maps of all
            ``labels`` are computed once per (image, method).
        labels: the labels a target may name (the class list; feature surgery uses all of them).
        segmenter: optional SAM; without it only the points are shown.
        config: the starting method's config (paper by default); the method dropdown offers every name
            of :func:`~surgery_lib.methods.method_names` (``raw`` vs ``surgery``, the other dense methods,
            the gradient explainers).

    Sliders: ``threshold`` (the reference rule's 0.8), ``quantile`` (0 = use the threshold; else the
    positives are the cells above this quantile of the map) and ``gate`` (``min_probability``, on a log
    scale; used when ``gate_on`` is ticked). Errors (an unknown label) go to ``status`` and the last
    figure stays. Rendered figures are cached per (image, method, target, threshold, quantile, gate).
    """

    def __init__(
        self,
        loaded: LoadedCLIP,
        image: ImageLike | Sequence[AnnotatedImage] | Mapping[str, ImageLike],
        labels: Sequence[str],
        segmenter: object | None = None,
        target: str | None = None,
        config: SurgeryConfig | str | None = None,
        *,
        method: str | SurgeryConfig | GradientConfig | None = None,
    ) -> None:
        w = _widgets()
        self.loaded = loaded
        self.images = {item.name: item for item in _one_or_many(image)}
        self.labels = validate_labels(labels)
        self.segmenter = segmenter
        start_name, _, self._custom = _dense_or_named(method, config, gradients=True)
        self._explanations: dict[tuple[str, str], object] = _LRU(32)
        self.picker = _picker(w, list(self.images))
        self.method = w.Dropdown(
            options=[*method_names(), *([CUSTOM] if self._custom else [])],
            value=start_name,
            description="method",
        )
        self.target = w.Text(value=target or self.labels[0], description="target", continuous_update=False)
        self.threshold = w.FloatSlider(value=0.8, min=0.0, max=1.0, step=0.05, description="threshold")
        self.quantile = w.FloatSlider(value=0.0, min=0.0, max=0.99, step=0.01, description="quantile")
        # image-level probabilities span many orders of magnitude (a small CLIP's are very peaked): a log
        # slider from 1e-9 to 1, and a checkbox to switch the gate on
        self.gate_on = w.Checkbox(value=False, description="presence gate", indent=False)
        self.gate = w.FloatLogSlider(value=1e-7, base=10, min=-9, max=0, step=0.25, description="gate p ≥")
        self.status = w.HTML()
        self.image = w.Image(format="png")
        self._png: dict[tuple, bytes] = _LRU(256)
        self.hits = self.misses = 0
        controls = (
            self.picker,
            self.method,
            self.target,
            self.threshold,
            self.quantile,
            self.gate_on,
            self.gate,
        )
        for control in controls:
            control.observe(self._on_change, names="value")
        wrap = w.Layout(flex_flow="row wrap")
        box = w.VBox(
            [
                w.HBox([self.picker, self.method], layout=wrap),
                self.target,
                self.threshold,
                self.quantile,
                w.HBox([self.gate_on, self.gate]),
            ]
        )
        self.widget = w.VBox([box, self.status, self.image])
        self.redraw()

    @property
    def _size(self) -> tuple[int, int]:
        return display_size(self.picture)

    @property
    def _shown(self) -> Image.Image:
        return self.picture.resize(self._size[::-1], Image.BICUBIC)

    @property
    def method_config(self) -> Method:
        """The config of the method picked."""
        name = self.method.value
        return self._custom if name == CUSTOM else resolve_method(name)

    @property
    def explanation(self):
        """The :class:`~surgery_lib.maps.explain.Explanation` of all labels on the image shown, under the
        method picked (computed once per (image, method))."""
        key = (self.picker.value, self.method.value)
        if key not in self._explanations:
            batch = self.loaded.reference_preprocess(self.picture).unsqueeze(0)
            self._explanations[key] = explain(
                self.loaded.model,
                self.loaded.tokenizer,
                batch,
                self.labels,
                method=self.method_config,
                size=self._size,
            )
        return self._explanations[key]

    def _key(self) -> tuple:
        gate = self.gate.value if self.gate_on.value else 0.0
        return (self.target.value.strip(), self.threshold.value, self.quantile.value, gate)

    def points(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current target's point prompts ``([x, y] (K, 2), labels (K,))`` at display size."""
        from surgery_lib.maps.sam import text_points

        target, threshold, quantile, gate = self._key()
        return text_points(
            self.explanation,
            target,
            threshold=threshold,
            quantile=quantile or None,
            min_probability=gate or None,
        )

    def figure(self):
        """The current view as a matplotlib ``Figure``: the target's map, its points, SAM's mask."""
        from surgery_lib.maps.sam import parse_target, target_map

        target = self._key()[0]
        explanation = self.explanation
        indices = parse_target(target, explanation.labels)
        points, labels = self.points()
        heat = target_map(explanation, target)
        mask = None
        shown = self._shown
        if self.segmenter is not None and len(points):
            mask, _ = self.segmenter.segment(np.asarray(shown), points, labels)
        probability = float(explanation.image_scores[0, indices].max())
        method = self.method.value
        title = (
            f"{target} (p = {probability:.3g}) · {method}"
            if len(points)
            else f"{target}: gated out (p = {probability:.3g}) · {method}"
        )
        return viz.points_figure(shown, heat, points, labels, mask, title=title)

    def redraw(self) -> None:
        """Show the current target (rendered once per control state, then from the cache)."""
        key = (self.picker.value, self.method.value, *self._key())
        if key in self._png:
            self.hits += 1
        else:
            self.misses += 1
            self._png[key] = rendered_png(self.figure())
        self.image.value = self._png[key]
        self.status.value = (
            f"target {html.escape(key[2])} · {html.escape(key[1])} · cached {self.hits} / drawn {self.misses}"
        )
