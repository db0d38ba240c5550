"""Claim checks and exercises: a notebook's "what you should see", each claim marked as holding or not
on the model and images it ran on, with what it was compared against.

A *claim* is a finding that could have gone the other way on another model: it names the measured
value, what it is compared with (a null, a baseline, chance) and, where the value is a mean over
images, its uncertainty (a bootstrap interval or a test's p-value). Facts that hold by construction
(an exact decomposition equals the output; the class token of a dual-path ViT is unchanged) are
*checks*: printed under their own heading and never counted as claims.
"""

from __future__ import annotations

from collections.abc import Mapping

from surgery_lib.eval.claims import Claim


def _line(text: str, value: Claim | bool) -> str:
    if isinstance(value, Claim):
        mark = "✓" if value.holds else "✗"
        return f"{mark} {text}\n    measured {value.measured}; compared with {value.compared_with}"
    return f"{'✓' if bool(value) else '✗'} {text}"


def check_claims(claims: Mapping[str, Claim | bool], checks: Mapping[str, bool] | None = None) -> str:
    """The notebook's "what you should see": each claim marked as holding (✓) or not (✗) on the model
    and images it ran on, with its measured value and comparison when given as a :class:`Claim`; a ✗
    means this model differs from what the paper reports. ``checks`` (things true by construction,
    verified numerically) are listed separately and not counted.

    Raises:
        ValueError: no claims.
    """
    if not claims:
        raise ValueError("no claims to check")
    lines = [_line(text, value) for text, value in claims.items()]
    held = sum(bool(v.holds if isinstance(v, Claim) else v) for v in claims.values())
    lines.append(f"{held} of {len(claims)} claims hold on this model")
    if checks:
        lines.append("checks (true by construction, verified here; not claims):")
        lines += [f"  {'ok' if bool(ok) else 'FAILED'} {text}" for text, ok in checks.items()]
    return "\n".join(lines)


def exercise(prediction: object, measured: object, question: str) -> str:
    """A predict-then-run exercise's check: the reader writes ``prediction`` (``None`` until they do)
    before running the cell that computes ``measured``. Returns the line to print; the comparison is
    left to the reader (the answer may depend on the model)."""
    if prediction is None:
        return f"{question}\n  write your prediction first (set PREDICTION), then rerun; measured: {measured}"
    return f"{question}\n  your prediction: {prediction}; measured: {measured}"
