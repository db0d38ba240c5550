"""Claims carry their comparison; checks (true by construction) are listed apart and not counted."""

from __future__ import annotations

import pytest

from surgery_lib.ui.claims import Claim, check_claims, exercise


def test_a_claim_prints_its_measurement_and_comparison():
    text = check_claims({"surgery beats the null": Claim(True, "mSC 12.0 [8.0, 16.0]", "random map 0.1")})
    assert text.splitlines() == [
        "✓ surgery beats the null",
        "    measured mSC 12.0 [8.0, 16.0]; compared with random map 0.1",
        "1 of 1 claims hold on this model",
    ]


def test_checks_are_listed_but_not_counted():
    text = check_claims(
        {"a": Claim(False, "1", "2"), "b": True}, checks={"decomposition sums": True, "x": False}
    )
    lines = text.splitlines()
    assert "1 of 2 claims hold on this model" in lines
    assert lines[-2:] == ["  ok decomposition sums", "  FAILED x"]


def test_a_claim_must_name_its_comparison():
    with pytest.raises(ValueError, match="compared with"):
        Claim(True, "12.0", " ")
    with pytest.raises(ValueError, match="no claims"):
        check_claims({}, checks={"x": True})


def test_an_exercise_asks_for_the_prediction_first():
    assert "write your prediction first" in exercise(None, 3, "How many?")
    assert exercise("2", 3, "How many?").endswith("your prediction: 2; measured: 3")
