"""Readers for Pol.is data: an export folder or a math-fixture folder (pure stdlib + numpy).

Two layouts are recognised by :func:`read_polis_folder`:

* **export** (compdemocracy openData / Pol.is report export): ``votes.csv`` (timestamp,
  datetime, comment-id, voter-id, vote), ``comments.csv`` (timestamp, datetime, comment-id,
  author-id, agrees, disagrees, moderated, comment-body), optionally ``participants-votes.csv``
  (Pol.is's own group-id per participant) and ``summary.csv``. Votes are **agree = +1** in these
  exports (Pol.is's internal math uses -1; the darwin export negates). ``votes.csv`` is the full
  history: for each (voter, comment) the row with the latest timestamp stands - we return every
  event with its timestamp and leave "latest wins" to ``Votes.from_arrays``. Exports carry no
  is_meta flag, so no statement is meta.
* **fixture** (red-dwarf's captured Pol.is math fixtures): ``votes.json`` (**agree = +1**; the
  fixtures were negated on capture), ``comments.json``, ``conversation.json``. Field names
  differ between fixtures (pid/tid/mod vs participant_id/statement_id/moderated) and
  ``modified`` may be a string or a float.

The sign is not sniffed: both layouts are documented as agree = +1 and read as such.
Every problem raises :class:`PolisFormatError` with a one-line message.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "PolisFormatError",
    "PolisStatement",
    "PolisConversation",
    "read_polis_folder",
    "read_polis_export",
    "read_polis_fixture",
]

csv.field_size_limit(10_000_000)


class PolisFormatError(ValueError):
    """Bad Pol.is input; ``str(err)`` is a one-line message for the user."""


@dataclass(frozen=True)
class PolisStatement:
    """One Pol.is comment. ``moderation``: -1 rejected, 0 unmoderated, +1 accepted."""

    id: int
    text: str
    author: int | None
    moderation: int
    is_meta: bool = False
    created: float | None = None  # milliseconds since the epoch, when known


@dataclass
class PolisConversation:
    """A Pol.is conversation as plain data.

    Votes are parallel arrays, one entry per vote event (agree = +1, disagree = -1, pass = 0):
    ``participant`` (n,) int64, ``statement`` (n,) int64, ``value`` (n,) int8, ``created`` (n,)
    float64 milliseconds (NaN when unknown).
    """

    layout: str  # "export" or "fixture"
    path: str
    statements: list[PolisStatement]
    participant: np.ndarray
    statement: np.ndarray
    value: np.ndarray
    created: np.ndarray
    metadata: dict = field(default_factory=dict)  # summary.csv or conversation.json
    polis_groups: dict | None = None  # {participant: Pol.is group id or None} (export only)

    @property
    def rejected(self) -> frozenset:
        return frozenset(s.id for s in self.statements if s.moderation == -1)

    @property
    def accepted(self) -> frozenset:
        return frozenset(s.id for s in self.statements if s.moderation == 1)

    @property
    def meta(self) -> frozenset:
        return frozenset(s.id for s in self.statements if s.is_meta)

    @property
    def conversation_id(self) -> str | None:
        m = self.metadata
        for k in ("conversation_id", "zid", "url"):
            if m.get(k):
                return str(m[k])
        return None


def _int(value: Any, what: str, where: str) -> int:
    if isinstance(value, bool):
        raise PolisFormatError(f"{where}: {what} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value) and value == int(value):
            return int(value)
        raise PolisFormatError(f"{where}: {what} must be an integer, got {value!r}")
    s = str(value).strip()
    try:
        return int(s)
    except ValueError:
        try:
            f = float(s)
        except ValueError:
            raise PolisFormatError(f"{where}: {what} must be an integer, got {value!r}") from None
        if math.isfinite(f) and f == int(f):
            return int(f)
        raise PolisFormatError(f"{where}: {what} must be an integer, got {value!r}") from None


def _vote(value: Any, where: str) -> int:
    try:
        v = _int(value, "vote", where)
    except PolisFormatError:
        raise PolisFormatError(f"{where}: unknown sign {value!r} (expected -1, 0 or 1)") from None
    if v not in (-1, 0, 1):
        raise PolisFormatError(f"{where}: unknown sign {value!r} (expected -1, 0 or 1)")
    return v


def _time(value: Any) -> float:
    if value is None or value == "":
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _reader(path: Path, required: list[str]) -> tuple[csv.reader, dict[str, int], Any]:
    if not path.is_file():
        raise PolisFormatError(f"missing file: {path}")
    fh = open(path, newline="", encoding="utf-8-sig")  # noqa: SIM115 - closed by caller
    rd = csv.reader(fh)
    try:
        header = next(rd)
    except StopIteration:
        fh.close()
        raise PolisFormatError(f"{path.name}: empty file") from None
    cols = {h.strip(): i for i, h in enumerate(header)}
    missing = [c for c in required if c not in cols]
    if missing:
        fh.close()
        raise PolisFormatError(f"{path.name}: missing column(s) {', '.join(missing)}")
    return rd, cols, fh


def read_polis_export(path: str | os.PathLike) -> PolisConversation:
    """Read a Pol.is export folder (votes.csv, comments.csv; optional participants-votes.csv,
    summary.csv)."""
    folder = Path(path)
    # comments
    rd, c, fh = _reader(folder / "comments.csv", ["comment-id", "moderated"])
    statements = []
    with fh:
        for ln, r in enumerate(rd, start=2):
            if not r:
                continue
            where = f"comments.csv line {ln}"
            if len(r) < len(c):
                r = r + [""] * (len(c) - len(r))
            author = r[c["author-id"]].strip() if "author-id" in c else ""
            mod = _int(r[c["moderated"]] or 0, "moderated", where)
            if mod not in (-1, 0, 1):
                raise PolisFormatError(f"{where}: moderated must be -1, 0 or 1, got {mod}")
            statements.append(
                PolisStatement(
                    id=_int(r[c["comment-id"]], "comment-id", where),
                    text=r[c["comment-body"]] if "comment-body" in c else "",
                    author=_int(author, "author-id", where) if author else None,
                    moderation=mod,
                    is_meta=False,
                    created=_time(r[c["timestamp"]]) if "timestamp" in c else None,
                )
            )
    # votes
    rd, c, fh = _reader(folder / "votes.csv", ["comment-id", "voter-id", "vote"])
    ps, ss, vs, ts = [], [], [], []
    has_t = "timestamp" in c
    ic, iv, iw = c["comment-id"], c["voter-id"], c["vote"]
    it = c.get("timestamp", 0)
    with fh:
        for ln, r in enumerate(rd, start=2):
            if not r:
                continue
            try:
                pv_, sv_, v = int(r[iv]), int(r[ic]), int(r[iw])
                if v not in (-1, 0, 1):
                    raise ValueError
            except (ValueError, IndexError):
                where = f"votes.csv line {ln}"
                if len(r) <= max(ic, iv, iw):
                    raise PolisFormatError(f"{where}: too few columns") from None
                pv_ = _int(r[iv], "voter-id", where)
                sv_ = _int(r[ic], "comment-id", where)
                v = _vote(r[iw], where)
            ps.append(pv_)
            ss.append(sv_)
            vs.append(v)
            ts.append(_time(r[it]) if has_t else math.nan)
    if not vs:
        raise PolisFormatError(f"{folder}: empty conversation (votes.csv has no votes)")
    metadata: dict = {}
    summ = folder / "summary.csv"
    if summ.is_file():
        with open(summ, newline="", encoding="utf-8-sig") as fh2:
            for r in csv.reader(fh2):
                if len(r) >= 2:
                    metadata[r[0]] = r[1]
    groups = None
    pv = folder / "participants-votes.csv"
    if pv.is_file():
        rd, c, fh = _reader(pv, ["participant", "group-id"])
        groups = {}
        with fh:
            for ln, r in enumerate(rd, start=2):
                if not r:
                    continue
                where = f"participants-votes.csv line {ln}"
                g = r[c["group-id"]].strip()
                groups[_int(r[c["participant"]], "participant", where)] = (
                    _int(g, "group-id", where) if g else None
                )
    return PolisConversation(
        layout="export",
        path=str(folder),
        statements=statements,
        participant=np.asarray(ps, np.int64),
        statement=np.asarray(ss, np.int64),
        value=np.asarray(vs, np.int8),
        created=np.asarray(ts, np.float64),
        metadata=metadata,
        polis_groups=groups,
    )


def _first(d: dict, names: tuple[str, ...], where: str, required: bool = True) -> Any:
    for n in names:
        if n in d:
            return d[n]
    if required:
        raise PolisFormatError(f"{where}: missing field {' or '.join(names)}")
    return None


def _load_json(path: Path) -> Any:
    if not path.is_file():
        raise PolisFormatError(f"missing file: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise PolisFormatError(f"{path.name}: invalid JSON ({e.msg} at line {e.lineno})") from None


def read_polis_fixture(path: str | os.PathLike) -> PolisConversation:
    """Read a Pol.is math-fixture folder (votes.json, comments.json[, conversation.json])."""
    folder = Path(path)
    comments = _load_json(folder / "comments.json")
    votes = _load_json(folder / "votes.json")
    if not isinstance(comments, list) or not isinstance(votes, list):
        raise PolisFormatError(f"{folder}: votes.json and comments.json must be JSON lists")
    statements = []
    for i, d in enumerate(comments):
        where = f"comments.json item {i}"
        if not isinstance(d, dict):
            raise PolisFormatError(f"{where}: not an object")
        mod = _int(_first(d, ("mod", "moderated"), where, False) or 0, "moderated", where)
        if mod not in (-1, 0, 1):
            raise PolisFormatError(f"{where}: moderated must be -1, 0 or 1, got {mod}")
        author = _first(d, ("pid", "participant_id"), where, False)
        statements.append(
            PolisStatement(
                id=_int(_first(d, ("tid", "statement_id"), where), "statement id", where),
                text=str(d.get("txt") or ""),
                author=_int(author, "author", where) if author is not None else None,
                moderation=mod,
                is_meta=bool(d.get("is_meta", False)),
                created=_time(d.get("created"))
                if not isinstance(d.get("created"), str) or d.get("created", "").isdigit()
                else None,
            )
        )
    n = len(votes)
    ps = np.empty(n, np.int64)
    ss = np.empty(n, np.int64)
    vs = np.empty(n, np.int8)
    ts = np.empty(n, np.float64)
    for i, d in enumerate(votes):
        where = f"votes.json item {i}"
        if not isinstance(d, dict):
            raise PolisFormatError(f"{where}: not an object")
        ps[i] = _int(_first(d, ("pid", "participant_id"), where), "participant id", where)
        ss[i] = _int(_first(d, ("tid", "statement_id"), where), "statement id", where)
        vs[i] = _vote(_first(d, ("vote",), where), where)
        ts[i] = _time(_first(d, ("modified", "created"), where, False))
    if n == 0:
        raise PolisFormatError(f"{folder}: empty conversation (votes.json has no votes)")
    meta_path = folder / "conversation.json"
    metadata = _load_json(meta_path) if meta_path.is_file() else {}
    if not isinstance(metadata, dict):
        metadata = {}
    return PolisConversation(
        layout="fixture",
        path=str(folder),
        statements=statements,
        participant=ps,
        statement=ss,
        value=vs,
        created=ts,
        metadata=metadata,
        polis_groups=None,
    )


def read_polis_folder(path: str | os.PathLike) -> PolisConversation:
    """Read a Pol.is export folder or math-fixture folder, detecting which layout it is."""
    folder = Path(path)
    if not folder.is_dir():
        raise PolisFormatError(f"not a folder: {folder}")
    if (folder / "votes.csv").exists() or (folder / "comments.csv").exists():
        return read_polis_export(folder)
    if (folder / "votes.json").exists() or (folder / "comments.json").exists():
        return read_polis_fixture(folder)
    raise PolisFormatError(
        f"{folder}: neither a Pol.is export (votes.csv, comments.csv) nor a math fixture "
        "(votes.json, comments.json)"
    )
