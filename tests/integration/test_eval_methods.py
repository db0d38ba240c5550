"""``python -m surgery_lib.eval.runner --method a,b,c``: one run per method, one combined table."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import REPO

from surgery_lib.eval import runner

METHODS = ("raw", "surgery", "sclip")


def _argv(out, methods: str) -> list[str]:
    root = REPO / "data" / "composites" / "seen_instances"
    return [
        "--task", "explain", "--dataset", "composites", "--root", str(root), "--limit", "2",
        "--method", methods, "--out", str(out), "--device", "cpu", "--quiet",
    ]  # fmt: skip


def test_several_methods_write_one_table(tmp_path):
    out = tmp_path / "runs"
    assert runner.main(_argv(out, ",".join(METHODS))) == 0
    rows = json.loads((out / "results_by_method.json").read_text())
    assert [row["method"] for row in rows] == list(METHODS)
    with (out / "results_by_method.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [row["method"] for row in table] == list(METHODS)
    for method, row in zip(METHODS, rows, strict=True):
        result = json.loads((out / method / "results.json").read_text())
        assert result["method"] == method and result["images"] == 2
        assert row["out"] == str(out / method)
        assert row["mIoU"] == pytest.approx(result["summary"]["mIoU"])
    assert rows[0]["mIoU"] != rows[1]["mIoU"]  # the methods really differ
    assert runner.main(_argv(out, ",".join(METHODS))) == 0  # resumed: the same table
    assert json.loads((out / "results_by_method.json").read_text())[0]["mIoU"] == rows[0]["mIoU"]


def test_unknown_methods_and_gradient_methods_outside_explain_are_refused_before_any_run(tmp_path):
    with pytest.raises(SystemExit, match="naclip"):
        runner.main(_argv(tmp_path / "a", "raw,nope"))
    segment = [("segment" if a == "explain" else a) for a in _argv(tmp_path / "b", "raw,gradcam")]
    with pytest.raises(SystemExit, match=r"gradient explainer.*explain task only"):
        runner.main(segment)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
