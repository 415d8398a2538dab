"""Importing a Pol.is conversation (export folder or math-fixture folder) as a closed round.

What an import creates, in ONE transaction (on any error nothing remains):
- a Round, state closed, question from the conversation's topic (or the folder name), context
  from its description, moderation "pre" for a strict Pol.is conversation and "post" otherwise,
  and `source` = the conversation's identity: "polis:" + its URL (summary.csv) when known, else
  "polis:sha256:" + a hash of its comments and votes files. A second import of the same
  conversation is refused (Conflict) unless forced; a forced one gets a suffixed source
  ("...#2") and is a new round;
- one Statement per Pol.is comment (origin "imported", external_id = the comment id, moderation
  from `moderated`: 1 accepted, 0 pending, -1 rejected, is_meta when the input says so).
  Pol.is allows near-duplicates that deliberate's unique (round, normalised text) would refuse:
  the later ones keep their text, and their normalised text gets " #polis-<id>" appended, so no
  data is dropped;
- one pseudonymous, inactive member per Pol.is participant (voters and authors): name
  "Participant <pid>", email "polis-<import token>-<pid>@imported.invalid", no password;
- every vote row as a VoteEvent with its original timestamp, in time order (ties: file order),
  and the latest vote per participant and comment as the Vote (created at the first vote,
  updated at the last), exactly the "latest timestamp wins" rule of the analysis.

Rows are written with bulk INSERTs in chunks; `progress(done, total)` is called after each.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from ..extensions import db
from ..models import (
    ModerationMode,
    Role,
    Round,
    RoundState,
    Statement,
    StatementOrigin,
    StatementState,
    User,
    Vote,
    VoteEvent,
)
from . import audit
from .authz import require_facilitator
from .errors import Conflict, ValidationError
from .statements import normalise_text

CHUNK = 5_000
QUESTION_MAX = 500
SOURCE_MAX = 300
EMAIL_DOMAIN = "imported.invalid"
_MODERATION = {1: StatementState.ACCEPTED, 0: StatementState.PENDING, -1: StatementState.REJECTED}

Progress = Callable[[int, int], None]


def _content_hash(conversation: Any) -> str:
    folder = Path(conversation.path)
    names = (
        ("comments.csv", "votes.csv")
        if conversation.layout == "export"
        else ("comments.json", "votes.json")
    )
    digest = hashlib.sha256()
    for name in names:
        digest.update(name.encode() + b"\0")
        with open(folder / name, "rb") as handle:
            for block in iter(lambda h=handle: h.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def conversation_source(conversation: Any) -> str:
    """Return the canonical identity of a Pol.is conversation (Round.source)."""
    url = str(conversation.metadata.get("url") or "").strip()
    if url:
        return ("polis:" + url)[: SOURCE_MAX - 8]
    return "polis:sha256:" + _content_hash(conversation)


def _free_source(base: str) -> str:
    taken = set(
        db.session.scalars(
            select(Round.source).where(
                (Round.source == base) | Round.source.startswith(base + "#", autoescape=True)
            )
        )
    )
    n = 2
    while f"{base}#{n}" in taken:
        n += 1
    return f"{base}#{n}"


def _time(ms: float, fallback: datetime) -> datetime:
    if ms != ms:  # NaN: unknown time
        return fallback
    return datetime.fromtimestamp(ms / 1000.0, UTC)


def _question(conversation: Any) -> str:
    topic = str(conversation.metadata.get("topic") or "").strip()
    text = " ".join(topic.split()) or Path(conversation.path).resolve().name
    return text[:QUESTION_MAX]


def _context(conversation: Any) -> str:
    m = conversation.metadata
    return str(m.get("conversation-description") or m.get("description") or "").strip()


def _moderation_mode(conversation: Any) -> str:
    strict = conversation.metadata.get("strict_moderation")
    return ModerationMode.PRE.value if strict is True else ModerationMode.POST.value


def _insert_chunks(model: Any, rows: list[dict], tick: Callable[[int], None]) -> None:
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        db.session.execute(insert(model), chunk)
        tick(len(chunk))


def import_polis_folder(
    actor: User | None,
    path: str | Path,
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> Round:
    """Import a Pol.is export or math-fixture folder as a new closed round.

    `actor` is the facilitator importing (None from the command line). Raises
    polis_io.PolisFormatError for unreadable input, ValidationError for inconsistent input,
    Conflict when the conversation was imported before (unless `force`).
    """
    import numpy as np

    from ..polis_io import read_polis_folder

    if actor is not None:
        require_facilitator(actor)
    conversation = read_polis_folder(path)

    # -- validate everything before writing anything
    statements = conversation.statements
    statement_ids = [s.id for s in statements]
    if len(set(statement_ids)) != len(statement_ids):
        raise ValidationError("The comments file lists a comment id twice.")
    known = set(statement_ids)
    voted = set(np.unique(conversation.statement).tolist())
    unknown = sorted(voted - known)
    if unknown:
        raise ValidationError(
            f"Votes refer to comment {unknown[0]}, which the comments file does not list."
        )
    base_source = conversation_source(conversation)

    # -- events in time order (ties: file order), and the latest vote per pair
    n_events = int(conversation.value.size)
    created = conversation.created.astype(np.float64)
    order = np.lexsort((np.arange(n_events), np.nan_to_num(created, nan=np.inf)))
    participant = conversation.participant[order]
    statement = conversation.statement[order]
    value = conversation.value[order]
    created = created[order]

    participants = sorted(
        set(np.unique(participant).tolist())
        | {s.author for s in statements if s.author is not None}
    )
    now = datetime.now(UTC)
    total = len(participants) + len(statements) + n_events
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total)

    try:
        exists = db.session.scalar(select(Round.id).where(Round.source == base_source))
        if exists is not None and not force:
            raise Conflict(
                f"This Pol.is conversation was already imported as round {exists} "
                "(import it again with force)."
            )
        source = _free_source(base_source) if exists is not None else base_source
        round_ = Round(
            question=_question(conversation),
            context=_context(conversation),
            state=RoundState.CLOSED.value,
            moderation=_moderation_mode(conversation),
            allow_member_statements=False,
            source=source,
            created_by_id=actor.id if actor is not None else None,
        )
        db.session.add(round_)
        db.session.flush()

        token = secrets.token_hex(4)
        prefix = f"polis-{token}-"
        _insert_chunks(
            User,
            [
                {
                    "email": f"{prefix}{pid}@{EMAIL_DOMAIN}",
                    "name": f"Participant {pid}",
                    "password_hash": None,
                    "role": Role.MEMBER.value,
                    "active": False,
                    "created_at": now,
                }
                for pid in participants
            ],
            tick,
        )
        user_of = {
            int(email[len(prefix) : -len(EMAIL_DOMAIN) - 1]): uid
            for uid, email in db.session.execute(
                select(User.id, User.email).where(User.email.startswith(prefix, autoescape=True))
            )
        }

        seen_keys: set[str] = set()
        statement_rows = []
        for s in statements:
            key = normalise_text(s.text)
            if key in seen_keys:
                key = f"{key} #polis-{s.id}"
            seen_keys.add(key)
            statement_rows.append(
                {
                    "round_id": round_.id,
                    "text": s.text,
                    "normalised_text": key,
                    "author_id": user_of.get(s.author) if s.author is not None else None,
                    "origin": StatementOrigin.IMPORTED.value,
                    "moderation_state": _MODERATION[s.moderation].value,
                    "is_meta": bool(s.is_meta),
                    "external_id": str(s.id),
                    "created_at": _time(s.created if s.created is not None else np.nan, now),
                }
            )
        _insert_chunks(Statement, statement_rows, tick)
        statement_of = {
            int(external): sid
            for sid, external in db.session.execute(
                select(Statement.id, Statement.external_id).where(Statement.round_id == round_.id)
            )
        }

        # One pass in time order: history rows (with the value each replaced) are written in
        # chunks as they come; the latest vote per pair is kept and written at the end.
        current: dict[tuple[int, int], list] = {}
        events: list[dict] = []
        for p, s, v, t in zip(
            participant.tolist(), statement.tolist(), value.tolist(), created.tolist(), strict=True
        ):
            uid, sid = user_of[p], statement_of[s]
            when = _time(t, now)
            cell = current.get((uid, sid))
            events.append(
                {
                    "round_id": round_.id,
                    "statement_id": sid,
                    "user_id": uid,
                    "value": v,
                    "previous_value": cell[0] if cell is not None else None,
                    "created_at": when,
                }
            )
            if len(events) == CHUNK:
                _insert_chunks(VoteEvent, events, tick)
                events = []
            if cell is None:
                current[(uid, sid)] = [v, when, when]
            else:
                cell[0], cell[2] = v, when
        _insert_chunks(VoteEvent, events, tick)
        del events
        votes = [
            {
                "round_id": round_.id,
                "statement_id": sid,
                "user_id": uid,
                "value": v,
                "created_at": first,
                "updated_at": last,
            }
            for (uid, sid), (v, first, last) in current.items()
        ]
        _insert_chunks(Vote, votes, lambda n: None)
        audit.record(
            actor,
            "round.import",
            round_id=round_.id,
            target_type="round",
            target_id=round_.id,
            source=source,
            statements=len(statements),
            participants=len(participants),
            votes=len(current),
            vote_events=n_events,
        )
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return round_
