"""The method registry: every named method, one file each.

Each module of this package (other than :mod:`~surgery_lib.methods.base`) defines ``METHODS``, a tuple
of :class:`~surgery_lib.methods.base.Method` records; they are collected here on import, in the order of
their ``position``. Everything the library keeps about methods is read from these records:

* :data:`REGISTRY` — name -> :class:`Method`;
* :data:`METHODS` — the dense methods' :class:`~surgery_lib.config.SurgeryConfig` presets;
  :data:`GRADIENT_METHODS` — the gradient explainers' :class:`~surgery_lib.config.GradientConfig`;
* :data:`METHOD_TITLES`, :data:`METHOD_COLORS` — how figures name and colour them;
* :data:`PROTOCOL_PRESETS` — each method's official evaluation protocol;
* :data:`INT_BOUNDS` — the Explorer's slider bounds of the methods' knobs.

To add a method, add one file here defining ``METHODS = (Method(...),)`` (its golden file and test go
to ``tests/``); nothing else in the library changes. The presets are also named to the forward engine
(:func:`surgery_lib.model.engine.name_preset`), so its errors name the method.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping, Sequence
from types import MappingProxyType

from surgery_lib.config import GradientConfig, SurgeryConfig
from surgery_lib.methods.base import TOWERS, Method
from surgery_lib.model.engine import name_preset

_NOT_METHODS = frozenset({"base"})


def _collect(path: Sequence[str], package: str) -> dict[str, Method]:
    """Every ``METHODS`` record of the modules of ``package`` (found on ``path``), by position;
    duplicate names or presets raise."""
    found: list[Method] = []
    for info in pkgutil.iter_modules(path):
        if info.name in _NOT_METHODS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{package}.{info.name}")
        records = getattr(module, "METHODS", None)
        if not isinstance(records, tuple) or not all(isinstance(m, Method) for m in records) or not records:
            raise TypeError(f"{module.__name__} must define METHODS, a non-empty tuple of Method records")
        found.extend(records)
    registry: dict[str, Method] = {}
    for method in sorted(found, key=lambda m: (m.position, m.name)):
        if method.name in registry:
            raise ValueError(f"two methods are named {method.name!r}")
        twin = next((m.name for m in registry.values() if m.config == method.config), None)
        if twin is not None:
            raise ValueError(f"methods {twin!r} and {method.name!r} have the same config")
        registry[method.name] = method
    return registry


REGISTRY: Mapping[str, Method] = MappingProxyType(_collect(__path__, __name__))
"""Every method: name -> :class:`Method`, in listing order."""

METHODS: Mapping[str, SurgeryConfig] = MappingProxyType(
    {name: m.config for name, m in REGISTRY.items() if isinstance(m.config, SurgeryConfig)}
)
"""The dense methods: name -> :class:`~surgery_lib.config.SurgeryConfig` (read-only). ``raw``: vanilla
CLIP; ``surgery``: CLIP Surgery as published; the others are documented in their files."""

GRADIENT_METHODS: Mapping[str, GradientConfig] = MappingProxyType(
    {name: m.config for name, m in REGISTRY.items() if isinstance(m.config, GradientConfig)}
)
"""The gradient explainers: name -> :class:`~surgery_lib.config.GradientConfig` (read-only)."""

METHOD_TITLES: Mapping[str, str] = MappingProxyType({name: m.title for name, m in REGISTRY.items()})
"""Display names for figure titles and tables."""

METHOD_COLORS: Mapping[str, str] = MappingProxyType({name: m.color for name, m in REGISTRY.items()})
"""One colour per method, shared by every chart (raw CLIP grey, CLIP Surgery blue)."""

PROTOCOL_PRESETS: Mapping[str, Mapping[str, object]] = MappingProxyType(
    {name: m.protocol for name, m in REGISTRY.items() if m.protocol is not None}
)
"""Each method's official evaluation protocol (the settings it fills), for those that have one."""

