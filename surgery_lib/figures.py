"""Figures, claims and explorers for notebooks: the paper-grade figure functions (``surgery_lib.ui.viz``),
claim checks and exercises, and the interactive explorers. A notebook imports from here, from
:mod:`surgery_lib` and from :mod:`surgery_lib.analysis` only."""

from surgery_lib.ui.claims import Claim, check_claims, exercise
from surgery_lib.ui.mechanism_figures import interval_lines, scatter
from surgery_lib.ui.notebooks import skip_rest
from surgery_lib.ui.tower_app import TowerApp
from surgery_lib.ui.tower_guard import skip_without_class_token, skip_without_token_text_features
from surgery_lib.ui.viz import (
    DEFAULT_CMAP,
    attention_figure,
    bar_chart,
    caption_figure,
    dual_path_diagram,
    figure_style,
    line_chart,
    map_grid,
    method_comparison,
    method_grid,
    method_label_grid,
    method_title,
    panel_grid,
    points_figure,
    pr_curves,
    save_figure,
    segmentation_figure,
    word_maps_figure,
)
from surgery_lib.ui.widgets import AttentionExplorer, CaptionExplorer, Explorer, SamExplorer

__all__ = [
    "DEFAULT_CMAP",
    "AttentionExplorer",
    "CaptionExplorer",
    "Claim",
    "Explorer",
    "SamExplorer",
    "TowerApp",
    "attention_figure",
    "bar_chart",
    "caption_figure",
    "check_claims",
    "dual_path_diagram",
    "exercise",
    "figure_style",
    "interval_lines",
    "line_chart",
    "map_grid",
    "method_comparison",
    "method_grid",
    "method_label_grid",
    "method_title",
    "panel_grid",
    "points_figure",
    "pr_curves",
    "save_figure",
    "scatter",
    "segmentation_figure",
    "skip_rest",
    "skip_without_class_token",
    "skip_without_token_text_features",
    "word_maps_figure",
]
