"""Voting: cast and change votes, choose the next statement, count a member's progress.

Storage: one `Vote` row per (statement, member), enforced by a unique constraint; every cast
that changes something also appends a `VoteEvent` (the history, and the analysis watermark).
"""

from __future__ import annotations

import os
import random
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    case,
    cast,
    func,
    insert,
    null,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql import Executable
from sqlalchemy.sql.functions import FunctionElement

from ..database import DriverStatement, commit_keeping_objects, holds_write_lock, write_intent
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
from .errors import NotAllowed, NotAuthenticated, NotFound, RoundClosed, ValidationError
from .pagination import Page, keyset_page, page_cursor
from .rounds import is_accepting_votes
from .statements import statement_cursor, visible_statement_filter

BAD_VALUE_MESSAGE = "A vote is agree (1), pass (0) or disagree (-1)."
ROUND_CLOSED_MESSAGE = "This round is not open for voting."
VOTES_PAGE_SIZE = 100  # the member's votes page

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


def _insert(table, dialect: str) -> Executable:
    """Return an INSERT for the dialect that supports ON CONFLICT."""
    if dialect == "postgresql":
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


# The round and the statement as above, with the member a session names (columns NULL if no
# such user): what the fast path's checks read, in one query.
_SESSION_USERS = User.__table__.alias("member")
_ROUND_STATEMENT_MEMBER = _ROUND_AND_STATEMENT.add_columns(
    _SESSION_USERS.c.id.label("member_id"),
    _SESSION_USERS.c.role.label("member_role"),
    _SESSION_USERS.c.organisation_id.label("member_organisation_id"),
    _SESSION_USERS.c.active.label("member_active"),
    _SESSION_USERS.c.auth_version.label("member_auth_version"),
).outerjoin(_SESSION_USERS, _SESSION_USERS.c.id == bindparam("user_id"))


class SessionMember(NamedTuple):
    """The member a verified session names: '<user id>:<auth version>' (web/fast_vote.py)."""

    user_id: int
    auth_version: int


class _StatementCheck(NamedTuple):
    round_id: int
    author_id: int | None
    moderation_state: str


def _conn(conn: Connection | None) -> Connection:
    """The connection the vote path's queries run on: the given one, or the session's."""
    return db.session.connection() if conn is None else conn


def _round_info(round_id: int, conn: Connection | None = None) -> RoundInfo | None:
    rows = _ROUND_INFO_DRIVER.rows(_conn(conn), {"round_id": round_id})
    return _round_from_rows(rows)


