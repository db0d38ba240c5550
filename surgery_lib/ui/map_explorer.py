"""The surgery explorer (:class:`Explorer`): every modification of CLIP Surgery as a control, on a grid
of images × labels, with cached tokens, maps and views.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image

from surgery_lib.config import ARCHITECTURE_FIELDS, GradientConfig, SurgeryConfig
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.eval.metrics import MapScores, map_scores
from surgery_lib.maps.explain import configured_similarity, encode_image_tokens, explain
from surgery_lib.maps.features import similarity_map, zero_shot_probabilities
from surgery_lib.maps.text import text_features, validate_labels
from surgery_lib.methods import GRADIENT_METHODS, METHODS, method_names, needs_vfm, resolve_method
from surgery_lib.model import (
    DEFAULT_VFM,
    TINY_VFM,
    TOY_MODELS,
    LoadedCLIP,
    class_token,
    max_depth,
    needs_class_texts,
    patch_tokens,
    tower_info,
    with_vfm,
)
from surgery_lib.ui import viz
from surgery_lib.ui.explorer_base import (
    _DEFAULTS,
    _LRU,
    _VIT_ONLY,
    CUSTOM,
    PINNED,
    Method,
    _as_annotated,
    _class_list,
    _describe,
    _error_html,
    _note_html,
    _parse_labels,
    _parse_names,
    _preset_name,
    _View,
    _widgets,
    config_controls,
    config_from_controls,
    display_size,
)
from surgery_lib.ui.export import _export, _figure_folder, _stem, export_metadata
from surgery_lib.ui.map_figures import _bare, _opaque, _overlay
from surgery_lib.ui.style import _as_array, _pyplot


@dataclasses.dataclass(frozen=True)
class _Computed:
    maps: torch.Tensor  # (H, W, T) in [0, 1]
    probabilities: torch.Tensor  # (T,) class-token probabilities over the class list, labels' columns


class MapCache:
    """Similarity maps of one model, cached per (image, method, labels, vocabulary).

    Image tokens are cached per (image, :data:`~surgery_lib.config.ARCHITECTURE_FIELDS` of the config),
    so a change of ``feature_surgery`` or ``redundant_features`` (or of the labels or the vocabulary)
    costs no forward pass. Gradient methods are computed by
    :func:`~surgery_lib.maps.explain.explain` (one forward and backward per lookup that misses).
    ``hits`` / ``misses`` count map lookups; ``forwards`` counts image-tower passes.

    Both caches are bounded LRUs (``max_maps`` maps, ``max_tokens`` token sets; the least recently
    used entry goes first), so a long session (a classroom app's kernel) does not grow without bound.
    """

    def __init__(self, loaded: LoadedCLIP, max_maps: int = 128, max_tokens: int = 64) -> None:
        for name, value in (("max_maps", max_maps), ("max_tokens", max_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"MapCache {name} must be an int >= 1, got {value!r}")
        self.loaded = loaded
        self._tokens: dict[tuple, tuple[torch.Tensor, tuple[int, int]]] = _LRU(max_tokens)
        self._maps: dict[tuple, _Computed] = _LRU(max_maps)
        self.hits = self.misses = self.forwards = 0
        self._paired: torch.nn.Module | None = None

    def _model_for(self, config: SurgeryConfig) -> torch.nn.Module:
        """The model ``config`` runs on: the loaded CLIP, or — for a method that reads a vision foundation
        model (ProxyCLIP) — the CLIP paired with one, made once: the project's small random DINO beside a
        project-built model, DINO ViT-B/8 (:func:`~surgery_lib.model.load_vfm`; an error if its weights
        are not on this machine) beside real weights."""
        if not needs_vfm(config):
            return self.loaded.model
        if self._paired is None:
            toy = self.loaded.name in TOY_MODELS or self.loaded.name.startswith("tiny-")
            self._paired = with_vfm(self.loaded.model, TINY_VFM if toy else DEFAULT_VFM)
        return self._paired

    def _image_tokens(self, key: str, image: Image.Image, config: SurgeryConfig, names: tuple[str, ...] = ()):
        """The image's tokens under ``config``, cached per architecture — and per class list ``names`` for
        a forward that reads the class texts (ResCLIP's feedback), whose tokens depend on them."""
        model = self._model_for(config)
        reads_texts = needs_class_texts(config)
        arch = (key, *(getattr(config, name) for name in ARCHITECTURE_FIELDS), names if reads_texts else ())
        if arch not in self._tokens:
            batch = self.loaded.reference_preprocess(image).unsqueeze(0)
            texts = (
                text_features(self.loaded.model, self.loaded.tokenizer, list(names)) if reads_texts else None
            )
            self._tokens[arch] = encode_image_tokens(model, batch, config, texts=texts)
            self.forwards += 1
        return self._tokens[arch]

    @torch.no_grad()
    def computed(
        self,
        key: str,
        image: Image.Image,
        method: Method,
        labels: Sequence[str],
        vocabulary: Sequence[str] | None = None,
    ) -> _Computed:
        """Maps ``(H, W, T)`` of ``labels`` at :func:`display_size` and their class-token probabilities
        ``(T,)`` (softmax over the labels and the vocabulary).

        Feature surgery runs over the labels and the ``vocabulary``; only the labels' maps are kept.
        ``key`` names the image (two different images must not share a key).
        """
        labels = validate_labels(labels)
        names = _class_list(labels, vocabulary)
        if len(names) > len(labels):
            validate_labels(names)
        entry = (key, method, tuple(labels), tuple(names))
        if entry in self._maps:
            self.hits += 1
            return self._maps[entry]
        model, tokenizer = self.loaded.model, self.loaded.tokenizer
        size = display_size(image)
        if isinstance(method, GradientConfig):
            batch = self.loaded.reference_preprocess(image).unsqueeze(0)
            result = explain(model, tokenizer, batch, labels, method=method, size=size, vocabulary=names)
            self.forwards += 1
            computed = _Computed(result.maps[0], result.image_scores[0])
        else:
            tokens, grid = self._image_tokens(key, image, method, tuple(names))
            texts = text_features(model, tokenizer, names)
            sim = configured_similarity(model, tokenizer, tokens, texts, method)[..., : len(labels)]
            probabilities = zero_shot_probabilities(class_token(tokens), texts, model)[0, : len(labels)]
            computed = _Computed(similarity_map(patch_tokens(sim), size, grid)[0], probabilities)
        self.misses += 1
        self._maps[entry] = computed
        return computed

    def maps(
        self,
        key: str,
        image: Image.Image,
        config: Method,
        labels: Sequence[str],
        vocabulary: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """``(H, W, T)`` min-max normalised maps of ``labels`` at :func:`display_size` of the image, as
        :func:`~surgery_lib.maps.explain.explain` computes them (with ``vocabulary=``).

        ``key`` names the image (two different images must not share a key).
        """
        return self.computed(key, image, config, labels, vocabulary).maps


# -------------------------------------------------------------------------------------------- explorer
@dataclasses.dataclass(frozen=True)
class ViewRow:
    """One image of an explorer view.

    Attributes:
        name: the image's name.
        maps: ``(H, W, T)`` min-max normalised maps of the labels shown, at :func:`display_size`.
        probabilities: ``(T,)`` the class token's zero-shot probabilities of the labels (softmax over the
            labels and the vocabulary).
        scores: ``{label: MapScores}`` (IoU, score contrast, pointing hit) of each label with a
            ground-truth mask in this image.
    """

    name: str
    maps: torch.Tensor
    probabilities: torch.Tensor
    scores: Mapping[str, MapScores]


def _outline(ax, mask: np.ndarray | None) -> None:
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="white", linewidths=1.0)


def _probability_bars(ax, labels: Sequence[str], probabilities: torch.Tensor, title: str | None) -> None:
    p = _as_array(probabilities).reshape(-1)
    y = np.arange(len(labels))
    ax.barh(y, p, color="tab:blue", height=0.6)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.set_yticks(y, [viz.plain_text(label) for label in labels], fontsize=6.5)
    ax.set_xticks([0.0, 0.5, 1.0], ["0", ".5", "1"], fontsize=6)
    for i, value in enumerate(p):
        inside = value > 0.6
        ax.text(
            value - 0.03 if inside else value + 0.03,
            i,
            f"{value:.2f}" if value >= 0.005 else "<0.01",
            va="center",
            ha="right" if inside else "left",
            fontsize=6,
            color="white" if inside else "black",
        )
    if title:
        ax.set_title(title, fontsize=7)


def _explorer_figure(
    images: Sequence[Image.Image],
    rows: Sequence[ViewRow],
    labels: Sequence[str],
    masks: Sequence[Mapping[str, np.ndarray]],
    cmap: str,
    alpha: float,
    title: str,
    n_classes: int,
):
    """Rows = images: the image, its class-token probabilities, then one map per label (ground-truth
    outlines in white, the map's SC / IoU / pointing hit under it where the label has a mask)."""
    plt = _pyplot()
    t = len(labels)
    panel = min(1.55, (viz.page_width("double") - 2.8) / (t + 1))  # the figure fits the page width
    with viz.figure_style():
        fig, axes = plt.subplots(
            len(rows),
            t + 2,
            figsize=(panel * (t + 1) + 2.0 + 0.6, panel * len(rows) + 0.7),
            squeeze=False,
            layout="constrained",
            gridspec_kw={"width_ratios": [1.0, 0.9] + [1.0] * t},
        )
        for r, (image, row, row_masks) in enumerate(zip(images, rows, masks, strict=True)):
            heat = _as_array(row.maps)
            axes[r, 0].imshow(np.asarray(image))
            _bare(axes[r, 0])
            axes[r, 0].set_ylabel(viz.plain_text(row.name), fontsize=7)
            if row.scores:
                axes[r, 0].set_xlabel("white outline: ground truth", fontsize=6.5)
            bars_title = f"class token p\n(over {n_classes} classes)" if r == 0 else None
            _probability_bars(axes[r, 1], labels, row.probabilities, bars_title)
            for j, label in enumerate(labels):
                ax = axes[r, 2 + j]
                _overlay(ax, image, heat[:, :, j], cmap, alpha, grey_image=True)  # as the figures
                _outline(ax, row_masks.get(label))
                score = row.scores.get(label)
                if score is not None:
                    hit = "hit" if score.pointing_hit else "miss"
                    ax.set_xlabel(
                        f"SC {score.score_contrast:+.0f} · IoU {score.iou:.2f} · {hit}", fontsize=6.5
                    )
                if r == 0:
                    ax.set_title(viz.plain_text(label))
        axes[0, 0].set_title("image")
        fig.colorbar(
            _opaque(cmap), ax=axes[:, 2:].ravel().tolist(), fraction=0.03, pad=0.01, label="map (min-max)"
        )
        fig.suptitle(viz.plain_text(title), fontsize=8.5)
    return fig


class Explorer(_View):
    """Every method and every modification of the surgery config as a widget, on a grid of images × labels.

    Args:
        loaded: a model from :func:`surgery_lib.model.loading.load_clip`.
        images: annotated images (or ``{name: PIL image}``); the picker offers all of them.
        labels: the labels shown (editable in a comma-separated text box).
        config: the starting config (the paper's by default); also a method name.
        selected: names of the images shown at start (the first two by default).
        figure_dir: where "export figure" writes (``$SURGERY_FIGURES_DIR`` or ``figures/`` by default).
        vocabulary: the classes feature surgery runs over (with the labels); editable in a text box.
            Default: the images' class list (:attr:`AnnotatedImage.vocabulary`); with none, the labels.
        method: the starting method by name (any of :func:`~surgery_lib.methods.method_names`), instead
            of ``config``.
        max_exports: with a number, "export figure" refuses (in the status line) once ``figure_dir``
            holds that many exported figures (JSON sidecars), whoever wrote them: a bound on what the
            visitors of a shared server can write (the app sets it); None (default): no bound.

    The method dropdown sets the config controls to a preset; they stay editable, and the dropdown then
    names the preset the controls match, or shows ``custom``. A gradient method disables the config
    controls. Controls that do nothing in the current state are disabled (depth 0: the architecture
    fields; a ModifiedResNet: the dual path, the FFN and the ViT-only fields; the positional-embedding
    interpolation at the native input size). A config the validation refuses is reported in the
    status line and the last figure stays.

    Each row shows the image, its class-token probabilities (so ``dual_path`` shows: without it the
    class token changes), then each label's map with its ground-truth outline and live SC / IoU /
    pointing hit where the image has a mask. "A/B" shows a second method (B) beside the first; "pin A
    as B" copies the current method (any config) into B. Every export writes new files (PNG, PDF and
    a JSON sidecar saying how the figure was made), never overwriting.

    ``explorer.widget`` is the ipywidgets box; displaying the explorer displays it.
    """

    def __init__(
        self,
        loaded: LoadedCLIP,
        images: Sequence[AnnotatedImage] | Mapping[str, Image.Image],
        labels: Sequence[str],
        config: SurgeryConfig | str | None = None,
        selected: Sequence[str] | None = None,
        cmap: str = viz.DEFAULT_CMAP,
        alpha: float = 0.5,
        figure_dir: str | os.PathLike | None = None,
        *,
        vocabulary: Sequence[str] | None = None,
        method: str | SurgeryConfig | GradientConfig | None = None,
        max_exports: int | None = None,
    ) -> None:
        w = _widgets()
        if max_exports is not None and (
            isinstance(max_exports, bool) or not isinstance(max_exports, int) or max_exports < 1
        ):
            raise ValueError(f"max_exports must be None or an int >= 1, got {max_exports!r}")
        self.max_exports = max_exports
        self.loaded = loaded
        self.cache = MapCache(loaded)
        self.images = {item.name: item for item in _as_annotated(images)}
        self.figure_dir = figure_dir
        if method is not None and config is not None:
            raise ValueError("pass the method as config= or as method=, not both")
        start = resolve_method(method if method is not None else config)
        self.depth_max = max_depth(loaded.model)
        self.is_vit = tower_info(loaded.model).residual_stream
        dense = start if isinstance(start, SurgeryConfig) else SurgeryConfig.paper()
        if dense.depth > self.depth_max and self.is_vit:
            raise ValueError(
                f"config depth {dense.depth} is more than the {self.depth_max} blocks of this model"
            )
        self.presets = {name: self._fit(preset) for name, preset in METHODS.items()}
        probe = loaded.reference_preprocess(Image.new("RGB", (32, 32)))
        self._native_grid = tuple(probe.shape[-2:]) == (loaded.image_size, loaded.image_size)
        self._pinned: tuple[str, str, Method] | None = None
        self.controls = config_controls(dense, self.depth_max)
        if isinstance(start, GradientConfig):
            named = [name for name, g in GRADIENT_METHODS.items() if g == start]
            if not named:
                raise ValueError(f"pass a gradient method by name: one of {', '.join(GRADIENT_METHODS)}")
            start_name = named[0]
        else:
            start_name = _preset_name(self.config, self.presets)
        self.method = w.Dropdown(options=[CUSTOM, *method_names()], value=start_name, description="method")
        self.method.add_class("surgery-explorer-method")
        self.ab = w.Checkbox(value=False, description="A/B: compare with", indent=False)
        self.ab.add_class("surgery-explorer-ab")
        self.ab.layout.width = "auto"
        self.method_b = w.Dropdown(options=list(method_names()), value="raw", description="B", disabled=True)
        self.method_b.style.description_width = "1.5em"
        self.method_b.add_class("surgery-explorer-method-b")
        self.pin_button = w.Button(
            description="pin A as B", icon="thumb-tack", tooltip="B = A's current method"
        )

        names = list(self.images)
        chosen = list(selected) if selected is not None else names[:2]
        unknown = [name for name in chosen if name not in self.images]
        if unknown or not chosen:
            raise ValueError(f"selected images {unknown or chosen} are not among the images {names}")
        self.picker = w.SelectMultiple(options=names, value=chosen, description="images", rows=5)
        wide = w.Layout(width="46em")
        self.labels_box = w.Text(
            value=", ".join(validate_labels(labels)),
            description="labels",
            continuous_update=False,
            layout=wide,
            tooltip="the labels drawn (comma-separated; Enter applies)",
        )
        self.labels_box.add_class("surgery-explorer-labels")
        if vocabulary is None:
            vocabulary = list(dict.fromkeys(v for item in self.images.values() for v in item.vocabulary))
        elif isinstance(vocabulary, str):
            raise TypeError(f"vocabulary must be a sequence of class names, not the string {vocabulary!r}")
        self.vocabulary_box = w.Text(
            value=", ".join(vocabulary),
            description="vocabulary",
            placeholder="(empty: the labels alone)",
            continuous_update=False,
            layout=wide,
            tooltip="the classes feature surgery subtracts the mean of (with the labels); Enter applies",
        )
        self.vocabulary_box.add_class("surgery-explorer-vocabulary")
        self.cmap = w.Dropdown(options=list(viz.COLORMAPS), value=cmap, description="colormap")
        self.alpha = w.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.05, description="opacity")
        self.export_button = w.Button(description="export figure", icon="download")
        self.status = w.HTML()
        self.status.add_class("surgery-explorer-status")
        self.image = w.Image(format="png")
        self.image.add_class("surgery-explorer-image")
        self.image_b = w.Image(format="png")
        self.image_b.add_class("surgery-explorer-image-b")
        self.image_b.layout.display = "none"
        self._png: dict[tuple, bytes] = _LRU(256)
        self._masks: dict[tuple[str, str], np.ndarray | None] = _LRU(1024)
        self.render_seconds = 0.0

        for control in self.controls.values():
            control.observe(self._control_changed, names="value")
        self.method.observe(self._method_changed, names="value")
        self.ab.observe(self._ab_changed, names="value")
        for control in (
            self.picker,
            self.labels_box,
            self.vocabulary_box,
            self.cmap,
            self.alpha,
            self.method_b,
        ):
            control.observe(self._on_change, names="value")
        self.pin_button.on_click(lambda _: self.pin())
        self.export_button.on_click(lambda _: self._export_clicked())

        wrap = w.Layout(flex_flow="row wrap")
        top = w.HBox([self.method, self.ab, self.method_b, self.pin_button], layout=wrap)
        flags = w.HBox([c for c in self.controls.values() if isinstance(c, w.Checkbox)], layout=wrap)
        others = w.HBox([c for c in self.controls.values() if not isinstance(c, w.Checkbox)], layout=wrap)
        texts = w.VBox(
            [self.labels_box, self.vocabulary_box, w.HBox([self.cmap, self.alpha, self.export_button])]
        )
        figures = w.HBox([self.image, self.image_b], layout=w.Layout(align_items="flex-start"))
        self.widget = w.VBox([top, flags, others, w.HBox([self.picker, texts]), self.status, figures])
        self.widget.add_class("surgery-explorer")
        self.redraw()

    # -- state -------------------------------------------------------------------------------------
    def _fit(self, config: SurgeryConfig) -> SurgeryConfig:
        """``config`` as this model's controls show it (``depth`` at most the model's depth)."""
        return config if config.depth <= self.depth_max else config.replace(depth=self.depth_max)

    @property
    def config(self) -> SurgeryConfig:
        """The config the controls show (raises ``ValueError`` for a combination the validation refuses)."""
        picker = getattr(self, "method", None)  # absent while the controls are being built
        preset = METHODS.get(picker.value) if picker is not None else None
        return config_from_controls(self.controls, preset if isinstance(preset, SurgeryConfig) else None)

    @property
    def method_config(self) -> Method:
        """What A's maps are computed with: the controls' config, or a gradient method's config."""
        name = self.method.value
        return GRADIENT_METHODS[name] if name in GRADIENT_METHODS else self.config  # noqa: SIM401

    @property
    def labels(self) -> list[str]:
        """The labels in the text box (the ones drawn)."""
        return _parse_labels(self.labels_box.value)

    @property
    def vocabulary(self) -> list[str]:
        """The vocabulary box's classes (may be empty)."""
        return _parse_names(self.vocabulary_box.value)

    @property
    def class_list(self) -> list[str]:
        """What feature surgery and the class-token softmax run over: the labels, then the vocabulary."""
        return _class_list(self.labels, self.vocabulary)

    def _set_controls(self, config: SurgeryConfig) -> None:
        for name, control in self.controls.items():
            value = getattr(config, name)
            if name == "depth":
                value = min(value, control.max)
            elif isinstance(value, int) and not isinstance(value, bool) and value > control.max:
                control.max = value
            control.value = value

    def _matching_name(self) -> str:
        try:
            return _preset_name(self.config, self.presets)
        except (ValueError, TypeError):
            return CUSTOM

    def _method_changed(self, _change: object = None) -> None:
        if self._quiet:
            return
        name = self.method.value
        if name in self.presets:
            with self._quietly():
                self._set_controls(self.presets[name])
        self._on_change()

    def _control_changed(self, _change: object = None) -> None:
        if self._quiet:
            return
        with self._quietly():
            self.method.value = self._matching_name()
        self._on_change()

    def _ab_changed(self, _change: object = None) -> None:
        if self._quiet:
            return
        if self.ab.value and self.method_b.value == self.method.value:
            with self._quietly():
                self.method_b.value = "surgery" if self.method.value == "raw" else "raw"
        self._on_change()

    def set_config(self, config: SurgeryConfig) -> None:
        """Set every control to ``config`` (one redraw); the method dropdown follows."""
        if not isinstance(config, SurgeryConfig):
            raise TypeError(
                f"expected a SurgeryConfig, got {type(config).__name__}: use set_method for names"
            )
        if config.depth > self.depth_max and self.is_vit:
            raise ValueError(
                f"config depth {config.depth} is more than the {self.depth_max} blocks of this model"
            )
        with self._quietly():
            self._set_controls(config)
            self.method.value = self._matching_name()
        self.redraw()

    def set_method(self, name: str) -> None:
        """Show method ``name`` (any of :func:`~surgery_lib.methods.method_names`; one redraw)."""
        if name != CUSTOM:
            resolve_method(name)  # an unknown name raises ValueError listing the known ones
        if self.method.value == name:
            self._method_changed()
        else:
            self.method.value = name

    def pin(self) -> None:
        """B := A's current method (a preset, a gradient method or any config); turns A/B on."""
        try:
            name, method = self.method.value, self.method_config
        except (ValueError, TypeError) as error:
            self.status.value = _error_html(error)
            return
        self._pinned = (f"{PINNED}: {_describe(name, method)}", name, method)
        with self._quietly():
            if PINNED not in self.method_b.options:
                self.method_b.options = [*method_names(), PINNED]
            self.method_b.value = PINNED
            self.ab.value = True
        self._on_change()

    def _b(self) -> tuple[str, str, Method]:
        """B's title, name (for file names) and method."""
        name = self.method_b.value
        if name == PINNED and self._pinned is not None:
            return self._pinned
        method = GRADIENT_METHODS[name] if name in GRADIENT_METHODS else self.presets[name]
        return _describe(name, method), name, method

    # -- what is shown -----------------------------------------------------------------------------
    def _inactive(self) -> dict[str, str]:
        """``{field: why}`` for the config controls that do nothing in the current state."""
        values = {name: control.value for name, control in self.controls.items()}
        if self.method.value in GRADIENT_METHODS:
            why = f"{self.method.value} is a gradient method (vanilla CLIP's forward)"
            return dict.fromkeys(self.controls, why)
        inactive: dict[str, str] = {}
        if not self.is_vit:
            for name in ("dual_path", "skip_ffn"):
                inactive[name] = "a ModifiedResNet: only its attention pool changes"
            for name in _VIT_ONLY:
                if name in values and values[name] == getattr(_DEFAULTS, name):
                    inactive[name] = "ViT towers only"
        if values["depth"] == 0:
            for name in ARCHITECTURE_FIELDS:
                if name != "depth" and name in self.controls:
                    inactive.setdefault(name, "depth 0: no architecture surgery")
        if self._native_grid:
            inactive.setdefault("pos_embed_interp", "native input size: nothing is resampled")
        if not values["feature_surgery"]:
            inactive["redundant_features"] = "feature surgery is off"
        attention = values["attention"]
        if attention != "gem" and not values["self_attn_iters"]:
            inactive.setdefault("self_attn_iters", "attention='gem' only")
        if attention == "identity" and values["attn_temperature"] == "auto":
            inactive.setdefault("attn_temperature", "the identity attention has no logits")
        if (values["dual_path"] or attention in ("identity", "gem")) and not values["spatial_prior_sigma"]:
            inactive.setdefault("spatial_prior_sigma", "single path and attention qk/vv/qq/kk/qq+kk only")
        return inactive

    def _sync_enabled(self) -> dict[str, str]:
        inactive = self._inactive()
        for name, control in self.controls.items():
            control.disabled = name in inactive
            control.tooltip = inactive.get(name, "")
        self.method_b.disabled = not self.ab.value
        return inactive

    def _mask(self, item: AnnotatedImage, label: str) -> np.ndarray | None:
        """The label's ground-truth mask at :func:`display_size`, or None."""
        key = (item.name, label)
        if key not in self._masks:
            mask = item.masks.get(label)
            if mask is not None:
                h, w = display_size(item.image)
                small = Image.fromarray(np.asarray(mask, dtype=bool)).resize((w, h), Image.NEAREST)
                mask = np.asarray(small, dtype=bool)
            self._masks[key] = mask
        return self._masks[key]

    def _selected(self) -> list[str]:
        """The names of the images shown; ``ValueError`` when none is selected."""
        names = list(self.picker.value)
        if not names:
            raise ValueError("no image selected: pick one or more images in the list (Ctrl/⌘-click)")
        return names

    def results(self, which: Literal["A", "B"] = "A") -> list[ViewRow]:
        """The selected images' maps, class-token probabilities and scores under A's method (or B's)."""
        self._selected()
        method = self.method_config if which == "A" else self._b()[2]
        labels, names = self.labels, self.class_list
        rows = []
        for name in self.picker.value:
            item = self.images[name]
            computed = self.cache.computed(name, item.image, method, labels, names)
            scores = {}
            for j, label in enumerate(labels):
                mask = self._mask(item, label)
                if mask is None:
                    continue
                with contextlib.suppress(ValueError):  # a mask empty (after resizing) or full: no scores
                    scores[label] = map_scores(computed.maps[:, :, j], torch.tensor(mask))
            rows.append(ViewRow(name, computed.maps, computed.probabilities, scores))
        return rows

    def _title(self, which: str) -> str:
        if which == "B":
            return f"B · {self._b()[0]}"
        described = _describe(self.method.value, self.method_config)
        return f"A · {described}" if self.ab.value else described

    def figure(self, which: Literal["A", "B"] = "A"):
        """The current view as a matplotlib ``Figure``: selected images × labels under A's method (or
        B's), with the class-token probabilities, ground-truth outlines and scores."""
        rows = self.results(which)
        items = [self.images[row.name] for row in rows]
        shown = [item.image.resize(display_size(item.image)[::-1], Image.BICUBIC) for item in items]
        labels = self.labels
        masks = [{label: self._mask(item, label) for label in labels} for item in items]
        return _explorer_figure(
            shown,
            rows,
            labels,
            masks,
            self.cmap.value,
            self.alpha.value,
            self._title(which),
            len(self.class_list),
        )

    def _png_of(self, which: str) -> bytes:
        method = self.method_config if which == "A" else self._b()[2]
        key = (
            which,
            method,
            self._title(which),
            tuple(self.labels),
            tuple(self.class_list),
            tuple(self.picker.value),
            self.cmap.value,
            self.alpha.value,
        )
        if key not in self._png:
            fig = self.figure(which)
            try:
                self._png[key] = viz.figure_png(fig)
            finally:
                viz.close(fig)
        return self._png[key]

    def _warnings(self) -> list[str]:
        names = self.class_list
        if len(names) != 2:
            return []
        methods = [self.method_config] + ([self._b()[2]] if self.ab.value else [])
        active = any(
            isinstance(m, SurgeryConfig) and m.feature_surgery and m.redundant_features == "classes"
            for m in methods
        )
        effect = (
            "the two maps are exact complements"
            if active
            else "feature surgery would make the two maps complements"
        )
        return [
            f"⚠ the vocabulary has two classes ({', '.join(names)}): {effect} (S₂ = −S₁) and the class "
            "token's probabilities sum to 1; add classes to the vocabulary"
        ]

    def redraw(self) -> None:
        """Recompute (from the caches where possible) and show the current view (A, and B in A/B mode)."""
        start = time.perf_counter()
        inactive = self._sync_enabled()
        png_a = self._png_of("A")
        png_b = self._png_of("B") if self.ab.value else None
        self.image.value = png_a
        if png_b is not None:
            self.image_b.value = png_b
        half = "49%" if self.ab.value else None
        self.image.layout.max_width = half
        self.image_b.layout.max_width = half
        self.image_b.layout.display = None if self.ab.value else "none"
        self.render_seconds = time.perf_counter() - start
        c = self.cache
        parts = [f"<code>{html.escape(repr(self.method_config))}</code>"]
        if self.ab.value:
            parts.append(f"B: {html.escape(self._b()[0])}")
        parts += [
            f"vocabulary {len(self.class_list)} classes",
            f"drawn in {1000 * self.render_seconds:.0f} ms",
            f"maps cached {c.hits} / computed {c.misses}",
            f"forward passes {c.forwards}",
        ]
        text = " · ".join(parts)
        for warning in self._warnings():
            text += _note_html(warning, "#a60")
        if inactive and self.method.value not in GRADIENT_METHODS:
            by_reason: dict[str, list[str]] = {}
            for name, why in inactive.items():
                by_reason.setdefault(why, []).append(name)
            text += _note_html(
                "inactive: " + "; ".join(f"{', '.join(n)} ({why})" for why, n in by_reason.items())
            )
        elif inactive:
            text += _note_html(f"config controls inactive: {next(iter(inactive.values()))}")
        self.status.value = text

    # -- export ------------------------------------------------------------------------------------
    def export(self, name: str | None = None) -> list[Path]:
        """Save the current view (and B's, in A/B mode) as PNG (300 dpi) and PDF, each with a JSON
        sidecar (model, weights, method and config, vocabulary, labels, images, scores, library version).

        Files are never overwritten: the name (``name``, or one made of the images, labels and method)
        gets ``-2``, ``-3``, … when taken. Returns the written paths (PNG, PDF, JSON per view).

        Raises:
            ValueError: no image selected, or the figure folder already holds ``max_exports`` exported
                figures (JSON sidecars), when the explorer was given that bound.
        """
        folder = _figure_folder(self.figure_dir)
        images = self._selected()
        labels, names = self.labels, self.class_list
        views_count = 2 if self.ab.value else 1
        if self.max_exports is not None:
            held = sum(1 for _ in folder.glob("*.json")) if folder.is_dir() else 0
            if held + views_count > self.max_exports:
                raise ValueError(
                    f"export limit reached: {folder} holds {held} exported figures "
                    f"(max_exports={self.max_exports}); remove some to export more"
                )
        views = [("A", self.method.value, self.method_config)]
        if self.ab.value:
            _, b_name, b_method = self._b()
            views.append(("B", b_name, b_method))
        paths: list[Path] = []
        for which, method_name, method in views:
            stem = _stem(images, labels, method_name, method) if name is None else name
            if which == "B":
                stem = f"{stem}_B"
            rows = self.results(which)
            metrics = [
                {"image": row.name, "label": label, **dataclasses.asdict(score)}
                for row in rows
                for label, score in row.scores.items()
            ]
            probabilities = {
                row.name: dict(zip(labels, row.probabilities.tolist(), strict=True)) for row in rows
            }
            metadata = export_metadata(
                self.loaded,
                method_name,
                method,
                images,
                labels,
                names,
                view=which,
                title=self._title(which),
                cmap=self.cmap.value,
                alpha=self.alpha.value,
                probabilities=probabilities,
                scores=metrics,
            )
            fig = self.figure(which)
            try:
                paths += _export(fig, folder, stem, metadata)
            finally:
                viz.close(fig)
        return paths

    def _export_clicked(self) -> None:
        try:
            paths = self.export()
        except (ValueError, TypeError, OSError) as error:
            self.status.value = _error_html(error)
            return
        self.status.value = "saved " + ", ".join(html.escape(str(p)) for p in paths)
