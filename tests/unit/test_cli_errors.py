"""``surgery explain`` on bad input: one line on stderr naming the input, exit status 2, nothing written;
``--debug`` shows the traceback. And the file names it writes when names collide."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import explain_cli, one_line_error, photo_png
from PIL import Image


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# ---- what it writes when names collide ---------------------------------------------------------


def test_same_file_names_in_different_folders(tmp_path):
    a, b = photo_png(tmp_path / "a" / "photo.png"), photo_png(tmp_path / "b" / "photo.png", seed=1)
    out = tmp_path / "out"
    assert explain_cli(str(a), str(b), "--labels", "cat", "--method", "surgery", "--out", str(out)) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["photo-2_cat_surgery.png", "photo_cat_surgery.png"]
    summary = json.loads((out / "summary.json").read_text())
    assert [entry["path"] for entry in summary["images"]] == [str(a), str(b)]
    assert [entry["methods"]["surgery"]["overlays"] for entry in summary["images"]] == [
        ["photo_cat_surgery.png"],
        ["photo-2_cat_surgery.png"],
    ]


@pytest.mark.parametrize(
    ("labels", "names"),
    [
        (["cat!", "cat?", "cat"], ["cat", "cat-2", "cat-3"]),
        (["🐶", "狗"], ["label", "label-2"]),
    ],
)
def test_labels_that_clean_to_the_same_name_get_distinct_files(tmp_path, labels, names):
    image, out = photo_png(tmp_path / "im.png"), tmp_path / "out"
    assert explain_cli(str(image), "--labels", *labels, "--method", "raw", "--out", str(out)) == 0
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f"im_{n}_raw.png" for n in names)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["labels"] == labels
    assert summary["images"][0]["methods"]["raw"]["overlays"] == [f"im_{n}_raw.png" for n in names]


# ---- refused before anything is written ----------------------------------------------------------


def test_repeated_labels_are_refused(tmp_path, capsys):
    image, out = photo_png(tmp_path / "im.png"), tmp_path / "out"
    assert explain_cli(str(image), "--labels", "cat", "dog", "cat", "--out", str(out)) == 2
    one_line_error(capsys, "labels repeated", "'cat'")
    assert not out.exists()


def test_depth_beyond_the_blocks_fails_before_writing(tmp_path, capsys):
    image, out = photo_png(tmp_path / "im.png"), tmp_path / "out"
    code = explain_cli(
        str(image), "--labels", "cat", "--depth", "99", "--method", "raw,surgery", "--out", str(out)
    )
    assert code == 2
    one_line_error(capsys, "--depth 99", "at most")
    assert not out.exists()


@pytest.mark.parametrize("case", ["missing", "folder", "not-an-image", "sixteen-bit", "truncated"])
def test_bad_images_name_the_input(tmp_path, capsys, case):
    path = tmp_path / f"{case}.png"
    if case == "folder":
        path.mkdir()
    elif case == "not-an-image":
        path.write_text("hello")
    elif case == "sixteen-bit":
        Image.fromarray(np.full((20, 24), 40000, dtype=np.uint16)).save(path)
    elif case == "truncated":
        photo_png(tmp_path / "whole.png", size=(64, 64))
        path.write_bytes((tmp_path / "whole.png").read_bytes()[:300])
    out = tmp_path / "out"
    assert explain_cli(str(path), "--labels", "cat", "--out", str(out)) == 2
    one_line_error(capsys, str(path))
    assert not out.exists()


@pytest.mark.parametrize(("labels", "shown"), [(["cat", ""], "label 1 ('')"), (["  "], "label 0 ('  ')")])
def test_empty_label_is_named(tmp_path, capsys, labels, shown):
    image, out = photo_png(tmp_path / "im.png"), tmp_path / "out"
    assert explain_cli(str(image), "--labels", *labels, "--out", str(out)) == 2
    one_line_error(capsys, shown, "empty")
    assert not out.exists()


@pytest.mark.parametrize("where", ["below-a-file", "is-a-file"])
def test_unwritable_out_is_named(tmp_path, capsys, where):
    image = photo_png(tmp_path / "im.png")
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("x")
    out = blocker / "out" if where == "below-a-file" else blocker
    assert explain_cli(str(image), "--labels", "cat", "--out", str(out)) == 2
    one_line_error(capsys, "cannot write to --out", str(out))
    assert blocker.read_text() == "x"
