"""The vote matrix: latest vote wins, moderation sets, the in-conversation set.

Votes are kept sparse (COO arrays, one entry per participant x statement that has a vote) so
that every later stage costs O(votes), never O(participants x statements).

Sign convention (deliberate): agree = +1, disagree = -1, pass = 0, "not seen" = no entry.
Pol.is's math uses the opposite sign; the analysis never flips, tests do.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Votes", "Moderation", "in_conversation"]

# Rows per chunk are chosen so a dense chunk holds about this many cells (see ``Votes.chunks``).
_CHUNK_CELLS = 4_000_000


def _factorize(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map ids to codes 0..u-1 in ascending id order.

    Parameters
    ----------
    ids : (n,) array of ints or strings.

    Returns
    -------
    uniques : (u,) sorted distinct ids.
    codes : (n,) int32, ``uniques[codes] == ids``.
    """
    if ids.size == 0:
        return ids[:0], np.zeros(0, np.int32)
    if ids.dtype.kind in "iu":
        lo, hi = int(ids.min()), int(ids.max())
        # Dense lookup table: O(n) instead of a sort, when the id range is not much larger than n.
        if lo >= 0 and hi < 4 * ids.size + 1_000_000:
            present = np.zeros(hi + 1, dtype=bool)
            present[ids] = True
            if lo == 0 and bool(present.all()):
                # ids are exactly 0..u-1 (e.g. already codes): they are their own codes
                return np.arange(hi + 1, dtype=ids.dtype), ids.astype(np.int32, copy=False)
            uniques = np.flatnonzero(present)
            lookup = np.empty(hi + 1, np.int32)  # only read at present ids
            lookup[uniques] = np.arange(uniques.size, dtype=np.int32)
            return uniques.astype(ids.dtype, copy=False), lookup[ids]
        uniques, codes = np.unique(ids, return_inverse=True)
        return uniques, codes.astype(np.int32)
    try:
        uniques, codes = np.unique(ids, return_inverse=True)
        return uniques, codes.astype(np.int32)
    except TypeError:
        # Mixed types (e.g. ints and strs): order by (type name, value) so the order is total.
        keys = sorted(set(ids.tolist()), key=lambda v: (type(v).__name__, v))
        index = {k: i for i, k in enumerate(keys)}
        uniques = np.empty(len(keys), dtype=object)
        uniques[:] = keys
        return uniques, np.fromiter((index[v] for v in ids.tolist()), np.int32, ids.size)


