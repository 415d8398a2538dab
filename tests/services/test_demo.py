"""The demo coalition: deterministic, the right size, with camps the analysis can find."""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations

import pytest
from sqlalchemy import func, select

from deliberate import create_app
from deliberate.extensions import db as _db
from deliberate.models import (
    Organisation,
    Role,
    Round,
    RoundState,
    Statement,
    StatementState,
    User,
    Vote,
    VoteEvent,
)
from deliberate.services import demo
from deliberate.services.errors import Conflict
from deliberate.services.passwords import verify_password
from tests.conftest import make_config


@pytest.fixture
def loaded(app, db):
    return demo.load_demo()


def _open_round(db) -> Round:
    return db.session.scalars(select(Round).where(Round.state == RoundState.OPEN)).one()


def _snapshot(db) -> tuple[list, list, list]:
    """Everything that must be equal between two loads (ids and timestamps aside)."""
    users = sorted(
        (u.email, u.name, u.role, u.organisation.name if u.organisation else None)
        for u in db.session.scalars(select(User))
    )
    statements = sorted(
        (
            s.round.question,
            s.text,
            s.origin,
            s.moderation_state,
            s.author.email if s.author else None,
        )
        for s in db.session.scalars(select(Statement))
    )
    votes = sorted(
        db.session.execute(
            select(User.email, Statement.text, Vote.value)
            .join(User, User.id == Vote.user_id)
            .join(Statement, Statement.id == Vote.statement_id)
        ).all()
    )
    return users, statements, votes


def test_two_loads_into_fresh_databases_are_identical(tmp_path, new_database_url):
    snapshots = []
    for name in ("one", "two"):
        app = create_app(make_config(tmp_path / name, new_database_url()))
        with app.app_context():
            demo.load_demo()
            snapshots.append(_snapshot(_db))
            _db.session.remove()
            _db.engine.dispose()
    assert snapshots[0] == snapshots[1]
    assert len(snapshots[0][2]) > 1000


def test_another_seed_gives_other_votes(tmp_path, new_database_url):
    votes = []
    for seed in (1, 2):
        app = create_app(make_config(tmp_path / f"s{seed}", new_database_url()))
        with app.app_context():
            demo.load_demo(seed=seed)
            votes.append(_snapshot(_db)[2])
            _db.session.remove()
            _db.engine.dispose()
    assert votes[0] != votes[1]


def test_sizes_are_within_the_stated_ranges(db, loaded):
    assert 10 <= db.session.scalar(select(func.count()).select_from(Organisation)) <= 14
    members = db.session.scalar(
        select(func.count()).select_from(User).where(User.role == Role.MEMBER)
    )
    assert 50 <= members <= 70
    assert loaded.members == members
    for role in (Role.FACILITATOR, Role.LEADERSHIP, Role.ADMIN):
        assert (
            db.session.scalar(select(func.count()).select_from(User).where(User.role == role)) == 1
        )
    round_ = _open_round(db)
    assert round_.question == "What should our joint campaign for refugee welcome ask for?"
    assert round_.context.strip()
    accepted = [s for s in round_.statements if s.moderation_state == StatementState.ACCEPTED]
    pending = [s for s in round_.statements if s.moderation_state == StatementState.PENDING]
    assert 35 <= len(accepted) <= 45
    assert 1 <= len(pending) <= 4
    assert all(s.author is not None and s.author.role == Role.MEMBER for s in pending)
    # Every member voted on 50-90% of the statements (minus any they wrote), give or take chance.
    per_user = dict(
        db.session.execute(
            select(Vote.user_id, func.count())
            .where(Vote.round_id == round_.id)
            .group_by(Vote.user_id)
        ).all()
    )
    assert len(per_user) == members - 1  # everybody but the demo member
    for count in per_user.values():
        assert 0.3 * len(accepted) <= count <= len(accepted)
    assert sum(per_user.values()) == loaded.votes
    # No votes on pending statements, none by authors on their own statement.
    assert not db.session.scalar(
        select(func.count())
        .select_from(Vote)
        .join(Statement, Statement.id == Vote.statement_id)
        .where((Statement.moderation_state != "accepted") | (Statement.author_id == Vote.user_id))
    )
    # Each organisation has members; the earlier round is closed.
    for org in db.session.scalars(select(Organisation)):
        assert len(org.members) >= 3
    assert (
        db.session.scalar(
            select(func.count()).select_from(Round).where(Round.state == RoundState.CLOSED)
        )
        == 1
    )


