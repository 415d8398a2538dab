"""The integrity check: clean after real votes, and each kind of damage is found."""

from __future__ import annotations

from sqlalchemy import text

from deliberate.models import Role
from deliberate.services import voting
from deliberate.services.integrity import check_integrity


def _voted(db, factory):
    round_ = factory.round(statements=["One", "Two", "Three"])
    members = [factory.user(Role.MEMBER) for _ in range(3)]
    statements = [s.id for s in round_.statements]
    for i, member in enumerate(members):
        for j, statement_id in enumerate(statements):
            voting.cast_vote(member, statement_id, (i + j) % 3 - 1, round_id=round_.id)
    voting.cast_vote(members[0], statements[0], 1, round_id=round_.id)  # a change
    voting.cast_vote(members[0], statements[0], 1, round_id=round_.id)  # unchanged: no event
    return round_, members, statements


def test_real_votes_pass(db, factory):
    round_, _, _ = _voted(db, factory)
    report = check_integrity(round_.id)
    assert report.ok, report.summary()
    assert (report.votes, report.vote_events, report.statements) == (9, 10, 3)
    assert check_integrity().ok


def test_a_vote_that_disagrees_with_its_history_is_found(db, factory):
    round_, members, statements = _voted(db, factory)
    db.session.execute(
        text("UPDATE votes SET value = -value WHERE user_id = :u AND statement_id = :s"),
        {"u": members[0].id, "s": statements[0]},
    )
    db.session.commit()
    report = check_integrity(round_.id)
    assert report.problems == {"vote differs from its last event": 1}


def test_lost_vote_and_lost_history_are_found(db, factory):
    round_, members, statements = _voted(db, factory)
    db.session.execute(
        text("DELETE FROM votes WHERE user_id = :u AND statement_id = :s"),
        {"u": members[1].id, "s": statements[1]},
    )
    db.session.execute(
        text("DELETE FROM vote_events WHERE user_id = :u AND statement_id = :s"),
        {"u": members[2].id, "s": statements[2]},
    )
    db.session.commit()
    report = check_integrity(round_.id)
    assert report.problems["history without a vote"] == 1
    assert report.problems["vote without history"] == 1
    assert report.problems["statement vote count differs from its history"] == 2
    assert not report.ok
    assert "integrity FAILED" in report.summary()


def test_a_broken_history_chain_is_found(db, factory):
    round_, members, statements = _voted(db, factory)
    db.session.execute(
        text(
            "UPDATE vote_events SET previous_value = 0 WHERE id = "
            "(SELECT MAX(id) FROM vote_events WHERE user_id = :u AND statement_id = :s)"
        ),
        {"u": members[0].id, "s": statements[0]},
    )
    db.session.commit()
    report = check_integrity(round_.id)
    assert report.problems == {"history chain broken": 1}


def test_cli_exit_status(app, db, factory):
    round_, members, statements = _voted(db, factory)
    runner = app.test_cli_runner()
    ok = runner.invoke(args=["check-integrity", "--round", str(round_.id)])
    assert ok.exit_code == 0 and "integrity OK" in ok.output
    db.session.execute(text("DELETE FROM vote_events WHERE user_id = :u"), {"u": members[2].id})
    db.session.commit()
    bad = runner.invoke(args=["check-integrity", "--json"])
    assert bad.exit_code == 1 and '"ok": false' in bad.output