def _round_and_statement(
    round_id: int, statement_id: int, conn: Connection | None = None
) -> tuple[RoundInfo | None, _StatementCheck | None]:
    """The round and, if it is in that round, the statement: one query."""
    rows = _ROUND_AND_STATEMENT_DRIVER.rows(
        _conn(conn), {"round_id": round_id, "statement_id": statement_id}
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


class _IdList(FunctionElement):
    """The comma-separated text of the ids aggregated (NULL for none): group_concat on SQLite,
    string_agg on PostgreSQL (as func.aggregate_strings, with the comma in the SQL text)."""

    type = String()
    name = "id_list"
    inherit_cache = True


@compiles(_IdList)
def _id_list_sql(element, compiler, **kw):
    return f"string_agg({compiler.process(element.clauses, **kw)}, ',')"


@compiles(_IdList, "sqlite")
def _id_list_sqlite(element, compiler, **kw):
    return f"group_concat({compiler.process(element.clauses, **kw)}, ',')"


def _candidates_query(post_moderation: bool, without: bool = False):
    """The member's unvoted offered statements, in ONE row: their ids and the ids of the meta
    ones among them (comma-separated text; NULL when none), how many statements the member is
    offered (so the ones voted on are that minus the unvoted) and the id of the round's latest
    snapshot (for routing). One statement, one snapshot: the figures agree with each other.
    One row instead of one per statement: the driver then builds one value, not hundreds.
    `without`: the statement :statement_id counts as voted (read before its vote is written)."""
    # The member's votes in the round, by the (round_id, user_id) index: one range read,
    # hashed, instead of a lookup per offered statement (a vote's round is its statement's,
    # which integrity.check_integrity verifies).
    voted = select(_votes.c.statement_id).where(
        _votes.c.round_id == bindparam("round_id"), _votes.c.user_id == bindparam("user_id")
    )
    unvoted = select(_statements.c.id, _statements.c.is_meta).where(
        _offered(post_moderation), _statements.c.id.not_in(voted)
    )
    if without:
        unvoted = unvoted.where(_statements.c.id != bindparam("statement_id"))
    unvoted = unvoted.subquery("unvoted")
    offered = _statements.alias("offered")
    offered_count = (
        select(func.count(offered.c.id)).where(_offered(post_moderation, offered)).scalar_subquery()
    )
    text_id = cast(unvoted.c.id, String)
    return select(
        _IdList(text_id).label("ids"),
        _IdList(case((unvoted.c.is_meta == true(), text_id))).label("metas"),
        offered_count.label("offered"),
        routing.LATEST_SNAPSHOT_ID.label("snapshot_id"),
    ).select_from(unvoted)


# Keyed by "is the round post-moderated".
_PROGRESS = {post: _progress_query(post) for post in (False, True)}
_CANDIDATES = {post: _candidates_query(post) for post in (False, True)}
# The vote path's statements run on the driver's cursor (database.DriverStatement).
_PROGRESS_DRIVER = {post: DriverStatement(query) for post, query in _PROGRESS.items()}
_CANDIDATES_DRIVER = {post: DriverStatement(query) for post, query in _CANDIDATES.items()}
_CANDIDATES_WITHOUT_DRIVER = {
    post: DriverStatement(_candidates_query(post, without=True)) for post in (False, True)
}
_ROUND_INFO_DRIVER = DriverStatement(_ROUND_INFO)
_ROUND_AND_STATEMENT_DRIVER = DriverStatement(_ROUND_AND_STATEMENT)
_ROUND_STATEMENT_MEMBER_DRIVER = DriverStatement(_ROUND_STATEMENT_MEMBER)
_STATEMENT_CHECK = DriverStatement(
    select(_statements.c.round_id, _statements.c.author_id, _statements.c.moderation_state).where(
        _statements.c.id == bindparam("statement_id")
    )
)
# An offered statement: text, origin, author and their organisation (NULL without one).
_OFFERED = DriverStatement(
    select(
        _statements.c.text,
        _statements.c.origin,
        _statements.c.author_id,
        Organisation.name.label("organisation"),
    )
    .select_from(_statements)
    .outerjoin(User, User.id == _statements.c.author_id)
    .outerjoin(Organisation, Organisation.id == User.organisation_id)
    .where(_statements.c.id == bindparam("statement_id"))
)
_VOTE_ROW = DriverStatement(
    select(_votes.c.id, _votes.c.value)
    .where(
        _votes.c.statement_id == bindparam("statement_id"),
        _votes.c.user_id == bindparam("user_id"),
    )
    .with_for_update()
)
_VOTE_UPDATE = DriverStatement(
    update(_votes)
    .where(_votes.c.id == bindparam("vote_id"))
    .values(value=bindparam("new_value"), updated_at=bindparam("timestamp"))
)
_EVENT_INSERT = DriverStatement(
    insert(_events).values(
        round_id=bindparam("round_id"),
        statement_id=bindparam("statement_id"),
        user_id=bindparam("user_id"),
        value=bindparam("value"),
        previous_value=bindparam("previous_value"),
        created_at=bindparam("created_at"),
    )
)
_VOTE_INSERTS: dict[str, DriverStatement] = {}


def _new_vote(dialect: str, created: str, updated: str):
    """INSERT of the member's vote ... ON CONFLICT (statement, member) DO NOTHING, for the
    dialect; its timestamps from the parameters named `created` and `updated`."""
    return (
        _insert(_votes, dialect)
        .values(
            round_id=bindparam("round_id"),
            statement_id=bindparam("statement_id"),
            user_id=bindparam("user_id"),
            value=bindparam("value"),
            created_at=bindparam(created),
            updated_at=bindparam(updated),
        )
        .on_conflict_do_nothing(index_elements=["statement_id", "user_id"])
    )


def _vote_insert(dialect: str) -> DriverStatement:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING id, for the dialect."""
    statement = _VOTE_INSERTS.get(dialect)
    if statement is None:
        # RETURNING says whether a row went in: with it PostgreSQL's rowcount is -1.
        new = _new_vote(dialect, "created_at", "updated_at").returning(_votes.c.id)
        statement = _VOTE_INSERTS[dialect] = DriverStatement(new)
    return statement


def _insert_vote(row: dict, conn: Connection | None = None) -> bool:
    """Insert the member's vote unless they have one on the statement; whether it went in."""
    conn = _conn(conn)
    return _vote_insert(conn.dialect.name).first(conn, row) is not None


def _first_vote_event_pg():
    """PostgreSQL: insert the vote unless the member has one on the statement, and its history
    row with it, in one statement (one round trip): the event is inserted from the RETURNING
    of the vote's insert, so only when the vote went in. Its RETURNING says whether it did."""
    inserted = (
        _new_vote("postgresql", "timestamp", "timestamp")
        .returning(
            _votes.c.round_id,
            _votes.c.statement_id,
            _votes.c.user_id,
            _votes.c.value,
            _votes.c.created_at,
        )
        .cte("inserted_vote")
    )
    return (
        insert(_events)
        .from_select(
            ["round_id", "statement_id", "user_id", "value", "previous_value", "created_at"],
            select(
                inserted.c.round_id,
                inserted.c.statement_id,
                inserted.c.user_id,
                inserted.c.value,
                null(),
                inserted.c.created_at,
            ),
        )
        .returning(_events.c.id)
    )


def _first_vote_and_candidates_pg(post_moderation: bool):
    """PostgreSQL: the first vote's two inserts and then the member's candidates (as
    _CANDIDATES), in one statement, one row: whether the vote went in, then _CANDIDATES's
    values. The statement reads one snapshot, taken before its inserts: the vote's statement
    is left out explicitly (a first vote: it was unvoted), which gives what _CANDIDATES would
    read after the insert."""
    written = _first_vote_event_pg().cte("inserted_event")
    candidates = _candidates_query(post_moderation, without=True).subquery("candidates")
    inserted = select(func.count()).select_from(written).scalar_subquery().label("inserted")
    return select(inserted, *candidates.c).select_from(candidates)


_FIRST_VOTE_EVENT_PG = DriverStatement(_first_vote_event_pg())
_FIRST_VOTE_AND_CANDIDATES_PG = {
    post: DriverStatement(_first_vote_and_candidates_pg(post)) for post in (False, True)
}


def _first_vote_row(round_: RoundInfo, statement_id: int, user, value: int) -> dict:
    """The parameters of PostgreSQL's first-vote statements (_FIRST_VOTE_EVENT_PG and
    _FIRST_VOTE_AND_CANDIDATES_PG)."""
    return {
        "round_id": round_.id,
        "statement_id": statement_id,
        "user_id": user.id,
        "value": value,
        "timestamp": utcnow(),
    }


def _insert_first_vote_pg(row: dict, conn: Connection | None = None) -> bool:
    """PostgreSQL: insert the vote and its history row unless the member has a vote on the
    statement (then nothing); whether they went in."""
    return _FIRST_VOTE_EVENT_PG.first(_conn(conn), row) is not None


def _insert_first_vote_and_read_candidates_pg(
    row: dict, round_: RoundInfo, user: User, conn: Connection | None = None
) -> _Candidates | None:
    """PostgreSQL: as _insert_first_vote_pg, and when the vote went in, the member's
    candidates after it (as _candidates), read by the same statement; None when it did not."""
    post = round_.moderation == ModerationMode.POST
    found = _FIRST_VOTE_AND_CANDIDATES_PG[post].first(_conn(conn), row)
    if not found[0]:
        return None
    return _candidates_from_row(*found[1:])


def _locked_vote(key: dict[str, int], conn: Connection | None = None):
    """Read the member's vote row (id, value), or None; locked until the commit.

    SELECT ... FOR UPDATE on PostgreSQL; on SQLite the transaction holds the write lock.
    """
    return _VOTE_ROW.first(_conn(conn), key)


class Candidate(NamedTuple):
    """A statement the member may be offered next (what routing and the answer need of it)."""

    id: int
    is_meta: bool


def _progress(round_: Round | RoundInfo, user: User, conn: Connection | None = None) -> Progress:
    post = round_.moderation == ModerationMode.POST
    row = _PROGRESS_DRIVER[post].first(_conn(conn), {"round_id": round_.id, "user_id": user.id})
    return Progress(voted=int(row[1]), total=int(row[0]))


class _Candidates(NamedTuple):
    statements: list[Candidate]
    progress: Progress
    snapshot_id: object  # the round's latest snapshot id, or None


def _candidates(
    round_: Round | RoundInfo,
    user: User,
    conn: Connection | None = None,
    without: int | None = None,
) -> _Candidates:
    """The member's unvoted offered statements (oldest first), their progress, and the id of
    the round's latest snapshot: one query. `without`: a statement counted as voted (the one
    being voted on, read before the vote is written): then the figures are those after it."""
    post = round_.moderation == ModerationMode.POST
    params = {"round_id": round_.id, "user_id": user.id}
    if without is None:
        row = _CANDIDATES_DRIVER[post].first(_conn(conn), params)
    else:
        params["statement_id"] = without
        row = _CANDIDATES_WITHOUT_DRIVER[post].first(_conn(conn), params)
    return _candidates_from_row(row[0], row[1], row[2], row[3])


def _candidates_from_row(ids: str | None, metas: str | None, offered, snapshot_id) -> _Candidates:
    """_Candidates from the values _CANDIDATES reads."""
    unvoted = sorted(map(int, ids.split(","))) if ids else []
    meta = set(map(int, metas.split(","))) if metas else ()
    statements = [Candidate(i, i in meta) for i in unvoted]
    total = int(offered or 0)
    return _Candidates(statements, Progress(voted=total - len(unvoted), total=total), snapshot_id)


def _next_candidate(
    round_: Round | RoundInfo, user: User, rng: random.Random | None
) -> Candidate | None:
    found = _candidates(round_, user)
    return routing.pick_next(round_, found.statements, rng, snapshot_id=found.snapshot_id)


def _next_statement(round_: Round, user: User, rng: random.Random | None) -> Statement | None:
    chosen = _next_candidate(round_, user, rng)
    return None if chosen is None else db.session.get(Statement, chosen.id)


def _offered_statement(
    round_: RoundInfo, chosen: Candidate, conn: Connection | None = None
) -> OfferedStatement | None:
    """The chosen candidate as offered: its text and who wrote it (read now: the candidates
    query reads only what routing needs, as one statement is shown)."""
    row = _OFFERED.first(_conn(conn), {"statement_id": chosen.id})
    if row is None:  # purged since the candidates were read
        return None
    return OfferedStatement(
        id=chosen.id,
        text=row.text,
        author_label=_describe_author(
            row.origin,
            round_.author_display,
            row.author_id is not None,
            row.organisation if row.origin == StatementOrigin.MEMBER else None,
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
    result = _record_vote(actor, statement_id, value, round_id=round_id, now=now).result
    db.session.commit()
    return result


def _record_vote(
    actor: User,
    statement_id: object,
    value: object,
    *,
    round_id: int | None,
    now: datetime | None,
    conn: Connection | None = None,
    read_candidates: bool = False,
) -> _Recorded:
    """Check and write a vote in the current transaction (of `conn`, by default the
    session's); the caller commits. With `read_candidates` on PostgreSQL, a first vote also
    reads the member's candidates after it, in the same statement (else they are None)."""
    conn = _conn(conn)
    user, round_, statement_id, value = _check_vote(
        actor, statement_id, value, round_id=round_id, now=now, conn=conn
    )
    if conn.dialect.name != "sqlite":  # PostgreSQL: the vote and its history row at once
        row = _first_vote_row(round_, statement_id, user, value)
        new = VoteResult(round_.id, statement_id, value, None, "new")
        if read_candidates:
            found = _insert_first_vote_and_read_candidates_pg(row, round_, user, conn)
            if found is not None:
                return _Recorded(new, user, round_, found)
        elif _insert_first_vote_pg(row, conn):
            return _Recorded(new, user, round_)
    # SQLite: insert first; PostgreSQL: the insert above found a vote there (or a concurrent
    # first vote): the locked read and update.
    sqlite = conn.dialect.name == "sqlite"
    result = _write_vote(user, round_, statement_id, value, conn, insert_first=sqlite)
    return _Recorded(result, user, round_)


def _check_vote(
    actor: User | SessionMember,
    statement_id: object,
    value: object,
    *,
    round_id: int | None,
    now: datetime | None,
    conn: Connection,
) -> tuple[User, RoundInfo, int, int]:
    """Everything a vote must satisfy, read on `conn`: the member, the round (if given, the
    statement must be in it), the statement (visible), the value, the round accepting votes,
    the member taking part, not their own statement. The member, the round, and the valid
    statement id and value; or the DomainError saying why not."""
    statement = None
    round_ = None
    valid_round = type(round_id) is int and 0 < round_id <= MAX_ID
    valid_statement = type(statement_id) is int and 0 < statement_id <= MAX_ID
    if isinstance(actor, SessionMember):  # the fast path: the member is checked here
        if round_id is not None and valid_round and valid_statement:
            user, round_, statement = _session_round_and_statement(
                actor, round_id, statement_id, conn
            )
        else:
            user = _session_member(conn, actor.user_id, actor.auth_version)
    else:
        user = require_user(actor)
    if round_id is not None:
        if round_ is None:  # not read with the member above
            if valid_round and valid_statement:
                round_, statement = _round_and_statement(round_id, statement_id, conn)
            elif valid_round:
                round_ = _round_info(round_id, conn)
        if round_ is None or not can_view_round(user, round_):
            raise RoundNotFound("No such round.")
    value = _validate_value(value)
    statement_id = _validate_id(statement_id, "statement")
    if round_id is None:
        statement = _STATEMENT_CHECK.first(conn, {"statement_id": statement_id})
        found = None if statement is None else _round_info(statement.round_id, conn)
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
    return user, round_, statement_id, value


def _session_round_and_statement(
    session: SessionMember, round_id: int, statement_id: int, conn: Connection
) -> tuple[_Member, RoundInfo | None, _StatementCheck | None]:
    """_round_and_statement with the session's member checked (as _session_member) in the
    same query; the statement is None when it is not in the round."""
    params = {"round_id": round_id, "statement_id": statement_id, "user_id": session.user_id}
    rows = _ROUND_STATEMENT_MEMBER_DRIVER.rows(conn, params)
    if not rows:  # no such round: whether the member may act decides the answer first
        return _session_member(conn, session.user_id, session.auth_version), None, None
    first = rows[0]
    if (
        first.member_id is None
        or first.member_auth_version != session.auth_version
        or not first.member_active
    ):
        raise NotAuthenticated("Please log in first.")
    member = _Member(first.member_id, first.member_role, first.member_organisation_id, True)
    statement = None
    if first.statement_id is not None:
        statement = _StatementCheck(first.id, first.author_id, first.moderation_state)
    return member, _round_from_rows(rows), statement


def _write_vote(
    user: User,
    round_: RoundInfo,
    statement_id: int,
    value: int,
    conn: Connection,
    *,
    insert_first: bool,
) -> VoteResult:
    """Write a checked vote and its history row in the current transaction of `conn`: a first
    vote, a change, or nothing when the value is the same. `insert_first`: try the insert
    first (on PostgreSQL the caller's combined insert already found a vote there)."""
    timestamp = utcnow()
    key = {"statement_id": statement_id, "user_id": user.id}
    previous: int | None = None
    status: VoteStatus = "new"
    # Insert first (most votes are first votes): ON CONFLICT DO NOTHING leaves an existing
    # row, also one a concurrent request has just inserted, for the update below.
    inserted = insert_first and _insert_vote(
        {
            "round_id": round_.id,
            **key,
            "value": value,
            "created_at": timestamp,
            "updated_at": timestamp,
        },
        conn,
    )
    if not inserted:
        existing = _locked_vote(key, conn)
        assert existing is not None  # the conflicting row is committed and now locked
        previous = existing.value
        if previous == value:
            return VoteResult(round_.id, statement_id, value, previous, "unchanged")
        _VOTE_UPDATE.rows(
            conn, {"vote_id": existing.id, "new_value": value, "timestamp": timestamp}
        )
        status = "changed"
    _EVENT_INSERT.rows(
        conn,
        {
            "round_id": round_.id,
            **key,
            "value": value,
            "previous_value": previous,
            "created_at": timestamp,
        },
    )
    return VoteResult(round_.id, statement_id, value, previous, status)


class _Recorded(NamedTuple):
    result: VoteResult
    user: User
    round: RoundInfo
    candidates: _Candidates | None = None  # read with the vote (PostgreSQL, on request)


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
    another writer has committed. The two transactions then run on one pooled connection of
    their own, outside the session (cheaper than two session transactions; nothing in them
    goes through ORM objects).
    If the caller's transaction already holds the write lock, the vote joins it.
    """
    if not _is_sqlite():
        # PostgreSQL locks rows, not the database: one transaction, one round of commits.
        # A first vote also reads what comes next in the same statement (one round trip).
        recorded = _record_vote(
            actor, statement_id, value, round_id=round_id, now=None, read_candidates=True
        )
        outcome = _advance(*recorded[:3], rng, found=recorded.candidates)
        _commit_keeping_objects()
        return outcome
    session = db.session()
    if session.in_transaction() and holds_write_lock(session.connection()):
        return _vote_and_advance_in_session(actor, round_id, statement_id, value, rng)
    # What the checks read of the member, read now: nothing may load through the session
    # (another connection) while this one holds the write lock.
    member = _Member.of(require_user(actor))
    if session.in_transaction():
        _commit_keeping_objects()  # nothing written yet: this ends the read snapshot
    with session.get_bind().connect() as conn:
        return _vote_and_advance_sqlite(conn, member, round_id, statement_id, value, rng)


@dataclass(frozen=True, slots=True)
class _Member:
    """The acting user's columns the vote path reads (duck-types User for authz): plain
    values, so that checking them never loads anything through the session."""

    id: int
    role: str
    organisation_id: int | None
    is_active: bool
    is_authenticated: bool = True

    @classmethod
    def of(cls, user: User) -> _Member:
        return cls(user.id, user.role, user.organisation_id, bool(user.is_active))


# The member a signed session names, if it still may act: the columns the vote path checks.
_SESSION_MEMBER = DriverStatement(
    select(User.id, User.role, User.organisation_id, User.active, User.auth_version).where(
        User.id == bindparam("user_id")
    )
)


def _session_member(conn: Connection, user_id: int, auth_version: int) -> _Member:
    """The member as web/__init__.py's user loader accepts them: the row exists, its
    auth_version is the session's (a password change or "log out everywhere" ends older
    sessions) and the account is active; else NotAuthenticated."""
    row = _SESSION_MEMBER.first(conn, {"user_id": user_id})
    if row is None or row.auth_version != auth_version or not row.active:
        raise NotAuthenticated("Please log in first.")
    return _Member(row.id, row.role, row.organisation_id, True)


def vote_and_advance_as(
    user_id: int,
    auth_version: int,
    round_id: int,
    statement_id: object,
    value: object,
    rng: random.Random | None = None,
) -> VoteOutcome:
    """vote_and_advance for the member named by a verified session ("<id>:<auth_version>"),
    without a loaded user or the ORM session: what web/fast_vote.py calls.

    The member's row is read with the vote's checks, as web/__init__.py's user loader would
    accept it: it exists, is active, and has the session's auth version (a password change or
    "log out everywhere" ends older sessions). Then the same checks, writes and next
    statement as vote_and_advance. Nothing is written when it raises. Needs an app context."""
    engine = db.engine
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            return _vote_and_advance_sqlite(
                conn, SessionMember(user_id, auth_version), round_id, statement_id, value, rng
            )
        return _vote_and_advance_pg_autocommit(
            engine, conn, SessionMember(user_id, auth_version), round_id, statement_id, value, rng
        )


def _vote_and_advance_pg_autocommit(
    engine, conn: Connection, member, round_id, statement_id, value, rng
) -> VoteOutcome:
    """PostgreSQL without BEGIN and COMMIT round trips: the checks' read, then a first vote as
    ONE statement (the vote, its history row and the candidates after it:
    _FIRST_VOTE_AND_CANDIDATES_PG), which PostgreSQL commits by itself, durably, before it
    answers; then the next statement's text. A vote that is not a first vote (a change, or a
    concurrent first vote) is written in a transaction of its own (a locked read, the update
    and its history row), as _record_vote does."""
    conn.execution_options(isolation_level="AUTOCOMMIT")
    user, round_, statement_id, value = _check_vote(
        member, statement_id, value, round_id=round_id, now=None, conn=conn
    )
    row = _first_vote_row(round_, statement_id, user, value)
    found = _insert_first_vote_and_read_candidates_pg(row, round_, user, conn)
    if found is not None:
        result = VoteResult(round_.id, statement_id, value, None, "new")
    else:
        with engine.begin() as transaction:
            result = _write_vote(user, round_, statement_id, value, transaction, insert_first=False)
    return _advance(result, user, round_, rng, conn=conn, found=found)


def _vote_and_advance_sqlite(
    conn: Connection,
    member: _Member | SessionMember,
    round_id: int,
    statement_id: object,
    value: object,
    rng: random.Random | None,
) -> VoteOutcome:
    """SQLite, on a connection of its own: read, then write, with the write lock held for the
    two inserts only.

    1. Reads (each its own snapshot, never waiting for writers): the member (`member`),
       every check of the vote (_check_vote), the member's candidates without the vote's
       statement (so: as they will be after it), the next statement (routing) and its text.
    2. A write transaction (BEGIN IMMEDIATE, queued on the writer gate): the vote and its
       history row (_write_vote), then COMMIT.

    The write lock is what serialises SQLite's writers, so the less a writer does while it
    holds it, the more votes per second: in the Python of a multi-threaded server, each
    statement inside it may also wait for the GIL. The checks are made on the snapshot read
    just before the write (as on PostgreSQL, where they read committed rows without locking
    the round): a round closed in between still takes a vote made against it a moment
    before it closed."""
    # The reads run outside a transaction (the connection is in autocommit mode): each
    # statement reads its own snapshot, which is all they need; no BEGIN, no COMMIT.
    with write_intent(False):
        user, round_, statement_id, value = _check_vote(
            member, statement_id, value, round_id=round_id, now=None, conn=conn
        )
        found = _candidates(round_, user, conn, without=statement_id)
        chosen = routing.pick_next(
            round_, found.statements, rng, snapshot_id=found.snapshot_id, connection=conn
        )
        offered = None if chosen is None else _offered_statement(round_, chosen, conn)
        if conn.in_transaction():  # routing read through SQLAlchemy (new routing weights)
            conn.commit()
    result = _group_writer(conn.engine).write(conn, user, round_, statement_id, value)
    return VoteOutcome(result=result, progress=found.progress, next=offered)


class _PendingVote:
    """A checked vote waiting in a _GroupWriter, and then its result or error."""

    __slots__ = ("args", "done", "error", "lead", "result")

    def __init__(self, args: tuple) -> None:
        self.args = args
        self.done = threading.Event()
        self.lead = False  # set when this thread is to write the next group
        self.result: VoteResult | None = None
        self.error: BaseException | None = None


class _GroupWriter:
    """Group commit for SQLite votes, per process and database.

    SQLite has one writer at a time. Each vote written in its own transaction takes the
    writer gate and SQLite's write lock, BEGIN IMMEDIATE, its two inserts and COMMIT; under
    many concurrent votes the writers queue and the threads holding the lock also wait for
    Python's GIL between statements. Here, a thread with a vote to write either becomes the
    writer (no one is writing in this process) or waits; the writer takes every vote waiting
    at that moment, its own included, and writes them all in ONE transaction (each exactly
    as _write_vote writes one), then lets the first vote that arrived meanwhile lead the next
    group. Each vote's thread answers only after the transaction holding its vote committed.
    If the group's transaction fails, its votes are written again one per transaction, so a
    failure is reported to the vote that caused it and to no other.
    """

    _writers: dict[tuple[int, int], _GroupWriter] = {}
    _writers_lock = threading.Lock()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[_PendingVote] = []
        self._writing = False

    def write(
        self, conn: Connection, user, round_: RoundInfo, statement_id: int, value: int
    ) -> VoteResult:
        mine = _PendingVote((user, round_, statement_id, value))
        with self._lock:
            self._pending.append(mine)
            lead = not self._writing
            self._writing = True
        if not lead:
            mine.done.wait()
            if not mine.lead:
                return self._outcome(mine)
            mine.done.clear()
        self._write_group(conn)
        return self._outcome(mine)

    @staticmethod
    def _outcome(vote: _PendingVote) -> VoteResult:
        if vote.error is not None:
            raise vote.error
        assert vote.result is not None
        return vote.result

    def _write_group(self, conn: Connection) -> None:
        """Write every waiting vote (this thread's among them), then hand over."""
        with self._lock:
            group, self._pending = self._pending, []
        try:
            try:
                with write_intent(True), conn.begin():  # BEGIN IMMEDIATE; a rollback on error
                    results = [_write_vote(*vote.args, conn, insert_first=True) for vote in group]
                for vote, result in zip(group, results, strict=True):
                    vote.result = result
            except Exception as error:
                if len(group) == 1:
                    group[0].error = error
                else:  # find which vote fails: each in its own transaction
                    for vote in group:
                        try:
                            with write_intent(True), conn.begin():
                                vote.result = _write_vote(*vote.args, conn, insert_first=True)
                        except Exception as own:
                            vote.error = own
        finally:
            for vote in group:  # interrupted (not an Exception): nothing is known of them
                if vote.result is None and vote.error is None:
                    vote.error = RuntimeError("The vote was not recorded; please try again.")
            with self._lock:
                if self._pending:
                    leader = self._pending[0]
                    leader.lead = True
                    leader.done.set()
                else:
                    self._writing = False
            for vote in group:
                vote.done.set()


def _group_writer(engine) -> _GroupWriter:
    key = (id(engine), os.getpid())  # a forked process starts with writers of its own
    writer = _GroupWriter._writers.get(key)
    if writer is None:
        with _GroupWriter._writers_lock:
            writer = _GroupWriter._writers.setdefault(key, _GroupWriter())
    return writer


def _vote_and_advance_in_session(
    actor: User, round_id: int, statement_id: object, value: object, rng: random.Random | None
) -> VoteOutcome:
    """SQLite, when the session's transaction holds the write lock: the vote joins it."""
    try:
        with write_intent(True):
            result, user, round_, _ = _record_vote(
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
    result: VoteResult,
    user: User,
    round_: RoundInfo,
    rng: random.Random | None,
    conn: Connection | None = None,
    found: _Candidates | None = None,
) -> VoteOutcome:
    """The member's progress and next statement after an accepted vote (so they may vote);
    `found`: the member's candidates if the vote's statement read them."""
    conn = _conn(conn)
    if found is None:
        found = _candidates(round_, user, conn)
    chosen = routing.pick_next(
        round_, found.statements, rng, snapshot_id=found.snapshot_id, connection=conn
    )
    return VoteOutcome(
        result=result,
        progress=found.progress,
        next=None if chosen is None else _offered_statement(round_, chosen, conn),
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


def member_votes_page(
    actor: User,
    round_id: int,
    *,
    limit: int = VOTES_PAGE_SIZE,
    after_id: int | None = None,
    before_id: int | None = None,
) -> Page[tuple[Statement, int]]:
    """Return a page of the member's votes on statements still visible in the round, oldest
    statement first, as (statement, value): the rows of `my_votes`, one page of them."""
    user, round_ = _load_round(actor, round_id)
    query = (
        select(Statement, Vote.value)
        .join(Vote, and_(Vote.statement_id == Statement.id, Vote.user_id == user.id))
        .where(_offered_filter(round_, user))
    )
    cursor, direction = page_cursor(after_id, before_id)
    page = keyset_page(
        query,
        (Statement.id,),
        limit=limit,
        cursor=cursor,
        cursor_key=statement_cursor(round_.id, cursor),
        direction=direction,
        id_of=lambda row: row[0].id,
        rows=lambda q: db.session.execute(q).all(),
    )
    return Page([(s, v) for s, v in page.items], after=page.after, before=page.before)


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
    statement = None
    if can_vote:
        found = _candidates(round_, user)
        chosen = routing.pick_next(round_, found.statements, rng, snapshot_id=found.snapshot_id)
        statement = None if chosen is None else db.session.get(Statement, chosen.id)
        progress_ = found.progress
    else:
        progress_ = _progress(round_, user)
    return VotingPage(
        round=round_,
        accepting=accepting,
        can_vote=can_vote,
        can_write=can_vote and bool(round_.allow_member_statements),
        statement=statement,
        progress=progress_,
    )


@dataclass(frozen=True)
class NextOffer:
    """What the voting client needs to go on: whether the round takes votes, the member's
    progress, and the next statement (None when there is none, or they may not vote)."""

    accepting: bool
    progress: Progress
    next: OfferedStatement | None


def next_offer(actor: User, round_id: int, rng: random.Random | None = None) -> NextOffer:
    """The voting page's answer without the page (GET /api/rounds/<id>/next): the same rules
    as voting_page, on the vote path's Core queries (no ORM objects)."""
    user, round_ = _load_round_info(actor, round_id)
    accepting = is_accepting_votes(round_, utcnow())
    if not (accepting and can_participate(user, round_)):
        return NextOffer(accepting, _progress(round_, user), None)
    found = _candidates(round_, user)
    chosen = routing.pick_next(round_, found.statements, rng, snapshot_id=found.snapshot_id)
    return NextOffer(
        accepting, found.progress, None if chosen is None else _offered_statement(round_, chosen)
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
