"""Listing a round's statements as its voters see them, a page at a time (for the JSON API).

The same rules as the voting page: only statements visible under the round's moderation mode
(`statements.visible_statement_filter`), only to people who may see the round
(`authz.require_round_viewer`: a round they may not see is "not found").
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, select
from sqlalchemy.orm import selectinload

from ..extensions import db
from ..models import Statement, User, Vote
from .rounds import get_round
from .statements import visible_statement_filter
from .voting import author_label

MAX_PAGE_SIZE = 200


@dataclass(frozen=True)
class ListedStatement:
    """A visible statement, with whether the reader wrote it and how they voted on it."""

    id: int
    text: str
    author_label: str
    origin: str
    is_meta: bool
    created_at: datetime | None
    yours: bool
    your_vote: int | None


@dataclass(frozen=True)
class StatementPage:
    total: int
    items: list[ListedStatement]


def visible_statements(
    actor: User | None, round_id: int, *, offset: int = 0, limit: int = 50
) -> StatementPage:
    """Return a page of the round's visible statements, oldest first, with the reader's votes."""
    round_ = get_round(actor, round_id)
    user = actor
    offset = max(0, int(offset))
    limit = max(1, min(int(limit), MAX_PAGE_SIZE))
    shown = visible_statement_filter(round_)
    total = db.session.scalar(select(func.count()).select_from(Statement).where(shown)) or 0
    rows = db.session.execute(
        select(Statement, Vote.value)
        .outerjoin(Vote, and_(Vote.statement_id == Statement.id, Vote.user_id == user.id))
        .where(shown)
        .options(selectinload(Statement.author).selectinload(User.organisation))
        .order_by(Statement.id)
        .offset(offset)
        .limit(limit)
    ).all()
    items = [
        ListedStatement(
            id=statement.id,
            text=statement.text,
            author_label=author_label(statement),
            origin=statement.origin,
            is_meta=bool(statement.is_meta),
            created_at=statement.created_at,
            yours=statement.author_id is not None and statement.author_id == user.id,
            your_vote=value,
        )
        for statement, value in rows
    ]
    return StatementPage(total=int(total), items=items)
