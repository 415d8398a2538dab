"""Rounds (consultations), their statements and the statements' revisions."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from ..extensions import db
from .base import UTCDateTime, utcnow


class RoundState(enum.StrEnum):
    DRAFT = "draft"
    OPEN = "open"
    CLOSED = "closed"
    PUBLISHED = "published"


class ModerationMode(enum.StrEnum):
    PRE = "pre"  # statements wait for a facilitator before anyone sees them
    POST = "post"  # statements are shown at once; facilitators may reject them later


class ResultsVisibility(enum.StrEnum):
    NEVER = "never"
    AFTER_VOTING = "after_voting"
    AFTER_CLOSE = "after_close"


class AuthorDisplay(enum.StrEnum):
    ANONYMOUS = "anonymous"
    ORGANISATION = "organisation"


class StatementState(enum.StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"


class StatementOrigin(enum.StrEnum):
    SEED = "seed"
    MEMBER = "member"
    CARRIED = "carried"
    IMPORTED = "imported"


def _in(column: str, enum_cls: type[enum.StrEnum]) -> str:
    return f"{column} IN {tuple(e.value for e in enum_cls)!r}"


# Which organisations a round is for; no rows means every organisation of the coalition.
round_organisations = Table(
    "round_organisations",
    db.metadata,
    Column("round_id", ForeignKey("rounds.id", ondelete="CASCADE"), primary_key=True),
    Column("organisation_id", ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True),
)


class Round(db.Model):
    __tablename__ = "rounds"
    __table_args__ = (
        CheckConstraint(_in("state", RoundState), name="state_valid"),
        CheckConstraint(_in("moderation", ModerationMode), name="moderation_valid"),
        CheckConstraint(_in("results_visibility", ResultsVisibility), name="results_valid"),
        CheckConstraint(_in("author_display", AuthorDisplay), name="author_display_valid"),
        CheckConstraint("statement_max_length BETWEEN 20 AND 2000", name="length_valid"),
        CheckConstraint(
            "retention_days IS NULL OR retention_days BETWEEN 1 AND 36500", name="retention_valid"
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    question: Mapped[str] = mapped_column(String(500))
    context: Mapped[str] = mapped_column(Text, default="")  # Markdown, sanitised on render
    state: Mapped[str] = mapped_column(String(12), default=RoundState.DRAFT.value, index=True)
    allow_member_statements: Mapped[bool] = mapped_column(Boolean, default=True)
    moderation: Mapped[str] = mapped_column(String(8), default=ModerationMode.PRE.value)
    statement_max_length: Mapped[int] = mapped_column(Integer, default=280)
    results_visibility: Mapped[str] = mapped_column(
        String(16), default=ResultsVisibility.AFTER_VOTING.value
    )
    author_display: Mapped[str] = mapped_column(String(16), default=AuthorDisplay.ANONYMOUS.value)
    opens_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    closes_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    # The round this one continues (statements carried forward keep their own lineage).
    previous_round_id: Mapped[int | None] = mapped_column(
        ForeignKey("rounds.id", ondelete="SET NULL"), default=None
    )
    # Where an imported Pol.is conversation came from (refuses a second import of the same).
    source: Mapped[str | None] = mapped_column(String(300), unique=True, default=None)
    created_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    # Retention: the round's personal data is purged this many days after it closed
    # (closes_at; None keeps it), and when that happened.
    retention_days: Mapped[int | None] = mapped_column(Integer, default=None)
    personal_data_purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)

    statements: Mapped[list[Statement]] = relationship(
        back_populates="round", order_by="Statement.id", cascade="all, delete-orphan"
    )
    # Ordered: PostgreSQL returns rows in no particular order without ORDER BY.
    organisations = relationship(
        "Organisation", secondary=round_organisations, order_by="Organisation.name"
    )

    def __repr__(self) -> str:
        return f"<Round {self.id} {self.state} {self.question[:30]!r}>"


class Statement(db.Model):
    __tablename__ = "statements"
    __table_args__ = (
        CheckConstraint(_in("moderation_state", StatementState), name="moderation_state_valid"),
        CheckConstraint(_in("origin", StatementOrigin), name="origin_valid"),
        # Duplicates are compared case- and whitespace-insensitively, within a round.
        UniqueConstraint("round_id", "normalised_text", name="uq_statements_round_text"),
        Index("ix_statements_round_state", "round_id", "moderation_state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    normalised_text: Mapped[str] = mapped_column(Text)
    author_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True, default=None
    )
    origin: Mapped[str] = mapped_column(String(10), default=StatementOrigin.MEMBER.value)
    moderation_state: Mapped[str] = mapped_column(String(10), default=StatementState.PENDING.value)
    moderation_reason: Mapped[str | None] = mapped_column(String(500), default=None)
    moderated_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    moderated_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    is_meta: Mapped[bool] = mapped_column(Boolean, default=False)
    # Hidden from the report by a facilitator (the votes still count in the analysis).
    hidden_in_report: Mapped[bool] = mapped_column(Boolean, default=False)
    carried_from_id: Mapped[int | None] = mapped_column(
        ForeignKey("statements.id", ondelete="SET NULL"), default=None
    )
    external_id: Mapped[str | None] = mapped_column(String(64), default=None)  # Pol.is tid
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    round: Mapped[Round] = relationship(back_populates="statements")
    author = relationship("User", foreign_keys=[author_id])
    revisions: Mapped[list[StatementRevision]] = relationship(
        back_populates="statement", order_by="StatementRevision.id", cascade="all, delete-orphan"
    )

    def __repr__(self) -> str:
        return f"<Statement {self.id} r{self.round_id} {self.moderation_state}>"


class StatementRevision(db.Model):
    """A facilitator's correction of a statement; the text before the edit is kept here."""

    __tablename__ = "statement_revisions"

    id: Mapped[int] = mapped_column(primary_key=True)
    statement_id: Mapped[int] = mapped_column(
        ForeignKey("statements.id", ondelete="CASCADE"), index=True
    )
    previous_text: Mapped[str] = mapped_column(Text)
    new_text: Mapped[str] = mapped_column(Text)
    edited_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    statement: Mapped[Statement] = relationship(back_populates="revisions")


class GroupName(db.Model):
    """A facilitator's name for an opinion group of a round (group ids are stable)."""

    __tablename__ = "group_names"
    __table_args__ = (UniqueConstraint("round_id", "group_id", name="uq_group_names_round_group"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    round_id: Mapped[int] = mapped_column(ForeignKey("rounds.id", ondelete="CASCADE"))
    group_id: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(80))
    updated_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None
    )
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
