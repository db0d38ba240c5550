"""The caption explorer: which tokens of a caption the image supports, and where each lands."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import get_args

import torch
from PIL import Image

from surgery_lib.config import ARCHITECTURE_FIELDS, GradientConfig, SurgeryConfig
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.maps.explain import encode_image_tokens
from surgery_lib.maps.features import similarity_map
from surgery_lib.maps.images import ImageLike
from surgery_lib.maps.text import empty_prompt_features
from surgery_lib.methods import GRADIENT_METHODS, METHODS, resolve_method
from surgery_lib.model import LoadedCLIP, patch_tokens
from surgery_lib.ui import viz
from surgery_lib.ui.explorer_base import (
    _LRU,
    CUSTOM,
    Method,
    _one_or_many,
    _PickedImageView,
    _picker,
    _preset_name,
    _widgets,
    display_size,
)


def _dense_or_named(
    method: str | SurgeryConfig | GradientConfig | None,
    config: SurgeryConfig | str | None,
    gradients: bool,
) -> tuple[str, Method, Method | None]:
    """The starting method's name, its config, and the config when it is a custom one."""
    if method is not None and config is not None:
        raise ValueError("pass the method as config= or as method=, not both")
    start = resolve_method(method if method is not None else config)
    if isinstance(start, GradientConfig):
        named = [name for name, g in GRADIENT_METHODS.items() if g == start]
        if not gradients:
            raise ValueError(
                "word maps need the image tokens of a dense method: one of " + ", ".join(METHODS)
            )
        if not named:
            raise ValueError(f"pass a gradient method by name: one of {', '.join(GRADIENT_METHODS)}")
        return named[0], start, None
    name = _preset_name(start, METHODS)
    return name, start, start if name == CUSTOM else None


class CaptionExplorer(_PickedImageView):
    """Type a caption: the importance of each of its words and each word's map on one image.

    Args:
        loaded: a model from :func:`surgery_lib.model.loading.load_clip`.
        image: the image (PIL), or annotated images / ``{name: image}`` for an image picker (picking an
            image with a caption, or with masks, puts its :meth:`AnnotatedImage.describe` in the box).
        caption: the starting caption (editable in a text box, applied on Enter); default: the first
            image's :meth:`~surgery_lib.data.records.AnnotatedImage.describe`.
        redundancy: the starting option of :func:`~surgery_lib.maps.multimodal.word_similarity`.
        config: the image tokens' config (paper by default); the method dropdown offers every dense
            method of :data:`~surgery_lib.methods.METHODS` (``raw`` vs ``surgery``, …).

    ``caption_image`` shows the caption figure, ``image`` the strip of per-word maps; errors (an empty
    or too long caption) go to ``status`` and the last figures stay. Image tokens are computed once per
    (image, method); rendered figures are cached per (image, method, caption, redundancy).
    """

    def __init__(
        self,
        loaded: LoadedCLIP,
        image: ImageLike | Sequence[AnnotatedImage] | Mapping[str, ImageLike],
        caption: str | None = None,
        redundancy: str = "empty_prompt",
        config: SurgeryConfig | str | None = None,
        *,
        method: str | SurgeryConfig | None = None,
    ) -> None:
        from surgery_lib.maps.multimodal import WordRedundancy

        w = _widgets()
        self.loaded = loaded
        items = _one_or_many(image)
        self.images = {item.name: item for item in items}
        start_name, _, self._custom = _dense_or_named(method, config, gradients=False)
        self._tokens: dict[tuple, tuple[torch.Tensor, tuple[int, int]]] = _LRU(64)
        self._empty = empty_prompt_features(loaded.model, loaded.tokenizer)
        self.picker = _picker(w, list(self.images))
        self.method = w.Dropdown(
            options=[*METHODS, *([CUSTOM] if self._custom else [])], value=start_name, description="method"
        )
        self.caption_box = w.Text(
            value=items[0].describe() if caption is None else caption,
            description="caption",
            continuous_update=False,
        )
        self.caption_box.layout.width = "40em"
        self.redundancy = w.Dropdown(
            options=list(get_args(WordRedundancy)), value=redundancy, description="redundancy"
        )
        self.status = w.HTML()
        self.caption_image = w.Image(format="png")
        self.image = w.Image(format="png")
        self._png: dict[tuple, tuple[bytes, bytes]] = _LRU(128)
        self.hits = self.misses = 0
        for control in (self.caption_box, self.redundancy, self.method):
            control.observe(self._on_change, names="value")
        self.picker.observe(self._image_changed, names="value")
        wrap = w.Layout(flex_flow="row wrap")
        self.widget = w.VBox(
            [
                w.HBox([self.picker, self.method], layout=wrap),
                w.HBox([self.caption_box, self.redundancy], layout=wrap),
                self.status,
                self.caption_image,
                self.image,
            ]
        )
        self.redraw()

    @property
    def config(self) -> SurgeryConfig:
        """The config of the method picked."""
        name = self.method.value
        return self._custom if name == CUSTOM else METHODS[name]

    def _image_changed(self, _change: object = None) -> None:
        item = self.images[self.picker.value]
        if item.caption or item.masks:
            with self._quietly():
                self.caption_box.value = item.describe()
        self._on_change()

    def _image_tokens(self) -> tuple[torch.Tensor, tuple[int, int]]:
        config = self.config
        key = (self.picker.value, *(getattr(config, name) for name in ARCHITECTURE_FIELDS))
        if key not in self._tokens:
            batch = self.loaded.reference_preprocess(self.picture).unsqueeze(0)
            self._tokens[key] = encode_image_tokens(self.loaded.model, batch, config)
        return self._tokens[key]

    @torch.no_grad()
    def words(self, caption: str, redundancy: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """The caption's words, their importance ``(K,)`` and per-word maps ``(H, W, K)`` at display size
        (image and method as picked)."""
        from surgery_lib.maps.multimodal import caption_tokens, word_importance, word_similarity

        tokens, grid = self._image_tokens()
        cap = caption_tokens(self.loaded.model, self.loaded.tokenizer, caption)
        sim = word_similarity(tokens, cap, redundancy, self._empty)
        size = display_size(self.picture)
        return cap.words, word_importance(sim)[0], similarity_map(patch_tokens(sim), size, grid)[0]

    def redraw(self) -> None:
        """Show the current caption and redundancy (rendered once per state, then from the cache)."""
        key = (self.picker.value, self.method.value, self.caption_box.value, self.redundancy.value)
        if key in self._png:
            self.hits += 1
        else:
            self.misses += 1
            words, importance, maps = self.words(*key[2:])
            shown = self.picture.resize(display_size(self.picture)[::-1], Image.BICUBIC)
            figures = [viz.caption_figure(words, importance), viz.word_maps_figure(shown, words, maps)]
            try:
                self._png[key] = tuple(viz.figure_png(fig) for fig in figures)
            finally:
                for fig in figures:
                    viz.close(fig)
        self.caption_image.value, self.image.value = self._png[key]
        self.status.value = (
            f"{html.escape(key[2])} · redundancy {key[3]} · {html.escape(key[1])} · "
            f"cached {self.hits} / drawn {self.misses}"
        )
