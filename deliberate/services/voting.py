"""Voting: cast and change votes, choose the next statement, count a member's progress.

Storage: one `Vote` row per (statement, member), enforced by a unique constraint; every cast
that changes something also appends a `VoteEvent` (the history, and the analysis watermark).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.sql import Executable

from ..extensions import db
from ..models import (
    MAX_ID,
    VOTE_VALUES,
    AuthorDisplay,
    Round,
    RoundState,
    Statement,
    StatementOrigin,
    User,
    Vote,
    VoteEvent,
    utcnow,
)
from . import routing
from .authz import can_participate, can_view_round, require_user
from .errors import NotAllowed, NotFound, RoundClosed, ValidationError
from .rounds import is_accepting_votes
from .statements import visible_statement_filter

BAD_VALUE_MESSAGE = "A vote is agree (1), pass (0) or disagree (-1)."
ROUND_CLOSED_MESSAGE = "This round is not open for voting."
# SQLite allows 999 bound parameters in older builds; routing receives at most this many.
MAX_CANDIDATES = 999

VoteStatus = Literal["new", "changed", "unchanged"]


@dataclass(frozen=True)
class VoteResult:
    """What a cast did: a first vote, a change of an earlier vote, or nothing (same value)."""

    round_id: int
    statement_id: int
    value: int
    previous_value: int | None
    status: VoteStatus

    @property
    def changed(self) -> bool:
        """Whether an earlier vote was replaced by a different value."""
        return self.status == "changed"

    @property
    def recorded_event(self) -> bool:
        """Whether this cast appended a history event (first votes and changes do)."""
        return self.status != "unchanged"


@dataclass(frozen=True)
class Progress:
    """How many of the statements offered to a member they have voted on."""

    voted: int
    total: int

    @property
    def remaining(self) -> int:
        return max(self.total - self.voted, 0)

    @property
    def complete(self) -> bool:
        return self.voted >= self.total

    def as_dict(self) -> dict[str, int]:
        return {"voted": self.voted, "total": self.total}


class RoundNotFound(NotFound):
    """The round does not exist or the acting user may not see it."""


@dataclass(frozen=True)
class RoundListing:
    """A round as listed for a member: whether it takes votes now, and their progress."""

    round: Round
    accepting: bool
    progress: Progress
    status: str


@dataclass(frozen=True)
class VotingPage:
    """Everything the voting page shows for one member and round."""

    round: Round
    accepting: bool
    can_vote: bool
    can_write: bool
    statement: Statement | None
    progress: Progress


# ---------------------------------------------------------------------------------------------
# Helpers


def _validate_value(value: object) -> int:
    # bool is a subclass of int: True must not pass as "agree".
    if type(value) is not int or value not in VOTE_VALUES:
        raise ValidationError(BAD_VALUE_MESSAGE)
    return value


def _validate_id(value: object, what: str) -> int:
    if type(value) is not int or value < 1:
        raise ValidationError(f"The {what} must be given by its number.")
    if value > MAX_ID:  # well-formed, but no row has it (and SQLite cannot even bind it)
        raise NotFound(f"No such {what}.")
    return value


def _insert(table) -> Executable:
    """Return an INSERT for the engine's dialect that supports ON CONFLICT."""
    if db.engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert(table)


def _load_round(actor: User, round_id: object) -> tuple[User, Round]:
    user = require_user(actor)
    valid = type(round_id) is int and 0 < round_id <= MAX_ID
    round_ = db.session.get(Round, round_id) if valid else None
    if round_ is None or not can_view_round(user, round_):
        raise RoundNotFound("No such round.")
    return user, round_


def round_status(round_: Round, now: datetime | None = None) -> str:
    """Describe for members whether a round takes votes: open, opens later, or closed."""
    now = now or utcnow()
    if is_accepting_votes(round_, now):
        return "Open for voting"
    if round_.state == RoundState.DRAFT:
        return "Not open yet"
    if round_.state == RoundState.OPEN and round_.opens_at is not None and now < round_.opens_at:
        return "Not open yet"
    if round_.state == RoundState.PUBLISHED:
        return "Closed; results published"
    return "Closed"