def test_every_vote_has_a_matching_event(db, loaded):
    votes = set(db.session.execute(select(Vote.statement_id, Vote.user_id, Vote.value)).all())
    events = db.session.execute(
        select(VoteEvent.statement_id, VoteEvent.user_id, VoteEvent.value, VoteEvent.previous_value)
    ).all()
    assert len(events) == len(votes)
    assert {(s, u, v) for s, u, v, _prev in events} == votes
    assert all(prev is None for *_rest, prev in events)


def test_the_camps_are_recoverable_from_the_votes(db, loaded):
    round_ = _open_round(db)
    ballots: dict[str, dict[int, int]] = defaultdict(dict)
    for email, statement_id, value in db.session.execute(
        select(User.email, Vote.statement_id, Vote.value)
        .join(User, User.id == Vote.user_id)
        .where(Vote.round_id == round_.id)
    ):
        ballots[email][statement_id] = value

    def agreement(a: dict[int, int], b: dict[int, int]) -> float:
        shared = [s for s in a if s in b and a[s] != 0 and b[s] != 0]
        return sum(a[s] == b[s] for s in shared) / len(shared)

    camps = loaded.camp_by_email
    assert len(set(camps.values())) in (3, 4)
    within, across = [], []
    for x, y in combinations(sorted(ballots), 2):
        (within if camps[x] == camps[y] else across).append(agreement(ballots[x], ballots[y]))
    mean_within, mean_across = sum(within) / len(within), sum(across) / len(across)
    assert mean_within > mean_across + 0.1, (mean_within, mean_across)
    # And there is common ground: some statements nearly everyone agrees with.
    agree_share = defaultdict(list)
    for ballot in ballots.values():
        for statement_id, value in ballot.items():
            agree_share[statement_id].append(value == 1)
    consensus = [s for s, v in agree_share.items() if sum(v) / len(v) > 0.75]
    assert len(consensus) >= 3


def test_demo_member_can_log_in_and_has_not_voted(db, loaded):
    member = db.session.scalars(select(User).where(User.email == demo.MEMBER_EMAIL)).one()
    assert member.role == Role.MEMBER and member.organisation is not None
    assert verify_password(member.password_hash, "demo-member-pass")
    assert not db.session.scalar(
        select(func.count()).select_from(Vote).where(Vote.user_id == member.id)
    )
    for login in loaded.logins:
        user = db.session.scalars(select(User).where(User.email == login.email)).one()
        assert user.role == login.role
        assert verify_password(user.password_hash, login.password)
    assert {login.role for login in loaded.logins} == {
        "member",
        "facilitator",
        "leadership",
        "admin",
    }


def test_is_empty_and_demo_is_loaded(db):
    assert demo.is_empty() and not demo.demo_is_loaded()
    demo.load_demo()
    assert not demo.is_empty() and demo.demo_is_loaded()


def test_refuses_a_database_that_has_users(db, factory):
    factory.user(Role.ADMIN)
    with pytest.raises(Conflict):
        demo.load_demo()
    assert db.session.scalar(select(func.count()).select_from(User)) == 1
    assert not db.session.scalar(select(func.count()).select_from(Round))


def test_cli_demo_loads_then_skips_with_if_empty(app, db):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["demo", "--if-empty"])
    assert result.exit_code == 0, result.output
    assert "member@demo.deliberate.example" in result.output
    assert "demo-member-pass" in result.output
    votes = db.session.scalar(select(func.count()).select_from(Vote))
    assert votes > 1000

    again = runner.invoke(args=["demo", "--if-empty"])
    assert again.exit_code == 0, again.output
    assert "Database already has data; demo not loaded." in again.output
    assert "demo-facilitator-pass" in again.output
    assert db.session.scalar(select(func.count()).select_from(Vote)) == votes

    refused = runner.invoke(args=["demo"])
    assert refused.exit_code != 0
    assert "already has users" in refused.output


def test_cli_if_empty_on_a_non_demo_database_prints_no_logins(app, factory):
    factory.user(Role.ADMIN)
    result = app.test_cli_runner().invoke(args=["demo", "--if-empty"])
    assert result.exit_code == 0
    assert "demo not loaded" in result.output
    assert "demo-member-pass" not in result.output
