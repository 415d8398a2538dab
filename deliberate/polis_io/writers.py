"""Writers for Pol.is's CSV export format (pure stdlib): streaming generators of UTF-8 chunks.

The five files Pol.is writes, with its exact names, columns and sign (**agree = 1,
disagree = -1, pass = 0**), so that Pol.is users' tools read them:

* ``summary.csv``: key,value rows (no header): topic, url, views, voters, voters-in-conv,
  commenters, comments, groups, conversation-description (then any extra notes);
* ``comments.csv``: timestamp, datetime, comment-id, author-id, agrees, disagrees, moderated,
  comment-body;
* ``votes.csv``: timestamp, datetime, comment-id, voter-id, vote;
* ``participants-votes.csv``: participant, group-id, n-comments, n-votes, n-agree, n-disagree,
  then one column per comment-id (blank = not voted);
* ``comment-groups.csv``: comment-id, comment, total-votes, total-agrees, total-disagrees,
  total-passes, then group-a-votes, group-a-agrees, group-a-disagrees, group-a-passes,
  group-b-... for each group.

Every writer takes rows of plain values and yields encoded chunks of about ``CHUNK_BYTES``, so
a caller can stream millions of rows. Cells are neutralised against spreadsheet formula
injection **per column**: text columns (comment bodies, topics, descriptions) get a leading
single quote when they start with ``= + - @``, a tab or a carriage return; numeric columns
(votes of -1, ids, counts) are written as numbers and never touched. ``None`` is a blank cell.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "COMMENTS_HEADER",
    "COMMENT_GROUPS_HEADER",
    "CSV_FILES",
    "GROUP_COLUMNS",
    "PARTICIPANTS_VOTES_HEADER",
    "SUMMARY_KEYS",
    "VOTES_HEADER",
    "group_letter",
    "neutralise",
    "polis_datetime",
    "write_comment_groups",
    "write_comments",
    "write_participants_votes",
    "write_rows",
    "write_summary",
    "write_vote_batches",
    "write_votes",
]

CSV_FILES = (
    "summary.csv",
    "comments.csv",
    "votes.csv",
    "participants-votes.csv",
    "comment-groups.csv",
)
SUMMARY_KEYS = (
    "topic",
    "url",
    "views",
    "voters",
    "voters-in-conv",
    "commenters",
    "comments",
    "groups",
    "conversation-description",
)
COMMENTS_HEADER = (
    "timestamp",
    "datetime",
    "comment-id",
    "author-id",
    "agrees",
    "disagrees",
    "moderated",
    "comment-body",
)
VOTES_HEADER = ("timestamp", "datetime", "comment-id", "voter-id", "vote")
PARTICIPANTS_VOTES_HEADER = (
    "participant",
    "group-id",
    "n-comments",
    "n-votes",
    "n-agree",
    "n-disagree",
)
COMMENT_GROUPS_HEADER = (
    "comment-id",
    "comment",
    "total-votes",
    "total-agrees",
    "total-disagrees",
    "total-passes",
)
GROUP_COLUMNS = ("votes", "agrees", "disagrees", "passes")

# Characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection").
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
CHUNK_BYTES = 64 * 1024
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def neutralise(value: Any) -> Any:
    """Return a text cell that no spreadsheet runs as a formula (a leading quote if needed)."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def polis_datetime(ms: int | float | None) -> str:
    """Format milliseconds since the epoch as Pol.is does: 'Wed Jun 18 08:16:54 UTC 2014'."""
    if ms is None:
        return ""
    t = datetime.fromtimestamp(ms / 1000.0, UTC)
    return (
        f"{_DAYS[t.weekday()]} {_MONTHS[t.month - 1]} {t.day:02d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} UTC {t.year}"
    )


