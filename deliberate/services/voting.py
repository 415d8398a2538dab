"""Voting: cast and change votes, choose the next statement, count a member's progress.

Storage: one `Vote` row per (statement, member), enforced by a unique constraint; every cast
that changes something also appends a `VoteEvent` (the history, and the analysis watermark).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

from sqlalchemy import and_, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.sql import Executable

from ..database import commit_keeping_objects, holds_write_lock, write_intent
from ..extensions import db
from ..models import (
    MAX_ID,
    VOTE_VALUES,
    AuthorDisplay,
    ModerationMode,
    Organisation,
    Round,
    RoundState,
    Statement,
    StatementOrigin,
    StatementState,
    User,
    Vote,
    VoteEvent,
    round_organisations,
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


# ---------------------------------------------------------------------------------------------
# The hot path (a vote, then the member's progress and next statement) runs Core statements
# built once at import: SQLAlchemy then reuses their compiled SQL, and no ORM objects are made
# for the dozens of candidate statements a vote looks at. The rules are the same as the ORM
# ones above and in authz/rounds/statements (tests/services/test_voting.py covers both).

_statements = Statement.__table__
_votes = Vote.__table__
_events = VoteEvent.__table__


class _OrganisationRef:
    """Just an organisation's id: what authz.is_in_audience reads of `round_.organisations`."""

    __slots__ = ("id",)

    def __init__(self, id: int):
        self.id = id


@dataclass(frozen=True, slots=True)
class RoundInfo:
    """The columns of a round the vote path needs, read with one query (duck-types Round for
    authz.can_view_round/can_participate and rounds.is_accepting_votes)."""

    id: int
    state: str
    opens_at: datetime | None
    closes_at: datetime | None
    moderation: str
    author_display: str
    organisations: tuple[_OrganisationRef, ...]


_ROUND_INFO = (
    select(
        Round.id,
        Round.state,
        Round.opens_at,
        Round.closes_at,
        Round.moderation,
        Round.author_display,
        round_organisations.c.organisation_id,
    )
    .select_from(Round)
    .outerjoin(round_organisations, round_organisations.c.round_id == Round.id)
    .where(Round.id == bindparam("round_id"))
)


# The round as above, with the vote's statement (columns NULL unless it is in the round).
_ROUND_AND_STATEMENT = _ROUND_INFO.add_columns(
    _statements.c.id.label("statement_id"),
    _statements.c.author_id,
    _statements.c.moderation_state,
).outerjoin(
    _statements,
    and_(
        _statements.c.id == bindparam("statement_id"),
        _statements.c.round_id == Round.id,
    ),
)


class _StatementCheck(NamedTuple):
    round_id: int
    author_id: int | None
    moderation_state: str


def _round_info(round_id: int) -> RoundInfo | None:
    rows = db.session.connection().execute(_ROUND_INFO, {"round_id": round_id}).all()
    return _round_from_rows(rows)


def _round_and_statement(
    round_id: int, statement_id: int
) -> tuple[RoundInfo | None, _StatementCheck | None]:
    """The round and, if it is in that round, the statement: one query."""
    rows = (
        db.session.connection()
        .execute(_ROUND_AND_STATEMENT, {"round_id": round_id, "statement_id": statement_id})
        .all()
    )
    first = rows[0] if rows else None
    if first is None or first.statement_id is None:
        return _round_from_rows(rows), None
    return _round_from_rows(rows), _StatementCheck(
        first.id, first.author_id, first.moderation_state
    )


def _round_from_rows(rows) -> RoundInfo | None:
    if not rows:
        return None
    first = rows[0]
    return RoundInfo(
        id=first.id,
        state=first.state,
        opens_at=first.opens_at,
        closes_at=first.closes_at,
        moderation=first.moderation,
        author_display=first.author_display,
        organisations=tuple(
            _OrganisationRef(r.organisation_id) for r in rows if r.organisation_id is not None
        ),
    )


def _load_round_info(actor: User, round_id: object) -> tuple[User, RoundInfo]:
    user = require_user(actor)
    valid = type(round_id) is int and 0 < round_id <= MAX_ID
    info = _round_info(round_id) if valid else None
    if info is None or not can_view_round(user, info):
        raise RoundNotFound("No such round.")
    return user, info


