"""Who takes part in a round: members of its audience (or individual members in rounds open to
all), and staff only as delegates of a member organisation."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from deliberate.models import Role, Statement, Vote
from deliberate.services import voting
from deliberate.services.authz import can_participate
from deliberate.services.errors import NotAllowed


def first_statement(db, round_) -> int:
    return db.session.scalar(
        select(Statement.id).where(Statement.round_id == round_.id).order_by(Statement.id)
    )


@pytest.mark.parametrize("role", [Role.FACILITATOR, Role.LEADERSHIP, Role.ADMIN])
def test_staff_without_an_organisation_do_not_vote(db, factory, role):
    round_ = factory.round(statements=["Housing first"])
    statement_id = first_statement(db, round_)
    staff = factory.user(role)
    assert not can_participate(staff, round_)
    with pytest.raises(NotAllowed):
        voting.cast_vote(staff, statement_id, 1)
    page = voting.voting_page(staff, round_.id)
    assert not page.can_vote and not page.can_write
    assert db.session.scalar(select(func.count()).select_from(Vote)) == 0


@pytest.mark.parametrize("role", [Role.FACILITATOR, Role.LEADERSHIP, Role.ADMIN])
def test_staff_who_are_delegates_vote_in_their_organisations_rounds(db, factory, role):
    north, south = factory.organisation("North"), factory.organisation("South")
    for_all = factory.round(statements=["Housing first"])
    for_south = factory.round(statements=["Legal aid"])
    for_south.organisations = [south]
    db.session.commit()
    delegate = factory.user(role, organisation=north)
    assert can_participate(delegate, for_all) and not can_participate(delegate, for_south)
    voting.cast_vote(delegate, first_statement(db, for_all), 1)
    with pytest.raises(NotAllowed):
        voting.cast_vote(delegate, first_statement(db, for_south), 1)
    assert db.session.scalar(select(func.count()).select_from(Vote)) == 1


def test_members_without_an_organisation_vote_in_rounds_open_to_all(db, factory):
    round_ = factory.round(statements=["Housing first"])
    individual = factory.user(Role.MEMBER)
    assert can_participate(individual, round_)
    voting.cast_vote(individual, first_statement(db, round_), -1)
    assert db.session.scalar(select(func.count()).select_from(Vote)) == 1
