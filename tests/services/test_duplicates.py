"""Near-duplicate statements (services/duplicates.py); merging them (statements.merge_statement)."""

from __future__ import annotations

import random
from itertools import combinations

import pytest
from sqlalchemy import select

from deliberate.models import AuditEvent, Role, Statement, Vote
from deliberate.services import duplicates, statements, voting
from deliberate.services.duplicates import JACCARD_THRESHOLD, find_near_duplicates, score_pair
from deliberate.services.errors import Conflict, NotAllowed, NotFound, ValidationError

# --- the comparison ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        # word order and punctuation
        ("Fund shelters, and legal aid!", "Legal aid and shelters: fund them"),
        ("We need free legal advice for refugees.", "free legal advice for refugees -- we need it"),
        # plurals and case
        ("Councils should fund more shelters", "The council should fund more Shelter"),
        ("More support for families", "more support for the family"),
        # a word added
        (
            "Tackle football should not be a school activity",
            "Tackle football should not be a high school activity",
        ),
        # a typo, and a swap of two letters
        ("Fund the sheltrs now", "Fund the shelters now"),
        ("Open the housing register to everyone", "Open the housnig register to everyone"),
    ],
)
def test_obvious_near_duplicates_are_flagged(a, b):
    assert score_pair(a, b) >= JACCARD_THRESHOLD
    found = find_near_duplicates([(1, a), (2, b)])
    assert [d.id for d in found[1]] == [2] and [d.id for d in found[2]] == [1]


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Refugees should get free legal advice", "Refugees should get free language classes"),
        ("More funding for refugee housing", "More funding for refugee language classes"),
        ("Fund more refugee shelters", "Ban more refugee shelters"),
        ("We should increase the housing budget", "We should decrease the housing budget"),
        ("Fund the shelters", "Find the shelters"),
        ("The council must listen to refugees", "Refugees must be heard by the council first"),
    ],
)
def test_different_statements_sharing_common_words_are_not_flagged(a, b):
    assert score_pair(a, b) == 0.0
    assert find_near_duplicates([(1, a), (2, b)]) == {}


def test_the_threshold_is_exact():
    shared = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf"]
    # 7 shared words of 10 in all: exactly 0.7, flagged.
    at = " ".join(shared + ["hotel"]), " ".join(shared + ["india", "juliett"])
    assert score_pair(*at) == pytest.approx(0.7)
    assert find_near_duplicates(enumerate(at))[0][0].score == 0.7
    # 6 shared words of 9 in all (0.667): not flagged.
    below = " ".join(shared[:6] + ["hotel"]), " ".join(shared[:6] + ["india", "juliett"])
    assert score_pair(*below) == 0.0
    assert find_near_duplicates(enumerate(below)) == {}
    assert float(JACCARD_THRESHOLD) == 0.7


def test_at_most_three_best_first_and_deterministic():
    base = "Shared training fund for every volunteer in the coalition"  # 6 meaningful words
    texts = [
        (10, base),
        (11, base + " soon"),  # 6/7
        (12, base + " starting soon"),  # 6/8
        (13, "Shared training fund for volunteers in the coalition"),  # 5/6
        (14, base + " starting very soon"),  # 6/9: below the threshold
        (15, "Something else entirely about housing"),
        (16, base + " now"),  # 6/7, a tie with 11: the lower id first
    ]
    found = find_near_duplicates(texts)
    assert [d.id for d in found[10]] == [11, 16, 13]
    assert [d.score for d in found[10]] == [0.857, 0.857, 0.833]
    assert 15 not in found
    assert found[13][0].id == 10 and found[13][0].excerpt == base
    assert find_near_duplicates(reversed(texts)) == found
    assert [d.id for d in find_near_duplicates(texts, limit=10)[10]] == [11, 16, 13, 12]


def test_long_texts_are_cut_in_the_excerpt():
    long = "Housing " + "a very long explanation of the housing problem " * 10
    found = find_near_duplicates([(1, long), (2, long + " indeed")])
    assert found[1][0].excerpt.endswith("…") and len(found[1][0].excerpt) <= 100


