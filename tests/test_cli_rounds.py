"""CLI: create-round (with seeds, open), open-round, close-round, tick."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from deliberate.cli import rounds as rounds_cli
from deliberate.models import AuditEvent, Role, Round, RoundState, Statement, utcnow


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def admin(factory):
    return factory.user(Role.ADMIN)


def test_create_round_with_seed_file_and_open(runner, db, admin, tmp_path):
    seeds = tmp_path / "seeds.txt"
    seeds.write_text(
        "Share legal aid resources.\nHost welcome events.\nshare LEGAL aid resources.\n\n",
        encoding="utf-8",
    )
    result = runner.invoke(
        rounds_cli.create_round_command,
        [
            "--question",
            "What should we campaign for?",
            "--seed-file",
            str(seeds),
            "--open",
            "--moderation",
            "post",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Added 2 seed statements." in result.output
    assert "skipped (duplicate): share LEGAL aid resources." in result.output
    round_ = db.session.scalar(select(Round))
    assert round_.state == RoundState.OPEN and round_.moderation == "post"
    assert len(db.session.scalars(select(Statement)).all()) == 2
    actions = list(db.session.scalars(select(AuditEvent.action).order_by(AuditEvent.id)))
    assert actions == ["round.create", "statement.seed", "round.open"]
    assert {e.actor_id for e in db.session.scalars(select(AuditEvent))} == {admin.id}


def test_create_round_as_named_facilitator(runner, db, admin, factory):
    facilitator = factory.user(Role.FACILITATOR, email="fac@example.org")
    result = runner.invoke(
        rounds_cli.create_round_command,
        ["--question", "What should we campaign for?", "--by", "FAC@example.org"],
    )
    assert result.exit_code == 0, result.output
    assert db.session.scalar(select(Round)).created_by_id == facilitator.id


def test_create_round_refuses_members_and_bad_input(runner, db, admin, factory):
    factory.user(Role.MEMBER, email="member@example.org")
    result = runner.invoke(
        rounds_cli.create_round_command,
        ["--question", "What should we campaign for?", "--by", "member@example.org"],
    )
    assert result.exit_code != 0 and "not an active facilitator" in result.output
    result = runner.invoke(rounds_cli.create_round_command, ["--question", "Hm?"])
    assert result.exit_code != 0 and "at least 5 characters" in result.output
    result = runner.invoke(
        rounds_cli.create_round_command,
        ["--question", "What should we campaign for?", "--opens-at", "soon"],
    )
    assert result.exit_code != 0 and "ISO 8601" in result.output
    assert db.session.scalars(select(Round)).all() == []


def test_commands_need_an_acting_account(runner, db):
    result = runner.invoke(rounds_cli.create_round_command, ["--question", "A fine question?"])
    assert result.exit_code != 0 and "no active admin" in result.output


def test_open_and_close_round(runner, db, admin, factory):
    round_ = factory.round(state=RoundState.DRAFT)
    result = runner.invoke(rounds_cli.open_round_command, [str(round_.id)])
    assert result.exit_code == 0 and f"Round {round_.id} is open." in result.output
    result = runner.invoke(rounds_cli.open_round_command, [str(round_.id)])
    assert result.exit_code != 0 and "only a draft round can be opened" in result.output
    result = runner.invoke(rounds_cli.close_round_command, [str(round_.id)])
    assert result.exit_code == 0, result.output
    db.session.expire_all()
    assert db.session.get(Round, round_.id).state == RoundState.CLOSED
    result = runner.invoke(rounds_cli.close_round_command, ["424242"])
    assert result.exit_code != 0 and "No such round" in result.output


def test_tick_applies_schedules(runner, db, factory):
    now = utcnow()
    due = factory.round(state=RoundState.DRAFT, opens_at=now - timedelta(minutes=5))
    ending = factory.round(state=RoundState.OPEN, closes_at=now - timedelta(minutes=1))
    result = runner.invoke(rounds_cli.tick_command, [])
    assert result.exit_code == 0, result.output
    assert f"Round {due.id} is now open" in result.output
    assert f"Round {ending.id} is now closed" in result.output
    db.session.expire_all()
    assert db.session.get(Round, due.id).state == RoundState.OPEN
    assert db.session.get(Round, ending.id).state == RoundState.CLOSED
    assert runner.invoke(rounds_cli.tick_command, []).output == ""


def test_commands_list_is_exported():
    names = {c.name for c in rounds_cli.commands}
    assert names == {"create-round", "open-round", "close-round", "tick", "check-integrity"}
