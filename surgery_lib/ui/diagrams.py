"""Diagrams: the dual path of CLIP Surgery drawn block by block."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure
from surgery_lib.ui.style import _pyplot, figure_style, page_width


def dual_path_diagram(n_blocks: int = 12, depth: int = 6, attention: str = "v-v") -> Figure:
    """The mechanism of CLIP Surgery's dual path, drawn: the original path runs every block unchanged
    (q-k attention and FFN, class token out); at the input of the first surgery block ``s = L − depth``
    the new path starts as a copy ``y = x_s`` and, in each surgery block ``i``, adds the ``attention``
    output computed from the *original* stream's ``LN1(x_i)``, skipping the FFN; its patch tokens
    are the dense output. So ``y_L = x_s + Σ_{i ≥ s} attn(LN1(x_i))``: the FFN outputs of the surgery
    blocks never enter it directly (they still shape later ``x_i``)."""
    if not 1 <= depth <= n_blocks:
        raise ValueError(f"depth must be in 1..{n_blocks}, got {depth}")
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    plt = _pyplot()
    s = n_blocks - depth
    top, bottom, w = 2.4, 0.6, 1.0
    with figure_style():
        fig, ax = plt.subplots(figsize=(min(2.2 + 1.0 * depth + 2.0, page_width("double") - 0.6), 3.0))
        ax.set_axis_off()

        def box(x: float, y: float, text: str, color: str, width: float = w) -> None:
            ax.add_patch(
                FancyBboxPatch(
                    (x - width / 2, y - 0.28),
                    width,
                    0.56,
                    boxstyle="round,pad=0.03",
                    facecolor=color,
                    edgecolor="black",
                    linewidth=0.6,
                )
            )
            ax.text(x, y, text, ha="center", va="center", fontsize=6.5)

        def arrow(
            a: tuple[float, float], b: tuple[float, float], color: str = "black", style: str = "-"
        ) -> None:
            ax.add_patch(
                FancyArrowPatch(
                    a, b, arrowstyle="-|>", mutation_scale=7, color=color, linewidth=0.8, linestyle=style
                )
            )

        def plus(x: float, y: float) -> None:
            ax.add_patch(plt.Circle((x, y), 0.1, facecolor="white", edgecolor="black", linewidth=0.6))
            ax.text(x, y, "+", ha="center", va="center", fontsize=7)

        step, mid = 1.4, (top + bottom) / 2
        box(0.0, top, "embed", "#eeeeee", 0.7)
        head = 0.35
        if s > 0:
            box(1.25, top, f"blocks 0–{s - 1}\nq-k attn + FFN", "#dde6f5", 1.2)
            arrow((head, top), (0.63, top))
            head = 1.87
        first = head + 0.45
        ax.plot([head, first + 0.2], [top, top], color="black", linewidth=0.8)
        arrow((first, top), (first, bottom + 0.04), color="tab:red", style="--")
        ax.text(
            first - 0.08, mid, f"copy\n$y = x_{{{s}}}$", fontsize=6, color="tab:red", va="center", ha="right"
        )
        previous, previous_plus = first, first
        for c in range(depth):
            i = s + c
            tap = first + step * c
            cx = tap + 0.2 + w / 2
            ax.plot([previous, cx - w / 2], [top, top], color="black", linewidth=0.8)
            ax.plot([tap], [top], marker="o", markersize=2.5, color="tab:orange")
            ax.text(tap, top + 0.34, f"$x_{{{i}}}$", fontsize=6.5, ha="center")
            box(cx, top, f"block {i}\nq-k attn + FFN", "#dde6f5")
            box(cx, mid, f"{attention} attn\nof LN1($x_{{{i}}}$)", "#fde2c8", 0.9)
            arrow((tap, top), (cx - 0.3, mid + 0.3), color="tab:orange")
            px = cx + 0.5
            arrow((cx + 0.2, mid - 0.3), (px - 0.05, bottom + 0.09), color="tab:orange")
            ax.plot([previous_plus, px - 0.1], [bottom, bottom], color="tab:red", linewidth=1.0)
            plus(px, bottom)
            previous, previous_plus = cx + w / 2, px + 0.1
        out = previous + 0.9
        arrow((previous, top), (out - 0.6, top))
        arrow((previous_plus, bottom), (out - 0.6, bottom), color="tab:red")
        box(out, top, "class token\n(vanilla CLIP)", "#dde6f5", 1.2)
        box(out, bottom, "patch tokens\n(dense maps)", "#fde2c8", 1.2)
        ax.text(
            first,
            bottom - 0.5,
            "new path y: the attention outputs only, no FFN",
            fontsize=6.5,
            color="tab:red",
        )
        ax.text(first, top + 0.7, "original path x: every block unchanged", fontsize=6.5)
        ax.set_title(
            rf"dual path: $y_L = x_{{{s}}} + \sum_{{i={s}}}^{{{n_blocks - 1}}}$ {attention} attn(LN1($x_i$))"
            "  — the surgery blocks' FFN outputs never enter $y$ directly",
            fontsize=7.5,
        )
        ax.set_xlim(-0.5, out + 0.7)
        ax.set_ylim(bottom - 0.7, top + 1.0)
        ax.set_aspect("equal")
        fig.tight_layout()
    return fig
