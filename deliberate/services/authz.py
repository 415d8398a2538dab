"""Authorisation rules shared by every service. Services call these; templates only mirror them."""

from __future__ import annotations

from ..models import Role, Round, RoundState, User
from .errors import NotAllowed, NotFound


def require_user(actor: User | None) -> User:
    """Return the actor, or refuse an anonymous or deactivated one."""
    if actor is None or not getattr(actor, "is_authenticated", False) or not actor.is_active:
        raise NotAllowed("Please log in first.")
    return actor


def require_role(actor: User | None, *roles: Role) -> User:
    """Refuse unless the actor holds one of the roles (admins hold every role)."""
    user = require_user(actor)
    if user.role == Role.ADMIN or user.role in {r.value for r in roles}:
        return user
    raise NotAllowed("You do not have permission to do that.")


def require_facilitator(actor: User | None) -> User:
    return require_role(actor, Role.FACILITATOR)


def require_report_reader(actor: User | None) -> User:
    return require_role(actor, Role.FACILITATOR, Role.LEADERSHIP)


def is_in_audience(user: User, round_: Round) -> bool:
    """Whether the round is for the user's organisation (no organisations listed: for all)."""
    if not round_.organisations:
        return True
    return user.organisation_id in {o.id for o in round_.organisations}


def can_view_round(user: User, round_: Round) -> bool:
    """Facilitators, admins and leadership see every round; members see non-draft rounds
    meant for their organisation."""
    if user.role in (Role.FACILITATOR, Role.ADMIN, Role.LEADERSHIP):
        return True
    return round_.state != RoundState.DRAFT and is_in_audience(user, round_)


def require_round_viewer(actor: User | None, round_: Round | None) -> User:
    """Refuse unless the actor may see the round; a round they may not see is 'not found'."""
    user = require_user(actor)
    if round_ is None or not can_view_round(user, round_):
        raise NotFound("No such round.")
    return user


def can_participate(user: User, round_: Round) -> bool:
    """Whether the user may vote and write statements in the round (when it is open).

    Members take part in the rounds meant for their organisation, or in every round open to all
    organisations (a member without an organisation is an individual member). Staff
    (facilitators, leadership, admins) take part only as delegates of a member organisation:
    with no organisation they run or read rounds but never vote in them, so that no vote is
    counted for someone outside the coalition's membership.
    """
    if not user.is_active:
        return False
    if user.role != Role.MEMBER and user.organisation_id is None:
        return False
    return is_in_audience(user, round_)
