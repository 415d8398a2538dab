"""Tables the running system keeps for itself: shared rate-limit counters, analysis leases."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from ..extensions import db
from .base import UTCDateTime, utcnow


class RateLimitCounter(db.Model):
    """One fixed-window rate-limit counter, shared by every process using the database."""

    __tablename__ = "rate_limit_counters"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    # When the window ends, in seconds since the epoch (what the limits library works in).
    expires_at: Mapped[float] = mapped_column(Float, index=True)


class AnalysisLease(db.Model):
    """Which worker is computing a round's snapshot, and until when its claim holds.

    A worker claims a round by taking this row (SELECT ... FOR UPDATE SKIP LOCKED on
    PostgreSQL, a conditional UPDATE on SQLite) and renews `leased_until` while it works; a
    crashed worker's claim lapses and another worker takes the round over.
    """

    __tablename__ = "analysis_leases"

    round_id: Mapped[int] = mapped_column(
        ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True
    )
    owner: Mapped[str | None] = mapped_column(String(120), default=None)
    leased_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
