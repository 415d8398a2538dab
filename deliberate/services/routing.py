"""Which statement a member is shown next.

Until a round has an analysis snapshot, statements with the fewest votes come first (ties:
oldest first), so that every statement gathers votes evenly.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from sqlalchemy import func, select

from ..extensions import db
from ..models import Round, Statement, Vote


def pick_next(
    round_: Round, candidates: Sequence[Statement], rng: random.Random | None = None
) -> Statement | None:
    """Choose the next statement among the candidates (all visible, unvoted, not the member's own)."""
    if not candidates:
        return None
    ids = [s.id for s in candidates]
    counts = dict(
        db.session.execute(
            select(Vote.statement_id, func.count())
            .where(Vote.statement_id.in_(ids))
            .group_by(Vote.statement_id)
        ).all()
    )
    return min(candidates, key=lambda s: (counts.get(s.id, 0), s.id))
