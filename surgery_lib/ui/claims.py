"""Claim checks: a notebook's "what you should see", each claim marked as holding or not on the model
and images it ran on."""

from __future__ import annotations

from collections.abc import Mapping


def check_claims(claims: Mapping[str, bool]) -> str:
    """The notebook's "what you should see" claims, each marked as holding (✓) or not (✗) on the
    model and images it ran on; a ✗ means this model differs from what the paper reports."""
    if not claims:
        raise ValueError("no claims to check")
    lines = [f"{'✓' if bool(holds) else '✗'} {claim}" for claim, holds in claims.items()]
    held = sum(bool(h) for h in claims.values())
    return "\n".join([*lines, f"{held} of {len(claims)} hold on this model"])
