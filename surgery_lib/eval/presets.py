"""What an evaluation method name means: a dense method (with the feature-surgery switch ``+fs`` / ``-fs``),
a gradient explainer or a null (:data:`NULL_METHODS`), and which part of a method's official protocol the
``explain`` task uses. See :mod:`surgery_lib.eval.runner`.
"""

from __future__ import annotations

from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.methods import GRADIENT_METHODS, METHODS, PROTOCOL_PRESETS

EXPLAIN_PROTOCOL_FIELDS: tuple[str, ...] = ("image_size", "templates")
"""The protocol fields the ``explain`` task uses: the input side (n×n) and the prompt templates. The
others (``protocol``, ``window``, ``stride``, ``logit_scale``, ``bg_threshold``, ``pamr_steps``) decide
how a segmentation is made from the maps and leave the explainability scores unchanged: the explain
task scores each class's own min-max normalised map, with no softmax over classes, no sliding window,
no background threshold and no PAMR."""

FEATURE_SURGERY_SUFFIXES: dict[str, bool] = {"+fs": True, "-fs": False}
"""Method-name suffixes that switch feature surgery on or off for any dense method:
``"<name>+fs"`` is ``METHODS[name].replace(feature_surgery=True)`` and ``"<name>-fs"`` the same with
``False`` (e.g. ``maskclip+fs``; ``surgery-fs`` is ``surgery-no-fs``, ``raw+fs``
``feature-surgery-only``). Feature surgery is then an orthogonal switch, so methods can be compared at
equal feature surgery."""

NULL_METHODS: tuple[str, ...] = ("null:random", "null:centre")
"""Pseudo-methods of the ``explain`` task: maps with no information about the image, scored like a
method's (this project's nulls, :mod:`surgery_lib.eval.nulls`). ``null:random``: :data:`NULL_DRAWS`
draws per (image, class) of uniform noise on the model's token grid at the run's input size, upsampled
bilinearly like CLIP's maps (each draw stored as one pair, so ``pairs`` counts draws and
``opposite_rate`` is the expected share); ``null:centre``: a centred Gaussian (σ = 0.25 × each side)."""

NULL_DRAWS = 10
"""Draws of the random map per (image, class) pair of ``null:random``."""


def resolve_eval_method(name: str) -> SurgeryConfig | GradientConfig | str:
    """What an evaluation method name stands for: a :class:`SurgeryConfig` (a name of
    :data:`~surgery_lib.methods.METHODS`, or one with a :data:`FEATURE_SURGERY_SUFFIXES` suffix), a
    :class:`GradientConfig` (a name of :data:`~surgery_lib.methods.GRADIENT_METHODS`), or the name
    itself for a null of :data:`NULL_METHODS`.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or a feature-surgery suffix on
            a gradient method or a null (they have no feature surgery).
    """
    if not isinstance(name, str):
        raise TypeError(f"a method name must be a string, got {type(name).__name__}")
    if name in METHODS:
        return METHODS[name]
    if name in GRADIENT_METHODS:
        return GRADIENT_METHODS[name]
    if name in NULL_METHODS:
        return name
    for suffix, on in FEATURE_SURGERY_SUFFIXES.items():
        base = name[: -len(suffix)]
        if name.endswith(suffix) and base in METHODS:
            return METHODS[base].replace(feature_surgery=on)
        if name.endswith(suffix) and (base in GRADIENT_METHODS or base in NULL_METHODS):
            raise ValueError(
                f"method {name!r}: {base!r} has no feature surgery (it applies to the dense methods of "
                f"METHODS only: {', '.join(METHODS)})"
            )
    raise ValueError(
        f"unknown method {name!r}; expected one of {tuple(METHODS)}, a gradient explainer of "
        f"{tuple(GRADIENT_METHODS)} (explain task), a null of {NULL_METHODS} (explain task), or a dense "
        "method with the suffix '+fs' / '-fs' (feature surgery on / off)"
    )


def with_feature_surgery(name: str, on: bool) -> str:
    """The evaluation method name of dense method ``name`` with feature surgery ``on`` or off: the
    registry's own name when a preset already has that setting (``surgery`` with ``on``, ``raw``
    without), else ``"<name>+fs"`` / ``"<name>-fs"`` (:data:`FEATURE_SURGERY_SUFFIXES`).

    Raises:
        ValueError: ``name`` is not a dense method of :data:`~surgery_lib.methods.METHODS`.
    """
    if name not in METHODS:
        raise ValueError(
            f"feature surgery is a switch of the dense methods {tuple(METHODS)}, not of {name!r}"
        )
    if METHODS[name].feature_surgery == on:
        return name
    return f"{name}{'+fs' if on else '-fs'}"


def explain_protocol(preset: str | None, dataset: str | None = None) -> tuple[dict[str, object], list[str]]:
    """The part of a method's official protocol (:data:`PROTOCOL_PRESETS`) that the ``explain`` task
    uses, and the names of the preset's fields it does not use (:data:`EXPLAIN_PROTOCOL_FIELDS`):
    ``({"image_size": ..., "templates": ...}, ["protocol", "window", ...])``. Per-dataset values are
    read for ``dataset``. A sliding preset's ``image_size`` (its short side, ClearCLIP's 448) is the
    explain task's n×n input side; a preset without one runs at the model's native size.
    ``preset=None`` (no official protocol, e.g. raw CLIP or a gradient explainer): ``({}, [])``.

    Raises:
        ValueError: an unknown preset.
    """
    if preset is None:
        return {}, []
    if preset not in PROTOCOL_PRESETS:
        raise ValueError(f"unknown protocol preset {preset!r}; expected one of {tuple(PROTOCOL_PRESETS)}")
    used, unused = {}, []
    for name, value in PROTOCOL_PRESETS[preset].items():
        if name == "official":  # not a field: the official segmentor's own values (segmentation only)
            continue
        if isinstance(value, dict):
            value = value.get(dataset, value[None])
        if name in EXPLAIN_PROTOCOL_FIELDS:
            used[name] = value
        else:
            unused.append(name)
    return used, unused
