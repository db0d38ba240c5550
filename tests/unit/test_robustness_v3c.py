"""Robustness, round 3c: the book never deletes what it did not build, SAM checkpoints load without
running pickled code, gradient methods under inference mode, checkpoint formats by their bytes, bounded
config integers, the app's server stops with it, and the explorer's empty selection, export bound and
bounded caches."""

from __future__ import annotations

import json
import pickle
import shutil
import time
from pathlib import Path

import pytest
import torch
from conftest import make_rn, make_vit, random_images
from safetensors.torch import save_file

from surgery_lib.config import SurgeryConfig
from surgery_lib.methods import GRADIENT_METHODS
from surgery_lib.model.gradients import gradient_maps
from surgery_lib.model.loading import load_clip, read_state_dict
from surgery_lib.model.shipped import weights_path
from surgery_lib.ui import book

# ---- 1. the book replaces only a folder it built ----------------------------------------------------


def _notebook(folder: Path, name: str = "00_quickstart.ipynb") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    cell = {"cell_type": "markdown", "metadata": {}, "source": ["# 00 · Quickstart\n"]}
    notebook = {"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.write_text(json.dumps(notebook), encoding="utf-8")
    return path


@pytest.fixture
def fake_sphinx(monkeypatch):
    """Sphinx replaced by a stub that writes ``index.html`` (and a page per call) into its output."""
    import sphinx.cmd.build

    calls: list[list[str]] = []

    def build_main(args: list[str]) -> int:
        calls.append(args)
        out = Path(args[-1])
        out.mkdir(parents=True, exist_ok=True)
        (out / "index.html").write_text(f"<html>build {len(calls)}</html>")
        return 0

    monkeypatch.setattr(sphinx.cmd.build, "build_main", build_main)
    return calls


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_book_out_holding_the_notebooks_and_other_files_is_refused(tmp_path, fake_sphinx, capsys):
    project = tmp_path / "X"
    _notebook(project / "notebooks")
    (project / "eval").mkdir()
    (project / "eval" / "results.json").write_text("{}")
    (project / "notes.txt").write_text("mine")
    before = _tree(project)
    code = book.main(["--notebooks", str(project / "notebooks"), "--out", str(project)])
    assert code == 2
    err = capsys.readouterr().err
    assert "contains the notebooks" in err and str(project) in err
    assert _tree(project) == before and not fake_sphinx
    assert [p.name for p in tmp_path.iterdir()] == ["X"]  # no temporary folder left beside it


def test_book_out_with_foreign_files_is_refused(tmp_path, fake_sphinx):
    notebooks = _notebook(tmp_path / "build" / "notebooks").parent
    (tmp_path / "build" / "eval").mkdir()
    (tmp_path / "build" / "eval" / "run.json").write_text("{}")
    before = _tree(tmp_path)
    with pytest.raises(book.BookError, match=r"not empty and is not a book built by this command"):
        book.build_book(notebooks, tmp_path / "build" / "eval")
    with pytest.raises(book.BookError, match="contains the notebooks"):
        book.build_book(notebooks, tmp_path / "build")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(book.BookError, match="not a folder"):
        book.build_book(notebooks, tmp_path / "a_file")
    assert _tree(tmp_path) == {**before, "a_file": b"x"} and not fake_sphinx


def test_book_out_at_or_above_the_current_folder_is_refused(tmp_path, fake_sphinx, monkeypatch):
    notebooks = _notebook(tmp_path / "nb").parent
    work = tmp_path / "work" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for out in (".", "..", str(tmp_path / "work")):
        with pytest.raises(book.BookError, match="the current folder"):
            book.build_book(notebooks, Path(out))
    assert work.is_dir() and (notebooks / "00_quickstart.ipynb").is_file() and not fake_sphinx


def test_book_rebuilds_over_its_own_previous_book(tmp_path, fake_sphinx):
    notebooks = _notebook(tmp_path / "nb").parent
    out = tmp_path / "build" / "book"
    index = book.build_book(notebooks, out)
    assert index == out / "index.html" and (out / book.MARKER).is_file()
    (out / "stale.html").write_text("old page")
    index = book.build_book(notebooks, out)  # the marker says it is ours: replaced
    assert index.read_text() == "<html>build 2</html>" and not (out / "stale.html").exists()
    assert (out / book.MARKER).is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["book"]  # no temporary sibling left
    empty = tmp_path / "empty"
    empty.mkdir()
    assert book.build_book(notebooks, empty).is_file()  # an empty folder is fine too


def test_a_failed_book_build_keeps_the_previous_book(tmp_path, fake_sphinx, monkeypatch):
    import sphinx.cmd.build

    notebooks = _notebook(tmp_path / "nb").parent
    out = tmp_path / "book"
    book.build_book(notebooks, out)
    before = _tree(out)
    monkeypatch.setattr(sphinx.cmd.build, "build_main", lambda args: 1)
    with pytest.raises(book.BookError, match="sphinx-build failed"):
        book.build_book(notebooks, out)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["book", "nb"]


# ---- 7. SAM checkpoints load without running pickled code -------------------------------------------


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_sam_checkpoint_runs_no_code(tmp_path, monkeypatch):
    from surgery_lib.maps.sam import SamSegmenter, read_sam_state_dict

    marker = tmp_path / "payload_ran"
    path = tmp_path / "sam_vit_b.pth"
    torch.save({"image_encoder.x": torch.zeros(1), "payload": _Payload(marker)}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="pickled objects other than tensors"):
        read_sam_state_dict(path)
    with pytest.raises(ValueError, match=r"sam_vit_b\.pth"):
        SamSegmenter(path, "vit_b")
    assert not marker.exists()


def test_a_sam_state_dict_loads_with_weights_only(tmp_path, monkeypatch):
    from surgery_lib.maps.sam import read_sam_state_dict

    sd = {"image_encoder.w": torch.arange(3.0), "mask_decoder.b": torch.ones(2)}
    torch.save(sd, tmp_path / "sam.pth")
    save_file(sd, tmp_path / "sam.safetensors")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    for name in ("sam.pth", "sam.safetensors"):
        got = read_sam_state_dict(tmp_path / name)
        assert got.keys() == sd.keys() and all(torch.equal(got[k], v) for k, v in sd.items())


def test_sam_segmenter_loads_our_state_dict_into_the_registry_model(tmp_path, monkeypatch):
    pytest.importorskip("segment_anything")
    import segment_anything

    from surgery_lib.maps import sam as sam_module

    built: list[object] = []

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

    def build(checkpoint=None):
        built.append(checkpoint)
        return Tiny()

    monkeypatch.setitem(segment_anything.sam_model_registry, "vit_b", build)
    monkeypatch.setattr(segment_anything, "SamPredictor", lambda model: model)
    torch.save({"w": torch.arange(3.0)}, tmp_path / "sam.pth")
    segmenter = sam_module.SamSegmenter(tmp_path / "sam.pth", "vit_b")
    assert built == [None]  # segment_anything never opens the file itself
    assert torch.equal(segmenter.predictor.w, torch.arange(3.0))
    torch.save({"other": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong\.pth is not a SAM vit_b checkpoint"):
        sam_module.SamSegmenter(tmp_path / "wrong.pth", "vit_b")


# ---- 11. gradient methods and inference mode --------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "attn_gradcam", "chefer"])
def test_gradient_methods_work_inside_inference_mode(method):
    model = make_vit()
    images = random_images(model)
    texts = torch.randn(2, 32, generator=torch.Generator().manual_seed(3))
    want = gradient_maps(model, images, texts, GRADIENT_METHODS[method])
    with torch.inference_mode():
        images_i, texts_i = images.clone(), texts.clone()  # inference tensors
        got = gradient_maps(model, images_i, texts_i, GRADIENT_METHODS[method])
    torch.testing.assert_close(got.relevance, want.relevance)
    torch.testing.assert_close(got.logits, want.logits)
    with torch.no_grad():
        torch.testing.assert_close(
            gradient_maps(model, images, texts, GRADIENT_METHODS[method]).relevance, want.relevance
        )


def test_gradcam_on_a_resnet_inside_inference_mode():
    model = make_rn()
    images, texts = random_images(model), torch.randn(2, 32)
    want = gradient_maps(model, images, texts, GRADIENT_METHODS["gradcam"])
    with torch.inference_mode():
        got = gradient_maps(model, images, texts, GRADIENT_METHODS["gradcam"])
    torch.testing.assert_close(got.relevance, want.relevance)


def test_a_model_built_in_inference_mode_gets_a_clear_error():
    with torch.inference_mode():
        model = make_vit()
    images, texts = random_images(model), torch.randn(2, 32)
    with pytest.raises(RuntimeError, match=r"(?s)created under torch\.inference_mode\(\).*outside"):
        gradient_maps(model, images, texts, GRADIENT_METHODS["gradcam"])


def test_explain_with_a_gradient_method_inside_inference_mode(tokenizer):
    from surgery_lib.maps.explain import explain

    model = make_vit()
    images = random_images(model)
    want = explain(model, tokenizer, images, ["cat", "dog", "car"], method="chefer")
    with torch.inference_mode():
        got = explain(model, tokenizer, images, ["cat", "dog", "car"], method="chefer")
    torch.testing.assert_close(got.maps, want.maps)


# ---- 12. checkpoint formats by their bytes, not their names -----------------------------------------


def test_a_safetensors_file_named_bin_loads(tmp_path):
    path = tmp_path / "toy.bin"
    shutil.copyfile(weights_path("toy-vit"), path)
    assert path.read_bytes()[8:9] == b"{"
    want = load_clip("toy-vit")
    got = load_clip("toy-vit", checkpoint=path)
    for key, value in want.model.state_dict().items():
        assert torch.equal(got.model.state_dict()[key], value), key
    assert read_state_dict(path).keys() == read_state_dict(weights_path("toy-vit")).keys()
    assert load_clip(None, checkpoint=path).name == "toy-vit"


def test_a_torch_file_named_safetensors_loads(tmp_path):
    want = load_clip("toy-vit")
    path = tmp_path / "toy.safetensors"
    torch.save(want.model.state_dict(), path)
    got = load_clip("toy-vit", checkpoint=path)
    assert torch.equal(got.model.visual.proj, want.model.visual.proj)
    assert read_state_dict(path).keys() == want.model.state_dict().keys()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"GIF89a" + bytes(64), r"x\.bin is not a torch checkpoint nor a safetensors file"),
        ("torch.save", r"x\.bin holds pickled objects other than tensors"),
        ("pickle", r"x\.bin is not a readable torch checkpoint"),
    ],
)
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_unreadable_checkpoints_get_our_message_without_torch_advice(tmp_path, content, match):
    path = tmp_path / "x.bin"
    if content == "pickle":  # a plain pickle (not torch.save's format)
        path.write_bytes(pickle.dumps({"w": torch.zeros(1), "extra": _Payload(tmp_path / "ran")}))
    elif content == "torch.save":
        torch.save({"w": torch.zeros(1), "extra": _Payload(tmp_path / "ran")}, path)
    else:
        path.write_bytes(content)
    for load in (read_state_dict, lambda p: load_clip("toy-vit", checkpoint=p)):
        with pytest.raises(ValueError, match=match) as info:
            load(path)
        assert "weights_only=False" not in str(info.value)
        assert "Weights only load failed" not in str(info.value)
    assert not (tmp_path / "ran").exists()


