"""Recording and reading the audit log."""

from __future__ import annotations

from sqlalchemy import select

from ..extensions import db
from ..models import AuditEvent, User
from .authz import require_facilitator


def record(
    actor: User | None,
    action: str,
    *,
    round_id: int | None = None,
    target_type: str | None = None,
    target_id: int | None = None,
    **details,
) -> AuditEvent:
    """Add an audit event to the current transaction (the caller commits)."""
    event = AuditEvent(
        actor_id=actor.id if actor is not None else None,
        action=action,
        round_id=round_id,
        target_type=target_type,
        target_id=target_id,
        details=details,
    )
    db.session.add(event)
    return event


def list_events(
    actor: User, *, round_id: int | None = None, limit: int = 200, before_id: int | None = None
) -> list[AuditEvent]:
    """Return audit events, newest first (facilitators and admins only)."""
    require_facilitator(actor)
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(max(1, min(limit, 1000)))
    if round_id is not None:
        query = query.where(AuditEvent.round_id == round_id)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    return list(db.session.scalars(query))
