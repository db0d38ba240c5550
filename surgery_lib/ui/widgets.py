"""Interactive widgets (ipywidgets 8, JupyterLab 4): the surgery explorer, the attention explorer, the
caption explorer and the text -> SAM explorer.

The explorer's controls are generated from :class:`~surgery_lib.config.SurgeryConfig`'s fields — a
checkbox per bool, a bounded slider per int (``depth`` up to the model's blocks), a dropdown per
``Literal`` — so a new flag gets its control for free; a method dropdown sets them all to a preset of
:data:`~surgery_lib.methods.METHODS` (or switches to a gradient explainer). Results are cached: image
tokens per (image, :data:`~surgery_lib.config.ARCHITECTURE_FIELDS`), maps per (image, method, labels,
vocabulary) and rendered figures per view, so toggling feature surgery recomputes no forward pass and
toggling back to a seen state redraws from the cache. Every cache is a bounded LRU (a long session, such
as a kernel of the classroom app, does not grow without bound).

Feature surgery subtracts the mean over the classes it is given: with exactly two classes the two maps
are complements (``S₂ = −S₁``). The explorer therefore runs it over a *vocabulary* (the image source's
class list by default) and draws only the labels shown.

Stable DOM classes (the browser test relies on them): the explorer box ``surgery-explorer``, each flag's
checkbox ``surgery-flag-<field>`` (every config control also has ``surgery-control-<field>``), the method
dropdown ``surgery-explorer-method``, the labels and vocabulary boxes ``surgery-explorer-labels`` /
``surgery-explorer-vocabulary``, the A/B checkbox ``surgery-explorer-ab`` and B's method dropdown
``surgery-explorer-method-b``, the rendered figures ``surgery-explorer-image`` (A) and
``surgery-explorer-image-b`` (B, hidden unless A/B is on), the status line ``surgery-explorer-status``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import html
import json
import os
import re
import time
import typing
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, get_args, get_origin

import numpy as np
import torch
from PIL import Image

from surgery_lib.config import ARCHITECTURE_FIELDS, ATTENTION_KINDS, GradientConfig, SurgeryConfig
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.eval.metrics import MapScores, map_scores
from surgery_lib.maps.explain import configured_similarity, encode_image_tokens, explain
from surgery_lib.maps.features import similarity_map
from surgery_lib.maps.images import ImageLike, to_rgb
from surgery_lib.maps.text import empty_prompt_features, text_features, validate_labels
from surgery_lib.methods import GRADIENT_METHODS, INT_BOUNDS, METHODS, method_names, resolve_method
from surgery_lib.model.adapters import tower_info
from surgery_lib.model.engine import VIT_ONLY_DEFAULTS
from surgery_lib.model.introspection import attention_maps
from surgery_lib.model.loading import LoadedCLIP
from surgery_lib.model.surgery import max_depth
from surgery_lib.ui import viz

__all__ = [
    "ARCHITECTURE_FIELDS",
    "CLASS_TOKEN",
    "CUSTOM",
    "DISPLAY_SIDE",
    "INT_BOUNDS",
    "PINNED",
    "AttentionExplorer",
    "CaptionExplorer",
    "Explorer",
    "MapCache",
    "SamExplorer",
    "ViewRow",
    "config_controls",
    "config_from_controls",
    "display_size",
    "export_metadata",
    "max_depth",
    "unique_stem",
]

DISPLAY_SIDE = 224
"""Longest side, in pixels, at which the explorer draws maps and images."""

CUSTOM = "custom"
"""What the method dropdowns show for a config that is no preset of :data:`METHODS`."""

PINNED = "pinned A"
"""B's method when "pin A as B" copied A's current method."""

_VIT_ONLY = tuple(VIT_ONLY_DEFAULTS)
"""Config fields a ModifiedResNet ignores or refuses (its only attention is the attention pool)."""

_DEFAULTS = SurgeryConfig()


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

    bool → ``Checkbox`` (DOM class ``surgery-flag-<name>``); ``depth`` → ``IntSlider`` in
    ``[0, depth_max]`` (a larger value is shown as ``depth_max``); other ints → ``IntSlider`` within
    :data:`INT_BOUNDS` (widened to hold a larger value); ``Literal`` → ``Dropdown`` of its values.
    Every control also has the DOM class ``surgery-control-<name>``.
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
            if f.name == "depth":
                low, high, value = 0, depth_max, min(value, depth_max)
            else:
                low, high = INT_BOUNDS.get(f.name, (0, depth_max))
                high = max(high, value)
            control = w.IntSlider(value=value, min=low, max=high, description=f.name, continuous_update=False)
        elif get_origin(kind) is Literal:
            control = w.Dropdown(options=list(get_args(kind)), value=value, description=f.name)
        else:  # pragma: no cover - a new field type needs a control here
            raise TypeError(f"no widget for SurgeryConfig.{f.name} of type {kind}")
        if kind is not bool:
            control.style.description_width = "initial"  # the whole field name, not "attn_temp…"
        control.add_class(f"surgery-control-{f.name}")
        controls[f.name] = control
    return controls


def config_from_controls(controls: Mapping[str, object]) -> SurgeryConfig:
    """The config the controls show (validated like any new config: a conflicting combination raises
    ``ValueError`` naming it)."""
    return SurgeryConfig(**{name: control.value for name, control in controls.items()})


def display_size(image: Image.Image, side: int = DISPLAY_SIDE) -> tuple[int, int]:
    """``(H, W)`` with the image's aspect ratio and the longest side ``side``."""
    scale = side / max(image.width, image.height)
    return max(1, round(image.height * scale)), max(1, round(image.width * scale))


