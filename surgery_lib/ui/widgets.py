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

The explorers live in one module each (:mod:`~surgery_lib.ui.map_explorer`,
:mod:`~surgery_lib.ui.attention_explorer`, :mod:`~surgery_lib.ui.caption_explorer`,
:mod:`~surgery_lib.ui.sam_explorer`), their shared parts in :mod:`~surgery_lib.ui.explorer_base` and
:mod:`~surgery_lib.ui.export`; this module gathers their public names.
"""

from surgery_lib.config import ARCHITECTURE_FIELDS
from surgery_lib.methods import INT_BOUNDS
from surgery_lib.model import max_depth
from surgery_lib.ui.attention_explorer import CLASS_TOKEN, AttentionExplorer
from surgery_lib.ui.caption_explorer import CaptionExplorer
from surgery_lib.ui.explorer_base import (
    CUSTOM,
    DISPLAY_SIDE,
    PINNED,
    config_controls,
    config_from_controls,
    display_size,
)
from surgery_lib.ui.export import export_metadata, unique_stem
from surgery_lib.ui.map_explorer import Explorer, MapCache, ViewRow
from surgery_lib.ui.sam_explorer import SamExplorer

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
