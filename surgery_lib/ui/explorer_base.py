"""The explorers' shared parts: config controls generated from SurgeryConfig, input parsing, the
view base classes, bounded caches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import typing
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal, get_args, get_origin

import numpy as np
import torch
from PIL import Image

from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.data.records import AnnotatedImage
from surgery_lib.maps.images import ImageLike, to_rgb
from surgery_lib.maps.text import validate_labels
from surgery_lib.methods import INT_BOUNDS
from surgery_lib.model import VIT_ONLY_DEFAULTS
from surgery_lib.ui import viz

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
        if f.name == "forward":  # a method's own forward is picked with the method, not toggled
            continue
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


def config_from_controls(controls: Mapping[str, object], base: SurgeryConfig | None = None) -> SurgeryConfig:
    """The config the controls show, over ``base`` (the selected method's preset: the fields without a
    control, a method's own ``forward``, are kept; default: the defaults), validated like any new config:
    a conflicting combination raises ``ValueError`` naming it."""
    return (base or SurgeryConfig()).replace(**{name: control.value for name, control in controls.items()})


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


def rendered_png(fig) -> bytes:
    """The PNG bytes of an explorer's figure (screen resolution), the figure closed afterwards, also on
    errors."""
    try:
        return viz.figure_png(fig)
    finally:
        viz.close(fig)
