"""Statements: members writing them, and facilitators moderating and correcting them.

Moderation modes (the round's `moderation` setting):
- "pre": a member's statement is `pending` and nobody else sees it until a facilitator
  accepts it.
- "post": a member's statement is also stored as `pending` (it still shows up in the
  moderation queue for review) but voters see it at once; a facilitator may reject it later.
  `visible_statement_filter` encodes this rule; use it wherever voters are shown statements.
Rejected statements are never shown to voters.

Duplicates are compared on `normalise_text` (Unicode NFKC, case-folded, white space
collapsed); the database's unique constraint on (round, normalised text) is the last guard.
"""

from __future__ import annotations

import unicodedata

from sqlalchemy import ColumnElement, Select, and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from ..database import end_read, write_intent
from ..extensions import db
from ..models import (
    ModerationMode,
    Role,
    Round,
    RoundState,
    Statement,
    StatementOrigin,
    StatementRevision,
    StatementState,
    User,
    utcnow,
)
from . import audit
from .authz import can_participate, require_facilitator, require_round_viewer, require_user
from .errors import Conflict, DuplicateStatement, NotAllowed, NotFound, RoundClosed, ValidationError
from .pagination import Page, keyset_page, page_cursor

REASON_MAX = 500
DUPLICATE_MESSAGE = "This statement already exists in this round."
QUEUE_STATES = ("pending", "accepted", "rejected", "all")
MODERATION_PAGE_SIZE = 50


def _valid_id(value: object) -> bool:
    from .rounds import is_valid_id

    return is_valid_id(value)


def _find_round(round_id: object) -> Round | None:
    from .rounds import find_round

    return find_round(round_id)


def normalise_text(text: str) -> str:
    """Return the comparison key of a statement: NFKC, case-folded, white space collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text or "").casefold().split())


def clean_text(text: str | None) -> str:
    """Return the text as stored: control characters dropped, white space collapsed."""
    text = "".join(
        ch for ch in str(text or "") if ch.isspace() or unicodedata.category(ch) not in ("Cc", "Cs")
    )
    return " ".join(text.split())


def is_visible(statement: Statement, round_: Round | None = None) -> bool:
    """Whether voters see the statement under its round's moderation mode."""
    round_ = round_ or statement.round
    if statement.moderation_state == StatementState.ACCEPTED:
        return True
    return (
        statement.moderation_state == StatementState.PENDING
        and round_.moderation == ModerationMode.POST
    )


def visible_statement_filter(round_: Round) -> ColumnElement[bool]:
    """Return a WHERE clause for the round's statements that voters may see."""
    shown = Statement.moderation_state == StatementState.ACCEPTED.value
    if round_.moderation == ModerationMode.POST:
        shown = or_(shown, Statement.moderation_state == StatementState.PENDING.value)
    return and_(Statement.round_id == round_.id, shown)


def _check_text(round_: Round, text: str) -> None:
    if not text:
        raise ValidationError("Write a statement first.")
    limit = round_.statement_max_length
    if len(text) > limit:
        raise ValidationError(
            f"Statements can be at most {limit} characters (yours has {len(text)})."
        )


def _existing_id(round_id: int, key: str, exclude_id: int | None = None) -> int | None:
    query = select(Statement.id).where(
        Statement.round_id == round_id, Statement.normalised_text == key
    )
    if exclude_id is not None:
        query = query.where(Statement.id != exclude_id)
    return db.session.scalar(query.limit(1))


def submit_statement(actor: User | None, round_id: int, text: str) -> Statement:
    """Add a member's statement to an open round; it waits for moderation or shows at once.

    The returned statement's `is_visible(statement)` says which, for the message to the member.
    """
    # The checks read (on SQLite without the write lock, which every vote needs); the insert
    # is a short write of its own. A duplicate written in between is caught by the unique
    # index, below.
    with write_intent(False):
        user = require_user(actor)
        round_ = _find_round(round_id)
        require_round_viewer(user, round_)
        if not can_participate(user, round_):
            if user.role != Role.MEMBER and user.organisation_id is None:
                raise NotAllowed("Staff without an organisation do not take part in rounds.")
            raise NotAllowed("This round is not open to your organisation.")
        # Imported lazily: rounds imports this module for the text helpers.
        from .rounds import is_accepting_votes

        if not is_accepting_votes(round_):
            raise RoundClosed("This round is not open for statements now.")
        if not round_.allow_member_statements:
            raise NotAllowed("This round does not take statements from members.")
        text = clean_text(text)
        _check_text(round_, text)
        key = normalise_text(text)
        existing = _existing_id(round_.id, key)
        if existing is not None:
            raise DuplicateStatement(DUPLICATE_MESSAGE, existing)
    end_read(db.session())
    statement = Statement(
        round_id=round_.id,
        text=text,
        normalised_text=key,
        author_id=user.id,
        origin=StatementOrigin.MEMBER.value,
        moderation_state=StatementState.PENDING.value,
    )
    try:
        with write_intent(True):
            db.session.add(statement)
            db.session.commit()
    except IntegrityError:
        # Someone wrote the same statement between our check and our insert.
        db.session.rollback()
        raise DuplicateStatement(DUPLICATE_MESSAGE, _existing_id(round_id, key)) from None
    return statement


