"""The evaluation record store (``run.json``, ``parts/*.jsonl``) never changes a result silently.

A finished ``--task explain --dataset composites --limit 3`` run is damaged in every way we know of;
each rerun either refuses, naming the file and line, or recomputes the lost images to the same result.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest
from conftest import REPO

from surgery_lib.eval import runner
from surgery_lib.model.loading import load_clip

ROOT = REPO / "data" / "composites" / "seen_instances"


def _args(out: Path, *extra: str) -> list[str]:
    return ["--task", "explain", "--dataset", "composites", "--root", str(ROOT), "--limit", "3",
            "--batch-size", "2", "--device", "cpu", "--quiet", "--out", str(out), *extra]  # fmt: skip


def _result(out: Path) -> dict:
    result = json.loads((out / "results.json").read_text())
    result.pop("run")
    return result


@pytest.fixture(scope="module")
def clip():
    return load_clip("toy-vit")


@pytest.fixture(scope="module")
def finished(clip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("store") / "finished"
    assert runner.main(_args(out), loaded=clip) == 0
    return out


@pytest.fixture(scope="module")
def foreign(clip, tmp_path_factory) -> Path:
    """A finished run of the same images with other settings."""
    out = tmp_path_factory.mktemp("store") / "foreign"
    assert runner.main(_args(out, "--image-size", "48"), loaded=clip) == 0
    return out


@pytest.fixture
def damaged(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (out / "results.json").unlink()
    return out


def _lines(out: Path, shard: str = "rank0.jsonl") -> list[bytes]:
    return (out / "parts" / shard).read_bytes().splitlines(keepends=True)


def _write(out: Path, lines: list[bytes], shard: str = "rank0.jsonl") -> None:
    (out / "parts" / shard).write_bytes(b"".join(lines))


def _edit(line: bytes, change) -> bytes:
    record = json.loads(line)
    change(record)
    return json.dumps(record).encode() + b"\n"


def _refused(clip, out: Path, *where: str) -> str:
    before = {p.name: p.read_bytes() for p in (out / "parts").iterdir()}
    with pytest.raises(SystemExit) as info:
        runner.main(_args(out), loaded=clip)
    message = str(info.value)
    for text in where:
        assert text in message, message
    assert {p.name: p.read_bytes() for p in (out / "parts").iterdir()} == before  # nothing appended
    assert not (out / "results.json").exists()
    return message


def test_a_finished_run_reads_back_its_own_records(clip, finished, damaged):
    assert runner.main(_args(damaged), loaded=clip) == 0
    assert _result(damaged) == _result(finished)
    assert len(_lines(damaged)) == 3  # nothing recomputed
    assert [r["index"] for r in runner.image_records(damaged)] == [0, 1, 2]
    assert all("sha256" not in r for r in runner.image_records(damaged))


@pytest.mark.parametrize("damage", ["torn-last-line", "lost-line", "identical-duplicate"])
def test_lost_records_are_recomputed_to_the_same_result(clip, finished, damaged, damage):
    lines = _lines(damaged)
    if damage == "torn-last-line":
        lines[-1] = lines[-1][: len(lines[-1]) // 2]
    elif damage == "lost-line":
        del lines[1]
    else:
        lines.append(lines[0])
    _write(damaged, lines)
    assert runner.main(_args(damaged), loaded=clip) == 0
    assert _result(damaged) == _result(finished)
    assert runner.image_records(damaged) == runner.image_records(finished)


def _nan(line: bytes) -> bytes:
    record = json.loads(line)
    value = json.dumps(record["pairs"][0]["iou"]).encode()
    assert line.count(value) == 1
    return line.replace(value, b"NaN")


def _huge(line: bytes) -> bytes:
    value = json.dumps(json.loads(line)["pairs"][0]["sc"]).encode()
    return line.replace(value, b"1e999")


@pytest.mark.parametrize(
    ("line", "damage", "problem"),
    [
        (2, lambda line: b'{"pairs": [{"class": "bird", \n', "not a valid JSON record"),
        (1, lambda line: _edit(line, lambda r: r["pairs"][0].update(iou=0.99)), "does not match its sha256"),
        (2, lambda line: _edit(line, lambda r: r.update(id="00007")), "does not match its sha256"),
        (3, lambda line: _edit(line, lambda r: r.update(index=0)), "does not match its sha256"),
        (1, lambda line: _edit(line, lambda r: r.pop("sha256")), "has no sha256"),
        (2, _nan, "not a finite number"),
        (2, _huge, "not a finite number"),
        (3, lambda line: line[:20] + b"\xff\xfe" + line[20:], "not valid UTF-8"),
        (1, lambda line: b"[1, 2, 3]\n", "not a JSON object"),
        (2, lambda line: b"\n", "not a valid JSON record"),
    ],
)
def test_damaged_records_are_refused_naming_file_and_line(clip, damaged, line, damage, problem):
    lines = _lines(damaged)
    lines[line - 1] = damage(lines[line - 1])
    _write(damaged, lines)
    _refused(clip, damaged, f"{damaged / 'parts' / 'rank0.jsonl'}:{line}: ", problem, "delete that line")


def test_a_record_from_another_run_is_refused(clip, damaged, foreign):
    lines = _lines(damaged)
    lines[1] = _lines(foreign)[1]  # the same image, valid checksum, but computed at another size
    _write(damaged, lines)
    _refused(clip, damaged, "rank0.jsonl:2: ", "comes from another run")


def test_a_foreign_shard_is_refused(clip, damaged, foreign):
    _write(damaged, _lines(foreign)[:1], shard="rank1.jsonl")
    _refused(clip, damaged, "rank1.jsonl:1: ", "comes from another run")


def test_a_second_different_record_of_an_image_is_refused(clip, damaged):
    settings = json.loads((damaged / "run.json").read_text())
    record = json.loads(_lines(damaged)[0])
    record.pop("sha256")
    record["pairs"][0]["iou"] += 0.25
    runner._append(damaged / "parts" / "rank1.jsonl", [record], runner._run_key(settings))
    message = _refused(clip, damaged, "rank1.jsonl:1: ", "a second, different record of image 0")
    assert "rank0.jsonl:1" in message


@pytest.mark.parametrize(
    ("damage", "where", "problem"),
    [
        (lambda text: text[: len(text) // 2], "run.json:", "not valid JSON"),
        (lambda text: b"\xff" + text, "run.json: ", "not valid UTF-8"),
        (lambda text: b"[]", "run.json: ", "not a JSON object"),
        (lambda text: text.replace(b'"record_format"', b'"old_format"'), "", "another version"),
        (lambda text: text.replace(b'"batch_size": 2', b'"batch_size": 3'), "", "settings (batch_size)"),
    ],
)  # fmt: skip
def test_a_broken_run_json_is_refused_naming_it(clip, damaged, damage, where, problem):
    path = damaged / "run.json"
    path.write_bytes(damage(path.read_bytes()))
    message = _refused(clip, damaged, problem, "use another --out")
    assert f"{damaged}/{where}" in message if where else str(damaged) in message


def test_a_second_run_on_the_same_folder_is_refused(clip, damaged):
    lines = _lines(damaged)
    _write(damaged, lines[:1])  # two images left to compute
    with (damaged / ".lock").open("a+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        message = _refused(clip, damaged, "in use by another evaluation", ".lock")
        assert "another --out" in message
    assert runner.main(_args(damaged), loaded=clip) == 0  # the lock is free again


@pytest.mark.parametrize(
    "bad", [["--limit", "-1"], ["--limit", "0"], ["--image-size", "0"], ["--batch-size", "0"]]
)
def test_bad_numbers_fail_before_anything_is_created(tmp_path, bad):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as info:
        runner.main(_args(out, *bad))
    assert bad[0].lstrip("-").replace("-", "_") in str(info.value)
    assert not out.exists()
