"""The round report: content read from the snapshot, names, hiding, privacy, authorisation."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from deliberate.extensions import db
from deliberate.models import (
    AuditEvent,
    GroupName,
    Organisation,
    ResultsVisibility,
    Role,
    Round,
    RoundState,
    Snapshot,
    Statement,
    User,
    Vote,
)
from deliberate.services import voting
from deliberate.services.demo import FACILITATOR_EMAIL, LEADERSHIP_EMAIL, MEMBER_EMAIL, load_demo
from deliberate.services.errors import NotAllowed, NotFound, ValidationError
from deliberate.services.report import (
    NOT_ANALYSED,
    build_report,
    can_see_results,
    member_position,
    set_group_name,
    set_statement_hidden,
)
from deliberate.services.snapshots import latest_snapshot, refresh_snapshot

POLIS_FOLDER = (
    Path(__file__).resolve().parents[2]
    / ".."
    / "shared"
    / "data"
    / "polis-opendata"
    / "15-per-hour-seattle"
).resolve()


@pytest.fixture
def app_config(app_config):
    # A smaller bootstrap keeps the tests quick; the report only reads what it produced.
    app_config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 12}
    return app_config


def _user(email: str) -> User:
    return db.session.scalar(select(User).where(User.email == email))


@pytest.fixture
def demo(app):
    logins = load_demo()
    refresh_snapshot(logins.round_id, force=True)
    return logins


@pytest.fixture
def facilitator(demo):
    return _user(FACILITATOR_EMAIL)


@pytest.fixture
def leadership(demo):
    return _user(LEADERSHIP_EMAIL)


def _ids(items) -> list[int]:
    return [getattr(i, "statement", i).id for i in items]


# ------------------------------------------------------------------------------- content


def test_consensus_and_divisive_match_the_snapshot(demo, leadership):
    result = latest_snapshot(demo.round_id).result
    report = build_report(leadership, demo.round_id)
    assert report.analysed
    expected = [int(s) for s in result["consensus"]["agree"] + result["consensus"]["disagree"]]
    assert expected, "the demo has consensus statements"
    # The snapshot's consensus lists, in order, split into "in every group" and the rest.
    assert sorted(_ids(report.consensus) + _ids(report.majority_only)) == sorted(expected)
    assert _ids(report.consensus) == [i for i in expected if i in _ids(report.consensus)]
    assert report.consensus, "the demo has statements agreed in every group"

    def group_shares(statement_id, direction):
        out = []
        for g in result["groups"]:
            c = g["votes"].get(str(statement_id))
            if c and g["n_members"] >= 3 and c["seen"] >= 3:
                out.append(c[direction] / c["seen"])
        return out

    for c in report.consensus:
        assert all(share > 0.5 for share in group_shares(c.statement.id, c.direction))
    for c in report.majority_only:
        assert any(share <= 0.505 for share in group_shares(c.statement.id, c.direction))
    # Divisive: the snapshot's ranking, keeping only real splits between groups.
    divisive = _ids(report.divisive)
    assert divisive, "the demo's camps split on some statements"
    assert divisive == [int(s) for s in result["divisive"] if int(s) in divisive]
    for sid in result["divisive"]:
        shares = group_shares(sid, "agree")
        spread = max(shares) - min(shares) if len(shares) >= 2 else 0.0
        assert (int(sid) in divisive) == (spread >= 0.3 - 1e-9), (sid, spread)
    first = report.consensus[0]
    stats = result["statement_stats"][str(first.statement.id)]
    assert first.overall_pct == round(100 * stats["agree"] / stats["seen"])
    assert first.wording.startswith(f"agreed by {first.overall_pct}% overall, by at least ")
    assert first.wording.endswith(("; robust", "; tentative"))
    interval = result["stability"]["statements"][str(first.statement.id)]["agree_share"]
    assert first.robust == (interval[0] > 0.5)
    assert first.statement.gac == pytest.approx(
        result["group_informed_consensus"][str(first.statement.id)]
    )
    assert first.statement.bridging == pytest.approx(result["bridging"][str(first.statement.id)])


def test_headline_groups_and_statements(demo, leadership):
    result = latest_snapshot(demo.round_id).result
    report = build_report(leadership, demo.round_id)
    h = report.headline
    assert h.participants == result["participants"] == 60
    assert h.votes == result["n_votes"]
    assert h.groups == len(result["groups"]) == len(report.group_summaries)
    assert h.organisations_taking_part == h.organisations_in_audience == demo.organisations
    assert h.audience >= h.participants
    assert h.analysed_at is not None
    labels = [g.label for g in report.groups]
    assert labels == [f"Group {chr(65 + i)}" for i in range(len(labels))]
    for summary, group in zip(report.group_summaries, result["groups"], strict=True):
        assert summary.group.size == group["n_members"]
        assert _ids(summary.representative) == [e["statement"] for e in group["representative"]]
    assert len(report.statements) == result["statements"]
    # Uncertain: pass rate above 30%, nothing else.
    for s in report.statements:
        rate = s.overall.passes / s.overall.seen
        assert (s in report.uncertain) == (rate > 0.3)
    # Coverage: every organisation with how many of its members took part.
    assert sum(o.took_part or 0 for o in report.coverage) == h.participants  # all have one
    assert report.one_voice and report.one_voice_method.startswith("one organisation, one voice")
    assert _ids(report.one_voice_consensus) == [
        int(s) for s in result["organisations"]["consensus"]["agree"]
    ]
    assert len(report.map_text) == 1 + len(result["groups"])


@pytest.mark.parametrize("sort", ["consensus", "bridging", "divisiveness", "votes"])
def test_every_statement_sorts_server_side(demo, leadership, sort):
    report = build_report(leadership, demo.round_id, sort=sort)
    attr = {"consensus": "gac"}.get(sort, sort)
    values = [getattr(s, attr) for s in report.statements]
    present = [v for v in values if v is not None]
    assert present == sorted(present, reverse=True)
    assert values[: len(present)] == present  # statements without a value come last


def test_unknown_sort_is_refused(demo, leadership):
    with pytest.raises(ValidationError, match="Unknown sort"):
        build_report(leadership, demo.round_id, sort="text; drop table")


def test_report_before_any_analysis_says_so(factory):
    leader = factory.user(Role.LEADERSHIP)
    round_ = factory.round(statements=["One statement here"])
    report = build_report(leader, round_.id)
    assert not report.analysed
    assert report.message == NOT_ANALYSED
    assert report.consensus == [] and report.statements == []


# --------------------------------------------------------------------------- facilitators' edits


def test_groups_are_named_and_the_names_are_audited(demo, facilitator, leadership):
    set_group_name(facilitator, demo.round_id, 0, "  Rights   first ")
    report = build_report(leadership, demo.round_id)
    assert report.groups[0].label == "Rights first"
    assert report.groups[0].custom_name == "Rights first"
    assert report.map.groups[0].label == "Rights first"
    assert "Rights first, " in report.map_text[1]
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "report.group_name"))
    assert event.actor_id == facilitator.id and event.round_id == demo.round_id
    assert event.target_id == 0 and event.details["name"] == "Rights first"

    set_group_name(facilitator, demo.round_id, 0, "")
    assert build_report(leadership, demo.round_id).groups[0].label == "Group A"
    assert db.session.scalar(select(GroupName)) is None
    events = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "report.group_name")
    ).all()
    assert [e.details["name"] for e in events] == ["Rights first", None]


def test_naming_is_for_facilitators_and_checked(demo, facilitator, leadership):
    with pytest.raises(NotAllowed):
        set_group_name(leadership, demo.round_id, 0, "Nope")
    with pytest.raises(NotFound):
        set_group_name(facilitator, demo.round_id, 99, "No such group")
    with pytest.raises(ValidationError):
        set_group_name(facilitator, demo.round_id, 0, "x" * 81)
    assert db.session.scalar(select(GroupName)) is None
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.action.like("report.%"))) is None


def test_hidden_statements_disappear_everywhere_and_are_audited(demo, facilitator, leadership):
    result = latest_snapshot(demo.round_id).result
    target = int(result["consensus"]["agree"][0])
    divisive = int(result["divisive"][0])
    set_statement_hidden(facilitator, target, True)
    set_statement_hidden(facilitator, divisive, True)
    report = build_report(leadership, demo.round_id)
    for listed in (
        report.consensus,
        report.divisive,
        report.uncertain,
        report.statements,
        report.one_voice_consensus,
        [r for g in report.group_summaries for r in g.representative],
        [r.statement for r in report.one_voice],
    ):
        ids = _ids(listed)
        assert target not in ids and divisive not in ids
    assert report.hidden_count == 2
    assert report.hidden_statements == []  # leadership: only the count, in the method note
    facilitator_view = build_report(facilitator, demo.round_id)
    assert {s.id for s in facilitator_view.hidden_statements} == {target, divisive}
    assert facilitator_view.can_edit and not report.can_edit

    set_statement_hidden(facilitator, target, False)
    assert target in _ids(build_report(leadership, demo.round_id).consensus)
    actions = [
        (e.action, e.target_id)
        for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("report.%")).order_by(AuditEvent.id)
        )
    ]
    assert actions == [
        ("report.hide_statement", target),
        ("report.hide_statement", divisive),
        ("report.show_statement", target),
    ]


def test_hiding_is_for_facilitators(demo, leadership):
    statement_id = int(latest_snapshot(demo.round_id).result["divisive"][0])
    with pytest.raises(NotAllowed):
        set_statement_hidden(leadership, statement_id, True)
    with pytest.raises(NotFound):
        set_statement_hidden(_user(FACILITATOR_EMAIL), 10**9, True)
    assert not db.session.get(Statement, statement_id).hidden_in_report


# ------------------------------------------------------------------------------- privacy


def _crafted_round(factory):
    """A round whose snapshot has a group of 2 and an organisation with 2 participants."""
    big, small = factory.organisation("Big Org"), factory.organisation("Small Org")
    members = [factory.user(Role.MEMBER, organisation=big) for _ in range(5)]
    members += [factory.user(Role.MEMBER, organisation=small) for _ in range(2)]
    round_ = factory.round(statements=["Shared statement", "Split statement", "Rare statement"])
    s1, s2, s3 = (s.id for s in round_.statements)
    ids = [m.id for m in members]

    def counts(a, d, p):
        return {"agree": a, "disagree": d, "pass": p, "seen": a + d + p}

    result = {
        "participants": 7,
        "statements": 3,
        "n_votes": 16,
        "in_conversation": ids,
        "user_vote_counts": {str(i): 2 for i in ids},
        "projections": {str(i): [float(n), float(n % 3)] for n, i in enumerate(ids)},
        "k": 2,
        "groups": [
            {
                "id": 0,
                "members": ids[:5],
                "n_members": 5,
                "center": [1.0, 1.0],
                "representative": [{"statement": s1, "direction": "agree", "p_success": 0.8}],
                "votes": {str(s1): counts(4, 1, 0), str(s2): counts(1, 4, 0)},
            },
            {
                "id": 1,
                "members": ids[5:],
                "n_members": 2,
                "center": [5.0, 1.0],
                "representative": [{"statement": s2, "direction": "agree", "p_success": 1.0}],
                "votes": {str(s1): counts(2, 0, 0), str(s2): counts(2, 0, 0)},
            },
        ],
        "statement_stats": {
            str(s1): counts(6, 1, 0),
            str(s2): counts(3, 4, 0),
            str(s3): counts(1, 0, 1),
        },
        "consensus": {"agree": [s1], "disagree": []},
        "group_informed_consensus": {str(s1): 0.6, str(s2): 0.1, str(s3): 0.2},
        "bridging": {str(s1): 0.9, str(s2): 0.2, str(s3): 0.5},
        "divisive": [s2],
        "divisiveness": {str(s2): 0.8},
        "stability": None,
        "organisations": {
            "method": "one organisation, one voice: test",
            "organisations": {str(big.id): {"members": 5}, str(small.id): {"members": 2}},
            "one_voice": {
                str(s1): {"agree": 2.0, "disagree": 0.0, "pass": 0.0, "voices": 2},
                str(s2): {"agree": 1.0, "disagree": 2.0, "pass": 0.0, "voices": 3},
            },
            "consensus": {"agree": [], "disagree": []},
        },
    }
    db.session.add(Snapshot(round_id=round_.id, vote_watermark=1, n_votes=16, result=result))
    db.session.commit()
    return round_, (s1, s2, s3), big, small


def test_small_cells_are_suppressed(factory):
    leader = factory.user(Role.LEADERSHIP)
    round_, (s1, s2, s3), big, small = _crafted_round(factory)
    report = build_report(leader, round_.id)
    big_group, small_group = report.groups
    assert not big_group.small and big_group.size_text == "5"
    assert small_group.small and small_group.size_text == "fewer than 3"
    rows = {s.id: s for s in report.statements}
    for statement in rows.values():
        shares = {g.id: sh for g, sh in statement.by_group}
        assert shares[1].suppressed and shares[1].agree is None and shares[1].agree_pct is None
    assert not {g.id: sh for g, sh in rows[s1].by_group}[0].suppressed
    # A statement seen by only 2 people shows no split at all.
    assert rows[s3].overall.suppressed and rows[s3].overall.agree_pct is None
    assert s3 not in _ids(report.uncertain)
    # The small group's representative statements are not shown.
    assert report.group_summaries[1].representative == []
    assert _ids(report.group_summaries[0].representative) == [s1]
    # Consensus "in every group" only counts groups that may be shown.
    assert report.consensus[0].min_group_pct == 80
    # Organisations: fewer than 3 participants, or fewer than 3 voices, are suppressed.
    coverage = {o.name: o for o in report.coverage}
    assert coverage["Big Org"].took_part == 5
    assert coverage["Small Org"].took_part is None
    assert coverage["Small Org"].took_part_text == "fewer than 3"
    one_voice = {r.statement.id: r for r in report.one_voice}
    assert one_voice[s1].one_voice_pct is None and one_voice[s1].voices is None
    assert one_voice[s2].one_voice_pct == 33 and one_voice[s2].voices == 3
    # The map labels the small group without a count.
    assert "fewer than 3 members" in report.map_text[2]


# ------------------------------------------------------------------------------- authorisation


def _voter(result) -> User:
    """A simulated demo member who voted on at least 7 statements."""
    counts = result["user_vote_counts"]
    for group in result["groups"]:
        for pid in group["members"]:
            user = db.session.get(User, int(pid))
            if counts[str(pid)] >= 7 and user.role == Role.MEMBER:
                return user
    raise AssertionError("no voter")


def test_member_sees_results_after_voting_enough(demo):
    round_id = demo.round_id
    member = _user(MEMBER_EMAIL)  # Sam has not voted yet
    with pytest.raises(NotAllowed, match="after they have voted on 7 statements"):
        build_report(member, round_id)
    with pytest.raises(NotAllowed):
        member_position(member, round_id)
    statements = db.session.scalars(
        select(Statement).where(
            Statement.round_id == round_id, Statement.moderation_state == "accepted"
        )
    ).all()
    for statement in statements[:6]:
        voting.cast_vote(member, statement.id, 1, round_id=round_id)
    assert not can_see_results(member, db.session.get(Round, round_id))
    voting.cast_vote(member, statements[6].id, -1, round_id=round_id)
    report = build_report(member, round_id)
    assert report.is_member_view and not report.can_edit
    assert report.coverage  # organisations' turnout is aggregate, members may see it
    # Sam's votes are newer than the snapshot: he is not on the map yet, and is told why.
    assert report.you is not None and not report.you.on_map
    assert "not on the map yet" in report.you.message


def test_member_position_is_their_own(demo):
    result = latest_snapshot(demo.round_id).result
    voter = _voter(result)
    position = member_position(voter, demo.round_id)
    group = next(g for g in result["groups"] if voter.id in g["members"])
    assert position.on_map and position.group.id == group["id"]
    assert position.votes == result["user_vote_counts"][str(voter.id)]
    assert position.message.startswith(f"You are in {position.group.label}")
    report = build_report(voter, demo.round_id)
    assert report.map.you is not None
    assert report.you.group.id == group["id"]
    assert any(line.startswith("You are in ") for line in report.map_text)
    # Leadership's map has no "you are here".
    assert build_report(_user(LEADERSHIP_EMAIL), demo.round_id).map.you is None


@pytest.mark.parametrize(
    ("setting", "state", "allowed"),
    [
        (ResultsVisibility.AFTER_CLOSE, RoundState.OPEN, False),
        (ResultsVisibility.AFTER_CLOSE, RoundState.CLOSED, True),
        (ResultsVisibility.AFTER_CLOSE, RoundState.PUBLISHED, True),
        (ResultsVisibility.NEVER, RoundState.OPEN, False),
        (ResultsVisibility.NEVER, RoundState.PUBLISHED, False),
        (ResultsVisibility.AFTER_VOTING, RoundState.CLOSED, True),
    ],
)
def test_member_access_follows_the_results_setting(demo, setting, state, allowed):
    round_ = db.session.get(Round, demo.round_id)
    round_.results_visibility = setting.value
    round_.state = state.value
    db.session.commit()
    voter = _voter(latest_snapshot(demo.round_id).result)
    if allowed:
        assert build_report(voter, demo.round_id).analysed
        assert can_see_results(voter, round_)
    else:
        with pytest.raises(NotAllowed) as caught:
            build_report(voter, demo.round_id)
        assert "results of this round" in caught.value.message
        assert not can_see_results(voter, round_)
    # Staff always may.
    for email in (FACILITATOR_EMAIL, LEADERSHIP_EMAIL):
        assert build_report(_user(email), demo.round_id).analysed


def test_member_of_another_audience_gets_not_found(factory, demo):
    other = factory.organisation("Elsewhere")
    outsider = factory.user(Role.MEMBER, organisation=other)
    round_ = db.session.get(Round, demo.round_id)
    round_.organisations = [o for o in db.session.scalars(select(Organisation)) if o.id != other.id]
    db.session.commit()
    with pytest.raises(NotFound):
        build_report(outsider, demo.round_id)
    with pytest.raises(NotAllowed):
        build_report(None, demo.round_id)
    assert db.session.scalar(select(Vote).where(Vote.user_id == outsider.id)) is None


# ------------------------------------------------------------------------------- Pol.is import


@pytest.mark.skipif(not POLIS_FOLDER.is_dir(), reason=f"{POLIS_FOLDER} is absent")
def test_imported_polis_conversation_report_matches_the_snapshot(factory):
    from deliberate.services.polis_import import import_polis_folder

    leader = factory.user(Role.LEADERSHIP)
    round_ = import_polis_folder(None, POLIS_FOLDER)
    refresh_snapshot(round_.id, force=True)
    result = latest_snapshot(round_.id).result
    report = build_report(leader, round_.id)
    assert report.analysed
    hidden = {s.id for s in round_.statements if s.hidden_in_report}
    expected = [
        int(s)
        for s in result["consensus"]["agree"] + result["consensus"]["disagree"]
        if int(s) not in hidden
    ]
    assert sorted(_ids(report.consensus) + _ids(report.majority_only)) == sorted(expected)
    assert all(c.in_every_group for c in report.consensus)
    ranked = [int(s) for s in result["divisive"] if int(s) not in hidden]
    divisive = _ids(report.divisive)
    assert divisive == [i for i in ranked if i in divisive]
    assert report.divisive, "the Seattle conversation has divisive statements"
    assert report.headline.participants == result["participants"]
    assert report.headline.groups == len(result["groups"]) >= 2
    assert len(report.map_text) == 1 + len(result["groups"])