def _is_visible(moderation: str, moderation_state: str) -> bool:
    """statements.is_visible on plain values: accepted, or pending under post-moderation."""
    if moderation_state == StatementState.ACCEPTED:
        return True
    return moderation_state == StatementState.PENDING and moderation == ModerationMode.POST


def _offered(post_moderation: bool, table=_statements):
    """The WHERE clause of statements.visible_statement_filter + not the member's own, in Core."""
    shown = table.c.moderation_state == StatementState.ACCEPTED.value
    if post_moderation:
        shown = or_(shown, table.c.moderation_state == StatementState.PENDING.value)
    return and_(
        table.c.round_id == bindparam("round_id"),
        shown,
        or_(table.c.author_id.is_(None), table.c.author_id != bindparam("user_id")),
    )


def _progress_query(post_moderation: bool):
    return (
        select(func.count(_statements.c.id), func.count(_votes.c.id))
        .select_from(_statements)
        .outerjoin(
            _votes,
            and_(
                _votes.c.statement_id == _statements.c.id,
                _votes.c.user_id == bindparam("user_id"),
            ),
        )
        .where(_offered(post_moderation))
    )


def _candidates_query(post_moderation: bool):
    """The member's unvoted offered statements (what routing and the answer need of them),
    each row also carrying how many offered statements the member has voted on (progress)."""
    voted = exists().where(
        _votes.c.statement_id == _statements.c.id, _votes.c.user_id == bindparam("user_id")
    )
    offered_voted = _statements.alias("offered_voted")
    voted_count = (
        select(func.count(_votes.c.id))
        .select_from(_votes.join(offered_voted, offered_voted.c.id == _votes.c.statement_id))
        .where(
            _votes.c.user_id == bindparam("user_id"),
            _votes.c.round_id == bindparam("round_id"),
            _offered(post_moderation, offered_voted),
        )
        .scalar_subquery()
    )
    return (
        select(
            _statements.c.id,
            _statements.c.is_meta,
            _statements.c.text,
            _statements.c.origin,
            _statements.c.author_id,
            voted_count.label("voted"),
        )
        .where(_offered(post_moderation), ~voted)
        .order_by(_statements.c.id)
        .limit(MAX_CANDIDATES)
    )


# Keyed by "is the round post-moderated".
_PROGRESS = {post: _progress_query(post) for post in (False, True)}
_CANDIDATES = {post: _candidates_query(post) for post in (False, True)}
_STATEMENT_CHECK = select(
    _statements.c.round_id, _statements.c.author_id, _statements.c.moderation_state
).where(_statements.c.id == bindparam("statement_id"))
_AUTHOR_ORGANISATION = (
    select(Organisation.name)
    .join(User, User.organisation_id == Organisation.id)
    .where(User.id == bindparam("user_id"))
)
_VOTE_ROW = (
    select(_votes.c.id, _votes.c.value)
    .where(
        _votes.c.statement_id == bindparam("statement_id"),
        _votes.c.user_id == bindparam("user_id"),
    )
    .with_for_update()
)
_VOTE_UPDATE = (
    update(_votes)
    .where(_votes.c.id == bindparam("vote_id"))
    .values(value=bindparam("new_value"), updated_at=bindparam("timestamp"))
)
_EVENT_INSERT = insert(_events)
_VOTE_INSERTS: dict[str, Executable] = {}


def _vote_insert() -> Executable:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, for the engine's dialect."""
    dialect = db.engine.dialect.name
    statement = _VOTE_INSERTS.get(dialect)
    if statement is None:
        statement = (
            _insert(_votes)
            .on_conflict_do_nothing(index_elements=["statement_id", "user_id"])
            # RETURNING says whether a row went in: with it PostgreSQL's rowcount is -1.
            .returning(_votes.c.id)
        )
        _VOTE_INSERTS[dialect] = statement
    return statement


def _insert_vote(row: dict) -> bool:
    """Insert the member's vote unless they have one on the statement; whether it went in."""
    return db.session.connection().execute(_vote_insert(), row).first() is not None


