"""Numbered pages of a long table that a view has already built in full and in order (a
report's statements, a comparison of two rounds): the view shows one page of rows; the
template's `numbered_pager` macro (templates/_macros/pager.html) links the others.

Lists read from the database page by keyset in their service instead
(deliberate/services/pagination.py); these tables come from an analysis snapshot, computed and
sorted as a whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

TABLE_PAGE_SIZE = 100
MAX_PAGE = 10**6  # page numbers beyond this are not kept in links back


@dataclass(frozen=True)
class TablePage:
    """Page `number` of `pages`: rows `first`..`last` (1-based) of `total`."""

    number: int
    pages: int
    first: int
    last: int
    total: int

    def rows(self, items: Sequence[T]) -> list[T]:
        return list(items[self.first - 1 : self.last]) if self.total else []


def table_page(total: int, requested: object, size: int = TABLE_PAGE_SIZE) -> TablePage:
    """The page to show: the requested one within 1..pages; page 1 when absent or not a
    number."""
    pages = max(1, -(-total // size))
    wanted = requested if type(requested) is int else 1
    number = min(max(wanted, 1), pages)
    first = (number - 1) * size
    return TablePage(number, pages, first + 1 if total else 0, min(first + size, total), total)


def kept_page(requested: object) -> dict[str, int]:
    """{"page": n} to keep in a link back to the page a form was sent from (n > 1), else {}."""
    if type(requested) is int and 1 < requested <= MAX_PAGE:
        return {"page": requested}
    return {}