def group_letter(index: int) -> str:
    """Pol.is's letter for the group at `index` (0 -> a, 25 -> z, 26 -> aa)."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(ord("a") + rest) + letters
    return letters


class _ChunkedWriter:
    """A csv.writer over a buffer that is handed out as UTF-8 chunks."""

    def __init__(self) -> None:
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\n")

    def row(self, row: Sequence[Any]) -> bytes | None:
        self.writer.writerow(row)
        if self.buffer.tell() >= CHUNK_BYTES:
            return self.take()
        return None

    def rows(self, rows: Iterable[Sequence[Any]]) -> bytes | None:
        self.writer.writerows(rows)
        if self.buffer.tell() >= CHUNK_BYTES:
            return self.take()
        return None

    def take(self) -> bytes:
        data = self.buffer.getvalue().encode("utf-8")
        self.buffer.seek(0)
        self.buffer.truncate()
        return data


def _stream(header: Sequence[str] | None, rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    out = _ChunkedWriter()
    if header is not None:
        out.row(header)
    for row in rows:
        chunk = out.row(row)
        if chunk:
            yield chunk
    tail = out.take()
    if tail:
        yield tail


def _stream_batches(
    header: Sequence[str] | None, batches: Iterable[Sequence[Sequence[Any]]]
) -> Iterator[bytes]:
    out = _ChunkedWriter()
    if header is not None:
        out.row(header)
    for batch in batches:
        chunk = out.rows(batch)
        if chunk:
            yield chunk
    tail = out.take()
    if tail:
        yield tail


def write_rows(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    """Yield a CSV of rows under a header (the caller neutralises its text cells)."""
    return _stream(header, rows)


def write_summary(items: Iterable[tuple[str, Any]]) -> Iterator[bytes]:
    """Yield summary.csv: one key,value row per item (text values neutralised, no header)."""
    return _stream(None, ((key, neutralise(value)) for key, value in items))


def write_comments(rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    """Yield comments.csv from rows (timestamp ms, comment-id, author-id or None, agrees,
    disagrees, moderated, comment-body)."""
    return _stream(
        COMMENTS_HEADER,
        (
            (ms, polis_datetime(ms), cid, author, agrees, disagrees, moderated, neutralise(body))
            for ms, cid, author, agrees, disagrees, moderated, body in rows
        ),
    )


def write_votes(rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    """Yield votes.csv from rows (timestamp ms, comment-id, voter-id, vote in {-1, 0, 1})."""

    def formatted() -> Iterator[tuple]:
        last_second, text = None, ""
        for ms, cid, voter, vote in rows:
            second = ms // 1000 if ms is not None else None
            if second != last_second:  # rows come in time order: format each second once
                last_second, text = second, polis_datetime(ms)
            yield ms, text, cid, voter, vote

    return _stream(VOTES_HEADER, formatted())


def write_vote_batches(batches: Iterable[Sequence[Sequence[Any]]]) -> Iterator[bytes]:
    """Yield votes.csv from batches of complete rows (timestamp ms, datetime text as
    :func:`polis_datetime` writes it, comment-id, voter-id, vote): the fast path for millions."""
    return _stream_batches(VOTES_HEADER, batches)


def write_participants_votes(
    comment_ids: Sequence[int], rows: Iterable[Sequence[Any]]
) -> Iterator[bytes]:
    """Yield participants-votes.csv from rows (participant, group-id or None, n-comments,
    votes): votes is {comment-id: vote} or a list aligned with `comment_ids` (None = not
    voted). The vote counts are derived from the votes."""
    header = (*PARTICIPANTS_VOTES_HEADER, *(str(c) for c in comment_ids))

    def formatted() -> Iterator[list]:
        for participant, group, n_comments, votes in rows:
            cells = votes if isinstance(votes, list) else [votes.get(c) for c in comment_ids]
            yield [
                participant,
                group,
                n_comments,
                len(cells) - cells.count(None),
                cells.count(1),
                cells.count(-1),
                *cells,
            ]

    return _stream(header, formatted())


def write_comment_groups(n_groups: int, rows: Iterable[Sequence[Any]]) -> Iterator[bytes]:
    """Yield comment-groups.csv from rows (comment-id, comment, total votes, agrees, disagrees,
    passes, then votes, agrees, disagrees, passes per group); None is a blank cell."""
    header = list(COMMENT_GROUPS_HEADER)
    for i in range(n_groups):
        header.extend(f"group-{group_letter(i)}-{column}" for column in GROUP_COLUMNS)
    return _stream(header, ((row[0], neutralise(row[1]), *row[2:]) for row in rows))
