"""A claim of a notebook as a record: whether it holds, what was measured, what it is compared with.

The evaluation builds claims from its numbers (e.g. :func:`surgery_lib.eval.tables.beats`); the notebooks
print them with :func:`surgery_lib.ui.claims.check_claims`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    """One claim of a notebook.

    Fields:
        holds: whether the claim holds on this run.
        measured: the measured value, with its interval where it has one (e.g. ``"mSC +12.1 [8.3, 15.9]"``).
        compared_with: what the value is compared against (e.g. ``"random-map null −0.2 [−1.1, 0.8]"``,
            ``"raw CLIP"``, ``"object-area chance 6 %"``).
    """

    holds: bool
    measured: str
    compared_with: str

    def __post_init__(self) -> None:
        if not str(self.measured).strip() or not str(self.compared_with).strip():
            raise ValueError("a Claim names what was measured and what it is compared with")
        object.__setattr__(self, "holds", bool(self.holds))