def _offered_filter(round_: Round, user: User):
    """Statements of the round a member is offered: visible ones they did not write."""
    return and_(
        Statement.round_id == round_.id,
        visible_statement_filter(round_),
        or_(Statement.author_id.is_(None), Statement.author_id != user.id),
    )


def _voted_by(user: User):
    return exists().where(Vote.statement_id == Statement.id, Vote.user_id == user.id)


def _progress(round_: Round, user: User) -> Progress:
    row = db.session.execute(
        select(
            func.count(Statement.id),
            func.count(Vote.id),
        )
        .select_from(Statement)
        .outerjoin(Vote, and_(Vote.statement_id == Statement.id, Vote.user_id == user.id))
        .where(_offered_filter(round_, user))
    ).one()
    return Progress(voted=int(row[1]), total=int(row[0]))


def _next_statement(round_: Round, user: User, rng: random.Random | None) -> Statement | None:
    candidates = list(
        db.session.scalars(
            select(Statement)
            .where(_offered_filter(round_, user), ~_voted_by(user))
            .order_by(Statement.id)
            .limit(MAX_CANDIDATES)
        )
    )
    return routing.pick_next(round_, candidates, rng)


def author_label(statement: Statement) -> str:
    """Describe who wrote a statement, as the round's author display setting allows."""
    origin = statement.origin
    if origin == StatementOrigin.SEED:
        return "Seed statement"
    if origin == StatementOrigin.CARRIED:
        return "Carried over from an earlier round"
    if origin == StatementOrigin.IMPORTED:
        return "Imported statement"
    round_ = statement.round
    author = statement.author
    if (
        round_ is not None
        and round_.author_display == AuthorDisplay.ORGANISATION
        and author is not None
        and author.organisation is not None
    ):
        return f"Written by a member of {author.organisation.name}"
    return "Written by a member"


# ---------------------------------------------------------------------------------------------
# Use cases


def cast_vote(
    actor: User,
    statement_id: object,
    value: object,
    *,
    round_id: int | None = None,
    now: datetime | None = None,
) -> VoteResult:
    """Record the member's vote on a statement (a first vote, a change, or no-op if the same).

    Everything is checked before anything is written; the write is an upsert, so two
    concurrent casts for the same member and statement still leave exactly one row.
    """
    result, _, _ = _record_vote(actor, statement_id, value, round_id=round_id, now=now)
    db.session.commit()
    return result


def _record_vote(
    actor: User,
    statement_id: object,
    value: object,
    *,
    round_id: int | None,
    now: datetime | None,
) -> tuple[VoteResult, User, Round]:
    """Check and write a vote in the current transaction; the caller commits."""
    user = require_user(actor)
    if round_id is not None:
        _, round_ = _load_round(user, round_id)
    value = _validate_value(value)
    statement_id = _validate_id(statement_id, "statement")
    if round_id is None:
        found = db.session.get(Statement, statement_id)
        if found is None or not can_view_round(user, found.round):
            raise NotFound("No such statement.")
        round_ = found.round
    # One query checks that the statement exists, is in the round and is visible in it.
    statement = db.session.scalar(
        select(Statement).where(Statement.id == statement_id, visible_statement_filter(round_))
    )
    if statement is None or statement.round_id != round_.id:
        raise NotFound("No such statement.")
    if not is_accepting_votes(round_, now or utcnow()):
        raise RoundClosed(ROUND_CLOSED_MESSAGE)
    if not can_participate(user, round_):
        raise NotAllowed("You are not taking part in this round.")
    if statement.author_id is not None and statement.author_id == user.id:
        raise NotAllowed("You cannot vote on your own statement.")

    timestamp = utcnow()
    key = (Vote.statement_id == statement.id, Vote.user_id == user.id)
    lock = select(Vote).where(*key).with_for_update().execution_options(populate_existing=True)
    existing = db.session.scalars(lock).one_or_none()
    previous: int | None = None
    status: VoteStatus
    if existing is None:
        inserted = db.session.execute(
            _insert(Vote.__table__)
            .values(
                round_id=round_.id,
                statement_id=statement.id,
                user_id=user.id,
                value=value,
                created_at=timestamp,
                updated_at=timestamp,
            )
            .on_conflict_do_nothing(index_elements=["statement_id", "user_id"])
            # RETURNING says whether a row went in: with it PostgreSQL's rowcount is -1.
            .returning(Vote.__table__.c.id)
        )
        if inserted.first() is not None:
            status = "new"
        else:
            # Another request inserted the row between our read and our insert.
            existing = db.session.scalars(lock).one()
    if existing is not None:
        previous = existing.value
        if previous == value:
            return VoteResult(round_.id, statement.id, value, previous, "unchanged"), user, round_
        existing.value = value
        existing.updated_at = timestamp
        status = "changed"
    db.session.add(
        VoteEvent(
            round_id=round_.id,
            statement_id=statement.id,
            user_id=user.id,
            value=value,
            previous_value=previous,
            created_at=timestamp,
        )
    )
    return VoteResult(round_.id, statement.id, value, previous, status), user, round_


