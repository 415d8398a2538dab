"""Analysis snapshots: the stored result of one analysis run over a round's votes."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, ForeignKey, Index, Integer
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .base import UTCDateTime, utcnow


class Snapshot(db.Model):
    __tablename__ = "snapshots"
    __table_args__ = (Index("ix_snapshots_round_id", "round_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    # The highest vote event id (and moderation change) included in this analysis.
    vote_watermark: Mapped[int] = mapped_column(Integer, default=0)
    moderation_watermark: Mapped[int] = mapped_column(Integer, default=0)
    n_votes: Mapped[int] = mapped_column(Integer, default=0)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[dict] = mapped_column(JSON, default=dict)
    result: Mapped[dict] = mapped_column(JSON, default=dict)
    # {str(statement id): routing weight}, copied out of `result` so that routing on the vote
    # hot path loads a small column instead of the whole result.
    priorities: Mapped[dict] = mapped_column(JSON, default=dict)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