def _locked_vote(key: dict[str, int]):
    """Read the member's vote row (id, value), or None; locked until the commit.

    SELECT ... FOR UPDATE on PostgreSQL; on SQLite the transaction holds the write lock.
    """
    return db.session.connection().execute(_VOTE_ROW, key).first()


class Candidate(NamedTuple):
    """A statement the member may be offered next (what routing and the answer need of it)."""

    id: int
    is_meta: bool
    text: str
    origin: str
    author_id: int | None


def _progress(round_: Round | RoundInfo, user: User) -> Progress:
    post = round_.moderation == ModerationMode.POST
    row = (
        db.session.connection()
        .execute(_PROGRESS[post], {"round_id": round_.id, "user_id": user.id})
        .one()
    )
    return Progress(voted=int(row[1]), total=int(row[0]))


def _candidates(round_: Round | RoundInfo, user: User) -> tuple[list[Candidate], Progress]:
    """The member's unvoted offered statements (oldest first) and their progress."""
    post = round_.moderation == ModerationMode.POST
    rows = (
        db.session.connection()
        .execute(_CANDIDATES[post], {"round_id": round_.id, "user_id": user.id})
        .all()
    )
    if not rows or len(rows) >= MAX_CANDIDATES:  # nothing left, or more than were read
        return [Candidate(*r[:5]) for r in rows], _progress(round_, user)
    voted = int(rows[0][5])
    return [Candidate(*r[:5]) for r in rows], Progress(voted=voted, total=voted + len(rows))


def _next_candidate(
    round_: Round | RoundInfo, user: User, rng: random.Random | None
) -> Candidate | None:
    candidates, _ = _candidates(round_, user)
    return routing.pick_next(round_, candidates, rng)


def _next_statement(round_: Round, user: User, rng: random.Random | None) -> Statement | None:
    chosen = _next_candidate(round_, user, rng)
    return None if chosen is None else db.session.get(Statement, chosen.id)


def _offered_statement(round_: RoundInfo, chosen: Candidate) -> OfferedStatement:
    organisation = None
    if (
        chosen.origin == StatementOrigin.MEMBER
        and round_.author_display == AuthorDisplay.ORGANISATION
        and chosen.author_id is not None
    ):
        organisation = db.session.connection().scalar(
            _AUTHOR_ORGANISATION, {"user_id": chosen.author_id}
        )
    return OfferedStatement(
        id=chosen.id,
        text=chosen.text,
        author_label=_describe_author(
            chosen.origin, round_.author_display, chosen.author_id is not None, organisation
        ),
    )


def _describe_author(
    origin: str, author_display: str | None, has_author: bool, organisation: str | None
) -> str:
    if origin == StatementOrigin.SEED:
        return "Seed statement"
    if origin == StatementOrigin.CARRIED:
        return "Carried over from an earlier round"
    if origin == StatementOrigin.IMPORTED:
        return "Imported statement"
    if author_display == AuthorDisplay.ORGANISATION and has_author and organisation is not None:
        return f"Written by a member of {organisation}"
    return "Written by a member"