def statement_cursor(round_id: int, cursor: int | None) -> tuple[int] | None:
    """Return the id sort key of a cursor that is a statement of the round, else None."""
    if cursor is None:
        return None
    found = db.session.scalar(
        select(Statement.id).where(Statement.id == cursor, Statement.round_id == round_id)
    )
    return None if found is None else (found,)


# --- moderation ------------------------------------------------------------------------


def _load_statement(statement_id: int) -> Statement:
    statement = db.session.get(Statement, statement_id) if _valid_id(statement_id) else None
    if statement is None:
        raise NotFound("No such statement.")
    return statement


def get_statement(actor: User | None, statement_id: int) -> Statement:
    """Return any statement by id (facilitators)."""
    require_facilitator(actor)
    return _load_statement(statement_id)


def _queue_query(actor: User | None, round_id: int, state: str) -> Select:
    require_facilitator(actor)
    round_ = _find_round(round_id)
    if round_ is None:
        raise NotFound("No such round.")
    if state not in QUEUE_STATES:
        raise ValidationError(f"Show one of: {', '.join(QUEUE_STATES)}.")
    query = select(Statement).where(Statement.round_id == round_.id)
    if state != "all":
        query = query.where(Statement.moderation_state == state)
    return query


_QUEUE_ORDER = (Statement.created_at, Statement.id)


def _queue_options():
    return (
        selectinload(Statement.revisions),
        selectinload(Statement.author).selectinload(User.organisation),
    )


def moderation_page(
    actor: User | None,
    round_id: int,
    state: str = "pending",
    *,
    limit: int = MODERATION_PAGE_SIZE,
    after_id: int | None = None,
    before_id: int | None = None,
    from_id: int | None = None,
) -> Page[Statement]:
    """Return a page of the moderation queue, oldest first (facilitators).

    At most one cursor: `after_id` (the page after that statement), `before_id` (the page
    before it) or `from_id` (the page starting with it). A cursor that is not a statement of
    the round gives the first page.
    """
    query = _queue_query(actor, round_id, state)
    cursor, direction = page_cursor(after_id, before_id, from_id)
    cursor_key = None
    if cursor is not None:
        created_at = db.session.scalar(
            select(Statement.created_at).where(
                Statement.id == cursor, Statement.round_id == round_id
            )
        )
        cursor_key = None if created_at is None else (created_at, cursor)
    return keyset_page(
        query.options(*_queue_options()),
        _QUEUE_ORDER,
        limit=limit,
        cursor=cursor,
        cursor_key=cursor_key,
        direction=direction,
    )


def count_moderation_queue(actor: User | None, round_id: int, state: str = "pending") -> int:
    """Return how many of the round's statements are in a moderation state (facilitators)."""
    query = _queue_query(actor, round_id, state)
    return db.session.scalar(select(func.count()).select_from(query.subquery())) or 0


def _moderate(user: User, statement: Statement, state: StatementState, reason: str | None) -> None:
    statement.moderation_state = state.value
    statement.moderation_reason = reason
    statement.moderated_by_id = user.id
    statement.moderated_at = utcnow()


def accept_statement(actor: User | None, statement_id: int) -> Statement:
    """Accept a pending (or previously rejected) statement (facilitators)."""
    user = require_facilitator(actor)
    statement = _load_statement(statement_id)
    if statement.moderation_state == StatementState.ACCEPTED:
        raise Conflict("This statement is already accepted.")
    previous = statement.moderation_state
    _moderate(user, statement, StatementState.ACCEPTED, None)
    audit.record(
        user,
        "statement.accept",
        round_id=statement.round_id,
        target_type="statement",
        target_id=statement.id,
        previous_state=previous,
    )
    db.session.commit()
    return statement


def reject_statement(actor: User | None, statement_id: int, reason: str) -> Statement:
    """Reject a statement with a reason; voters no longer see it (facilitators)."""
    user = require_facilitator(actor)
    statement = _load_statement(statement_id)
    reason = " ".join(str(reason or "").split())
    if not reason:
        raise ValidationError("Give a reason for rejecting the statement.")
    if len(reason) > REASON_MAX:
        raise ValidationError(
            f"The reason can be at most {REASON_MAX} characters (yours has {len(reason)})."
        )
    if statement.moderation_state == StatementState.REJECTED:
        raise Conflict("This statement is already rejected.")
    previous = statement.moderation_state
    _moderate(user, statement, StatementState.REJECTED, reason)
    audit.record(
        user,
        "statement.reject",
        round_id=statement.round_id,
        target_type="statement",
        target_id=statement.id,
        previous_state=previous,
        reason=reason,
    )
    db.session.commit()
    return statement


