"""Pages of long lists, by keyset: services list one bounded page, views pass the cursors.

A round may hold thousands of statements and a coalition tens of thousands of people, so
pages list a bounded slice. The slice is found by its neighbour's sort key ("keyset"), not by
an offset: rows added or moderated between two page loads neither repeat nor go missing on
the following page, and reading page 200 costs the same as page 1.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, Select, and_, or_, select

from ..extensions import db
from ..models import is_valid_id
from .errors import ValidationError

T = TypeVar("T")

PAGE_SIZE_MAX = 500


@dataclass(frozen=True)
class Page(Generic[T]):
    """A slice of a list in its fixed order, with the cursors of the slices either side.

    `after` is the cursor of the next page (pass it as `after_id`), `before` that of the
    previous page (pass it as `before_id`); each is None when there is no such page. `first`
    says whether this is the list's first page (nothing precedes it).
    """

    items: list[T]
    after: int | None = None
    before: int | None = None

    @property
    def first(self) -> bool:
        return self.before is None


def _key_after(keys: Sequence, values: Sequence, inclusive: bool = False) -> ColumnElement[bool]:
    """Return a WHERE clause: the sort key `keys` comes after `values` (in lexicographic order)."""
    last = keys[-1] >= values[-1] if inclusive else keys[-1] > values[-1]
    for key, value in zip(reversed(keys[:-1]), reversed(values[:-1]), strict=True):
        last = or_(key > value, and_(key == value, last))
    return last


def _key_before(keys: Sequence, values: Sequence) -> ColumnElement[bool]:
    """Return a WHERE clause: the sort key `keys` comes before `values`."""
    last = keys[-1] < values[-1]
    for key, value in zip(reversed(keys[:-1]), reversed(values[:-1]), strict=True):
        last = or_(key < value, and_(key == value, last))
    return last


def _clamp_limit(limit: object) -> int:
    if type(limit) is not int:
        raise ValidationError("The page size must be a whole number.")
    return max(1, min(limit, PAGE_SIZE_MAX))


def keyset_page(
    query: Select,
    keys: Sequence,
    *,
    limit: int,
    cursor: int | None,
    cursor_key: Sequence | None,
    direction: str = "after",
    id_of: Callable[[Any], int] = lambda row: row.id,
    rows: Callable[[Select], Iterable[Any]] | None = None,
) -> Page:
    """Return one page of `query` in the order of `keys` (the last key unique, e.g. the id).

    `cursor` is the id of the row the page starts from and `cursor_key` that row's sort key
    (None: the first page). `direction` is "after" (the rows following the cursor), "from"
    (the same, the cursor's row included) or "before" (the rows preceding it; when fewer than
    a page precede it, the first page). `rows` runs a query (default: ORM scalars).
    """
    limit = _clamp_limit(limit)
    run = rows or (lambda q: db.session.scalars(q))

    def fetch(where, order) -> list:
        q = query if where is None else query.where(where)
        return list(run(q.order_by(*order).limit(limit + 1)))

    def exists(where) -> bool:
        return bool(db.session.scalar(select(query.where(where).exists())))

    if cursor is None or cursor_key is None:
        found = fetch(None, keys)
        items = found[:limit]
        return Page(items, after=id_of(items[-1]) if len(found) > limit else None)
    if direction == "before":
        found = fetch(_key_before(keys, cursor_key), [k.desc() for k in keys])
        if len(found) <= limit:  # nothing further back: show a full first page instead
            return keyset_page(
                query, keys, limit=limit, cursor=None, cursor_key=None, id_of=id_of, rows=rows
            )
        items = found[:limit][::-1]
        later = exists(_key_after(keys, cursor_key, inclusive=True))
        return Page(items, after=id_of(items[-1]) if later else None, before=id_of(items[0]))
    inclusive = direction == "from"
    found = fetch(_key_after(keys, cursor_key, inclusive), keys)
    items = found[:limit]
    earlier = exists(_key_before(keys, cursor_key) if inclusive else ~_key_after(keys, cursor_key))
    return Page(
        items,
        after=id_of(items[-1]) if len(found) > limit else None,
        before=(id_of(items[0]) if items else cursor) if earlier else None,
    )


def page_cursor(
    after_id: object = None, before_id: object = None, from_id: object = None
) -> tuple[int | None, str]:
    """Return (cursor id, direction) from at most one of the three; invalid ids count as none."""
    for value, direction in ((from_id, "from"), (after_id, "after"), (before_id, "before")):
        if value is not None and is_valid_id(value):
            return value, direction
    return None, "after"


__all__ = ["PAGE_SIZE_MAX", "Page", "keyset_page", "page_cursor"]
