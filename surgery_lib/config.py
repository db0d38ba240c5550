"""The surgery configuration: one frozen dataclass, one field per modification of the paper.

Presets: :meth:`SurgeryConfig.off` (vanilla CLIP) and :meth:`SurgeryConfig.paper` (CLIP Surgery as
published: v-v attention on a dual path over the last 6 blocks, FFN skipped on the new path, feature
surgery on). Widgets are generated from the fields, so a new flag gets its control for free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal, get_args

AttentionKind = Literal["qk", "vv", "qq", "kk", "identity"]
"""Which token pairs build the attention matrix of the new path.

``qk``: ordinary self-attention; ``vv``: the paper's value-value attention;
``qq`` / ``kk``: query-query and key-key attention (analysis only);
``identity``: no attention mixing at all, each token keeps its own value (as in MaskCLIP).
"""

RedundantFeatures = Literal["classes", "empty_prompt"]
"""What feature surgery subtracts: the (weighted) mean over the given classes, or the features of
the empty prompt ``""``."""

ATTENTION_KINDS: tuple[str, ...] = get_args(AttentionKind)
REDUNDANT_FEATURES: tuple[str, ...] = get_args(RedundantFeatures)


@dataclass(frozen=True)
class SurgeryConfig:
    """Which of CLIP Surgery's modifications are on.

    Fields (in the paper's words):
        attention: attention kind on the new path (``"vv"`` in the paper).
        dual_path: keep the original q-k path running beside the new one; the class token is read
            from the original path, so image-level predictions stay vanilla CLIP's. Without it the
            surgery blocks modify the single path itself.
        skip_ffn: the new path skips the FFN (MLP) of the surgery blocks.
        depth: number of surgery blocks, counted from the last block (paper: 6 for every ViT).
            ``0`` means no architecture surgery. On ModifiedResNet towers the only attention is the
            attention pooling: ``depth >= 1`` applies ``attention`` to it, for every token including
            the class token (as the reference code does); ``dual_path`` and ``skip_ffn`` do not apply.
        feature_surgery: subtract the redundant features from the image-text similarity.
        redundant_features: what feature surgery subtracts (``"classes"``: the weighted class mean,
            the paper's multi-class form; ``"empty_prompt"``: the features of the empty prompt).
    """

    attention: AttentionKind = "vv"
    dual_path: bool = True
    skip_ffn: bool = True
    depth: int = 6
    feature_surgery: bool = True
    redundant_features: RedundantFeatures = "classes"

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"unknown attention kind {self.attention!r}; expected one of {ATTENTION_KINDS}")
        if self.redundant_features not in REDUNDANT_FEATURES:
            raise ValueError(
                f"unknown redundant_features {self.redundant_features!r}; "
                f"expected one of {REDUNDANT_FEATURES}"
            )
        for name in ("dual_path", "skip_ffn", "feature_surgery"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"SurgeryConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 0:
            raise ValueError(f"SurgeryConfig.depth must be an int >= 0, got {self.depth!r}")

    @classmethod
    def off(cls) -> SurgeryConfig:
        """Vanilla CLIP: no architecture surgery, plain cosine similarity."""
        return cls(attention="qk", dual_path=False, skip_ffn=False, depth=0, feature_surgery=False)

    @classmethod
    def paper(cls) -> SurgeryConfig:
        """CLIP Surgery as published (arXiv 2304.05653)."""
        return cls()

    @property
    def architecture_surgery(self) -> bool:
        """True when the image tower runs differently from vanilla CLIP."""
        return self.depth > 0

    def replace(self, **changes: object) -> SurgeryConfig:
        """A copy with some fields changed (validated like a new config)."""
        return dataclasses.replace(self, **changes)


METHODS: Mapping[str, SurgeryConfig] = MappingProxyType(
    {
        "raw": SurgeryConfig.off(),
        "surgery": SurgeryConfig.paper(),
    }
)
"""The one registry of named methods: name -> config (read-only). ``raw`` is vanilla CLIP, ``surgery``
CLIP Surgery as published."""


RAW_VS_SURGERY: Mapping[str, SurgeryConfig] = MappingProxyType({k: METHODS[k] for k in ("raw", "surgery")})
"""The paper's comparison: vanilla CLIP beside CLIP Surgery."""


def method_config(method: str | SurgeryConfig | None) -> SurgeryConfig:
    """The config a method name (a key of :data:`METHODS`) or a config stands for; None: the paper's.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        TypeError: neither a name nor a :class:`SurgeryConfig`.
    """
    if method is None:
        return SurgeryConfig.paper()
    if isinstance(method, SurgeryConfig):
        return method
    if isinstance(method, str):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; known methods: {', '.join(METHODS)}")
        return METHODS[method]
    raise TypeError(f"expected a method name or a SurgeryConfig, got {type(method).__name__}")