def test_statements_without_meaningful_words_still_compare():
    assert score_pair("Yes!", "yes") == 1.0
    assert find_near_duplicates([(1, "Why?"), (2, "")]) == {}


def _generated_round(n: int, seed: int = 3) -> list[tuple[int, str]]:
    rng = random.Random(seed)
    topics = [f"topic{i}" for i in range(400)]
    common = ["refugee", "housing", "council", "support", "fund", "more", "people", "community"]
    rows = []
    for i in range(1, n + 1):
        words = [rng.choice(common if rng.random() < 0.4 else topics) for _ in range(8)]
        rows.append((i, "We should " + " ".join(words) + "."))
    return rows


def test_two_thousand_statements_match_every_pair_compared():
    rows = _generated_round(2000)
    # Planted near-duplicates: a word dropped, a typo in an added word, another order.
    rows += [
        (3001, rows[0][1].replace("We should ", "").rsplit(" ", 1)[0]),
        (3002, rows[1][1] + " Definitely."),
        (3003, rows[1][1] + " Definitly."),
        (3004, " ".join(reversed(rows[3][1].split()))),
    ]
    found = find_near_duplicates(rows)
    for planted, original in ((3001, 1), (3002, 2), (3003, 2), (3004, 4)):
        assert original in [d.id for d in found[planted]], planted
    assert 3003 in [d.id for d in found[3002]]
    # The index finds exactly what comparing every pair finds (checked on a sample, since
    # comparing all pairs of 2,000 statements is the slow way this module avoids).
    sample = rows[:300] + rows[-4:]
    expected: dict[int, set[int]] = {}
    for (i, a), (j, b) in combinations(sample, 2):
        if score_pair(a, b) > 0:
            expected.setdefault(i, set()).add(j)
            expected.setdefault(j, set()).add(i)
    got = find_near_duplicates(sample, limit=len(sample))
    assert {i: {d.id for d in ds} for i, ds in got.items()} == expected


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_near_duplicates_of_some_statements_are_those_of_the_whole_computation(seed):
    """`only` (one page of the moderation queue) gives each of those statements exactly what
    the whole computation gives it, compared with every other statement, near-duplicate
    clusters, typos and every-pair comparison included."""
    rng = random.Random(seed)
    base = _generated_round(300)
    rows = list(base)
    next_id = 5000
    for _ in range(300):  # clusters of rewordings: shuffled, a word added, a typo
        _, text = rng.choice(base)
        words = text.split()
        kind = rng.randrange(3)
        if kind == 0:
            rng.shuffle(words)
        elif kind == 1:
            words.append(rng.choice(["now", "today", "together", "please"]))
        else:
            k = rng.randrange(len(words))
            if len(words[k]) > 5:
                words[k] = words[k][:2] + words[k][3:]
        rows.append((next_id, " ".join(words)))
        next_id += 1
    everything = find_near_duplicates(rows, limit=len(rows))
    ids = [i for i, _ in rows]
    for size in (1, 7, 50):
        page = rng.sample(ids, size)
        got = find_near_duplicates(rows, limit=len(rows), only=page)
        assert got == {i: everything[i] for i in page if i in everything}
    assert find_near_duplicates(rows, only=[]) == {}
    assert find_near_duplicates(rows, only=[10**9]) == {}  # not a statement: nothing


# --- in a round -------------------------------------------------------------------------


@pytest.fixture
def round_(factory):
    return factory.round(
        statements=[
            "Fund more shelters for families",
            "Free legal advice for every refugee",
            "A joint press line for the coalition",
        ]
    )


def ids_of(round_) -> dict[str, int]:
    return {s.text: s.id for s in round_.statements}


def test_round_near_duplicates_leave_rejected_statements_out(db, round_, member, facilitator):
    seeds = ids_of(round_)
    pending = statements.submit_statement(member, round_.id, "Fund more shelters for the families!")
    found = duplicates.round_near_duplicates(facilitator, round_.id)
    assert [d.id for d in found[pending.id]] == [seeds["Fund more shelters for families"]]
    assert set(found) == {pending.id, seeds["Fund more shelters for families"]}
    statements.reject_statement(facilitator, pending.id, "Off topic")
    assert duplicates.round_near_duplicates(facilitator, round_.id) == {}


