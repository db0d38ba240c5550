"""Issue tracker, third round: labels that tokenize alike or to nothing, repeated ``--labels``, image
headers (decompression bombs, EXIF-rotated sizes) checked before decoding, long output names, meta
models, bounded rendering and one image decoded at a time, and argument checks of
``preprocess_images`` and ``Explanation.points``. Each test fails on the code before the fix."""

from __future__ import annotations

import gc
import json
import math
import re
import struct
import tracemalloc
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import explain_cli, make_vit, one_line_error, photo, photo_png, random_images
from PIL import Image

import surgery_lib.cli as cli_module
import surgery_lib.maps.images as images_module
from surgery_lib import ImageInputError, explain, preprocess_images, text_features, to_rgb
from surgery_lib.cli import main


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def toy(toy_vit):
    return toy_vit  # the shipped toy-vit (fast), offline; shared by the session


@pytest.fixture(scope="module")
def batch(toy):
    return preprocess_images([photo()], size=toy.image_size)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A valid PNG header declaring ``width`` × ``height`` (8-bit grey) with a tiny, incomplete IDAT:
    a few hundred bytes that PIL opens (header only) but could never decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 1000)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


# ---- 4. labels that tokenize the same ------------------------------------------------------------


@pytest.mark.parametrize("pair", [("cat", "Cat"), ("cat", "cat "), ("big dog", "Big  DOG")])
def test_explain_refuses_labels_that_tokenize_the_same(toy, batch, pair):
    with pytest.raises(ValueError, match=rf"{pair[0]!r} and {pair[1]!r} tokenize to the same ids"):
        explain(toy.model, toy.tokenizer, batch, ["tree", *pair])


def test_explain_refuses_a_label_given_twice(toy, batch):
    with pytest.raises(ValueError, match=r"label 'dog' is given twice \(labels 0 and 2\)"):
        explain(toy.model, toy.tokenizer, batch, ["dog", "cat", "dog"])


def test_cli_refuses_labels_that_tokenize_the_same(tmp_path, capsys):
    image, out = photo_png(tmp_path / "im.png"), tmp_path / "out"
    assert explain_cli(str(image), "--labels", "cat", "Cat", "--out", str(out)) == 2
    one_line_error(capsys, "'cat'", "'Cat'")
    assert not out.exists()


def test_vocabulary_entries_that_tokenize_like_a_label_are_that_label(toy, batch):
    plain = explain(toy.model, toy.tokenizer, batch, ["cat", "dog"], vocabulary=["tree"])
    alike = explain(
        toy.model, toy.tokenizer, batch, ["cat", "dog"], vocabulary=["Cat", "tree", "DOG", "Tree"]
    )
    torch.testing.assert_close(alike.similarity, plain.similarity)
    torch.testing.assert_close(alike.image_scores, plain.image_scores)


# ---- 5. labels that clean to nothing -------------------------------------------------------------

CLEANED_AWAY = ["&nbsp;", "\ufeff", "\x00", "&#32;"]


@pytest.mark.parametrize("label", CLEANED_AWAY)
def test_labels_that_clean_to_nothing_are_refused(toy, batch, label):
    with pytest.raises(ValueError, match=re.escape(f"label 1 ({label!r}) has no text")):
        explain(toy.model, toy.tokenizer, batch, ["cat", label])
    with pytest.raises(ValueError, match="no text"):
        text_features(toy.model, toy.tokenizer, [label])
    with pytest.raises(ValueError, match="no text"):  # in the vocabulary too
        explain(toy.model, toy.tokenizer, batch, ["cat", "dog"], vocabulary=[label])


@pytest.mark.parametrize("label", CLEANED_AWAY)
def test_cli_refuses_labels_that_clean_to_nothing(tmp_path, capsys, label):
    image, out = photo_png(tmp_path / "im.png"), tmp_path / "out"
    assert explain_cli(str(image), "--labels", "cat", label, "--out", str(out)) == 2
    one_line_error(capsys, repr(label), "no text")
    assert not out.exists()


# ---- 6. --labels given twice -----------------------------------------------------------------------


