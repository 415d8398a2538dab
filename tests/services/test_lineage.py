"""Rounds over time: carrying statements forward, lineage, and comparing two rounds."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from deliberate.models import (
    AuditEvent,
    GroupName,
    Role,
    Round,
    RoundState,
    Snapshot,
    Statement,
)
from deliberate.services import lineage, voting
from deliberate.services.errors import NotAllowed, NotFound, ValidationError
from deliberate.services.lineage import (
    AWAY,
    LITTLE,
    TOWARDS,
    UNKNOWN,
    carry_forward,
    classify,
    compare_rounds,
    statement_lineage,
)
from deliberate.services.snapshots import refresh_snapshot

TEXTS = ["Housing first", "Cheaper buses", "More parks", "Fewer cars"]


# --- helpers ---------------------------------------------------------------------------------


def counts(db) -> tuple[int, int, int]:
    """(rounds, statements, audit events) as committed."""
    db.session.rollback()
    return (
        db.session.scalar(select(func.count()).select_from(Round)),
        db.session.scalar(select(func.count()).select_from(Statement)),
        db.session.scalar(select(func.count()).select_from(AuditEvent)),
    )


def by_text(round_: Round, text: str) -> Statement:
    return next(s for s in round_.statements if s.text == text)


def add_statement(db, round_: Round, text: str, state: str = "accepted", **fields) -> Statement:
    statement = Statement(
        round_id=round_.id,
        text=text,
        normalised_text=" ".join(text.lower().split()),
        origin=fields.pop("origin", "seed"),
        moderation_state=state,
        **fields,
    )
    db.session.add(statement)
    db.session.commit()
    return statement


def stats(agree: int, disagree: int, passes: int = 0) -> dict:
    return {"agree": agree, "disagree": disagree, "pass": passes, "seen": agree + disagree + passes}


def make_result(figures: dict[int, dict], groups: list[dict] | None = None, k: int = 2) -> dict:
    """A snapshot result shaped like AnalysisResult.to_dict(), with only the keys read here.

    figures: {statement id: {"stats": stats(...), "bridging": b, "gac": g}}
    groups: [{"id": 0, "n_members": 5, "votes": {statement id: stats(...)}}]
    """
    return {
        "k": k,
        "statement_stats": {str(s): f["stats"] for s, f in figures.items()},
        "bridging": {str(s): f["bridging"] for s, f in figures.items()},
        "group_informed_consensus": {str(s): f["gac"] for s, f in figures.items()},
        "groups": [
            {
                "id": g["id"],
                "members": [],
                "n_members": g["n_members"],
                "votes": {str(s): v for s, v in g["votes"].items()},
            }
            for g in (groups or [])
        ],
    }


def add_snapshot(db, round_: Round, result: dict) -> Snapshot:
    snapshot = Snapshot(round_id=round_.id, result=result, n_votes=1, vote_watermark=1)
    db.session.add(snapshot)
    db.session.commit()
    return snapshot


@pytest.fixture
def org(factory):
    return factory.organisation("Tenants United")


@pytest.fixture
def leadership(factory):
    return factory.user(Role.LEADERSHIP)


@pytest.fixture
def source(db, factory, org):
    """A closed round with four accepted statements, one rejected and one pending."""
    round_ = factory.round(
        state=RoundState.CLOSED,
        question="How should the city spend its transport budget?",
        statements=TEXTS,
        context="Round one context",
        moderation="post",
        results_visibility="never",
        statement_max_length=300,
        author_display="organisation",
        allow_member_statements=False,
    )
    round_.organisations = [org]
    db.session.commit()
    add_statement(db, round_, "Rejected idea", "rejected", origin="member")
    add_statement(db, round_, "Pending idea", "pending", origin="member")
    return round_


# --- carrying forward --------------------------------------------------------------------------


def test_carry_forward_copies_only_the_chosen_statements_with_lineage(db, source, facilitator, org):
    chosen = [by_text(source, "Housing first"), by_text(source, "More parks")]
    new = carry_forward(
        facilitator,
        source.id,
        [s.id for s in chosen],
        question="  How should the city spend  next year's budget? ",
        context="What changed",
    )
    db.session.expire_all()
    new = db.session.get(Round, new.id)
    assert new.state == RoundState.DRAFT
    assert new.previous_round_id == source.id
    assert new.question == "How should the city spend next year's budget?"
    assert new.context == "What changed"
    assert new.created_by_id == facilitator.id
    # The settings of the earlier round are copied.
    assert (new.moderation, new.results_visibility, new.statement_max_length) == (
        "post",
        "never",
        300,
    )
    assert new.author_display == "organisation"
    assert new.allow_member_statements is False
    assert [o.id for o in new.organisations] == [org.id]
    assert new.opens_at is None and new.closes_at is None

    assert sorted(s.text for s in new.statements) == ["Housing first", "More parks"]
    for statement in new.statements:
        original = by_text(source, statement.text)
        assert statement.carried_from_id == original.id
        assert statement.origin == "carried"
        assert statement.moderation_state == "accepted"
        assert statement.moderated_by_id == facilitator.id
        assert statement.normalised_text == original.normalised_text
    # The earlier round is untouched.
    assert len(db.session.get(Round, source.id).statements) == 6


def test_carry_forward_is_audited_with_counts(db, source, facilitator):
    chosen = [by_text(source, "Cheaper buses").id]
    new = carry_forward(facilitator, source.id, chosen, question="The next question?")
    event = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "round.carry_forward")
    ).one()
    assert event.actor_id == facilitator.id
    assert event.round_id == new.id
    assert event.target_id == new.id
    assert event.details["from_round_id"] == source.id
    assert event.details["carried"] == 1
    assert event.details["offered"] == 4  # the accepted statements of the earlier round
    assert event.details["statement_ids"] == chosen


def test_carry_forward_may_override_settings(db, source, facilitator):
    new = carry_forward(
        facilitator,
        source.id,
        [],
        question="A fresh question?",
        results_visibility="after_close",
        organisation_ids=[],
    )
    assert new.results_visibility == "after_close"
    assert new.organisations == []
    assert new.moderation == "post"  # not overridden: copied
    assert new.statements == []


def test_duplicate_ids_are_carried_once(db, source, facilitator):
    sid = by_text(source, "More parks").id
    new = carry_forward(facilitator, source.id, [sid, sid], question="Next question?")
    assert len(new.statements) == 1


@pytest.mark.parametrize("which", ["rejected", "pending", "other round", "unknown", "not an id"])
def test_only_accepted_statements_of_the_round_can_be_carried(
    db, factory, source, facilitator, which
):
    other = factory.round(statements=["Elsewhere"])
    ids = {
        "rejected": by_text(source, "Rejected idea").id,
        "pending": by_text(source, "Pending idea").id,
        "other round": other.statements[0].id,
        "unknown": 999_999,
        "not an id": "3",
    }
    before = counts(db)
    with pytest.raises(ValidationError):
        carry_forward(
            facilitator,
            source.id,
            [by_text(source, "More parks").id, ids[which]],
            question="Next question?",
        )
    assert counts(db) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"question": "Hm"}, "at least"),
        ({"question": "Fine question?", "moderation": "sometimes"}, "Moderation"),
        ({"question": "Fine question?", "colour": "red"}, "Unknown setting"),
    ],
)
def test_bad_settings_write_nothing(db, source, facilitator, kwargs, message):
    before = counts(db)
    with pytest.raises(ValidationError, match=message):
        carry_forward(facilitator, source.id, [by_text(source, "Housing first").id], **kwargs)
    assert counts(db) == before


def test_statements_longer_than_the_new_limit_are_refused(db, source, facilitator):
    long = add_statement(db, source, "A statement that is rather longer than twenty characters")
    before = counts(db)
    with pytest.raises(ValidationError, match="longer than"):
        carry_forward(
            facilitator, source.id, [long.id], question="Fine question?", statement_max_length=20
        )
    assert counts(db) == before


def test_only_facilitators_carry_forward(db, source, member, leadership):
    before = counts(db)
    for user in (member, leadership, None):
        with pytest.raises(NotAllowed):
            carry_forward(user, source.id, [], question="Next question?")
    assert counts(db) == before


def test_carry_forward_from_an_unknown_round(facilitator):
    with pytest.raises(NotFound):
        carry_forward(facilitator, 999_999, [], question="Next question?")


def test_lineage_follows_carried_statements_back(db, source, facilitator):
    first = by_text(source, "Housing first")
    second_round = carry_forward(facilitator, source.id, [first.id], question="Round two?")
    second = second_round.statements[0]
    third_round = carry_forward(facilitator, second_round.id, [second.id], question="Round three?")
    third = third_round.statements[0]
    assert [s.id for s in statement_lineage(third)] == [third.id, second.id, first.id]
    assert [s.id for s in statement_lineage(first)] == [first.id]


def test_carry_forward_options_preselect_high_bridging(db, source, facilitator, leadership):
    high, low, thin = (by_text(source, t) for t in ("Housing first", "Cheaper buses", "More parks"))
    add_snapshot(
        db,
        source,
        make_result(
            {
                high.id: {"stats": stats(9, 1), "bridging": 0.8, "gac": 0.64},
                low.id: {"stats": stats(4, 6), "bridging": 0.4, "gac": 0.16},
                thin.id: {"stats": stats(2, 0), "bridging": 0.9, "gac": 0.81},
            }
        ),
    )
    plan = lineage.carry_forward_options(facilitator, source.id)
    options = {o.statement.text: o for o in plan.options}
    assert set(options) == set(TEXTS)  # accepted only
    assert options["Housing first"].preselected
    assert not options["Cheaper buses"].preselected
    # Seen by fewer than 3: no figures, so not preselected either.
    assert options["More parks"].agree.suppressed and options["More parks"].bridging is None
    assert not options["More parks"].preselected
    assert options["Housing first"].agree.value == 9 and options["Housing first"].agree.base == 10
    with pytest.raises(NotAllowed):
        lineage.carry_forward_options(leadership, source.id)


# --- comparing -------------------------------------------------------------------------------


@pytest.fixture
def two_rounds(db, factory, source, facilitator):
    """Round B carries three statements of A; one is corrected after; one is seeded by text."""
    ids = [by_text(source, t).id for t in ("Housing first", "Cheaper buses", "More parks")]
    b = carry_forward(facilitator, source.id, ids, question="Round two?")
    # A facilitator corrects one carried statement: the lineage still matches it.
    corrected = by_text(b, "More parks")
    corrected.text = "More parks and trees"
    corrected.normalised_text = "more parks and trees"
    # Written again by hand in round B (case differs): matched by its text.
    add_statement(db, b, "FEWER   cars")
    add_statement(db, b, "Brand new idea")
    db.session.commit()
    return source, b


def test_comparison_matches_by_lineage_then_text(db, two_rounds, facilitator):
    a, b = two_rounds
    comparison = compare_rounds(facilitator, a.id, b.id)
    matched = {(m.a.statement.text, m.b.statement.text): m.matched_by for m in comparison.matched}
    assert matched == {
        ("Housing first", "Housing first"): "lineage",
        ("Cheaper buses", "Cheaper buses"): "lineage",
        ("More parks", "More parks and trees"): "lineage",
        ("Fewer cars", "FEWER   cars"): "text",
    }
    assert [f.statement.text for f in comparison.only_a] == []
    assert [f.statement.text for f in comparison.only_b] == ["Brand new idea"]
    # Either order works: B descends from A, or A is the ancestor of B.
    reverse = compare_rounds(facilitator, b.id, a.id)
    assert {(m.b.statement.text, m.matched_by) for m in reverse.matched} == {
        ("Housing first", "lineage"),
        ("Cheaper buses", "lineage"),
        ("More parks", "lineage"),
        ("Fewer cars", "text"),
    }


def test_comparison_matches_siblings_through_a_common_ancestor(db, source, facilitator):
    sid = by_text(source, "Housing first").id
    left = carry_forward(facilitator, source.id, [sid], question="Left branch?")
    right = carry_forward(facilitator, source.id, [sid], question="Right branch?")
    right.statements[0].text = "Housing first, always"
    right.statements[0].normalised_text = "housing first, always"
    db.session.commit()
    comparison = compare_rounds(facilitator, left.id, right.id)
    assert [(m.matched_by, m.b.statement.text) for m in comparison.matched] == [
        ("lineage", "Housing first, always")
    ]


def test_comparison_computes_deltas_and_directions(db, two_rounds, facilitator):
    a, b = two_rounds
    sa = {s.text: s.id for s in a.statements}
    sb = {s.text: s.id for s in b.statements}
    add_snapshot(
        db,
        a,
        make_result(
            {
                sa["Housing first"]: {"stats": stats(6, 4), "bridging": 0.5, "gac": 0.25},
                sa["Cheaper buses"]: {"stats": stats(8, 2), "bridging": 0.7, "gac": 0.49},
                sa["More parks"]: {"stats": stats(5, 5), "bridging": 0.45, "gac": 0.2},
                sa["Fewer cars"]: {"stats": stats(5, 5), "bridging": 0.5, "gac": 0.25},
            },
            groups=[
                {"id": 0, "n_members": 6, "votes": {sa["Housing first"]: stats(5, 1)}},
                {"id": 1, "n_members": 4, "votes": {sa["Housing first"]: stats(1, 3)}},
            ],
            k=2,
        ),
    )
    add_snapshot(
        db,
        b,
        make_result(
            {
                sb["Housing first"]: {"stats": stats(16, 4), "bridging": 0.62, "gac": 0.23},
                sb["Cheaper buses"]: {"stats": stats(10, 10), "bridging": 0.55, "gac": 0.17},
                sb["More parks and trees"]: {"stats": stats(10, 10), "bridging": 0.5, "gac": 0.25},
                sb["FEWER   cars"]: {"stats": stats(11, 9), "bridging": 0.52, "gac": 0.27},
            },
            groups=[
                {"id": 0, "n_members": 7, "votes": {sb["Housing first"]: stats(6, 1)}},
                {"id": 1, "n_members": 7, "votes": {sb["Housing first"]: stats(5, 2)}},
                {"id": 2, "n_members": 6, "votes": {sb["Housing first"]: stats(5, 1)}},
            ],
            k=3,
        ),
    )
    db.session.add(GroupName(round_id=b.id, group_id=2, name="Cyclists"))
    db.session.commit()

    comparison = compare_rounds(facilitator, a.id, b.id)
    assert comparison.message is None and comparison.has_figures
    rows = {m.a.statement.text: m for m in comparison.matched}

    housing = rows["Housing first"]
    assert housing.bridging_delta == pytest.approx(0.12)
    assert housing.agree_delta == pytest.approx(0.8 - 0.6)
    assert housing.consensus_delta == pytest.approx(-0.02)
    assert housing.direction == TOWARDS
    assert rows["Cheaper buses"].bridging_delta == pytest.approx(-0.15)
    assert rows["Cheaper buses"].direction == AWAY
    # Exactly the threshold counts as a move (0.50 - 0.45 is 0.04999... in floating point).
    assert rows["More parks"].direction == TOWARDS
    assert rows["Fewer cars"].direction == LITTLE
    assert comparison.counts == {TOWARDS: 2, AWAY: 1, LITTLE: 1, UNKNOWN: 0}

    # Each round's group shares, with the facilitator's names where set.
    assert [(g.label, g.members, g.agree.value, g.agree.base) for g in housing.b.groups] == [
        ("Group A", 7, 6, 7),
        ("Group B", 7, 5, 7),
        ("Cyclists", 6, 5, 6),
    ]
    assert [(g.label, g.agree.share) for g in housing.a.groups] == [
        ("Group A", pytest.approx(5 / 6)),
        ("Group B", pytest.approx(0.25)),
    ]
    # Largest move first.
    assert [m.a.statement.text for m in comparison.matched][:2] == [
        "Cheaper buses",
        "Housing first",
    ]
    assert [m.a.statement.text for m in lineage.sort_matches(comparison.matched, "away")][0] == (
        "Cheaper buses"
    )
    assert [m.a.statement.text for m in lineage.sort_matches(comparison.matched, "towards")][0] == (
        "Housing first"
    )


@pytest.mark.parametrize(
    ("delta", "expected"),
    [
        (0.05, TOWARDS),
        (0.2, TOWARDS),
        (0.0499, LITTLE),
        (0.0, LITTLE),
        (-0.0499, LITTLE),
        (-0.05, AWAY),
        (-0.3, AWAY),
        (None, UNKNOWN),
    ],
)
def test_classification_threshold(delta, expected):
    assert lineage.CHANGE_THRESHOLD == 0.05
    assert classify(delta) == expected


def test_small_cells_are_suppressed(db, two_rounds, facilitator):
    a, b = two_rounds
    sa = by_text(a, "Housing first").id
    sb = by_text(b, "Housing first").id
    add_snapshot(
        db,
        a,
        make_result(
            # Seen by two people only: no share, no bridging, no consensus.
            {sa: {"stats": stats(2, 0), "bridging": 0.75, "gac": 0.56}},
            groups=[
                {"id": 0, "n_members": 2, "votes": {sa: stats(2, 0)}},
                {"id": 1, "n_members": 8, "votes": {}},
            ],
        ),
    )
    add_snapshot(
        db,
        b,
        make_result(
            {sb: {"stats": stats(7, 3), "bridging": 0.6, "gac": 0.36}},
            groups=[
                {"id": 0, "n_members": 8, "votes": {sb: stats(6, 2)}},
                {"id": 1, "n_members": 2, "votes": {sb: stats(1, 1)}},
            ],
        ),
    )
    m = next(m for m in compare_rounds(facilitator, a.id, b.id).matched if m.b.statement.id == sb)
    assert m.a.agree.suppressed and m.a.agree.base is None
    assert m.a.bridging is None and m.a.consensus is None
    assert m.a.groups[0].members is None and m.a.groups[0].agree.suppressed
    assert m.a.groups[1].agree.suppressed  # nobody in the group saw it
    assert m.bridging_delta is None and m.agree_delta is None and m.consensus_delta is None
    assert m.direction == UNKNOWN
    assert not m.b.agree.suppressed and m.b.agree.share == pytest.approx(0.7)
    assert m.b.groups[0].agree.value == 6
    assert m.b.groups[1].members is None and m.b.groups[1].agree.suppressed


def test_rounds_without_a_snapshot_give_a_message(db, two_rounds, facilitator):
    a, b = two_rounds
    comparison = compare_rounds(facilitator, a.id, b.id)
    assert not comparison.has_figures
    assert "no analysis yet" in comparison.message
    assert a.question in comparison.message and b.question in comparison.message
    assert len(comparison.matched) == 4  # the matching needs no snapshot
    assert all(m.direction == UNKNOWN for m in comparison.matched)
    add_snapshot(db, a, make_result({}))
    comparison = compare_rounds(facilitator, a.id, b.id)
    assert b.question in comparison.message and a.question not in comparison.message


def test_hidden_and_meta_statements_are_left_out(db, two_rounds, facilitator):
    a, b = two_rounds
    by_text(b, "Brand new idea").hidden_in_report = True
    by_text(a, "Fewer cars").is_meta = True
    db.session.commit()
    comparison = compare_rounds(facilitator, a.id, b.id)
    texts = {m.b.statement.text for m in comparison.matched}
    assert "FEWER   cars" not in texts
    assert [f.statement.text for f in comparison.only_b] == ["FEWER   cars"]


def test_who_may_compare(db, two_rounds, facilitator, leadership, member, factory):
    a, b = two_rounds
    assert compare_rounds(leadership, a.id, b.id).round_b.id == b.id
    admin = factory.user(Role.ADMIN)
    assert compare_rounds(admin, a.id, b.id).round_a.id == a.id
    for user in (member, None):
        with pytest.raises(NotAllowed):
            compare_rounds(user, a.id, b.id)
    with pytest.raises(NotFound):
        compare_rounds(facilitator, a.id, 999_999)
    with pytest.raises(NotFound):
        compare_rounds(facilitator, "1", b.id)
    with pytest.raises(ValidationError):
        compare_rounds(facilitator, a.id, a.id)


@pytest.fixture
def small_bootstrap(app):
    app.config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 5}


def test_comparison_reads_real_snapshots(db, factory, facilitator, org, small_bootstrap):
    """Against the analysis engine's real output (guards the snapshot keys read here)."""
    a = factory.round(statements=TEXTS)
    members = [factory.user(Role.MEMBER, organisation=org) for _ in range(10)]

    def vote(round_, agree_all: bool):
        for i, user in enumerate(members):
            for j, statement in enumerate(sorted(round_.statements, key=lambda s: s.id)):
                camp = (j % 2 == 0) == (i < 5)
                voting.cast_vote(user, statement.id, 1 if agree_all or camp else -1)

    vote(a, agree_all=False)
    b = carry_forward(facilitator, a.id, [s.id for s in a.statements], question="Round two?")
    b.state = RoundState.OPEN.value
    db.session.commit()
    vote(b, agree_all=True)
    assert refresh_snapshot(a.id, force=True) is not None
    assert refresh_snapshot(b.id, force=True) is not None

    comparison = compare_rounds(facilitator, a.id, b.id)
    assert comparison.has_figures and len(comparison.matched) == 4
    for m in comparison.matched:
        assert m.matched_by == "lineage"
        assert m.a.agree.base == 10 and m.b.agree.share == pytest.approx(1.0)
        assert m.a.bridging is not None and m.b.bridging is not None
        assert m.b.bridging > m.a.bridging
        assert m.direction == TOWARDS
