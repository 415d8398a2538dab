"""Votes: the current vote per member and statement, and the append-only history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, SmallInteger, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .base import UTCDateTime, utcnow

AGREE, PASS, DISAGREE = 1, 0, -1
VOTE_VALUES = (AGREE, PASS, DISAGREE)


class Vote(db.Model):
    """A member's current vote on a statement: one row per member and statement."""

    __tablename__ = "votes"
    __table_args__ = (
        UniqueConstraint("statement_id", "user_id", name="uq_votes_statement_user"),
        CheckConstraint("value IN (-1, 0, 1)", name="value_valid"),
        Index("ix_votes_round_user", "round_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    # Denormalised from the statement so that a round's votes load with one index scan.
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    statement_id: Mapped[int] = mapped_column(ForeignKey("statements.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    value: Mapped[int] = mapped_column(SmallInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class VoteEvent(db.Model):
    """Every vote as cast, first votes and changes alike (append-only).

    The highest event id of a round is its vote watermark: the analysis reruns when it moves.
    """

    __tablename__ = "vote_events"
    __table_args__ = (
        CheckConstraint("value IN (-1, 0, 1)", name="value_valid"),
        Index("ix_vote_events_round_id", "round_id", "id"),
        Index("ix_vote_events_statement_user", "statement_id", "user_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    statement_id: Mapped[int] = mapped_column(ForeignKey("statements.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    value: Mapped[int] = mapped_column(SmallInteger)
    # The value this event replaced (None for a first vote).
    previous_value: Mapped[int | None] = mapped_column(SmallInteger, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
