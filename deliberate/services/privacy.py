"""Small-cell suppression: no figure about fewer than MIN_CELL people or organisations.

Every report page and export that shows a count or share broken down by group, organisation or
statement goes through these helpers, so the rule lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_CELL = 3


@dataclass(frozen=True)
class Cell:
    """A count that may be shown, or a suppressed one (`value` is None)."""

    value: int | None
    base: int | None = None  # the denominator, also suppressed when small

    @property
    def suppressed(self) -> bool:
        return self.value is None

    @property
    def share(self) -> float | None:
        if self.value is None or not self.base:
            return None
        return self.value / self.base


def is_small(n: int | None) -> bool:
    """Whether a breakdown over n people (or organisations) must not be shown."""
    return n is None or n < MIN_CELL


def cell(count: int, base: int) -> Cell:
    """A count out of `base` people; suppressed entirely when `base` is below MIN_CELL.

    The base decides: a share among fewer than MIN_CELL people would reveal individual votes,
    while "0 of 40" reveals nothing about anyone.
    """
    if is_small(base):
        return Cell(None, None)
    return Cell(int(count), int(base))
