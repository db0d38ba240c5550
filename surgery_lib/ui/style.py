"""The figures' shared style: colormaps and scales, fonts, page widths, series colours, method titles,
panel letters, and saving (PNG at 300 dpi + PDF + a JSON sidecar). matplotlib is imported lazily.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from surgery_lib.methods import METHOD_COLORS, METHOD_TITLES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

FIGURES_ENV = "SURGERY_FIGURES_DIR"
"""Environment variable naming the folder :func:`save_figure` writes to (``figures/`` by default)."""

COLORMAPS: tuple[str, ...] = ("inferno", "viridis", "magma", "cividis", "jet", "RdBu_r", "coolwarm", "gray")
"""Colormaps offered by the figures and widgets. ``inferno`` (perceptually uniform, readable in grey and
by colour-blind readers) is the default for maps in [0, 1]; ``jet`` is the paper's look, one argument
away; ``RdBu_r`` is the diverging map for signed quantities (centred at 0)."""

DEFAULT_CMAP = "inferno"
DIVERGING_CMAP = "RdBu_r"

SCALES: tuple[str, ...] = ("per-map", "shared", "absolute", "signed")
"""How a figure maps values to colours: ``per-map`` min-max normalises each map on its own (what the
paper shows), ``shared`` min-max normalises the maps of one row (image) together, so an absent class
stays cold beside a present one, ``absolute`` draws the values as given between ``vmin`` and ``vmax``,
``signed`` centres a diverging colormap at 0 with symmetric limits (score contrasts, contributions).
The colorbar says which."""

_SCALE_LABELS = {
    "per-map": "similarity (min-max per map)",
    "shared": "similarity (min-max shared across labels)",
    "absolute": "value (absolute scale)",
    "signed": "value (signed, centred at 0)",
}

_STYLE = {
    "figure.dpi": 100,
    "savefig.dpi": 300,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.05,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "pdf.fonttype": 42,  # TrueType in PDFs: editable text, accepted by publishers
    "ps.fonttype": 42,
    "image.interpolation": "bilinear",
}


def _pyplot():
    import matplotlib

    if not os.environ.get("MPLBACKEND") and "ipykernel" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


FONT_ENV = "SURGERY_FONT"
"""Environment variable naming the font family of every figure (comma-separated fallbacks), e.g.
``SURGERY_FONT=serif make figures``; :func:`set_font` overrides it in a session."""

GENERIC_FONTS: tuple[str, ...] = ("sans-serif", "serif", "monospace", "cursive", "fantasy")

_SERIF_FONTS = ["Times New Roman", "Nimbus Roman", "TeX Gyre Termes", "Liberation Serif", "DejaVu Serif"]
"""``serif`` resolves to the first of these that is installed: Times-like faces first, as in the
paper's LaTeX template (matplotlib always ships DejaVu Serif, the last resort)."""


def _check_font(name: str) -> None:
    if name in GENERIC_FONTS:
        return
    from matplotlib import font_manager

    installed = sorted({font.name for font in font_manager.fontManager.ttflist})
    if name not in installed:
        shown = ", ".join(installed[:15]) + (", ..." if len(installed) > 15 else "")
        raise ValueError(
            f"font family {name!r} is not installed; use a generic family {GENERIC_FONTS} or one of "
            f"the {len(installed)} installed: {shown}"
        )


def _font_names(family: str | Sequence[str]) -> tuple[str, ...]:
    names = tuple(n.strip() for n in ((family,) if isinstance(family, str) else family) for n in n.split(","))
    names = tuple(n for n in names if n)
    if not names:
        raise ValueError("no font family given")
    for name in names:
        _check_font(name)
    return names


_font_family: tuple[str, ...] | None = None
"""The font family :func:`set_font` chose (None: matplotlib's default)."""


def set_font(family: str | Sequence[str] | None) -> None:
    """Draw the text of every later figure in ``family``: a generic family of :data:`GENERIC_FONTS`
    (``"serif"`` picks a Times-like face when one is installed, as the paper's template uses, and
    STIX for mathematics), an installed family name, or fallbacks in order. None returns to
    ``$SURGERY_FONT`` or matplotlib's default (DejaVu Sans).

    Raises:
        ValueError: a family that is not installed (the message lists the installed ones).
    """
    global _font_family
    _font_family = None if family is None else _font_names(family)


