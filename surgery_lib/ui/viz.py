"""Visualisation: functions that return a matplotlib ``Figure``, and one way to save them.

Every figure is drawn inside :func:`figure_style` (a consistent, publication-ready look: small serif-free
fonts, no top/right spines, tight layout) and saved by :func:`save_figure` as PNG (300 dpi) and PDF with
nothing clipped. Maps are ``(H, W)`` arrays in [0, 1] drawn over the image they explain, with a shared
colorbar. matplotlib is imported lazily, so the core library does not depend on it.

The functions live by concern in :mod:`~surgery_lib.ui.style`, :mod:`~surgery_lib.ui.map_figures`,
:mod:`~surgery_lib.ui.charts` and :mod:`~surgery_lib.ui.diagrams`; this module gathers their public names.
"""

from surgery_lib.methods import METHOD_COLORS, METHOD_TITLES
from surgery_lib.ui.charts import bar_chart, line_chart, pr_curves
from surgery_lib.ui.diagrams import dual_path_diagram
from surgery_lib.ui.map_figures import (
    POINT_STYLES,
    attention_figure,
    caption_figure,
    label_colors,
    map_grid,
    method_comparison,
    method_grid,
    method_label_grid,
    panel_grid,
    points_figure,
    segmentation_figure,
    word_maps_figure,
)
from surgery_lib.ui.style import (
    COLORMAPS,
    DEFAULT_CMAP,
    DIVERGING_CMAP,
    FIGURES_ENV,
    FONT_ENV,
    GENERIC_FONTS,
    PAGE_WIDTHS,
    PANEL_LETTER_STYLES,
    SCALES,
    close,
    figure_png,
    figure_style,
    method_title,
    page_width,
    panel_letters,
    plain_text,
    save_figure,
    series_colors,
    set_font,
    without_titles,
)

__all__ = [
    "COLORMAPS",
    "DEFAULT_CMAP",
    "DIVERGING_CMAP",
    "FIGURES_ENV",
    "FONT_ENV",
    "GENERIC_FONTS",
    "METHOD_COLORS",
    "METHOD_TITLES",
    "PAGE_WIDTHS",
    "PANEL_LETTER_STYLES",
    "POINT_STYLES",
    "SCALES",
    "attention_figure",
    "bar_chart",
    "caption_figure",
    "close",
    "dual_path_diagram",
    "figure_png",
    "figure_style",
    "label_colors",
    "line_chart",
    "map_grid",
    "method_comparison",
    "method_grid",
    "method_label_grid",
    "method_title",
    "page_width",
    "panel_grid",
    "panel_letters",
    "plain_text",
    "points_figure",
    "pr_curves",
    "save_figure",
    "segmentation_figure",
    "series_colors",
    "set_font",
    "without_titles",
    "word_maps_figure",
]
