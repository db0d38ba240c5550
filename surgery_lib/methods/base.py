"""What a method is: one record per named method of the zoo (:class:`Method`).

Every file of :mod:`surgery_lib.methods` other than this one and the registry defines ``METHODS``, a
tuple of :class:`Method` records (a method and its named variants, e.g. CLIP Surgery's ablations). The
registry (:mod:`surgery_lib.methods`) collects them; every table the library keeps about methods
(the presets, titles, colours, official protocols, the Explorer's knobs, which towers run what) is read
from these records, so adding a method is adding one file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from surgery_lib.config import GradientConfig, SurgeryConfig

TOWERS: tuple[str, ...] = ("vit", "rn")
"""The tower kinds (:attr:`~surgery_lib.model.TowerInfo.kind`)."""


@dataclass(frozen=True)
class Method:
    """One named method.

    Attributes:
        name: the registry key (``surgery explain --method NAME``, ``explain(..., method=NAME)``).
        title: how figures and tables name it.
        color: its colour in every chart (hex).
        config: the forward it runs: a :class:`~surgery_lib.config.SurgeryConfig` (dense methods) or a
            :class:`~surgery_lib.config.GradientConfig` (gradient explainers).
        reference: where it comes from (paper, venue, official code).
        position: where it is listed (tables, dropdowns): ascending.
        towers: the tower kinds it runs on (:data:`TOWERS`).
        protocol: its official evaluation protocol: values of the evaluation settings it fills
            (``protocol``, ``templates``, ``image_size``, ``window``, ``stride``, ``logit_scale``,
            ``bg_threshold``, ``pamr_steps``; a dict value is per dataset, ``None``: any other; an
            ``"official"`` sub-dict holds what only ``--protocol official`` reads), or ``None`` when it has
            none of its own.
        knobs: the int config fields it uses beyond depth, with the Explorer's slider bounds.
        needs_vfm: its forward also reads a vision foundation model paired with CLIP
            (:func:`~surgery_lib.model.with_vfm`, e.g. ProxyCLIP); on a CLIP alone it refuses.
    """

    name: str
    title: str
    color: str
    config: SurgeryConfig | GradientConfig
    reference: str
    position: float
    towers: tuple[str, ...] = TOWERS
    protocol: Mapping[str, object] | None = None
    knobs: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    needs_vfm: bool = False

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.strip() or " " in self.name:
            raise ValueError(f"a method name is one word without spaces, got {self.name!r}")
        if not isinstance(self.config, (SurgeryConfig, GradientConfig)):
            raise TypeError(f"method {self.name!r}: config must be a SurgeryConfig or GradientConfig")
        unknown = set(self.towers) - set(TOWERS)
        if not self.towers or unknown:
            raise ValueError(f"method {self.name!r}: towers must be some of {TOWERS}, got {self.towers}")
        for knob, (low, high) in self.knobs.items():
            if not isinstance(self.config, SurgeryConfig) or not hasattr(self.config, knob):
                raise ValueError(f"method {self.name!r}: knob {knob!r} is no SurgeryConfig field")
            if not low <= getattr(self.config, knob) <= high:
                raise ValueError(f"method {self.name!r}: its {knob} is outside its bounds {low}..{high}")
        object.__setattr__(self, "knobs", MappingProxyType(dict(self.knobs)))
        if self.protocol is not None:
            object.__setattr__(self, "protocol", MappingProxyType(dict(self.protocol)))

    @property
    def is_gradient(self) -> bool:
        """Whether it is a gradient explainer (no modified forward)."""
        return isinstance(self.config, GradientConfig)

    def runs_on(self, tower: str) -> bool:
        """Whether it runs on the tower kind ``tower`` (``"vit"``, ``"rn"``)."""
        return tower in self.towers