def test_a_legacy_torch_file_is_recognised(tmp_path):
    path = tmp_path / "legacy.ckpt"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert path.read_bytes()[:1] == b"\x80"
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))


# ---- 13. bounded config integers --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("self_attn_iters", 10**12, r"self_attn_iters must be an int in \[0, 100\], got 1000000000000"),
        ("self_attn_iters", 101, r"\[0, 100\]"),
        ("spatial_prior_sigma", 10**12, r"spatial_prior_sigma must be an int in \[0, 1000\]"),
        ("depth", 10**12, r"depth must be an int in \[0, 1000\]"),
    ],
)
def test_config_integers_are_bounded(field, value, match):
    extra = {"attention": "gem"} if field == "self_attn_iters" else {}
    if field == "spatial_prior_sigma":
        extra = {"attention": "kk", "dual_path": False}
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        SurgeryConfig(**extra, **{field: value})
    assert time.perf_counter() - start < 1.0


def test_config_integers_at_their_bounds_are_accepted():
    from surgery_lib.config import INT_LIMITS
    from surgery_lib.ui.widgets import INT_BOUNDS

    assert SurgeryConfig(attention="gem", self_attn_iters=100).self_attn_iters == 100
    assert (
        SurgeryConfig(attention="kk", dual_path=False, spatial_prior_sigma=1000).spatial_prior_sigma == 1000
    )
    for name, (low, high) in INT_BOUNDS.items():  # the widgets' sliders stay inside the config's range
        assert 0 <= low <= high <= INT_LIMITS[name]


