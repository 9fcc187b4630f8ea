"""The rank that suffices: the smallest adapter rank whose Δ vs full is non-inferior (not worse than full by more
than the margin: non-inferior, equivalent or superior; claim "equivalent" asks for equivalence), with the
family-wise error held at alpha over all the ranks tested.

Fixed-sequence testing (Maurer, Hothorn & Lehmacher 1995; Westfall & Krishen 2001): the ranks are tested in an
order fixed before the data, largest first (a larger rank is the more likely to match full), each at the full level
alpha; testing stops at the first rank that fails, and every rank before it holds. So the answer is the last rank
that held before the first failure: a smaller rank that happens to pass after a failure is not claimed.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipeline.statistics.sequential import DECIDED

CLAIMS = {
    "equivalent": ("equivalent",),
    "non-inferior": ("equivalent", "non-inferior", "superior"),
}
SUFFICES = "non-inferior"  # a rank suffices when it is not worse than full by the margin (better suffices too)


def smallest_rank(labels: Mapping[int, str], claim: str = SUFFICES) -> tuple[int | None, list[int]]:
    """(the smallest rank that suffices or None, the ranks tested in order) from each rank's verdict label."""
    if claim not in CLAIMS:
        raise ValueError(f"claim={claim!r} is not allowed: one of {sorted(CLAIMS)}")
    answer, tested = None, []
    for rank in sorted(labels, reverse=True):
        tested.append(rank)
        if labels[rank] not in CLAIMS[claim]:
            break
        answer = rank
    return answer, tested


def unsettled(labels: Mapping[int, str], claim: str = SUFFICES) -> int | None:
    """The rank the fixed sequence waits on, or None when more seeds cannot change where it stops: the first rank (from
    the largest down) that neither holds nor is decided against the claim (inconclusive, or non-inferior while
    equivalence is claimed)."""
    for rank in sorted(labels, reverse=True):
        if labels[rank] in CLAIMS[claim]:
            continue
        return None if labels[rank] in (*DECIDED, "no verdict") else rank  # no verdict: a failed run, no seed mends it
    return None