def test_round_near_duplicates_are_for_facilitators(round_, member, facilitator):
    with pytest.raises(NotAllowed):
        duplicates.round_near_duplicates(member, round_.id)
    with pytest.raises(NotAllowed):
        duplicates.round_near_duplicates(None, round_.id)
    with pytest.raises(NotFound):
        duplicates.round_near_duplicates(facilitator, 987654)


# --- merging ----------------------------------------------------------------------------


def test_merge_rejects_the_statement_keeps_its_votes_and_records_it(
    db, factory, org, round_, member, facilitator
):
    target = ids_of(round_)["Fund more shelters for families"]
    copy = statements.submit_statement(member, round_.id, "Fund more shelters for the families")
    statements.accept_statement(facilitator, copy.id)
    voter = factory.user(Role.MEMBER, organisation=org)
    voting.cast_vote(voter, copy.id, 1, round_id=round_.id)
    merged = statements.merge_statement(facilitator, copy.id, target)
    db.session.expire_all()
    merged = db.session.get(Statement, copy.id)
    assert merged.moderation_state == "rejected"
    assert merged.moderation_reason == f"Merged into #{target}"
    assert merged.moderated_by_id == facilitator.id
    assert not statements.is_visible(merged)
    kept = db.session.get(Statement, target)
    assert kept.moderation_state == "accepted" and kept.text == "Fund more shelters for families"
    votes = db.session.scalars(select(Vote).where(Vote.statement_id == copy.id)).all()
    assert [v.value for v in votes] == [1]
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "statement.merge"))
    assert event.target_id == copy.id and event.round_id == round_.id
    assert event.details["into"] == target and event.details["previous_state"] == "accepted"
    assert "previous_reason" not in event.details
    assert event.actor_id == facilitator.id


def test_merge_refusals(db, factory, round_, member, facilitator):
    seeds = ids_of(round_)
    a, b = seeds["Fund more shelters for families"], seeds["Free legal advice for every refugee"]
    other_round = factory.round(statements=["Fund more shelters for families, please"])
    elsewhere = other_round.statements[0].id
    with pytest.raises(NotAllowed):
        statements.merge_statement(member, b, a)
    with pytest.raises(NotAllowed):
        statements.merge_statement(None, b, a)
    with pytest.raises(NotFound):
        statements.merge_statement(facilitator, 987654, a)
    with pytest.raises(NotFound, match="no statement #987654"):
        statements.merge_statement(facilitator, b, 987654)
    with pytest.raises(NotFound):
        statements.merge_statement(facilitator, b, 10**20)
    with pytest.raises(ValidationError, match="into itself"):
        statements.merge_statement(facilitator, b, b)
    with pytest.raises(ValidationError, match="another round"):
        statements.merge_statement(facilitator, elsewhere, a)
    statements.reject_statement(facilitator, a, "Off topic")
    with pytest.raises(Conflict, match="is rejected"):
        statements.merge_statement(facilitator, b, a)
    db.session.expire_all()
    assert db.session.get(Statement, b).moderation_state == "accepted"
    assert db.session.get(Statement, elsewhere).moderation_state == "accepted"
    assert (
        db.session.scalars(select(AuditEvent).where(AuditEvent.action == "statement.merge")).all()
        == []
    )


def test_a_rejected_statement_can_be_relabelled_as_merged_once(db, round_, facilitator):
    seeds = ids_of(round_)
    a, c = seeds["Fund more shelters for families"], seeds["A joint press line for the coalition"]
    statements.reject_statement(facilitator, c, "Off topic")
    statements.merge_statement(facilitator, c, a)
    db.session.expire_all()
    assert db.session.get(Statement, c).moderation_reason == f"Merged into #{a}"
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "statement.merge"))
    assert event.details["previous_state"] == "rejected"
    assert event.details["previous_reason"] == "Off topic"
    with pytest.raises(Conflict, match="already merged"):
        statements.merge_statement(facilitator, c, a)
