"""The protocol options end to end: a segmentation run on the shipped composites with PAMR."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

from surgery_lib.eval import runner as ev


def _argv(out, *extra: str) -> list[str]:
    root = REPO / "data" / "composites" / "seen_instances"
    return ["--task", "segment", "--dataset", "composites", "--root", str(root), "--limit", "2",
            "--batch-size", "2", "--quiet", "--out", str(out), *extra]  # fmt: skip


def test_segment_with_pamr_steps(tmp_path):
    assert ev.main(_argv(tmp_path / "pamr", "--pamr-steps", "2", "--templates", "openai80")) == 0
    result = json.loads((tmp_path / "pamr" / "results.json").read_text())
    run = json.loads((tmp_path / "pamr" / "run.json").read_text())
    assert (run["pamr_steps"], run["templates"]) == (2, "openai80")
    assert 0.0 <= result["summary"]["mIoU"] <= 100.0
    assert len(ev.image_records(tmp_path / "pamr")) == 2
    with pytest.raises(SystemExit, match="pamr_steps"):  # a resumed run must match the options
        ev.main(_argv(tmp_path / "pamr", "--pamr-steps", "3", "--templates", "openai80"))
    assert ev.main(_argv(tmp_path / "plain")) == 0
    plain = json.loads((tmp_path / "plain" / "run.json").read_text())
    assert "pamr_steps" not in plain and "templates" not in plain  # default runs: run.json as before


def test_segment_with_the_official_protocol(tmp_path):
    argv = _argv(tmp_path / "official", "--method", "naclip", "--protocol", "official", "--image-size", "64",
                 "--window", "48", "--stride", "32")  # fmt: skip
    assert ev.main(argv) == 0
    run = json.loads((tmp_path / "official" / "run.json").read_text())
    result = json.loads((tmp_path / "official" / "results.json").read_text())
    assert (run["protocol"], run["protocol_preset"], run["window"]) == ("official", "naclip", 48)
    assert 0.0 <= result["summary"]["mIoU"] <= 100.0
    assert len(ev.image_records(tmp_path / "official")) == 2