def _class_list(labels: Sequence[str], vocabulary: Sequence[str] | None) -> list[str]:
    """``labels`` first, then the vocabulary's other names (each once, in order), as
    :func:`~surgery_lib.maps.explain.explain` builds its class list."""
    labels = list(labels)
    if not vocabulary:
        return labels
    return [*labels, *(v for v in dict.fromkeys(vocabulary) if v not in labels)]


Method = SurgeryConfig | GradientConfig


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

    def _image_tokens(self, key: str, image: Image.Image, config: SurgeryConfig):
        arch = (key, *(getattr(config, name) for name in ARCHITECTURE_FIELDS))
        if arch not in self._tokens:
            batch = self.loaded.reference_preprocess(image).unsqueeze(0)
            self._tokens[arch] = encode_image_tokens(self.loaded.model, batch, config)
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
            tokens, grid = self._image_tokens(key, image, method)
            texts = text_features(model, tokenizer, names)
            sim = configured_similarity(model, tokenizer, tokens, texts, method)[..., : len(labels)]
            probabilities = torch.softmax(100.0 * tokens[:, 0] @ texts.t(), dim=-1)[0, : len(labels)]
            computed = _Computed(similarity_map(sim[:, 1:], size, grid)[0], probabilities)
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


def _one_or_many(
    image: ImageLike | AnnotatedImage | Sequence[AnnotatedImage] | Mapping[str, ImageLike],
) -> list[AnnotatedImage]:
    """One image (named ``"image"``), one record, or a picker's worth of them (as the explorer takes)."""
    if isinstance(image, AnnotatedImage):
        image = [image]
    if isinstance(image, (Image.Image, np.ndarray, torch.Tensor, str)):
        return [AnnotatedImage("image", _rgb(image, "the image"))]
    return _as_annotated(image)


def _parse_labels(text: str) -> list[str]:
    return validate_labels([part.strip() for part in text.split(",") if part.strip()])


