"""Interactive widgets (ipywidgets 8, JupyterLab 4): the surgery explorer and the attention explorer.

The explorer's controls are generated from :class:`~surgery_lib.config.SurgeryConfig`'s fields — a
checkbox per bool, a slider for ``depth``, a dropdown per ``Literal`` — so a new flag gets its control
for free. Results are cached: image tokens per (image, architecture fields), maps per (image, config,
labels) and rendered figures per view, so toggling feature surgery recomputes no forward pass and
toggling back to a seen state redraws from the cache.

Stable DOM classes (the browser test relies on them): the explorer box ``surgery-explorer``, each flag's
checkbox ``surgery-flag-<field>``, the rendered figure ``surgery-explorer-image``, the status line
``surgery-explorer-status``.
"""

from __future__ import annotations

import dataclasses
import html
import time
import typing
from collections.abc import Mapping, Sequence
from typing import Literal, get_args, get_origin

import numpy as np
import torch
from PIL import Image

from surgery_lib.config import SurgeryConfig
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.maps.explain import configured_similarity, encode_image_tokens
from surgery_lib.maps.features import similarity_map
from surgery_lib.maps.images import ImageLike, to_rgb
from surgery_lib.maps.text import empty_prompt_features, text_features, validate_labels
from surgery_lib.model.adapters import ViTAdapter, adapter_for
from surgery_lib.model.introspection import attention_maps
from surgery_lib.model.loading import LoadedCLIP
from surgery_lib.model.surgery import max_depth
from surgery_lib.ui import viz

ARCHITECTURE_FIELDS: tuple[str, ...] = ("attention", "dual_path", "skip_ffn", "depth")
"""The config fields that change the image tower's forward pass (the others act on the features)."""

DISPLAY_SIDE = 224
"""Longest side, in pixels, at which the explorer draws maps and images."""


def _widgets():
    try:
        import ipywidgets
    except ImportError as error:  # pragma: no cover - the notebooks extra is missing
        raise ImportError(
            "the widgets need ipywidgets: pip install -r requirements-notebooks.txt "
            "(or pip install 'surgery_lib[notebooks]')"
        ) from error
    return ipywidgets


def config_controls(config: SurgeryConfig, depth_max: int) -> dict[str, object]:
    """One widget per field of ``config``, keyed by field name, each set to the field's value.

    bool → ``Checkbox`` (DOM class ``surgery-flag-<name>``); int → ``IntSlider`` in ``[0, depth_max]``;
    ``Literal`` → ``Dropdown`` of its values.
    """
    w = _widgets()
    hints = typing.get_type_hints(SurgeryConfig)
    controls: dict[str, object] = {}
    for f in dataclasses.fields(SurgeryConfig):
        value, kind = getattr(config, f.name), hints[f.name]
        if kind is bool:
            control = w.Checkbox(value=value, description=f.name, indent=False)
            control.add_class(f"surgery-flag-{f.name}")
        elif kind is int:
            control = w.IntSlider(value=min(value, depth_max), min=0, max=depth_max, description=f.name)
        elif get_origin(kind) is Literal:
            control = w.Dropdown(options=list(get_args(kind)), value=value, description=f.name)
        else:  # pragma: no cover - a new field type needs a control here
            raise TypeError(f"no widget for SurgeryConfig.{f.name} of type {kind}")
        controls[f.name] = control
    return controls


def config_from_controls(controls: Mapping[str, object]) -> SurgeryConfig:
    """The config the controls show (validated like any new config)."""
    return SurgeryConfig(**{name: control.value for name, control in controls.items()})