def test_repeated_labels_option_extends_the_list(tmp_path):
    image, out = photo_png(tmp_path / "im.png"), tmp_path / "out"
    code = explain_cli(
        str(image), "--labels", "cat", "dog", "--labels", "tree", "--method", "raw", "--out", str(out)
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == ["cat", "dog", "tree"]
    assert sorted(p.name for p in out.glob("*.png")) == [f"im_{n}_raw.png" for n in ("cat", "dog", "tree")]


# ---- 8. decompression bombs, 16. EXIF-rotated sizes: the header is checked before decoding ------------


@pytest.mark.parametrize(("width", "height"), [(20000, 10000), (10000, 10000), (9000, 8000)])
def test_cli_refuses_oversized_headers_in_one_line(tmp_path, capsys, width, height):
    bomb = _png_header_only(tmp_path / "bomb.png", width, height)
    out = tmp_path / "out"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert explain_cli(str(bomb), "--labels", "cat", "--out", str(out)) == 2
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    line = one_line_error(capsys, str(bomb), f"{width * height / 1e6:.0f} MP", "more than 64 MP")
    assert "DecompressionBomb" not in line and "decompression bomb DOS" not in line
    assert not out.exists()


@pytest.mark.parametrize(("width", "height"), [(20000, 10000), (10000, 10000)])
def test_open_image_refuses_oversized_headers(tmp_path, width, height):
    bomb = _png_header_only(tmp_path / "bomb.png", width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a PIL warning would raise here
        with pytest.raises(
            ImageInputError, match=rf"bomb\.png .*{width * height / 1e6:.0f} MP.*more than 64 MP"
        ):
            images_module.open_image(bomb)


def test_open_image_reads_the_header_only_and_read_image_decodes(tmp_path):
    path = photo_png(tmp_path / "im.png", size=(40, 30))
    with images_module.open_image(path) as opened:
        assert opened.size == (40, 30)
    rgb = images_module.read_image(path)
    assert rgb.mode == "RGB" and np.array_equal(np.asarray(rgb), np.asarray(photo()))


def _rotated_jpeg(path: Path) -> Path:
    photo = Image.new("RGB", (40, 20), "black")
    exif = photo.getexif()
    exif[0x0112] = 6  # shown rotated by 90° clockwise: upright it is 20 wide, 40 high
    photo.save(path, exif=exif, quality=95)
    return path


def test_exif_rotated_size_is_checked_before_decoding(tmp_path, monkeypatch):
    monkeypatch.setattr(images_module, "MAX_PIXELS", 700)  # 40 × 20 = 800 pixels: over the cap
    path = _rotated_jpeg(tmp_path / "turned.jpg")

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("decoded before the size was checked")

    with Image.open(path) as image:
        monkeypatch.setattr(image, "load", no_decoding)
        monkeypatch.setattr(images_module.ImageOps, "exif_transpose", no_decoding)
        with pytest.raises(ImageInputError, match=r"is 20×40 pixels"):  # the upright size
            to_rgb(image, "turned.jpg")


# ---- 9. long file names ----------------------------------------------------------------------------


def test_long_input_names_give_output_names_that_fit(tmp_path):
    first = photo_png(tmp_path / "im.png")
    long_name = photo_png(tmp_path / ("a" * 246 + ".png"), seed=1)  # a legal 250-byte name
    other = photo_png(tmp_path / ("a" * 240 + "b.png"), seed=2)  # the same first characters
    out = tmp_path / "out"
    assert explain_cli(str(first), str(long_name), str(other), "--labels", "cat", "--out", str(out)) == 0
    names = sorted(p.name for p in out.glob("*.png"))
    assert len(names) == 6 and all(len(n.encode()) <= 255 for n in names)
    summary = json.loads((out / "summary.json").read_text())
    overlays = [
        name for entry in summary["images"] for m in entry["methods"].values() for name in m["overlays"]
    ]
    assert sorted(overlays) == names  # six distinct names


def test_output_names_of_long_labels_fit(tmp_path):
    label = "very " * 10 + "long label with many words and " + "x" * 120
    (names,) = cli_module._output_names([Path("b" * 250 + ".png")], [label], ["feature-surgery-only"])
    (name,) = names.values()
    assert len(name.encode()) <= 255 and name.endswith("_feature-surgery-only.png")


# ---- 10. meta models and devices ---------------------------------------------------------------------


def test_explain_refuses_a_model_on_the_meta_device(tokenizer):
    model = make_vit()
    images = random_images(model)
    model = model.to("meta")
    with pytest.raises(ValueError, match="meta device"):
        explain(model, tokenizer, images, ["cat", "dog"])


def test_cli_refuses_the_meta_device(tmp_path, capsys):
    image, out = photo_png(tmp_path / "im.png"), tmp_path / "out"
    assert explain_cli(str(image), "--labels", "cat", "--device", "meta", "--out", str(out)) == 2
    one_line_error(capsys, "meta")
    assert not out.exists()


# ---- 14. bounded rendering ----------------------------------------------------------------------------


def test_overlays_are_drawn_at_a_bounded_size_with_points_in_image_pixels(tmp_path, monkeypatch, toy):
    monkeypatch.setattr(cli_module, "MAX_OVERLAY_SIDE", 32)
    image, out = photo_png(tmp_path / "im.png", size=(80, 60)), tmp_path / "out"
    assert explain_cli(str(image), "--labels", "cat", "dog", "--method", "surgery", "--out", str(out)) == 0
    for label in ("cat", "dog"):
        with Image.open(out / f"im_{label}_surgery.png") as written:
            assert written.size == (32, 24)
    summary = json.loads((out / "summary.json").read_text())
    (entry,) = summary["images"]
    assert entry["size"] == [60, 80] and entry["overlay_size"] == [24, 32]
    batch = preprocess_images([photo((80, 60))], size=toy.image_size)
    full = explain(toy.model, toy.tokenizer, batch, ["cat", "dog"], "surgery", (60, 80))
    for j, label in enumerate(("cat", "dog")):
        xy, labels = full.points(label)
        assert entry["methods"]["surgery"]["points"][j] == {"xy": xy.tolist(), "labels": labels.tolist()}


def test_overlay_memory_is_a_few_float32s_per_pixel():
    from surgery_lib.ui.render import overlay

    image, heat = photo((400, 300)), np.linspace(0.0, 1.0, 300 * 400).reshape(300, 400)
    tracemalloc.start()
    try:
        overlay(image, heat)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak / heat.size < 60  # bytes per pixel (float64 throughout: about 130)


# ---- 15. the model first, one image decoded at a time ----------------------------------------------------


def test_an_unknown_model_is_named_before_the_images_are_read(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    assert main(["explain", str(bad), "--labels", "cat", "--model", "no-such-model", "--out", str(out)]) == 2
    one_line_error(capsys, "no-such-model")


def _decoded_inputs(size: tuple[int, int]) -> int:
    """PIL images of ``size`` whose pixels are in memory now."""
    return sum(
        1
        for o in gc.get_objects()
        if issubclass(type(o), Image.Image) and o.size == size and type(o._im).__name__ == "ImagingCore"
    )


@pytest.mark.slow  # > 1.4 s: make test runs it, make test-fast does not
def test_inputs_are_decoded_one_at_a_time(tmp_path, monkeypatch):
    size = (52, 44)
    paths = [str(photo_png(tmp_path / f"in{i}.png", size=size, seed=i)) for i in range(5)]
    alive = []
    real = cli_module.explain

    def counting(*args, **kwargs):
        gc.collect()
        alive.append(_decoded_inputs(size))
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_module, "explain", counting)
    assert explain_cli(*paths, "--labels", "cat", "--method", "raw", "--out", str(tmp_path / "out")) == 0
    assert len(alive) == 5 and max(alive) <= 2, alive


# ---- small ones ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [96.5, 0, -3, (96, 0), (96.0, 96), True, "96", (1, 2, 3)])
def test_preprocess_images_refuses_bad_sizes_by_name(size):
    with pytest.raises(ValueError, match=r"size must be .*got"):
        preprocess_images([photo()], size=size)


def test_preprocess_images_takes_numpy_integer_sizes():
    assert preprocess_images([photo()], size=np.int64(24)).shape == (1, 3, 24, 24)
    assert preprocess_images([photo()], size=(np.int32(20), 28)).shape == (1, 3, 20, 28)


def test_points_of_an_image_off_the_batch_names_the_range(toy, batch):
    result = explain(toy.model, toy.tokenizer, batch, ["cat", "dog"])
    with pytest.raises(ValueError, match=r"image 5 .*1 image.*0\.\.0"):
        result.points("cat", image=5)
    with pytest.raises(TypeError, match="image"):
        result.points("cat", image=0.5)
    assert result.points("cat", image=-1)[0].tolist() == result.points("cat")[0].tolist()


@pytest.mark.parametrize("threshold", [math.nan, math.inf, -0.1, 1.5])
def test_points_refuse_thresholds_off_zero_to_one(toy, batch, threshold):
    result = explain(toy.model, toy.tokenizer, batch, ["cat", "dog"])
    with pytest.raises(ValueError, match=r"threshold must be .*\[0, 1\]"):
        result.points("cat", threshold=threshold)


def test_points_of_an_unknown_label_lists_the_labels(toy, batch):
    result = explain(toy.model, toy.tokenizer, batch, ["cat", "dog"])
    with pytest.raises(ValueError, match=r"'Cat' is not among the explained labels: 'cat', 'dog'"):
        result.points("Cat")


@pytest.mark.parametrize("threshold", [float("nan"), -0.1, 1.5, "0.5"])
def test_sam_points_refuse_thresholds_off_zero_to_one(threshold):
    """similarity_to_points (and so text -> SAM points) named a NaN threshold nowhere: it gave no points."""
    from surgery_lib.maps.features import similarity_to_points

    with pytest.raises(ValueError, match=r"threshold must be a number in \[0, 1\]"):
        similarity_to_points(torch.rand(16), (64, 64), threshold=threshold)
    points, labels = similarity_to_points(torch.rand(16), (64, 64), threshold=0.5)
    assert len(points) == len(labels) > 0
