"""The evaluation store knows which data its records came from, and batch boundaries never move.

* ``run.json`` records the resolved ``--root``; every record carries a content hash of its image's files
  (``data_sha256``) and of its whole batch (``batch_sha256``): a resume against other images, or a
  dataset edited in place under the same ids, is refused naming what differs.
* Batch ``k`` always holds images ``[k·B, (k+1)·B)`` of the dataset, whatever ``--limit`` is and whatever
  is already stored, so a resumed run is bit-equal to a fresh one (same machine and thread count).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from surgery_lib.eval import runner
from surgery_lib.model.loading import load_clip

SHIPPED = REPO / "data" / "composites" / "seen_instances"


def _args(root: Path | str, out: Path, limit: int, batch: int = 2, *extra: str) -> list[str]:
    return ["--task", "explain", "--dataset", "composites", "--root", str(root), "--limit", str(limit),
            "--batch-size", str(batch), "--device", "cpu", "--quiet", "--out", str(out), *extra]  # fmt: skip


def _result(out: Path) -> dict:
    result = json.loads((out / "results.json").read_text())
    result.pop("run")
    return result


def _subset(dest: Path, picks: list[int]) -> Path:
    """A composites set in ``dest`` holding the shipped images ``picks``, renamed 00000, 00001, …"""
    meta = json.loads((SHIPPED / "labels.json").read_text())
    (dest / "images").mkdir(parents=True)
    (dest / "masks").mkdir()
    images = []
    for n, pick in enumerate(picks):
        item = dict(meta["images"][pick])
        shutil.copy2(SHIPPED / "images" / item["file"], dest / "images" / f"{n:05d}.jpg")
        shutil.copy2(SHIPPED / "masks" / item["mask"], dest / "masks" / f"{n:05d}.png")
        images.append({**item, "file": f"{n:05d}.jpg", "mask": f"{n:05d}.png"})
    (dest / "labels.json").write_text(json.dumps({"classes": meta["classes"], "images": images}))
    return dest


@pytest.fixture(scope="module")
def clip():
    return load_clip("toy-vit")


class _Spy:
    """Wraps the explain batch function; records the image ids of every batch computed."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self._compute = runner._BATCH_FUNCTIONS["explain"]

    def __call__(self, ctx, samples):
        self.batches.append([s.image_id for s in samples])
        return self._compute(ctx, samples)


@pytest.fixture
def spy(monkeypatch) -> _Spy:
    spy = _Spy()
    monkeypatch.setitem(runner._BATCH_FUNCTIONS, "explain", spy)
    return spy


def _fixed(*starts: int, batch: int) -> list[list[str]]:
    return [[f"{i:05d}" for i in range(s, s + batch)] for s in starts]


# ---- 2: the data a run read ------------------------------------------------------------------------


def test_a_resume_from_another_folder_with_other_images_is_refused(clip, tmp_path, monkeypatch):
    _subset(tmp_path / "a" / "set", [0, 1, 2, 3])
    _subset(tmp_path / "b" / "set", [10, 11, 12, 13])  # the same ids, other images
    out = tmp_path / "run"
    monkeypatch.chdir(tmp_path / "a")
    assert runner.main(_args("set", out, 2), loaded=clip) == 0
    settings = json.loads((out / "run.json").read_text())
    assert settings["root"] == str((tmp_path / "a" / "set").resolve())  # resolved, not as typed
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(SystemExit) as info:
        runner.main(_args("set", out, 4), loaded=clip)
    message = str(info.value)
    assert "root" in message, message
    assert str((tmp_path / "a" / "set").resolve()) in message
    assert str((tmp_path / "b" / "set").resolve()) in message
    assert len((out / "parts" / "rank0.jsonl").read_bytes().splitlines()) == 2  # nothing appended


def test_the_same_root_typed_another_way_resumes(clip, tmp_path, monkeypatch):
    root = _subset(tmp_path / "set", [0, 1, 2, 3])
    out = tmp_path / "run"
    assert runner.main(_args(root, out, 2), loaded=clip) == 0
    monkeypatch.chdir(tmp_path)
    assert runner.main(_args("./set/../set", out, 4), loaded=clip) == 0
    fresh = tmp_path / "fresh"
    assert runner.main(_args(root, fresh, 4), loaded=clip) == 0
    assert _result(out) == _result(fresh)


def _edit_image(root: Path) -> str:
    shutil.copy2(SHIPPED / "images" / "00020.jpg", root / "images" / "00001.jpg")
    return "00001.jpg"


