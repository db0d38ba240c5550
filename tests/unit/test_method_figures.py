"""The method-zoo figures: methods side by side per image (method_grid), methods × labels
(method_label_grid)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from surgery_lib.methods import method_names
from surgery_lib.ui import viz

LABELS = ["cat", "dog", "bird"]


@pytest.fixture
def images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)) for _ in range(2)]


def _maps(rows: int, labels: int = len(LABELS), seed: int = 0) -> torch.Tensor:
    return torch.rand(rows, 40, 60, labels, generator=torch.Generator().manual_seed(seed))


def _grid(fig) -> np.ndarray:
    """The figure's panels (colorbar left out) as a (rows, cols) array, in reading order."""
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    rows = sorted({round(ax.get_position().y0, 3) for ax in panels}, reverse=True)
    cols = sorted({round(ax.get_position().x0, 3) for ax in panels})
    grid = np.empty((len(rows), len(cols)), dtype=object)
    for ax in panels:
        grid[rows.index(round(ax.get_position().y0, 3)), cols.index(round(ax.get_position().x0, 3))] = ax
    return grid


def _heat(ax, alpha: float = 0.7) -> np.ndarray:
    """The map drawn in a panel: the overlay's opacity is ``alpha`` × the value (value-weighted)."""
    return np.asarray(ax.get_images()[-1].get_array())[..., 3] / alpha


def test_every_method_has_a_display_name():
    assert set(method_names()) <= set(viz.METHOD_TITLES)
    assert viz.method_title("surgery") == "CLIP Surgery" and viz.method_title("chefer") == "Chefer relevancy"
    assert viz.method_title("my-method") == "my-method"


@pytest.mark.slow  # > 1 s: make test runs it, make test-fast does not
def test_method_grid_has_a_row_per_image_and_a_column_per_method(images):
    maps = {"raw": _maps(2), "surgery": _maps(2, seed=1), "gradcam": list(_maps(2, seed=2).numpy())}
    fig = viz.method_grid(images, maps, "dog", LABELS, row_titles=["a", "b"])
    fig.canvas.draw()
    grid = _grid(fig)
    assert grid.shape == (2, 4)
    assert [ax.get_title() for ax in grid[0]] == ["image", "raw CLIP", "CLIP Surgery", "Grad-CAM"]
    assert [ax.get_ylabel() for ax in grid[:, 0]] == ["a", "b"]
    assert "dog" in fig.get_suptitle()
    assert sum(ax.get_label() == "<colorbar>" for ax in fig.axes) == 1
    # row 1, CLIP Surgery: its "dog" map
    np.testing.assert_allclose(_heat(grid[1, 2]), maps["surgery"][1, :, :, 1].numpy(), atol=1e-6)
    viz.close(fig)


def test_method_grid_takes_one_label_per_row(images):
    fig = viz.method_grid(images, {"maskclip": _maps(2)}, ["bird", "cat"], LABELS)
    grid = _grid(fig)
    assert grid.shape == (2, 2) and [ax.get_ylabel() for ax in grid[:, 0]] == ["bird", "cat"]
    assert grid[0, 1].get_title() == "MaskCLIP"
    np.testing.assert_allclose(_heat(grid[1, 1]), _maps(2)[1, :, :, 0].numpy(), atol=1e-6)
    viz.close(fig)


def test_method_grid_rejects_a_label_it_has_no_maps_for(images):
    with pytest.raises(ValueError, match=r"'zebra'.*3 labels: 'cat', 'dog', 'bird'"):
        viz.method_grid(images, {"raw": _maps(2)}, "zebra", LABELS)
    with pytest.raises(ValueError, match="'zebra'"):
        viz.method_grid(images, {"raw": _maps(2)}, ["cat", "zebra"], LABELS)


def test_method_grid_rejects_maps_that_do_not_fit(images):
    with pytest.raises(ValueError, match="one label per image"):
        viz.method_grid(images, {"raw": _maps(2)}, ["cat"], LABELS)
    with pytest.raises(ValueError, match="'raw' has 1 maps for 2 images"):
        viz.method_grid(images, {"raw": _maps(1)}, "cat", LABELS)
    with pytest.raises(ValueError, match=r"T = 3 labels"):
        viz.method_grid(images, {"raw": _maps(2, labels=2)}, "cat", LABELS)
    with pytest.raises(ValueError, match="no methods"):
        viz.method_grid(images, {}, "cat", LABELS)


def test_method_label_grid_has_a_row_per_method_and_a_column_per_label(images):
    classes = ["apple", *LABELS, "car"]
    maps = {m: _maps(1, labels=5, seed=i)[0] for i, m in enumerate(["raw", "clearclip", "naclip"])}
    fig = viz.method_label_grid(images[0], maps, ["dog", "car"], map_labels=classes)
    fig.canvas.draw()
    grid = _grid(fig)
    assert grid.shape == (3, 2)
    assert [ax.get_title() for ax in grid[0]] == ["dog", "car"]
    assert [ax.get_ylabel() for ax in grid[:, 0]] == ["raw CLIP", "ClearCLIP", "NACLIP"]
    np.testing.assert_allclose(_heat(grid[2, 1]), maps["naclip"][:, :, 4].numpy(), atol=1e-6)
    viz.close(fig)


def test_method_label_grid_rejects_an_unknown_label(images):
    maps = {"raw": _maps(1)[0]}
    with pytest.raises(ValueError, match="'zebra'"):
        viz.method_label_grid(images[0], maps, ["cat", "zebra"], map_labels=LABELS)
    with pytest.raises(ValueError, match=r"T = 2 labels"):  # without map_labels the maps hold `labels`
        viz.method_label_grid(images[0], maps, ["cat", "dog"])


def test_outlines_are_drawn_on_every_panel_of_their_row_or_column(images):
    mask = np.zeros((20, 30), dtype=bool)  # another size than the maps: resized to them
    mask[5:15, 10:20] = True
    fig = viz.method_grid(images, {"raw": _maps(2), "sclip": _maps(2)}, "cat", LABELS, outlines=[mask, None])
    grid = _grid(fig)
    assert [len(ax.collections) > 0 for ax in grid.ravel()] == [True] * 3 + [False] * 3
    viz.close(fig)
    fig = viz.method_label_grid(
        images[0],
        {"raw": _maps(1)[0]},
        LABELS,
        titles=["cat", "dog", "bird (absent)"],
        outlines={"dog": mask},
    )
    grid = _grid(fig)
    assert [ax.get_title() for ax in grid[0]] == ["cat", "dog", "bird (absent)"]
    assert [len(ax.collections) > 0 for ax in grid[0]] == [False, True, False]
    viz.close(fig)
    with pytest.raises(ValueError, match="one outline"):
        viz.method_grid(images, {"raw": _maps(2)}, "cat", LABELS, outlines=[mask])
    with pytest.raises(ValueError, match="one title per label"):
        viz.method_label_grid(images[0], {"raw": _maps(1)[0]}, LABELS, titles=["cat"])


def test_colormap_opacity_and_a_bad_colormap(images):
    fig = viz.method_label_grid(images[0], {"raw": _maps(1)[0]}, LABELS, cmap="jet", alpha=0.5)
    np.testing.assert_allclose(_heat(_grid(fig)[0, 2], alpha=0.5), _maps(1)[0, :, :, 2].numpy(), atol=1e-6)
    viz.close(fig)
    with pytest.raises(ValueError, match="unknown colormap 'nope'"):
        viz.method_grid(images, {"raw": _maps(2)}, "cat", LABELS, cmap="nope")