# ---- small: the explorer ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(toy_vit):
    return toy_vit  # shared by the session


@pytest.fixture(scope="module")
def items(composites3):
    return composites3[1]


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_an_empty_image_selection_says_so(loaded, items, tmp_path):
    from surgery_lib.ui.widgets import Explorer

    explorer = Explorer(loaded, items, ["dog"], selected=[items[0].name], figure_dir=tmp_path)
    shown = bytes(explorer.image.value)
    explorer.picker.value = ()
    status = explorer.status.value
    assert "no image selected" in status and "Number of rows" not in status
    assert bytes(explorer.image.value) == shown
    with pytest.raises(ValueError, match="no image selected"):
        explorer.figure()
    explorer.export_button.click()
    assert "no image selected" in explorer.status.value and not list(tmp_path.iterdir())


def test_exports_are_bounded(loaded, items, tmp_path, monkeypatch):
    from surgery_lib.ui import map_explorer, widgets
    from surgery_lib.ui.widgets import Explorer

    def sidecar_only(fig, folder, stem, metadata):  # no PNG / PDF rendering: the bound is what counts
        return [folder / f"{widgets.unique_stem(folder, stem)}.json"]

    monkeypatch.setattr(map_explorer, "_export", sidecar_only)
    one = [items[0].name]
    explorer = Explorer(loaded, items, ["dog"], selected=one, figure_dir=tmp_path, max_exports=2)
    explorer.export("a")
    explorer.export("a")
    with pytest.raises(
        ValueError, match=r"export limit reached: .* holds 2 exported figures \(max_exports=2\)"
    ):
        explorer.export("a")
    explorer.export_button.click()
    assert "export limit reached" in explorer.status.value
    assert len(list(tmp_path.glob("*.json"))) == 2
    again = Explorer(loaded, items, ["dog"], selected=one, figure_dir=tmp_path, max_exports=2)  # new session
    with pytest.raises(ValueError, match="export limit reached"):
        again.export()
    with pytest.raises(ValueError, match="max_exports"):
        Explorer(loaded, items, ["dog"], selected=one, figure_dir=tmp_path, max_exports=0)