def author_label(statement: Statement) -> str:
    """Describe who wrote a statement, as the round's author display setting allows."""
    round_ = statement.round
    author = statement.author if statement.origin == StatementOrigin.MEMBER else None
    return _describe_author(
        statement.origin,
        round_.author_display if round_ is not None else None,
        author is not None,
        author.organisation.name if author is not None and author.organisation else None,
    )


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
) -> tuple[VoteResult, User, RoundInfo]:
    """Check and write a vote in the current transaction; the caller commits."""
    user = require_user(actor)
    statement = None
    if round_id is not None:
        valid_round = type(round_id) is int and 0 < round_id <= MAX_ID
        valid_statement = type(statement_id) is int and 0 < statement_id <= MAX_ID
        round_ = None
        if valid_round and valid_statement:
            round_, statement = _round_and_statement(round_id, statement_id)
        elif valid_round:
            round_ = _round_info(round_id)
        if round_ is None or not can_view_round(user, round_):
            raise RoundNotFound("No such round.")
    value = _validate_value(value)
    statement_id = _validate_id(statement_id, "statement")
    if round_id is None:
        statement = (
            db.session.connection()
            .execute(_STATEMENT_CHECK, {"statement_id": statement_id})
            .first()
        )
        found = None if statement is None else _round_info(statement.round_id)
        if found is None or not can_view_round(user, found):
            raise NotFound("No such statement.")
        round_ = found
    # The statement must exist, be in the round and be visible in it.
    if (
        statement is None
        or statement.round_id != round_.id
        or not _is_visible(round_.moderation, statement.moderation_state)
    ):
        raise NotFound("No such statement.")
    if not is_accepting_votes(round_, now or utcnow()):
        raise RoundClosed(ROUND_CLOSED_MESSAGE)
    if not can_participate(user, round_):
        raise NotAllowed("You are not taking part in this round.")
    if statement.author_id is not None and statement.author_id == user.id:
        raise NotAllowed("You cannot vote on your own statement.")

    timestamp = utcnow()
    key = {"statement_id": statement_id, "user_id": user.id}
    previous: int | None = None
    status: VoteStatus = "new"
    # Insert first (most votes are first votes): ON CONFLICT DO NOTHING leaves an existing
    # row, also one a concurrent request has just inserted, for the update below.
    if not _insert_vote(
        {
            "round_id": round_.id,
            **key,
            "value": value,
            "created_at": timestamp,
            "updated_at": timestamp,
        }
    ):
        existing = _locked_vote(key)
        assert existing is not None  # the conflicting row is committed and now locked
        previous = existing.value
        if previous == value:
            return VoteResult(round_.id, statement_id, value, previous, "unchanged"), user, round_
        db.session.connection().execute(
            _VOTE_UPDATE, {"vote_id": existing.id, "new_value": value, "timestamp": timestamp}
        )
        status = "changed"
    db.session.connection().execute(
        _EVENT_INSERT,
        {
            "round_id": round_.id,
            **key,
            "value": value,
            "previous_value": previous,
            "created_at": timestamp,
        },
    )
    return VoteResult(round_.id, statement_id, value, previous, status), user, round_


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

    On PostgreSQL this is one transaction. On SQLite the vote is one short write transaction
    (the checks that must hold when it is written, then the write) and what comes next is
    read after its commit, in a read-only transaction: the write lock is held for a few
    statements, not for the whole request. When the caller's transaction so far only read (a
    plain BEGIN, e.g. loading the user under web/api.py's read-first vote endpoint), that read
    snapshot is ended first: SQLite cannot turn a read transaction into a write one once
    another writer has committed.
    If the caller's transaction already holds the write lock, the vote joins it.
    """
    if not _is_sqlite():
        # PostgreSQL locks rows, not the database: one transaction, one round of commits.
        result, user, round_ = _record_vote(actor, statement_id, value, round_id=round_id, now=None)
        outcome = _advance(result, user, round_, rng)
        _commit_keeping_objects()
        return outcome
    session = db.session()
    if session.in_transaction() and not holds_write_lock(session.connection()):
        _commit_keeping_objects()  # nothing written yet: this ends the read snapshot
    try:
        with write_intent(True):
            result, user, round_ = _record_vote(
                actor, statement_id, value, round_id=round_id, now=None
            )
            _commit_keeping_objects()
    except BaseException:
        db.session.rollback()  # let the write lock go before the error is reported
        raise
    with write_intent(False):
        outcome = _advance(result, user, round_, rng)
        _commit_keeping_objects()  # ends the read transaction
    return outcome


def _advance(
    result: VoteResult, user: User, round_: RoundInfo, rng: random.Random | None
) -> VoteOutcome:
    """The member's progress and next statement after an accepted vote (so they may vote)."""
    candidates, progress_ = _candidates(round_, user)
    chosen = routing.pick_next(round_, candidates, rng)
    return VoteOutcome(
        result=result,
        progress=progress_,
        next=None if chosen is None else _offered_statement(round_, chosen),
    )


def _is_sqlite() -> bool:
    return db.session.get_bind().dialect.name == "sqlite"


def _commit_keeping_objects() -> None:
    """Commit without expiring the loaded objects (the acting user): the transaction wrote
    nothing through them, so reading them again would only cost queries."""
    commit_keeping_objects(db.session())


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
