"""The papers' reported numbers come from the data file, with their sources, and add up where the sources
give all eight."""

from __future__ import annotations

import statistics

import pytest

from surgery_lib.eval.reported import BENCHMARKS, reported_for, reported_rows
from surgery_lib.methods import method_names


def test_every_row_names_a_method_of_the_registry_and_a_source() -> None:
    rows = reported_rows()
    assert rows and all(r.source and r.protocol for r in rows)
    known = set(method_names())
    second_batch = {"scclip", "resclip", "proxyclip"}  # issue 22: their methods may not be registered yet
    assert {r.method for r in rows} <= known | second_batch


def test_full_rows_average_to_their_reported_mean() -> None:
    """Where a source gives all eight numbers, their mean is its avg(8) (to its rounding)."""
    full = [r for r in reported_rows() if len(r.miou) == len(BENCHMARKS) and r.avg8 is not None]
    assert len(full) >= 6
    for r in full:
        assert statistics.mean(r.miou.values()) == pytest.approx(r.avg8, abs=0.06), r.row


def test_known_values_and_a_bad_file(tmp_path) -> None:
    (sclip,) = [r for r in reported_for("sclip") if r.row == "SCLIP (paper)"]
    assert sclip.miou["voc"] == 59.1 and sclip.miou["ade20k"] == 16.1 and sclip.avg8 == 38.2
    bad = tmp_path / "bad.csv"
    bad.write_text("method,row,voc,protocol,source\nsclip,x,fifty,p,s\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        reported_rows(bad)