def test_the_map_cache_is_a_bounded_lru(loaded, items):
    from surgery_lib.ui.widgets import MapCache

    cache = MapCache(loaded, max_maps=2, max_tokens=1)
    item = items[0]
    for labels in (["dog"], ["cat"]):
        cache.maps(item.name, item.image, SurgeryConfig.paper(), labels)
    cache.maps(item.name, item.image, SurgeryConfig.paper(), ["dog"])  # "dog" is now the newest
    cache.maps(item.name, item.image, SurgeryConfig.paper(), ["car"])  # evicts "cat"
    assert len(cache._maps) == 2 and len(cache._tokens) == 1
    hits = cache.hits
    cache.maps(item.name, item.image, SurgeryConfig.paper(), ["dog"])
    assert cache.hits == hits + 1
    cache.maps(item.name, item.image, SurgeryConfig.paper(), ["cat"])
    assert cache.hits == hits + 1  # recomputed
    cache.maps(item.name, item.image, SurgeryConfig.off(), ["cat"])
    assert len(cache._tokens) == 1
    with pytest.raises(ValueError, match="max_maps"):
        MapCache(loaded, max_maps=0)


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_the_app_bounds_its_exports_in_a_folder_of_its_own(tmp_path):
    from surgery_lib.ui.app import MAX_EXPORTS, write_app_notebook

    notebook = json.loads(write_app_notebook(tmp_path / "app").read_text())
    code = "".join(notebook["cells"][1]["source"])
    compile(code, "explorer.ipynb", "exec")
    assert f"FIGURES = {str((tmp_path / 'app' / 'figures').resolve())!r}" in code
    assert (
        f"MAX_EXPORTS = {MAX_EXPORTS}" in code and "max_exports=int(" in code and "figure_dir=FIGURES" in code
    )
