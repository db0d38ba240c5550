"""The figure functions and the figure saver."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from surgery_lib.ui import viz


@pytest.fixture
def image() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8))


def test_save_figure_writes_png_at_300_dpi_and_a_pdf(tmp_path, image):
    fig = viz.map_grid([image], [np.random.rand(40, 60, 2)], ["cat", "dog"])
    paths = viz.save_figure(fig, "a figure/with:odd name", tmp_path)
    viz.close(fig)
    assert [p.name for p in paths] == ["a_figure_with_odd_name.png", "a_figure_with_odd_name.pdf"]
    with Image.open(paths[0]) as png:
        assert png.info["dpi"] == pytest.approx((300, 300), abs=1)
        assert png.width > 1000  # 300 dpi of a multi-inch figure
    assert paths[1].read_bytes().startswith(b"%PDF")


def test_save_figure_defaults_to_the_environment_folder(tmp_path, monkeypatch, image):
    monkeypatch.setenv(viz.FIGURES_ENV, str(tmp_path / "figs"))
    fig = viz.bar_chart({"a": {"x": 1.0}}, "y")
    (path,) = viz.save_figure(fig, "bars", formats=("png",))
    viz.close(fig)
    assert path == tmp_path / "figs" / "bars.png" and path.is_file()


def test_save_figure_rejects_no_formats_and_unusable_names(tmp_path):
    fig = viz.bar_chart({"a": {"x": 1.0}}, "y")
    with pytest.raises(ValueError, match="formats"):
        viz.save_figure(fig, "x", tmp_path, formats=())
    with pytest.raises(ValueError, match="no usable characters"):
        viz.save_figure(fig, "///", tmp_path)
    viz.close(fig)


def test_saved_figure_keeps_titles_and_colorbar_label_inside(tmp_path, image):
    """bbox 'tight' grows the canvas to every artist: nothing is cut at the edges."""
    fig = viz.map_grid([image], [np.random.rand(40, 60, 3)], ["a long label name", "b", "c"], ["row"])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    saved = fig.get_tightbbox(renderer)
    texts = [t for ax in fig.axes for t in (ax.title, ax.yaxis.label) if t.get_text()]
    assert len(texts) >= 5  # 4 column titles (image + 3 labels), the row title, the colorbar label
    for text in texts:
        box = text.get_window_extent(renderer).transformed(fig.dpi_scale_trans.inverted())
        assert saved.x0 - 1e-6 <= box.x0 and box.x1 <= saved.x1 + 1e-6
        assert saved.y0 - 1e-6 <= box.y0 and box.y1 <= saved.y1 + 1e-6
    viz.close(fig)


def test_map_grid_layout_and_errors(image):
    maps = [torch.rand(40, 60, 2), np.random.rand(20, 30, 2)]
    fig = viz.map_grid([image, image], maps, ["cat", "dog"], ["one", "two"])
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 * 3 and len(fig.axes) == 2 * 3 + 1  # + the colorbar
    assert [ax.get_title() for ax in panels[:3]] == ["image", "cat", "dog"]
    viz.close(fig)
    with pytest.raises(ValueError, match="one map array per image"):
        viz.map_grid([image], maps, ["cat", "dog"])
    with pytest.raises(ValueError, match="T = 3 labels"):
        viz.map_grid([image], [np.zeros((4, 4, 2))], ["a", "b", "c"])
    with pytest.raises(ValueError, match="alpha"):
        viz.map_grid([image], [np.zeros((4, 4, 1))], ["a"], alpha=1.5)


def test_panel_grid_and_method_comparison(image):
    fig = viz.panel_grid([image, image], {"raw": [np.zeros((8, 8))] * 2, "surgery": [np.ones((8, 8))] * 2})
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "raw", "surgery"]
    viz.close(fig)
    with pytest.raises(ValueError, match="column 'raw' has 1 maps for 2 images"):
        viz.panel_grid([image, image], {"raw": [np.zeros((8, 8))]})
    fig = viz.method_comparison(
        image,
        {"raw": np.zeros((8, 8, 2)), "surgery": np.ones((8, 8, 2)), "mine": np.ones((8, 8, 2))},
        ["a", "b"],
    )
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert sum(ax.get_title() == "image" for ax in panels) == 1  # the image once, not once per method
    assert len(panels) == 3 * 2 + 1
    assert [ax.get_ylabel() for ax in panels if ax.get_ylabel()] == ["raw CLIP", "CLIP Surgery", "mine"]
    assert [ax.get_title() for ax in panels[:2]] == ["a", "b"]
    viz.close(fig)


def test_attention_figure_marks_the_query(image):
    weights = {kind: torch.rand(12) for kind in ("qk", "vv")}
    fig = viz.attention_figure(image, weights, (3, 4), (1, 2))
    assert [ax.get_title() for ax in fig.axes] == ["query", "q-k attention", "v-v attention"]
    assert all(len(ax.lines) == 1 for ax in fig.axes)  # the + marker on every panel
    viz.close(fig)


def test_charts_and_png_bytes():
    fig = viz.line_chart([0, 1, 2], {"attention": [1, 2, 3], "ffn": [3, 2, 1]}, "block", "share")
    assert len(fig.axes[0].lines) == 2
    assert viz.figure_png(fig).startswith(b"\x89PNG")
    viz.close(fig)
    with pytest.raises(ValueError, match="2 values for 3"):
        viz.line_chart([0, 1, 2], {"a": [1, 2]}, "x", "y")
    with pytest.raises(ValueError, match="no values"):
        viz.bar_chart({}, "y")
    fig = viz.bar_chart({"cat": {"raw": 1.0, "surgery": 2.0}, "dog": {"raw": -1.0}}, "AP")
    assert len(fig.axes[0].patches) == 4  # 2 groups × 2 series (a missing value is a NaN bar)
    viz.close(fig)


def test_label_colors_follow_the_voc_palette():
    colors = viz.label_colors(21)
    assert colors[0].tolist() == [0, 0, 0] and colors[1].tolist() == [128, 0, 0]
    assert colors[15].tolist() == [192, 128, 128]  # VOC "person"
    assert len({tuple(c) for c in colors.tolist()}) == 21


def test_segmentation_figure_panels_and_legend(image):
    label = np.zeros((40, 60), np.int64)
    label[10:20, 10:30] = 2
    label[0, 0] = 255  # ignored: drawn white
    pred = np.ones((40, 60), np.int64)
    fig = viz.segmentation_figure(
        image, label, {"raw": pred, "surgery": label.clip(0, 2)}, ["bg", "cat", "dog"]
    )
    assert [ax.get_title() for ax in fig.axes] == ["image", "ground truth", "raw", "surgery"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["bg", "cat", "dog"]
    drawn = fig.axes[1].images[0].get_array()
    assert (
        drawn[0, 0].tolist() == [255, 255, 255] and drawn[15, 15].tolist() == viz.label_colors(3)[2].tolist()
    )
    viz.close(fig)
    with pytest.raises(ValueError, match="prediction 'raw'"):
        viz.segmentation_figure(image, label, {"raw": pred[:10]}, ["bg", "cat", "dog"])


def test_pr_curves():
    fig = viz.pr_curves(
        {"raw": ([1.0, 0.5], [0.5, 1.0]), "surgery": (np.array([1.0]), np.array([1.0]))}, "cat"
    )
    assert len(fig.axes[0].lines) == 2 and fig.axes[0].get_title() == "cat"
    viz.close(fig)
    with pytest.raises(ValueError, match="no curves"):
        viz.pr_curves({})
    with pytest.raises(ValueError, match="differ"):
        viz.pr_curves({"x": ([1.0, 0.5], [1.0])})


def test_save_figure_writes_a_provenance_sidecar_and_closes_the_figure(tmp_path, monkeypatch):
    import dataclasses
    import json

    import matplotlib.pyplot as plt

    from surgery_lib.config import SurgeryConfig

    monkeypatch.setenv("SURGERY_MODEL", "toy-rn")
    monkeypatch.setenv("SURGERY_NOTEBOOK", "notebooks/99_test.py")
    fig = viz.bar_chart({"a": {"x": 1.0}}, "y")
    provenance = {"config": SurgeryConfig.paper(), "labels": ("cat", "dog"), "images": [tmp_path / "x.jpg"]}
    viz.save_figure(fig, "bars", tmp_path, formats=("png",), provenance=provenance)
    assert not plt.fignum_exists(fig.number)  # closed: loops that save figures do not accumulate them
    sidecar = json.loads((tmp_path / "bars.json").read_text())
    assert sidecar["files"] == ["bars.png"] and sidecar["figure"] == "bars"
    assert sidecar["command"] == "notebooks/99_test.py"
    assert sidecar["parameters"]["SURGERY_MODEL"] == "toy-rn"
    assert sidecar["config"] == dataclasses.asdict(SurgeryConfig.paper())
    assert sidecar["labels"] == ["cat", "dog"] and sidecar["images"] == [str(tmp_path / "x.jpg")]
    kept = viz.bar_chart({"a": {"x": 1.0}}, "y")
    viz.save_figure(kept, "kept", tmp_path, formats=("png",), keep_open=True)
    assert plt.fignum_exists(kept.number)
    viz.close(kept)


def test_heat_maps_say_their_scale_and_refuse_unknown_names(image):
    maps = np.random.default_rng(0).random((40, 60, 2))
    maps[:, :, 1] *= 0.2  # a weak class: cold under a shared scale, as hot as the other per map
    for scale, words in (("per-map", "per map"), ("shared", "shared"), ("absolute", "absolute")):
        fig = viz.map_grid([image], [maps], ["cat", "dog"], scale=scale)
        assert words in fig.axes[-1].get_ylabel()  # the colorbar names the scale
        viz.close(fig)
    fig = viz.map_grid([image], [maps - 0.5], ["cat", "dog"], scale="signed")
    low, high = fig.axes[-1].get_ylim()
    assert low == pytest.approx(-high) and "signed" in fig.axes[-1].get_ylabel()
    viz.close(fig)
    with pytest.raises(ValueError, match="unknown scale 'loud'"):
        viz.map_grid([image], [maps], ["cat", "dog"], scale="loud")
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        viz.map_grid([image], [maps], ["cat", "dog"], cmap="nope")


def test_value_weighted_opacity_leaves_cold_pixels_untinted(image):
    heat = np.zeros((40, 60))
    heat[:, 30:] = 1.0
    fig = viz.map_grid([image], [heat[:, :, None]], ["cat"], show_image=False)
    rgba = fig.axes[0].get_images()[-1].get_array()
    assert rgba[0, 0, 3] == 0.0 and rgba[0, -1, 3] > 0.5  # zero: transparent; hot: opaque
    viz.close(fig)


def test_contours_and_thresholded_view(image):
    heat = np.linspace(0, 1, 60)[None, :, None].repeat(40, axis=0)
    mask = np.zeros((40, 60), bool)
    mask[10:30, 10:30] = True
    fig = viz.map_grid([image], [heat], ["cat"], masks=[{"cat": mask}], threshold=0.5, show_image=False)
    ax = fig.axes[0]
    assert ax.collections  # the mask's outline
    shown = ax.get_images()[-1].get_array()
    assert shown[0, 0, 3] == 0.0 and shown[0, -1, 3] > 0  # below the threshold: not kept
    assert "thresholded" in fig.axes[-1].get_ylabel()
    viz.close(fig)
    with pytest.raises(ValueError, match="threshold"):
        viz.map_grid([image], [heat], ["cat"], threshold=2.0)


@pytest.mark.slow  # > 1 s: make test runs it, make test-fast does not
def test_dual_path_diagram_draws_one_column_per_surgery_block(tmp_path):
    fig = viz.dual_path_diagram(n_blocks=8, depth=6)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sum(t.startswith("block ") for t in texts) == 6 and "blocks 0–1\nq-k attn + FFN" in texts
    assert sum("v-v attn" in t for t in texts) == 6
    (path,) = viz.save_figure(fig, "06_dual_path", tmp_path, formats=("png",))
    viz.close(fig)
    assert path.is_file()
    full = viz.dual_path_diagram(n_blocks=4, depth=4)  # every block is a surgery block
    assert not any(t.get_text().startswith("blocks 0") for t in full.axes[0].texts)
    viz.close(full)
    with pytest.raises(ValueError, match="depth"):
        viz.dual_path_diagram(n_blocks=4, depth=5)


def test_bar_charts_fit_the_page_with_many_classes():
    rng = np.random.default_rng(0)
    many = {f"class {i}": {"raw": float(rng.random()), "surgery": float(rng.random())} for i in range(171)}
    fig = viz.bar_chart(many, "IoU (%)")
    assert fig.get_size_inches()[0] <= 7.2 + 1e-6 and fig.get_size_inches()[1] <= 9.0 + 1e-6
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    best = max(many, key=lambda g: many[g]["raw"])
    assert labels[0] == best and labels[-1].startswith("other (")  # sorted, best on top, the rest summarised
    viz.close(fig)
    few = viz.bar_chart(
        {"a": {"raw": 1.0}, "b": {"raw": 2.0}}, "y", width="single", errors={"a": {"raw": (0.5, 1.5)}}
    )
    assert few.get_size_inches()[0] == pytest.approx(3.5)
    viz.close(few)
    with pytest.raises(ValueError, match="unknown width 'poster'"):
        viz.bar_chart(many, "y", width="poster")


def test_methods_keep_their_colour_everywhere():
    assert viz.series_colors(["surgery", "raw"]) == [viz.METHOD_COLORS["surgery"], viz.METHOD_COLORS["raw"]]
    a, b = viz.series_colors(["seen", "new"])
    assert a != b


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic():
    from surgery_lib.eval.metrics import bootstrap_ci

    values = np.random.default_rng(1).normal(10.0, 2.0, size=200)
    mean, low, high = bootstrap_ci(values)
    assert low < mean < high and high - low < 1.5
    assert bootstrap_ci(values) == (mean, low, high)
    assert bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci([1.0, float("nan")])


def test_map_figures_never_grow_wider_than_the_page(image):
    maps = np.random.default_rng(0).random((40, 60, 12))
    fig = viz.map_grid([image], [maps], [f"class {i}" for i in range(12)])
    assert fig.get_size_inches()[0] <= 7.2 + 1e-6
    viz.close(fig)


def test_bootstrap_statistic_resamples_units_and_recomputes():
    from surgery_lib.eval.metrics import bootstrap_ci, bootstrap_statistic

    values = np.random.default_rng(1).normal(size=37)
    found = bootstrap_statistic(37, lambda idx: {"mean": values[idx].mean()}, resamples=500)
    assert found["mean"] == pytest.approx(bootstrap_ci(values, resamples=500)[1:])  # same draws, same rule

    def picky(idx):
        if 0 not in idx:
            raise ValueError("undefined without unit 0")  # such resamples are left out
        return {"max": float(values[idx].max()), "nan": float("nan")}

    picked = bootstrap_statistic(37, picky, resamples=200)
    assert "nan" not in picked and picked["max"][1] == pytest.approx(values.max())
    for bad, match in (({"n": 0}, "at least one unit"), ({"resamples": 0}, "resamples"),
                       ({"level": 1.0}, "level")):  # fmt: skip
        kwargs = {"n": 3, "statistic": lambda idx: {"a": 1.0}, **bad}
        with pytest.raises(ValueError, match=match):
            bootstrap_statistic(**kwargs)


def _texts(fig):
    return [t for t in fig.findobj(lambda a: hasattr(a, "get_fontfamily") and a.get_text())]


def test_set_font_applies_a_family_and_names_what_is_installed(monkeypatch):
    monkeypatch.delenv(viz.FONT_ENV, raising=False)
    try:
        viz.set_font("serif")
        fig = viz.bar_chart({"a": {"x": 1.0}}, "mIoU", "title")
        assert {tuple(t.get_fontfamily()) for t in _texts(fig)} == {("serif",)}
        viz.close(fig)
        with pytest.raises(ValueError, match=r"font family 'No Such Font' is not installed.*DejaVu Sans"):
            viz.set_font("No Such Font")
        with pytest.raises(ValueError, match="no font family"):
            viz.set_font(" , ")
    finally:
        viz.set_font(None)
    fig = viz.bar_chart({"a": {"x": 1.0}}, "mIoU")
    assert {tuple(t.get_fontfamily()) for t in _texts(fig)} == {("sans-serif",)}
    viz.close(fig)
    monkeypatch.setenv(viz.FONT_ENV, "DejaVu Serif, serif")
    fig = viz.bar_chart({"a": {"x": 1.0}}, "mIoU")
    assert {tuple(t.get_fontfamily()) for t in _texts(fig)} == {("DejaVu Serif", "serif")}
    viz.close(fig)
    monkeypatch.setenv(viz.FONT_ENV, "Missing Face")
    with pytest.raises(ValueError, match="'Missing Face' is not installed"):
        viz.bar_chart({"a": {"x": 1.0}}, "mIoU")


def test_panel_letters_and_optional_titles(image):
    maps = {"raw": np.random.rand(2, 8, 8, 1), "surgery": np.random.rand(2, 8, 8, 1)}
    fig = viz.method_grid([image, image], maps, "cat", ["cat"])
    letters = viz.panel_letters(fig)
    assert [t.get_text() for t in letters] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)"]  # 2 × 3, no colorbar
    assert all(t.get_fontweight() == "bold" for t in letters)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert [t.get_text() for t in viz.panel_letters(fig, panels[:2], style="A")] == ["A", "B"]
    with pytest.raises(ValueError, match=r"unknown panel letter style 'i'.*\(a\)"):
        viz.panel_letters(fig, style="i")
    with pytest.raises(ValueError, match="30 panels but 26 letters"):
        viz.panel_letters(fig, panels * 5)
    assert fig.get_suptitle() and panels[1].get_title() == "raw CLIP"
    viz.without_titles(fig, columns=True)
    assert not fig.get_suptitle() and panels[1].get_title() == "raw CLIP"  # the columns stay readable
    viz.without_titles(fig)
    assert not any(ax.get_title() for ax in fig.axes)
    assert panels[0].get_ylabel() == "" and fig.axes[-1].get_ylabel()  # the colorbar keeps its label
    viz.close(fig)


def test_points_are_told_apart_by_shape_and_colour_not_red_and_green(image):
    heat = np.random.rand(40, 60)
    fig = viz.points_figure(image, heat, np.array([[5, 5], [10, 20], [30, 30]]), np.array([1, 0, 0]))
    ax = fig.axes[0]
    positive, negative = ax.collections[:2]
    assert len(positive.get_offsets()) == 1 and len(negative.get_offsets()) == 2
    assert positive.get_paths()[0] != negative.get_paths()[0]  # a star and a cross
    colours = {tuple(np.round(c.get_facecolors()[0][:3], 3)) for c in (positive, negative)}
    assert len(colours) == 2 and (0.0, 1.0, 0.0) not in colours and (1.0, 0.0, 0.0) not in colours
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["object (1)", "background (2)"]
    viz.close(fig)


def test_line_chart_log_axis_and_distinct_markers():
    fig = viz.line_chart([1e-8, 1e-4, 0.1], {"recall": [90, 80, 20], "false positives": [70, 20, 1]},
                         "gate threshold", "%", xscale="log")  # fmt: skip
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert len({line.get_marker() for line in ax.lines}) == 2
    viz.close(fig)
    with pytest.raises(ValueError, match="log x axis needs x values > 0"):
        viz.line_chart([0.0, 1.0], {"a": [1, 2]}, "x", "y", xscale="log")
    with pytest.raises(ValueError, match="unknown xscale 'symlog'"):
        viz.line_chart([0.0, 1.0], {"a": [1, 2]}, "x", "y", xscale="symlog")


def test_caption_words_use_the_figure_text_size():
    fig = viz.caption_figure(["a", "dog", "runs"], [0.1, 0.9, 0.3])
    words = [t for t in fig.axes[0].texts]
    assert [t.get_text() for t in words] == ["a", "dog", "runs"] and {t.get_fontsize() for t in words} == {
        8.0
    }
    viz.close(fig)


@pytest.mark.parametrize("width, inches", [("single", 3.5), ("double", 7.2), (5.0, 5.0)])
def test_map_figures_fill_a_named_width(image, width, inches):
    """With a width, panels are sized from it: the figure is exactly that wide (before the saved
    bounding box trims the margins); without, it never passes the double-column width."""
    maps = np.random.rand(40, 60, 3)
    by_method = {"raw": np.random.rand(1, 40, 60, 3), "surgery": np.random.rand(1, 40, 60, 3)}
    figures = [
        viz.map_grid([image], [maps], ["a", "b", "c"], width=width),
        viz.method_grid([image], by_method, "a", ["a", "b", "c"], width=width),
        viz.method_label_grid(
            image, {m: v[0] for m, v in by_method.items()}, ["a", "b"], ["a", "b", "c"], width=width
        ),
        viz.method_comparison(image, {m: v[0] for m, v in by_method.items()}, ["a", "b", "c"], width=width),
        viz.segmentation_figure(
            image, np.zeros((40, 60), int), {"raw": np.ones((40, 60), int)}, ["x", "y"], width=width
        ),
        viz.line_chart([1, 2], {"a": [1, 2]}, "x", "y", width=width),
        viz.caption_figure(["a", "dog"], [0.2, 0.8], width=width),
    ]
    for fig in figures:
        assert fig.get_size_inches()[0] == pytest.approx(inches)
        viz.close(fig)
    with pytest.raises(ValueError, match="unknown width 'wide'"):
        viz.map_grid([image], [maps], ["a", "b", "c"], width="wide")


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_default_width_map_figures_stay_within_the_page_once_saved(image, tmp_path):
    """Without a width, the saved file (tight box: row labels, colorbar label, padding) is at most
    7.2 in wide, even with many columns (the method zoo's 9 methods + the image)."""
    methods = ["raw", "surgery", "surgery-no-fs", "feature-surgery-only", "maskclip", "sclip", "gem",
               "clearclip", "naclip"]  # fmt: skip
    maps = {m: np.random.rand(2, 40, 60, 1) for m in methods}
    twelve = [f"label {i}" for i in range(12)]
    figures = {
        "grid": viz.method_grid([image, image], maps, ["cat", "cat"], ["cat"], row_titles=["one", "two"]),
        "labels": viz.map_grid([image], [np.random.rand(40, 60, 12)], twelve, ["row"]),
    }
    for name, fig in figures.items():
        (png,) = viz.save_figure(fig, name, tmp_path, formats=("png",))
        with Image.open(png) as saved:
            assert saved.width / 300 <= 7.2, f"{name}: {saved.width / 300:.3f} in"