def _as_id_array(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        arr = arr.reshape(-1)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError("ids given as floats must be whole numbers")
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "U" or arr.dtype.kind == "S":
        arr = arr.astype(object)
    return arr


@dataclass(frozen=True, eq=False)
class Votes:
    """The latest vote of each participant on each statement, stored sparse.

    Rows (participants) are in order of first appearance in the vote stream (by ``created``,
    then by position), as in Pol.is's named matrix; columns (statements) are in ascending id
    order, as after a Pol.is full recompute. Ordering by first appearance rather than by id
    makes every result independent of how ids are labelled.

    Attributes
    ----------
    participant_ids : (n_rows,) ids, row order.
    statement_ids : (n_cols,) ids, column order (ascending).
    row : (nnz,) int32 row index of each vote, non-decreasing in blocks of ``block_rows``.
    col : (nnz,) int32 column index.
    value : (nnz,) int8 in {-1, 0, +1}.
    block_ptr : (n_blocks + 1,) int64; entries of rows [b*block_rows, (b+1)*block_rows) are
        ``row[block_ptr[b]:block_ptr[b+1]]`` (rows inside a block are not sorted).
    block_rows : int.
    last_created : the largest ``created`` seen (None when no timestamps were given).
    """

    participant_ids: np.ndarray
    statement_ids: np.ndarray
    row: np.ndarray
    col: np.ndarray
    value: np.ndarray
    block_ptr: np.ndarray
    block_rows: int
    last_created: Any = None
    _row_index: dict = field(default_factory=dict, repr=False)
    _col_index: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        participant: Sequence[Any] | np.ndarray,
        statement: Sequence[Any] | np.ndarray,
        value: Sequence[int] | np.ndarray,
        created: Sequence[Any] | np.ndarray | None = None,
    ) -> Votes:
        """Build from one entry per vote event; the latest event per (participant, statement) wins.

        Parameters
        ----------
        participant, statement : (n,) ids (ints or strings).
        value : (n,) ints in {+1 agree, -1 disagree, 0 pass}.
        created : (n,) optional timestamps (numbers, numpy datetime64 or python datetimes). The
            event with the largest ``created`` wins; on equal ``created`` (or with no
            timestamps) the later position wins.
        """
        p = _as_id_array(participant)
        s = _as_id_array(statement)
        v = np.asarray(value).reshape(-1)
        n = v.size
        if p.size != n or s.size != n:
            raise ValueError("participant, statement and value must have the same length")
        if n and v.dtype.kind == "f" and not np.all(v == np.round(v)):
            raise ValueError("vote values must be -1, 0 or +1")
        if n and v.dtype.kind not in "iufb":
            raise ValueError("vote values must be -1, 0 or +1")
        if n and (v.min() < -1 or v.max() > 1):
            raise ValueError("vote values must be -1, 0 or +1")
        v = v.astype(np.int8) if v.dtype != np.int8 else v
        c = None
        if created is not None:
            c = np.asarray(created).reshape(-1)
            if c.size != n:
                raise ValueError("created must have the same length as value")
            if c.dtype.kind not in "iufM":
                try:
                    c = c.astype(np.float64)
                except (TypeError, ValueError):
                    c = c.astype("datetime64[us]")  # python datetimes, ISO strings
            if c.dtype.kind == "M":
                c = c.astype("datetime64[us]").astype(np.int64)  # microseconds since epoch
        p_ids, p_code = _factorize(p)
        s_ids, s_code = _factorize(s)
        n_rows, n_cols = p_ids.size, s_ids.size

        # Event order: position, or (created, position). Only needed to order rows by first
        # appearance and to resolve duplicate cells.
        created_sorted = c is None or n == 0 or bool(np.all(c[1:] >= c[:-1]))
        # First appearance of each participant: minimum event rank.
        codes_sorted = n > 0 and bool(np.all(p_code[1:] >= p_code[:-1]))
        if n == 0:
            row_of_code = np.zeros(0, np.int32)
        elif created_sorted and codes_sorted:
            # Participants appear in id order already (e.g. votes ordered by participant): the
            # first-appearance order is the id order, no work needed.
            row_of_code = None
        else:
            if created_sorted:
                first = np.full(n_rows, n, dtype=np.int64)
                np.minimum.at(first, p_code, np.arange(n, dtype=np.int64))
                order = np.argsort(first, kind="stable")
            else:
                cf = c.astype(np.float64) if c.dtype.kind != "M" else c.astype(np.int64)
                big = np.inf if cf.dtype.kind == "f" else np.iinfo(np.int64).max
                first_c = np.full(n_rows, big, cf.dtype)
                np.minimum.at(first_c, p_code, cf)
                first = np.full(n_rows, n, dtype=np.int64)
                np.minimum.at(first, p_code, np.arange(n, dtype=np.int64))
                order = np.lexsort((first, first_c))
            row_of_code = np.empty(n_rows, np.int32)
            row_of_code[order] = np.arange(n_rows, dtype=np.int32)
            p_ids = p_ids[order]
        if row_of_code is None:
            row = p_code
        elif n:
            row = row_of_code[p_code]
        else:
            row = np.zeros(0, np.int32)
        col = s_code

        # Group entries by blocks of rows, a block being about one dense chunk (~4M cells) of
        # the later passes. With <= 255 blocks the block index fits a uint8 and numpy's stable
        # sort is a one-pass radix sort (uint16: two passes). Inside a block the event order
        # is kept; rows inside a block need no order.
        block_rows = max(1, _CHUNK_CELLS // max(n_cols, 1))
        if n_rows:
            block_rows = max(block_rows, -(-n_rows // 65535))
        n_blocks = -(-n_rows // block_rows) if n_rows else 0
        perm = None
        if n > 1 and n_blocks > 1 and not bool(np.all(row[1:] >= row[:-1])):
            blk = row // block_rows
            blk = blk.astype(np.uint8 if n_blocks <= 256 else np.uint16)
            if not bool(np.all(blk[1:] >= blk[:-1])):
                perm = np.argsort(blk, kind="stable")
            del blk
        if perm is not None:
            if n_cols < (1 << 29):
                # One random-access gather of (column, value) packed in an int32 instead of two,
                # with packing and unpacking done in place / in chunks: large temporaries cost
                # more (page faults) than the arithmetic.
                packed = np.left_shift(col, 2, dtype=np.int32)
                packed |= v + 1
                gathered = np.take(packed, perm)
                del packed
                col = np.right_shift(gathered, 2)
                v = np.empty(n, np.int8)
                for a0 in range(0, n, 1 << 20):
                    b0 = min(n, a0 + (1 << 20))
                    v[a0:b0] = (gathered[a0:b0] & 3) - 1
                del gathered
            else:
                col, v = col[perm], v[perm]
            row = np.take(row, perm)
            if c is not None:
                c = c[perm]
        # Entries are now grouped by block (block index non-decreasing): find block bounds.
        blk_sorted = row if block_rows == 1 else row // block_rows
        bounds = np.arange(n_blocks + 1, dtype=blk_sorted.dtype)
        block_ptr = np.searchsorted(blk_sorted, bounds).astype(np.int64)
        del blk_sorted

        # Latest vote wins. Chunk by chunk of rows, count the votes per cell (bincount over the
        # chunk's cells: O(votes + chunk cells)); only entries in cells with several votes are
        # then resolved, keeping the largest (created, position). Entries of one cell share a
        # block and the block sort is stable, so the local index orders them by position.
        keep_parts = []
        any_dup = False
        rows_per_chunk = max(
            block_rows, (_CHUNK_CELLS // max(n_cols, 1)) // block_rows * block_rows
        )
        blocks_per_chunk = max(1, rows_per_chunk // block_rows)
        cells = rows_per_chunk * max(n_cols, 1)
        for b0 in range(0, n_blocks, blocks_per_chunk):
            b1 = min(n_blocks, b0 + blocks_per_chunk)
            a, z = int(block_ptr[b0]), int(block_ptr[b1])
            if a == z:
                continue
            key = (row[a:z].astype(np.int64) - b0 * block_rows) * n_cols + col[a:z]
            # only the chunk's own cells (a small conversation is far below ``cells``)
            chunk_rows = min(n_rows, b1 * block_rows) - b0 * block_rows
            n_cells = min(cells, chunk_rows * max(n_cols, 1))
            # No duplicate exactly when the entries mark as many distinct cells as there are
            # entries: a bool per cell (an eighth of the counts' memory, which a fresh process
            # pays in page faults); the counts are only taken when there are duplicates.
            mark = np.zeros(n_cells, dtype=bool)
            mark[key] = True
            if np.count_nonzero(mark) == key.size:
                continue
            del mark
            cnt = np.bincount(key, minlength=n_cells)
            any_dup = True
            idx = np.flatnonzero(cnt[key] > 1)  # entries in duplicated cells, in position order
            k2 = key[idx]
            o = np.lexsort((idx, c[a:z][idx], k2)) if c is not None else np.lexsort((idx, k2))
            ks = k2[o]
            loser = np.ones(ks.size, dtype=bool)
            loser[:-1] = ks[1:] == ks[:-1]
            loser[-1] = False
            keep_chunk = np.ones(z - a, dtype=bool)
            keep_chunk[idx[o[loser]]] = False
            keep_parts.append((a, z, keep_chunk))
        if any_dup:
            keep = np.ones(n, dtype=bool)
            for a, z, k in keep_parts:
                keep[a:z] = k
            row, col, v = row[keep], col[keep], v[keep]
            blk_sorted = row if block_rows == 1 else row // block_rows
            bounds = np.arange(n_blocks + 1, dtype=blk_sorted.dtype)
            block_ptr = np.searchsorted(blk_sorted, bounds).astype(np.int64)

        last_created = None
        if c is not None and n:
            last_created = c.max().item()
        return cls(
            participant_ids=p_ids,
            statement_ids=s_ids,
            row=np.ascontiguousarray(row, dtype=np.int32),
            col=np.ascontiguousarray(col, dtype=np.int32),
            value=np.ascontiguousarray(v, dtype=np.int8),
            block_ptr=block_ptr,
            block_rows=int(block_rows),
            last_created=last_created,
        )

    # ------------------------------------------------------------------ basic views
    @property
    def n_rows(self) -> int:
        return int(self.participant_ids.size)

    @property
    def n_cols(self) -> int:
        return int(self.statement_ids.size)

    @property
    def nnz(self) -> int:
        return int(self.value.size)

    def __len__(self) -> int:
        return self.nnz

    def row_index(self) -> dict:
        """Participant id -> row (cached)."""
        if not self._row_index and self.n_rows:
            self._row_index.update({k: i for i, k in enumerate(self.participant_ids.tolist())})
        return self._row_index

    def col_index(self) -> dict:
        """Statement id -> column (cached)."""
        if not self._col_index and self.n_cols:
            self._col_index.update({k: i for i, k in enumerate(self.statement_ids.tolist())})
        return self._col_index

    def row_counts(self) -> np.ndarray:
        """(n_rows,) int64: votes per participant (passes included) - Pol.is user-vote-counts."""
        out = np.zeros(self.n_rows, np.int64)
        for a, b in self.entry_chunks():
            out += np.bincount(self.row[a:b], minlength=self.n_rows)
        return out

    def entry_chunks(self, size: int = 1 << 20) -> Iterable[tuple[int, int]]:
        """Yield (start, end) slices of the entries, ``size`` at a time.

        Every per-vote pass (bincounts, gathers) runs over these slices so its temporaries stay
        small and cache-resident instead of allocating (and page-faulting) nnz-sized arrays.
        """
        for a in range(0, self.nnz, size):
            yield a, min(self.nnz, a + size)

    def chunks(self, cells: int = _CHUNK_CELLS) -> Iterable[tuple[int, int, int, int]]:
        """Yield (first_row, end_row, first_entry, end_entry) for row chunks of ~``cells`` cells."""
        per = max(1, cells // max(self.n_cols, 1) // self.block_rows)
        nb = self.block_ptr.size - 1
        for b0 in range(0, nb, per):
            b1 = min(nb, b0 + per)
            yield (
                b0 * self.block_rows,
                min(self.n_rows, b1 * self.block_rows),
                int(self.block_ptr[b0]),
                int(self.block_ptr[b1]),
            )

    def to_dense(self) -> np.ndarray:
        """(n_rows, n_cols) float64 with NaN for "not seen". Only for tests and tiny inputs."""
        out = np.full((self.n_rows, self.n_cols), np.nan)
        out[self.row, self.col] = self.value
        return out


@dataclass(frozen=True)
class Moderation:
    """Statement moderation, as sets of statement ids.

    ``rejected`` (Pol.is mod = -1) and ``meta`` statements are "moderated out": their columns are
    zeroed for the PCA and they are never representative or consensus. ``accepted`` (mod = +1)
    is kept for completeness; like Pol.is, the math never reads strict moderation.
    """

    rejected: frozenset = frozenset()
    meta: frozenset = frozenset()
    accepted: frozenset = frozenset()

    @property
    def mod_out(self) -> frozenset:
        """Rejected or meta (Pol.is ``mod-out``)."""
        return frozenset(self.rejected) | frozenset(self.meta)

    @property
    def mod_in(self) -> frozenset:
        """Accepted or meta (Pol.is ``mod-in``; meta statements are in both sets)."""
        return frozenset(self.accepted) | frozenset(self.meta)


def in_conversation(
    counts: np.ndarray,
    n_cols: int,
    previous: np.ndarray | None = None,
    min_votes: int = 7,
    min_participants: int = 15,
) -> np.ndarray:
    """The growing in-conversation set (Pol.is ``:in-conv``).

    Parameters
    ----------
    counts : (n_rows,) votes per participant in the raw matrix (passes and mod-out included).
    n_cols : number of statements with at least one vote.
    previous : (n_rows,) bool, participants admitted by an earlier update (never removed).

    Returns
    -------
    (n_rows,) bool mask.

    Pol.is breaks ties in the top-up in Clojure map order (unspecified); we break them by row
    order (first appearance), so the result is deterministic.
    """
    n = counts.size
    mask = np.zeros(n, dtype=bool) if previous is None else previous.copy()
    mask |= counts >= min(min_votes, n_cols)
    missing = min_participants - int(mask.sum())
    if missing > 0:
        rest = np.flatnonzero(~mask)
        order = rest[np.argsort(-counts[rest], kind="stable")]
        mask[order[:missing]] = True
    return mask