def display_size(image: Image.Image, side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """``(H, W)`` with the image's aspect ratio and the longest side ``side``."""
    scale = side / max(image.width, image.height)
    return max(1, round(image.height * scale)), max(1, round(image.width * scale))


class MapCache:
    """Similarity maps of one model, cached per (image, config, labels).

    Image tokens are cached per (image, architecture fields of the config), so a change of
    ``feature_surgery`` or ``redundant_features`` costs no forward pass. ``hits`` / ``misses`` count
    map lookups; ``forwards`` counts image-tower passes.
    """

    def __init__(self, loaded: LoadedCLIP) -> None:
        self.loaded = loaded
        self._tokens: dict[tuple, tuple[torch.Tensor, tuple[int, int]]] = {}
        self._maps: dict[tuple, torch.Tensor] = {}
        self.hits = self.misses = self.forwards = 0

    def _image_tokens(self, key: str, image: Image.Image, config: SurgeryConfig):
        arch = (key, *(getattr(config, name) for name in ARCHITECTURE_FIELDS))
        if arch not in self._tokens:
            batch = self.loaded.reference_preprocess(image).unsqueeze(0)
            self._tokens[arch] = encode_image_tokens(self.loaded.model, batch, config)
            self.forwards += 1
        return self._tokens[arch]

    @torch.no_grad()
    def maps(
        self, key: str, image: Image.Image, config: SurgeryConfig, labels: Sequence[str]
    ) -> torch.Tensor:
        """``(H, W, T)`` min-max normalised maps of ``labels`` at :func:`display_size` of the image.

        ``key`` names the image (two different images must not share a key).
        """
        labels = validate_labels(labels)
        entry = (key, config, tuple(labels))
        if entry in self._maps:
            self.hits += 1
            return self._maps[entry]
        self.misses += 1
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        tokens, grid = self._image_tokens(key, image, config)
        texts = text_features(model, tokenizer, labels)
        sim = configured_similarity(model, tokenizer, tokens, texts, config)
        result = similarity_map(sim[:, 1:], display_size(image), grid)[0]
        self._maps[entry] = result
        return result


def _rgb(image: ImageLike, what: str) -> Image.Image:
    """The RGB PIL image every explorer works on (grey, palette, arrays converted; alpha, 16-bit or too
    small images refused with an :class:`~surgery_lib.maps.images.ImageInputError` naming ``what``)."""
    return to_rgb(image, what)


def _as_annotated(
    images: Sequence[AnnotatedImage] | Mapping[str, ImageLike],
) -> list[AnnotatedImage]:
    if isinstance(images, Mapping):
        items = [AnnotatedImage(str(name), image) for name, image in images.items()]
    elif isinstance(images, (Image.Image, np.ndarray, torch.Tensor, str)):
        raise TypeError(
            f"the explorer takes a list of AnnotatedImage or a {{name: image}} dict, got one "
            f"{type(images).__name__}"
        )
    else:
        items = list(images)
    if not items:
        raise ValueError("the explorer needs at least one image")
    for i, item in enumerate(items):
        if not isinstance(item, AnnotatedImage):
            raise TypeError(
                f"image {i} is a {type(item).__name__}: pass AnnotatedImage records or a {{name: image}} dict"
            )
    names = [item.name for item in items]
    if len(set(names)) != len(names):
        raise ValueError(f"image names must be unique, got {names}")
    return [dataclasses.replace(item, image=_rgb(item.image, f"image {item.name!r}")) for item in items]


def _parse_labels(text: str) -> list[str]:
    return validate_labels([part.strip() for part in text.split(",") if part.strip()])


class _View:
    """What every explorer shares: ``widget`` shows in a notebook; a control change redraws, and a bad
    input (unknown label, empty caption, bad config) is reported in ``status``, keeping the last figure."""

    widget: typing.Any  # the ipywidgets container shown in the notebook
    status: typing.Any  # an ipywidgets.HTML line under it

    def redraw(self) -> None:
        raise NotImplementedError

    def _on_change(self, _change: object = None) -> None:
        try:
            self.redraw()
        except (ValueError, TypeError) as error:
            self.status.value = _error_html(error)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


def _error_html(error: Exception) -> str:
    return f"<span style='color:#b00'>{html.escape(str(error))}</span>"


class Explorer(_View):
    """Every modification of the surgery config as a widget, on a grid of images × labels.

    Args:
        loaded: a model from :func:`surgery_lib.model.loading.load_clip`.
        images: annotated images (or ``{name: PIL image}``); the picker offers all of them.
        labels: the labels shown (editable in a comma-separated text box).
        config: the starting config (the paper's by default).
        selected: names of the images shown at start (the first two by default).
        figure_dir: where "export figure" writes (``$SURGERY_FIGURES_DIR`` or ``figures/`` by default).

    ``explorer.widget`` is the ipywidgets box; displaying the explorer displays it.
    """

    def __init__(
        self,
        loaded: LoadedCLIP,
        images: Sequence[AnnotatedImage] | Mapping[str, Image.Image],
        labels: Sequence[str],
        config: SurgeryConfig | None = None,
        selected: Sequence[str] | None = None,
        cmap: str = "jet",
        alpha: float = 0.5,
        figure_dir: str | None = None,
    ) -> None:
        w = _widgets()
        self.cache = MapCache(loaded)
        self.images = {item.name: item for item in _as_annotated(images)}
        self.figure_dir = figure_dir
        config = config or SurgeryConfig.paper()
        depth_max = max_depth(loaded.model)
        if config.depth > depth_max and isinstance(adapter_for(loaded.model), ViTAdapter):
            raise ValueError(f"config depth {config.depth} is more than the {depth_max} blocks of this model")
        self.controls = config_controls(config, depth_max)
        names = list(self.images)
        chosen = list(selected) if selected is not None else names[:2]
        unknown = [name for name in chosen if name not in self.images]
        if unknown or not chosen:
            raise ValueError(f"selected images {unknown or chosen} are not among the images {names}")
        self.picker = w.SelectMultiple(options=names, value=chosen, description="images", rows=4)
        self.labels_box = w.Text(
            value=", ".join(validate_labels(labels)), description="labels", continuous_update=False
        )
        self.cmap = w.Dropdown(options=list(viz.COLORMAPS), value=cmap, description="colormap")
        self.alpha = w.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity")
        self.export_button = w.Button(description="export figure", icon="download")
        self.status = w.HTML()
        self.status.add_class("surgery-explorer-status")
        self.image = w.Image(format="png")
        self.image.add_class("surgery-explorer-image")
        self._png: dict[tuple, bytes] = {}
        self.render_seconds = 0.0

        for control in [*self.controls.values(), self.picker, self.cmap, self.alpha]:
            control.observe(self._on_change, names="value")
        self.labels_box.observe(self._on_change, names="value")
        self.export_button.on_click(lambda _: self._export_clicked())
        flags = w.HBox([c for c in self.controls.values() if isinstance(c, w.Checkbox)])
        others = w.HBox([c for c in self.controls.values() if not isinstance(c, w.Checkbox)])
        view = w.HBox([self.picker, w.VBox([self.labels_box, self.cmap, self.alpha, self.export_button])])
        self.widget = w.VBox([flags, others, view, self.status, self.image])
        self.widget.add_class("surgery-explorer")
        self.redraw()

    @property
    def config(self) -> SurgeryConfig:
        """The config the controls show."""
        return config_from_controls(self.controls)

    @property
    def labels(self) -> list[str]:
        """The labels in the text box."""
        return _parse_labels(self.labels_box.value)

    def set_config(self, config: SurgeryConfig) -> None:
        """Set every control to ``config`` (one redraw)."""
        with self.widget.hold_trait_notifications():
            for name, control in self.controls.items():
                control.unobserve(self._on_change, names="value")
                control.value = getattr(config, name)
                control.observe(self._on_change, names="value")
        self.redraw()

    def figure(self):
        """The current view as a matplotlib ``Figure``: selected images × labels."""
        config, labels = self.config, self.labels
        items = [self.images[name] for name in self.picker.value]
        maps = [self.cache.maps(item.name, item.image, config, labels) for item in items]
        shown = [item.image.resize(display_size(item.image)[::-1], Image.BICUBIC) for item in items]
        return viz.map_grid(
            shown, maps, labels, [item.name for item in items], self.cmap.value, self.alpha.value
        )

    def _view_key(self) -> tuple:
        return (self.config, tuple(self.labels), tuple(self.picker.value), self.cmap.value, self.alpha.value)

    def redraw(self) -> None:
        """Recompute (from the caches where possible) and show the current view."""
        start = time.perf_counter()
        key = self._view_key()
        if key not in self._png:
            fig = self.figure()
            self._png[key] = viz.figure_png(fig)
            viz.close(fig)
        self.image.value = self._png[key]
        self.render_seconds = time.perf_counter() - start
        c = self.cache
        self.status.value = (
            f"<code>{html.escape(repr(self.config))}</code> · drawn in {1000 * self.render_seconds:.0f} ms "
            f"· maps cached {c.hits} / computed {c.misses} · forward passes {c.forwards}"
        )

    def export(self, name: str = "explorer") -> list:
        """Save the current view as PNG (300 dpi) and PDF; returns the paths."""
        fig = self.figure()
        try:
            return viz.save_figure(fig, name, self.figure_dir)
        finally:
            viz.close(fig)

    def _export_clicked(self) -> None:
        paths = self.export()
        self.status.value = "saved " + ", ".join(html.escape(str(p)) for p in paths)


def _query_token(row: int, col: int, grid: tuple[int, int]) -> int:
    return 1 + row * grid[1] + col


class AttentionExplorer(_View):
    """Pick a block and a query patch (sliders): its attention maps for each attention kind.

    Heads are averaged; the class token's own weight is dropped so the patch weights fill the scale.
    The traced forward pass is computed once per image (vanilla CLIP's stream, as the paper analyses).
    """

    def __init__(
        self,
        loaded: LoadedCLIP,
        image: Image.Image,
        kinds: Sequence[str] = ("qk", "qq", "kk", "vv"),
        block: int = -1,
        query: tuple[int, int] | None = None,
    ) -> None:
        w = _widgets()
        image = _rgb(image, "the image")
        self.loaded, self.picture, self.kinds = loaded, image, tuple(kinds)
        self._batch = loaded.reference_preprocess(image).unsqueeze(0)
        blocks = max_depth(loaded.model)
        if (
            isinstance(block, bool)
            or not isinstance(block, (int, np.integer))
            or not -blocks <= block < blocks
        ):
            raise ValueError(
                f"block {block!r} is out of range: this model has {blocks} blocks (0..{blocks - 1})"
            )
        _, self.grid = self.attention(int(block) % blocks, 0)
        h, wd = self.grid
        row, col = query if query is not None else (h // 2, wd // 2)
        if not (0 <= row < h and 0 <= col < wd):
            raise ValueError(
                f"query {(row, col)} is off the {h}×{wd} token grid: row must be in 0..{h - 1}, "
                f"col in 0..{wd - 1}"
            )
        block = int(block)
        self.block = w.IntSlider(value=block % blocks, min=0, max=blocks - 1, description="block")
        self.row = w.IntSlider(value=row, min=0, max=h - 1, description="query row")
        self.col = w.IntSlider(value=col, min=0, max=wd - 1, description="query col")
        self.image = w.Image(format="png")
        for control in (self.block, self.row, self.col):
            control.observe(lambda _: self.redraw(), names="value")
        self.widget = w.VBox([w.HBox([self.block, self.row, self.col]), self.image])
        self.redraw()

    def attention(self, block: int, query: int) -> tuple[dict[str, torch.Tensor], tuple[int, int]]:
        """``{kind: (h·w,)}`` head-averaged patch weights of token ``query`` at ``block``, and the grid."""
        weights, grid = attention_maps(self.loaded.model, self._batch, block, query, self.kinds)
        return {kind: a[0].mean(dim=0)[1:] for kind, a in weights.items()}, grid

    def figure(self):
        """The current view as a matplotlib ``Figure``."""
        weights, grid = self.attention(
            self.block.value, _query_token(self.row.value, self.col.value, self.grid)
        )
        return viz.attention_figure(self.picture, weights, grid, (self.row.value, self.col.value))

    def redraw(self) -> None:
        fig = self.figure()
        self.image.value = viz.figure_png(fig)
        viz.close(fig)


class CaptionExplorer(_View):
    """Type a caption: the importance of each of its words and each word's map on one image.

    Args:
        loaded: a model from :func:`surgery_lib.model.loading.load_clip`.
        image: the image (PIL); its tokens are computed once, under ``config`` (paper by default).
        caption: the starting caption (editable in a text box, applied on Enter).
        redundancy: the starting option of :func:`~surgery_lib.maps.multimodal.word_similarity`.

    ``caption_image`` shows the caption figure, ``image`` the strip of per-word maps; errors (an empty
    or too long caption) go to ``status`` and the last figures stay. Rendered figures are cached per
    (caption, redundancy).
    """

    def __init__(
        self,
        loaded: LoadedCLIP,
        image: Image.Image,
        caption: str,
        redundancy: str = "empty_prompt",
        config: SurgeryConfig | None = None,
    ) -> None:
        from surgery_lib.maps.multimodal import WordRedundancy

        w = _widgets()
        image = _rgb(image, "the image")
        self.loaded, self.picture = loaded, image
        batch = loaded.reference_preprocess(image).unsqueeze(0)
        self._tokens, self._grid = encode_image_tokens(loaded.model, batch, config or SurgeryConfig.paper())
        self._empty = empty_prompt_features(loaded.model, loaded.tokenizer)
        self._size = display_size(image)
        self._shown = image.resize(self._size[::-1], Image.BICUBIC)
        self.caption_box = w.Text(value=caption, description="caption", continuous_update=False)
        self.caption_box.layout.width = "40em"
        self.redundancy = w.Dropdown(
            options=list(get_args(WordRedundancy)), value=redundancy, description="redundancy"
        )
        self.status = w.HTML()
        self.caption_image = w.Image(format="png")
        self.image = w.Image(format="png")
        self._png: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self.hits = self.misses = 0
        for control in (self.caption_box, self.redundancy):
            control.observe(self._on_change, names="value")
        self.widget = w.VBox(
            [w.HBox([self.caption_box, self.redundancy]), self.status, self.caption_image, self.image]
        )
        self.redraw()

    @torch.no_grad()
    def words(self, caption: str, redundancy: str) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """The caption's words, their importance ``(K,)`` and per-word maps ``(H, W, K)`` at display size."""
        from surgery_lib.maps.multimodal import caption_tokens, word_importance, word_similarity

        cap = caption_tokens(self.loaded.model, self.loaded.tokenizer, caption)
        sim = word_similarity(self._tokens, cap, redundancy, self._empty)
        return cap.words, word_importance(sim)[0], similarity_map(sim[:, 1:], self._size, self._grid)[0]

    def redraw(self) -> None:
        """Show the current caption and redundancy (rendered once per pair, then from the cache)."""
        key = (self.caption_box.value, self.redundancy.value)
        if key in self._png:
            self.hits += 1
        else:
            self.misses += 1
            words, importance, maps = self.words(*key)
            figures = [viz.caption_figure(words, importance), viz.word_maps_figure(self._shown, words, maps)]
            self._png[key] = tuple(viz.figure_png(fig) for fig in figures)
            for fig in figures:
                viz.close(fig)
        self.caption_image.value, self.image.value = self._png[key]
        self.status.value = (
            f"{html.escape(key[0])} · redundancy {key[1]} · cached {self.hits} / drawn {self.misses}"
        )


class SamExplorer(_View):
    """Type a target word (or ``"a+b"``): its map on the image with the SAM point prompts, and SAM's
    mask when a :class:`~surgery_lib.maps.sam.SamSegmenter` is given.

    Args:
        loaded: a model from :func:`surgery_lib.model.loading.load_clip`.
        image: the image (PIL); maps of all ``labels`` are computed once, under ``config``.
        labels: the labels a target may name (the class list; feature surgery uses all of them).
        segmenter: optional SAM; without it only the points are shown.

    Sliders: ``threshold`` (the reference rule's 0.8), ``quantile`` (0 = use the threshold; else the
    positives are the cells above this quantile of the map) and ``gate`` (``min_probability``, on a log
    scale; used when ``gate_on`` is ticked). Errors (an unknown label) go to ``status`` and the last
    figure stays. Rendered figures are cached per (target, threshold, quantile, gate).
    """

    def __init__(
        self,
        loaded: LoadedCLIP,
        image: Image.Image,
        labels: Sequence[str],
        segmenter: object | None = None,
        target: str | None = None,
        config: SurgeryConfig | None = None,
    ) -> None:
        from surgery_lib.maps.explain import explain

        w = _widgets()
        image = _rgb(image, "the image")
        self.labels = validate_labels(labels)
        self.segmenter = segmenter
        self._size = display_size(image)
        self._shown = image.resize(self._size[::-1], Image.BICUBIC)
        batch = loaded.reference_preprocess(image).unsqueeze(0)
        self.explanation = explain(loaded.model, loaded.tokenizer, batch, self.labels, config, self._size)
        self.target = w.Text(value=target or self.labels[0], description="target", continuous_update=False)
        self.threshold = w.FloatSlider(value=0.8, min=0.0, max=1.0, step=0.05, description="threshold")
        self.quantile = w.FloatSlider(value=0.0, min=0.0, max=0.99, step=0.01, description="quantile")
        # image-level probabilities span many orders of magnitude (a small CLIP's are very peaked): a log
        # slider from 1e-9 to 1, and a checkbox to switch the gate on
        self.gate_on = w.Checkbox(value=False, description="presence gate", indent=False)
        self.gate = w.FloatLogSlider(value=1e-7, base=10, min=-9, max=0, step=0.25, description="gate p ≥")
        self.status = w.HTML()
        self.image = w.Image(format="png")
        self._png: dict[tuple, bytes] = {}
        self.hits = self.misses = 0
        for control in (self.target, self.threshold, self.quantile, self.gate_on, self.gate):
            control.observe(self._on_change, names="value")
        controls = w.VBox([self.target, self.threshold, self.quantile, w.HBox([self.gate_on, self.gate])])
        self.widget = w.VBox([controls, self.status, self.image])
        self.redraw()

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
        """The current view as a matplotlib ``Figure``: the target's (mean) map, its points, SAM's mask."""
        from surgery_lib.maps.sam import parse_target

        target = self._key()[0]
        indices = parse_target(target, self.explanation.labels)
        points, labels = self.points()
        heat = self.explanation.maps[0][:, :, indices].mean(dim=-1)
        mask = None
        if self.segmenter is not None and len(points):
            import numpy as np

            mask, _ = self.segmenter.segment(np.asarray(self._shown), points, labels)
        probability = float(self.explanation.image_scores[0, indices].max())
        title = (
            f"{target} (p = {probability:.3g})"
            if len(points)
            else f"{target}: gated out (p = {probability:.3g})"
        )
        return viz.points_figure(self._shown, heat, points, labels, mask, title=title)

    def redraw(self) -> None:
        """Show the current target (rendered once per control state, then from the cache)."""
        key = self._key()
        if key in self._png:
            self.hits += 1
        else:
            self.misses += 1
            fig = self.figure()
            self._png[key] = viz.figure_png(fig)
            viz.close(fig)
        self.image.value = self._png[key]
        self.status.value = f"target {html.escape(key[0])} · cached {self.hits} / drawn {self.misses}"