@dataclass(frozen=True)
class OfferedStatement:
    """A statement as offered to a member: plain values, readable after the commit."""

    id: int
    text: str
    author_label: str

    @classmethod
    def of(cls, statement: Statement | None) -> OfferedStatement | None:
        if statement is None:
            return None
        return cls(id=statement.id, text=statement.text, author_label=author_label(statement))


@dataclass(frozen=True)
class VoteOutcome:
    """A recorded vote with what the member sees next."""

    result: VoteResult
    progress: Progress
    next: OfferedStatement | None


def vote_and_advance(
    actor: User,
    round_id: int,
    statement_id: object,
    value: object,
    rng: random.Random | None = None,
) -> VoteOutcome:
    """Record the vote, then return the member's progress and the next statement.

    One transaction: on SQLite every transaction holds the write lock, so one is cheaper
    than two under many concurrent voters.
    """
    result, user, round_ = _record_vote(actor, statement_id, value, round_id=round_id, now=None)
    # The vote was accepted, so the member may vote in this round now.
    outcome = VoteOutcome(
        result=result,
        progress=_progress(round_, user),
        next=OfferedStatement.of(_next_statement(round_, user, rng)),
    )
    db.session.commit()
    return outcome


def next_statement(
    actor: User, round_id: int, rng: random.Random | None = None
) -> Statement | None:
    """Return the next statement to offer the member, or None when there is none to vote on."""
    user, round_ = _load_round(actor, round_id)
    if not can_participate(user, round_) or not is_accepting_votes(round_, utcnow()):
        return None
    return _next_statement(round_, user, rng)


def progress(actor: User, round_id: int) -> Progress:
    """Count the statements offered to the member and how many of them they voted on."""
    user, round_ = _load_round(actor, round_id)
    return _progress(round_, user)


def my_votes(actor: User, round_id: int) -> list[tuple[Statement, int]]:
    """Return the member's votes on statements still visible in the round, oldest first."""
    user, round_ = _load_round(actor, round_id)
    rows = db.session.execute(
        select(Statement, Vote.value)
        .join(Vote, and_(Vote.statement_id == Statement.id, Vote.user_id == user.id))
        .where(_offered_filter(round_, user))
        .order_by(Statement.id)
    ).all()
    return [(statement, value) for statement, value in rows]


def voting_page(actor: User, round_id: int, rng: random.Random | None = None) -> VotingPage:
    """Gather the voting page of a round for the member: state, next statement and progress."""
    user, round_ = _load_round(actor, round_id)
    accepting = is_accepting_votes(round_, utcnow())
    can_vote = accepting and can_participate(user, round_)
    statement = _next_statement(round_, user, rng) if can_vote else None
    return VotingPage(
        round=round_,
        accepting=accepting,
        can_vote=can_vote,
        can_write=can_vote and bool(round_.allow_member_statements),
        statement=statement,
        progress=_progress(round_, user),
    )


def member_rounds(actor: User) -> list[RoundListing]:
    """List the rounds the member can see (never drafts): open ones first, newest first."""
    user = require_user(actor)
    now = utcnow()
    rounds = db.session.scalars(
        select(Round).where(Round.state != RoundState.DRAFT.value).order_by(Round.id.desc())
    ).all()
    listings = [
        RoundListing(
            round=r,
            accepting=is_accepting_votes(r, now),
            progress=_progress(r, user),
            status=round_status(r, now),
        )
        for r in rounds
        if can_view_round(user, r)
    ]
    listings.sort(key=lambda listing: not listing.accepting)  # stable: newest first within
    return listings