MERGE_REASON = "Merged into #{id}"


def merge_statement(actor: User | None, statement_id: int, into_id: object) -> Statement:
    """Merge a statement into a near-duplicate of it in the same round (facilitators).

    The statement is moderated out: rejected with the reason "Merged into #<into_id>", so that
    voters never see it again and the analysis leaves it out, as any rejected statement. The
    statement merged into is unchanged, and votes already cast on the merged one stay recorded.
    A statement already rejected may be merged too: it stays rejected and its reason becomes
    the merge (the audit log keeps the earlier reason). The statement merged into must be in
    the same round, another statement, and not rejected (merged ones included).
    """
    user = require_facilitator(actor)
    ids = sorted({i for i in (statement_id, into_id) if _valid_id(i)})
    # Both rows locked (PostgreSQL; SQLite's write transaction locks the database), in id order,
    # and read afresh: two facilitators merging A into B and B into A cannot both succeed.
    found = {
        s.id: s
        for s in db.session.scalars(
            select(Statement)
            .where(Statement.id.in_(ids))
            .order_by(Statement.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    statement = found.get(statement_id)
    if statement is None:
        raise NotFound("No such statement.")
    target = found.get(into_id)
    if target is None:
        raise NotFound(f"There is no statement #{into_id} to merge into.")
    if target.id == statement.id:
        raise ValidationError("A statement cannot be merged into itself.")
    if target.round_id != statement.round_id:
        raise ValidationError(
            f"Statement #{target.id} is in another round: merge statements of one round only."
        )
    if target.moderation_state == StatementState.REJECTED:
        raise Conflict(
            f"Statement #{target.id} is rejected: merge into a statement that is not rejected."
        )
    reason = MERGE_REASON.format(id=target.id)
    if (
        statement.moderation_state == StatementState.REJECTED
        and statement.moderation_reason == reason
    ):
        raise Conflict(f"This statement is already merged into #{target.id}.")
    previous, previous_reason = statement.moderation_state, statement.moderation_reason
    _moderate(user, statement, StatementState.REJECTED, reason)
    audit.record(
        user,
        "statement.merge",
        round_id=statement.round_id,
        target_type="statement",
        target_id=statement.id,
        into=target.id,
        previous_state=previous,
        **({"previous_reason": previous_reason} if previous_reason else {}),
    )
    db.session.commit()
    return statement


def correct_statement(actor: User | None, statement_id: int, new_text: str) -> Statement:
    """Correct a statement's text, keeping the original as a revision (facilitators)."""
    user = require_facilitator(actor)
    statement = _load_statement(statement_id)
    round_ = statement.round
    if round_.state == RoundState.PUBLISHED:
        raise Conflict("This round is published; its statements can no longer be corrected.")
    text = clean_text(new_text)
    _check_text(round_, text)
    if text == statement.text:
        raise ValidationError("The corrected text is the same as the current text.")
    key = normalise_text(text)
    existing = _existing_id(round_.id, key, exclude_id=statement.id)
    if existing is not None:
        raise DuplicateStatement(DUPLICATE_MESSAGE, existing)
    previous = statement.text
    db.session.add(
        StatementRevision(
            statement_id=statement.id, previous_text=previous, new_text=text, edited_by_id=user.id
        )
    )
    statement.text = text
    statement.normalised_text = key
    audit.record(
        user,
        "statement.correct",
        round_id=statement.round_id,
        target_type="statement",
        target_id=statement.id,
        previous_text=previous,
        new_text=text,
    )
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise DuplicateStatement(DUPLICATE_MESSAGE, _existing_id(round_.id, key)) from None
    return statement


def set_meta(actor: User | None, statement_id: int, is_meta: bool) -> Statement:
    """Mark a statement as meta (about the process, not the question) or not (facilitators)."""
    user = require_facilitator(actor)
    statement = _load_statement(statement_id)
    if not isinstance(is_meta, bool):
        raise ValidationError("Meta must be yes or no.")
    if statement.is_meta != is_meta:
        statement.is_meta = is_meta
        audit.record(
            user,
            "statement.meta",
            round_id=statement.round_id,
            target_type="statement",
            target_id=statement.id,
            is_meta=is_meta,
        )
        db.session.commit()
    return statement


__all__ = [
    "MODERATION_PAGE_SIZE",
    "accept_statement",
    "clean_text",
    "correct_statement",
    "count_moderation_queue",
    "get_statement",
    "is_visible",
    "merge_statement",
    "moderation_page",
    "normalise_text",
    "reject_statement",
    "set_meta",
    "statement_cursor",
    "submit_statement",
    "visible_statement_filter",
]