INT_BOUNDS: Mapping[str, tuple[int, int]] = MappingProxyType(
    {knob: bounds for m in REGISTRY.values() for knob, bounds in m.knobs.items()}
)
"""Slider bounds of the methods' int knobs (``depth`` runs from 0 to the model's blocks)."""

RAW_VS_SURGERY: Mapping[str, SurgeryConfig] = MappingProxyType({k: METHODS[k] for k in ("raw", "surgery")})
"""The paper's comparison: vanilla CLIP beside CLIP Surgery."""

for _name, _method in REGISTRY.items():
    if isinstance(_method.config, SurgeryConfig):
        name_preset(_method.config, _name)


def method_names() -> tuple[str, ...]:
    """Every method name: the dense methods, then the gradient explainers."""
    return (*METHODS, *GRADIENT_METHODS)


def _unknown(method: str) -> ValueError:
    return ValueError(
        f"unknown method {method!r}; known methods: {', '.join(METHODS)}; "
        f"gradient methods: {', '.join(GRADIENT_METHODS)}"
    )


def get_method(name: str) -> Method:
    """The :class:`Method` record of ``name``; an unknown name raises ``ValueError`` listing the known."""
    if not isinstance(name, str):
        raise TypeError(f"expected a method name, got {type(name).__name__}")
    if name not in REGISTRY:
        raise _unknown(name)
    return REGISTRY[name]


def needs_vfm(config: object) -> bool:
    """Whether ``config`` runs the forward of a method that reads a vision foundation model beside CLIP
    (:attr:`Method.needs_vfm`, e.g. ProxyCLIP's), whatever else was changed in it."""
    forward = getattr(config, "forward", "")
    return bool(forward) and any(
        m.needs_vfm and getattr(m.config, "forward", "") == forward for m in REGISTRY.values()
    )


def method_config(method: str | SurgeryConfig | None) -> SurgeryConfig:
    """The config a method name (a key of :data:`METHODS`) or a config stands for; None: the paper's.

    Raises:
        ValueError: an unknown name (the message lists the known ones), or the name of a gradient
            method (those have no :class:`SurgeryConfig`: see :func:`resolve_method`).
        TypeError: neither a name nor a :class:`SurgeryConfig`.
    """
    if method is None:
        return SurgeryConfig.paper()
    if isinstance(method, SurgeryConfig):
        return method
    if isinstance(method, str):
        if method in GRADIENT_METHODS:
            raise ValueError(
                f"{method!r} is a gradient method, not a SurgeryConfig preset: pass it as "
                "explain(..., method=...) (dense methods: " + ", ".join(METHODS) + ")"
            )
        if method not in METHODS:
            raise _unknown(method)
        return METHODS[method]
    raise TypeError(f"expected a method name or a SurgeryConfig, got {type(method).__name__}")


def resolve_method(
    method: str | SurgeryConfig | GradientConfig | None,
) -> SurgeryConfig | GradientConfig:
    """The config of any method name (:func:`method_names`) or config; None: the paper's.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        TypeError: neither a name nor a config.
    """
    if isinstance(method, GradientConfig):
        return method
    if isinstance(method, str) and method in GRADIENT_METHODS:
        return GRADIENT_METHODS[method]
    return method_config(method)


def method_name(config: SurgeryConfig | GradientConfig) -> str | None:
    """The registry name of a config that is a preset, else ``None``."""
    return next((name for name, m in REGISTRY.items() if m.config == config), None)


__all__ = [
    "GRADIENT_METHODS",
    "INT_BOUNDS",
    "METHODS",
    "METHOD_COLORS",
    "METHOD_TITLES",
    "PROTOCOL_PRESETS",
    "RAW_VS_SURGERY",
    "REGISTRY",
    "TOWERS",
    "Method",
    "get_method",
    "method_config",
    "method_name",
    "method_names",
    "needs_vfm",
    "resolve_method",
]
