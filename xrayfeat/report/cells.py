"""The report's cells: numbers, times, counts, changes and intervals as the tables show them.

One place for how a figure reads in every table of the report (:mod:`.writer`
for runs, :mod:`.findings` for multi-label runs and subgroups): three
decimals, a true minus sign, a dash where a figure is missing.
"""

from __future__ import annotations

from xrayfeat.report.document import Span
from xrayfeat.runs.record import finite_float

__all__ = ["DASH", "MINUS", "number", "duration", "whole", "signed_number", "difference", "with_ci"]

DASH = "\u2014"
"""What a table shows where a figure is missing."""
MINUS = "\u2212"
"""A true minus sign, as wide as the plus."""


def number(x, digits: int = 3) -> str:
    x = finite_float(x)
    return DASH if x is None else f"{x:.{digits}f}"


def duration(x) -> str:
    x = finite_float(x)
    if x is None:
        return DASH
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def whole(x) -> str:
    return DASH if x is None else f"{int(x):,}"


def signed_number(x) -> str:
    """``−0.312``, ``+0.020`` (a true minus sign); ``0.000`` when it rounds to nothing."""
    x = finite_float(x)
    if x is None:
        return DASH
    text = f"{abs(x):.3f}"
    if text == f"{0:.3f}":
        return text
    return (MINUS if x < 0 else "+") + text


def difference(internal, external) -> float | None:
    """external − internal; None when either is missing."""
    internal, external = finite_float(internal), finite_float(external)
    return None if internal is None or external is None else external - internal


def with_ci(value, ci, role: str = "muted") -> list:
    """``0.812 [0.74, 0.87]`` with the interval in ``role``; the bare value when there is no interval."""
    text = number(value)
    if text == DASH or ci is None:
        return [text]
    lo, hi = ci
    return [text, Span(f" [{lo:.3f}, {hi:.3f}]", role)]