def _parse_names(text: str) -> list[str]:
    """A comma-separated list that may be empty (the vocabulary box)."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _preset_name(config: SurgeryConfig, presets: Mapping[str, SurgeryConfig]) -> str:
    return next((name for name, preset in presets.items() if preset == config), CUSTOM)


def _describe(name: str, method: Method) -> str:
    """``CLIP Surgery (surgery)`` for a preset or a gradient explainer; ``custom (attention='qq',
    depth=3)`` for another config (the fields that differ from the paper's)."""
    if name != CUSTOM or not isinstance(method, SurgeryConfig):
        title = viz.method_title(name)
        return name if title == name else f"{title} ({name})"
    changed = [
        f"{f.name}={getattr(method, f.name)!r}"
        for f in dataclasses.fields(SurgeryConfig)
        if getattr(method, f.name) != getattr(_DEFAULTS, f.name)
    ]
    return f"{CUSTOM} ({', '.join(changed) or 'the paper'})"


class _View:
    """What every explorer shares: ``widget`` shows in a notebook; a control change redraws, and a bad
    input (unknown label, empty caption, bad config) is reported in ``status``, keeping the last figure."""

    widget: typing.Any  # the ipywidgets container shown in the notebook
    status: typing.Any  # an ipywidgets.HTML line under it
    _quiet = False  # True while controls are set programmatically (their observers do nothing)

    def redraw(self) -> None:
        raise NotImplementedError

    def _on_change(self, _change: object = None) -> None:
        if self._quiet:
            return
        try:
            self.redraw()
        except (ValueError, TypeError) as error:
            self.status.value = _error_html(error)

    @contextlib.contextmanager
    def _quietly(self) -> Iterator[None]:
        """Set controls without their observers redrawing (the caller redraws once)."""
        before, self._quiet = self._quiet, True
        try:
            yield
        finally:
            self._quiet = before

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


class _PickedImageView(_View):
    """An explorer of one image at a time, picked by name (``picker``) among ``images``."""

    images: dict[str, AnnotatedImage]
    picker: typing.Any  # an ipywidgets.Dropdown of the image names

    @property
    def picture(self) -> Image.Image:
        """The image shown."""
        return self.images[self.picker.value].image


def _error_html(error: Exception) -> str:
    return f"<span style='color:#b00'>{html.escape(str(error))}</span>"


def _note_html(text: str, colour: str = "#777") -> str:
    return f"<br><span style='color:{colour}'>{html.escape(text)}</span>"


# ---------------------------------------------------------------------------------------------- export
_HASHES: dict[tuple[str, int, int], str] = {}


def _sha256(path: Path) -> str:
    """The file's SHA-256 (cached per path, size and modification time: weights files are large)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _weights(loaded: LoadedCLIP) -> dict:
    """What identifies the weights: ``{"tag": ...}`` for an open_clip pretrained tag, ``{"file": ...,
    "sha256": ...}`` for a weights file (the shipped toy weights, a checkpoint), ``{"tag": None}`` for
    random weights."""
    source = loaded.pretrained
    if source is None:
        return {"tag": None, "note": "random weights"}
    path = Path(source)
    if path.is_file():
        return {"file": str(path), "sha256": _sha256(path)}
    return {"tag": str(source)}


def _library_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("surgery_lib")
    except PackageNotFoundError:
        return "unknown"


def export_metadata(
    loaded: LoadedCLIP,
    method_name: str,
    method: Method,
    images: Sequence[str],
    labels: Sequence[str],
    vocabulary: Sequence[str],
    **extra: object,
) -> dict:
    """The JSON sidecar of an exported figure: model, weights (tag, or file and SHA-256), method and
    config (``dataclasses.asdict``), vocabulary, labels, image names and the library version."""
    return {
        "model": loaded.name,
        "weights": _weights(loaded),
        "method": method_name,
        "config": dataclasses.asdict(method),
        "method_kind": "gradient" if isinstance(method, GradientConfig) else "dense",
        "vocabulary": list(vocabulary),
        "labels": list(labels),
        "image": images[0] if len(images) == 1 else list(images),
        "images": list(images),
        "library_version": _library_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


_STEM_CHARS = 120


def _safe_part(text: str) -> str:
    """``text`` with the characters :func:`~surgery_lib.ui.viz.save_figure` keeps in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "x"


def unique_stem(folder: Path, stem: str, suffixes: Sequence[str] = ("png", "pdf", "json")) -> str:
    """``stem``, or ``stem-2``, ``stem-3``, … : the first for which no ``<stem>.<suffix>`` exists in
    ``folder``; its JSON file is created (empty) at once, so that two exports never pick the same.

    Names use the characters :func:`~surgery_lib.ui.viz.save_figure` keeps (others become ``_``)."""
    folder.mkdir(parents=True, exist_ok=True)
    base = _safe_part(stem)[:_STEM_CHARS]
    for n in range(1, 100_000):
        candidate = base if n == 1 else f"{base}-{n}"
        if any((folder / f"{candidate}.{s}").exists() for s in suffixes):
            continue
        try:
            with open(folder / f"{candidate}.json", "x"):
                pass
        except FileExistsError:  # taken meanwhile by another export
            continue
        return candidate
    raise FileExistsError(f"no free file name for {base!r} in {folder}")  # pragma: no cover


def _export(fig, folder: Path, stem: str, metadata: dict) -> list[Path]:
    """Save ``fig`` as ``<stem>.png`` and ``.pdf`` (a new name, never overwriting) with a JSON sidecar
    holding ``metadata`` (and what :func:`~surgery_lib.ui.viz.save_figure` records: the files, the
    command, the ``SURGERY_*`` parameters); returns the three paths. The figure stays open."""
    chosen = unique_stem(folder, stem)
    sidecar = folder / f"{chosen}.json"
    sidecar.write_text(json.dumps(metadata, indent=2, ensure_ascii=False, default=str) + "\n")
    # save_figure merges its own record into the existing sidecar (whose keys win); keep_open: a
    # button's callback must not display the figure in the notebook
    paths = viz.save_figure(fig, chosen, folder, keep_open=True)
    return [*paths, sidecar]


def _figure_folder(figure_dir: str | os.PathLike | None) -> Path:
    return Path(figure_dir or os.environ.get(viz.FIGURES_ENV, "figures"))


def _stem(images: Sequence[str], labels: Sequence[str], method_name: str, method: Method) -> str:
    """``<images>_<labels>_<method>``; a custom config is named by a short hash of its fields."""
    if method_name == CUSTOM:
        digest = hashlib.sha1(repr(dataclasses.asdict(method)).encode()).hexdigest()[:8]
        method_name = f"{CUSTOM}-{digest}"
    parts = ["-".join(_safe_part(n) for n in images), "-".join(_safe_part(x) for x in labels), method_name]
    shown = [p[:48] for p in parts[:2]] + [parts[2]]
    return "_".join(_safe_part(p) for p in shown)


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
    p = viz._as_array(probabilities).reshape(-1)
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
    plt = viz._pyplot()
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
            heat = viz._as_array(row.maps)
            axes[r, 0].imshow(np.asarray(image))
            viz._bare(axes[r, 0])
            axes[r, 0].set_ylabel(viz.plain_text(row.name), fontsize=7)
            if row.scores:
                axes[r, 0].set_xlabel("white outline: ground truth", fontsize=6.5)
            bars_title = f"class token p\n(over {n_classes} classes)" if r == 0 else None
            _probability_bars(axes[r, 1], labels, row.probabilities, bars_title)
            for j, label in enumerate(labels):
                ax = axes[r, 2 + j]
                viz._overlay(ax, image, heat[:, :, j], cmap, alpha, grey_image=True)  # as the figures
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
            viz._opaque(cmap), ax=axes[:, 2:].ravel().tolist(), fraction=0.03, pad=0.01, label="map (min-max)"
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
        return config_from_controls(self.controls)

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
                if values[name] == getattr(_DEFAULTS, name):
                    inactive[name] = "ViT towers only"
        if values["depth"] == 0:
            for name in ARCHITECTURE_FIELDS:
                if name != "depth":
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


class _LRU(dict):
    """A dict that keeps its ``size`` most recently used entries (set or read with ``d[key]``)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __getitem__(self, key):
        value = super().pop(key)  # KeyError when missing, as a dict
        super().__setitem__(key, value)  # now the newest
        return value

    def __setitem__(self, key, value) -> None:
        self.pop(key, None)
        super().__setitem__(key, value)
        while len(self) > self.size:
            del self[next(iter(self))]


def _picker(w, names: list[str]):
    """An image dropdown (hidden when there is one image)."""
    picker = w.Dropdown(options=names, value=names[0], description="image")
    if len(names) == 1:
        picker.layout.display = "none"
    return picker


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
            fig = self.figure()
            try:
                self._png[key] = viz.figure_png(fig)
            finally:
                viz.close(fig)
        self.image.value = self._png[key]
        where = "the class token" if marker is None else f"patch {marker}"
        self.status.value = (
            f"{html.escape(self.picker.value)} · block {self.block.value} · query {where} · "
            f"{len(self.kinds)} kinds · pick the query with the sliders (a click on the image cannot be "
            "read: ipywidgets images have no click events)"
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
        return cap.words, word_importance(sim)[0], similarity_map(sim[:, 1:], size, grid)[0]

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
            fig = self.figure()
            try:
                self._png[key] = viz.figure_png(fig)
            finally:
                viz.close(fig)
        self.image.value = self._png[key]
        self.status.value = (
            f"target {html.escape(key[2])} · {html.escape(key[1])} · cached {self.hits} / drawn {self.misses}"
        )