def _edit_mask(root: Path) -> str:
    path = root / "masks" / "00001.png"
    with Image.open(path) as im:
        mask = im.copy()
    mask.putpixel((0, 0), 0 if mask.getpixel((0, 0)) else 1)
    stat = path.stat()
    mask.save(path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # an edit that keeps the mtime
    return "00001.png"


def _edit_labels(root: Path) -> str:
    meta = json.loads((root / "labels.json").read_text())
    label = meta["images"][1]["objects"][0]["label"]
    meta["images"][1]["objects"][0]["label"] = next(c for c in meta["classes"] if c != label)
    (root / "labels.json").write_text(json.dumps(meta))
    return "labels.json"


@pytest.mark.parametrize("edit", [_edit_image, _edit_mask, _edit_labels])
def test_a_dataset_edited_in_place_is_refused_naming_the_image(clip, tmp_path, edit):
    root = _subset(tmp_path / "set", [0, 1, 2, 3])
    out = tmp_path / "run"
    assert runner.main(_args(root, out, 2), loaded=clip) == 0
    changed = edit(root)
    before = (out / "parts" / "rank0.jsonl").read_bytes()
    with pytest.raises(SystemExit) as info:
        runner.main(_args(root, out, 4), loaded=clip)
    message = str(info.value)
    assert "changed" in message and "00001" in message and changed in message, message
    assert "another --out" in message
    assert (out / "parts" / "rank0.jsonl").read_bytes() == before


def test_an_edited_batch_mate_without_a_record_is_refused(clip, tmp_path):
    """Image 2 (limit 3) was computed in batch [2, 3]; image 3 changes: image 2's record no longer
    is what a fresh run computes."""
    root = _subset(tmp_path / "set", [0, 1, 2, 3])
    out = tmp_path / "run"
    assert runner.main(_args(root, out, 3), loaded=clip) == 0
    shutil.copy2(SHIPPED / "images" / "00020.jpg", root / "images" / "00003.jpg")
    with pytest.raises(SystemExit) as info:
        runner.main(_args(root, out, 3), loaded=clip)
    message = str(info.value)
    assert "00002" in message and "batch" in message and "00003.jpg" in message, message


def test_touched_files_are_not_a_change(clip, tmp_path):
    root = _subset(tmp_path / "set", [0, 1, 2, 3])
    out = tmp_path / "run"
    assert runner.main(_args(root, out, 2), loaded=clip) == 0
    for path in root.rglob("*"):
        os.utime(path)  # new mtimes, same bytes
    assert runner.main(_args(root, out, 4), loaded=clip) == 0


def test_an_old_run_folder_without_data_fingerprints_is_refused(clip, tmp_path):
    root = _subset(tmp_path / "set", [0, 1, 2, 3])
    out = tmp_path / "run"
    assert runner.main(_args(root, out, 2), loaded=clip) == 0
    settings = json.loads((out / "run.json").read_text())
    settings["record_format"] = "jsonl+sha256/1"
    (out / "run.json").write_text(json.dumps(settings))
    with pytest.raises(SystemExit) as info:
        runner.main(_args(root, out, 2), loaded=clip)
    message = str(info.value)
    assert "fingerprint" in message and "another --out" in message and str(out) in message


# ---- 17: fixed batch boundaries ----------------------------------------------------------------------


def test_resuming_with_a_larger_limit_is_bit_equal_to_a_fresh_run(clip, tmp_path, spy):
    resumed, fresh = tmp_path / "resumed", tmp_path / "fresh"
    assert runner.main(_args(SHIPPED, resumed, 5, 4), loaded=clip) == 0
    assert spy.batches == _fixed(0, 4, batch=4)  # image 4 in its full batch [4, 8), not alone
    spy.batches.clear()
    assert runner.main(_args(SHIPPED, resumed, 9, 4), loaded=clip) == 0
    assert spy.batches == _fixed(4, 8, batch=4)  # batch [4, 8) again: 5-7 are missing
    spy.batches.clear()
    assert runner.main(_args(SHIPPED, fresh, 9, 4), loaded=clip) == 0
    assert spy.batches == _fixed(0, 4, 8, batch=4)
    assert runner.image_records(resumed) == runner.image_records(fresh)  # bit-equal numbers
    assert _result(resumed) == _result(fresh)
    assert [r["index"] for r in runner.image_records(resumed)] == list(range(9))  # nothing past --limit


def test_a_lost_record_is_recomputed_in_its_own_batch(clip, tmp_path, spy):
    out = tmp_path / "run"
    assert runner.main(_args(SHIPPED, out, 3), loaded=clip) == 0
    first = runner.image_records(out)
    lines = (out / "parts" / "rank0.jsonl").read_bytes().splitlines(keepends=True)
    del lines[1]
    (out / "parts" / "rank0.jsonl").write_bytes(b"".join(lines))
    spy.batches.clear()
    assert runner.main(_args(SHIPPED, out, 3), loaded=clip) == 0
    assert spy.batches == _fixed(0, batch=2)  # image 1 with image 0, as the first run computed it
    assert runner.image_records(out) == first


def test_a_nearly_equal_duplicate_is_the_same_record(clip, tmp_path):
    """Two records of one image that agree to 1e-6 relative (another machine or thread count) are
    one record; a larger difference is refused."""
    out = tmp_path / "run"
    assert runner.main(_args(SHIPPED, out, 2), loaded=clip) == 0
    result = _result(out)
    key = runner._run_key(json.loads((out / "run.json").read_text()))
    record = dict(runner.image_records(out)[0])
    record["pairs"] = [{**record["pairs"][0], "sc": record["pairs"][0]["sc"] * (1 + 3e-7)}]
    runner._append(out / "parts" / "rank1.jsonl", [record], key)
    (out / "results.json").unlink()
    assert runner.main(_args(SHIPPED, out, 2), loaded=clip) == 0
    assert _result(out) == result  # the first record is kept
    record["pairs"] = [{**record["pairs"][0], "sc": record["pairs"][0]["sc"] * (1 + 1e-4)}]
    runner._append(out / "parts" / "rank2.jsonl", [record], key)
    with pytest.raises(SystemExit, match="a second, different record of image 0"):
        runner.main(_args(SHIPPED, out, 2), loaded=clip)