def _style() -> dict[str, object]:
    style: dict[str, object] = dict(_STYLE)
    family = _font_family
    if family is None and os.environ.get(FONT_ENV):
        family = _font_names(os.environ[FONT_ENV])
    if family:
        style["font.family"] = list(family)
        style["font.serif"] = _SERIF_FONTS
        if family[0] == "serif" or family[0] in _SERIF_FONTS:
            style["mathtext.fontset"] = "stix"
    return style


@contextmanager
def figure_style() -> Iterator[None]:
    """The project's matplotlib style, as a context (``rcParams`` restored on exit): 8 pt text, no
    top/right spines, 300 dpi, editable PDF text, and the font of :func:`set_font` / ``$SURGERY_FONT``."""
    import matplotlib

    with matplotlib.rc_context(_style()):
        yield


PANEL_LETTER_STYLES: tuple[str, ...] = ("(a)", "a", "A", "(A)", "a)")


def panel_letters(
    fig: Figure,
    axes: Sequence[Axes] | None = None,
    style: str = "(a)",
    size: float = 9.0,
    offset: tuple[float, float] = (-0.04, 1.02),
) -> list:
    """Letter the panels of ``fig`` for a caption's "(a) raw CLIP, (b) CLIP Surgery": one bold letter
    above the upper-left corner of each of ``axes`` (default: every visible panel of the figure in
    drawing order, colorbars left out). Returns the letters' text artists.

    Args:
        style: one of :data:`PANEL_LETTER_STYLES` (``"(a)"``, ``"a"``, ``"A"``, ...).
        offset: the letter's position in the panel's axes coordinates (its lower-right corner).
    Raises:
        ValueError: an unknown style, or more than 26 panels (pass the ones to letter as ``axes``).
    """
    if style not in PANEL_LETTER_STYLES:
        raise ValueError(f"unknown panel letter style {style!r}; expected one of {PANEL_LETTER_STYLES}")
    chosen = (
        [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
        if axes is None
        else list(axes)
    )
    if len(chosen) > 26:
        raise ValueError(f"{len(chosen)} panels but 26 letters: pass the panels to letter as axes=")
    letters = []
    with figure_style():
        for i, ax in enumerate(chosen):
            letter = chr(ord("A" if "A" in style else "a") + i)
            text = style.replace("a", letter).replace("A", letter)
            letters.append(
                ax.text(
                    *offset,
                    text,
                    transform=ax.transAxes,
                    ha="right",
                    va="bottom",
                    fontsize=size,
                    fontweight="bold",
                )
            )
    return letters


def without_titles(fig: Figure, columns: bool = False) -> Figure:
    """Remove the figure's title (``suptitle``) and the panels' titles, for a paper whose caption says
    what is shown; ``columns=True`` keeps the titles of the top row (labels, methods), which a grid
    needs to be read. Row names (y labels) and colorbar labels stay. Returns ``fig``."""
    if fig.get_suptitle():
        fig.suptitle("")
    top = {id(ax) for ax in fig.axes if columns and _is_top_row(ax)}
    for ax in fig.axes:
        if id(ax) not in top:
            ax.set_title("")
    return fig


def _is_top_row(ax: Axes) -> bool:
    spec = ax.get_subplotspec() if hasattr(ax, "get_subplotspec") else None
    return spec is not None and spec.rowspan.start == 0


def _as_array(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def _safe_name(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._")
    if not safe:
        raise ValueError(f"figure name {name!r} has no usable characters")
    return safe


def save_figure(
    fig: Figure,
    name: str,
    out_dir: str | Path | None = None,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 300,
    provenance: Mapping[str, object] | None = None,
    keep_open: bool = False,
) -> list[Path]:
    """Save ``fig`` as ``<out_dir>/<name>.<format>`` for each format, with a JSON sidecar
    ``<name>.json`` saying what produced it; returns the written figure paths.

    ``out_dir`` defaults to ``$SURGERY_FIGURES_DIR`` or ``figures/``. The bounding box is fitted to the
    drawn artists (titles, colorbars and labels are never clipped); PDFs keep their text as text.

    The sidecar holds the figure's files, the time, the library version, the command or notebook that
    ran (``$SURGERY_NOTEBOOK`` under the notebook runner), the ``SURGERY_*`` parameters in force (model,
    weights tag, images, ...), and ``provenance`` (e.g. config, vocabulary, labels; dataclasses are
    written as dicts). An existing sidecar of the same name (a widget's export) keeps its keys.

    In a Jupyter kernel the figure is displayed here; then it is closed (unless ``keep_open``), so that
    loops that save many figures do not accumulate them.
    """
    if not formats:
        raise ValueError("formats is empty: nothing to save")
    folder = Path(out_dir or os.environ.get(FIGURES_ENV, "figures"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    with figure_style():
        for fmt in formats:
            path = folder / f"{_safe_name(name)}.{fmt.lstrip('.')}"
            fig.savefig(path, dpi=dpi, bbox_inches="tight", pad_inches=0.05)
            paths.append(path)
    _write_sidecar(folder / f"{_safe_name(name)}.json", name, paths, provenance)
    if not keep_open:
        if "ipykernel" in sys.modules:
            from IPython.display import display

            display(fig)
        close(fig)
    return paths


def _jsonable(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _library_version() -> str:
    try:
        from importlib.metadata import version

        return version("surgery_lib")
    except Exception:  # not installed (a bare checkout on sys.path)
        return "unknown"


def _write_sidecar(path: Path, name: str, files: Sequence[Path], provenance: Mapping | None) -> None:
    import datetime
    import json

    record: dict = {
        "figure": name,
        "files": [p.name for p in files],
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "surgery_lib": _library_version(),
        "command": os.environ.get("SURGERY_NOTEBOOK") or " ".join(sys.argv),
        "parameters": {k: v for k, v in sorted(os.environ.items()) if k.startswith("SURGERY_")},
    }
    if provenance:
        record.update(_jsonable(dict(provenance)))
    try:
        existing = json.loads(path.read_text()) if path.is_file() and path.stat().st_size else {}
    except (OSError, ValueError):
        existing = {}
    if isinstance(existing, dict):
        record = {**record, **existing}
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """The figure rendered to PNG bytes (for an ``ipywidgets.Image``)."""
    buffer = io.BytesIO()
    with figure_style():
        fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", pad_inches=0.05)
    return buffer.getvalue()


def close(fig: Figure) -> None:
    """Release a figure that was only rendered, never shown."""
    _pyplot().close(fig)


def plain_text(text: object) -> str:
    """``text`` as matplotlib shows it literally: ``$`` escaped, so that a label such as ``$\\foo$`` is not
    parsed as mathtext (which fails on unknown commands or draws something else)."""
    return str(text).replace("$", r"\$")


_TIGHT_SLACK = 0.25
"""Inches kept free beside a default-width map figure: :func:`save_figure`'s tight bounding box adds row
labels, the colorbar's label and 0.05 in of padding on each side, so the saved file stays within the
double-column width."""


def _fit_panel(panel_size: float, cols: int, margin: float, width: str | float | None = None) -> float:
    """The panel side of a row of ``cols`` panels plus ``margin`` inches: with a ``width`` (a name of
    :data:`PAGE_WIDTHS` or inches), the side that fills exactly that width; without, ``panel_size`` or
    less, so the row never passes the double-column width."""
    if width is not None:
        return (page_width(width) - margin) / max(cols, 1)
    room = page_width("double") - _TIGHT_SLACK - margin  # the saved, tight box adds labels and padding
    return min(panel_size, room / max(cols, 1))


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
"""Marker shapes of successive series: lines stay apart in greyscale and for colour-blind readers."""

PAGE_WIDTHS: dict[str, float] = {"single": 3.5, "double": 7.2}
"""Figure widths in inches: a single column and the full text width of a two-column paper."""

_OKABE_ITO = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
"""The Okabe-Ito palette: distinguishable by colour-blind readers and in greyscale print."""


def page_width(width: str | float) -> float:
    """A width in inches from a name of :data:`PAGE_WIDTHS` or a positive number."""
    if isinstance(width, str):
        if width not in PAGE_WIDTHS:
            raise ValueError(f"unknown width {width!r}; expected one of {tuple(PAGE_WIDTHS)} or inches")
        return PAGE_WIDTHS[width]
    if not width > 0:
        raise ValueError(f"width must be positive inches, got {width}")
    return float(width)


def series_colors(names: Sequence[str]) -> list[str]:
    """A colour per series: the method's own (:data:`METHOD_COLORS`), else the Okabe-Ito palette."""
    others = iter(c for c in _OKABE_ITO if c not in {METHOD_COLORS.get(n) for n in names})
    return [METHOD_COLORS.get(name) or next(others, "#999999") for name in names]


def method_title(method: str) -> str:
    """The display name of a method (:data:`METHOD_TITLES`); any other name is shown as it is."""
    return METHOD_TITLES.get(method, str(method))
