"""Keyset pages of long lists: the moderation queue, people, a member's votes, a round's
statements. Walking the pages visits every row once, in the list's order, also when rows are
added or moderated between two pages; bad cursors give the first page."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import event

from deliberate.extensions import db as _db
from deliberate.models import Role, utcnow
from deliberate.services import accounts, rounds, statements, voting
from deliberate.services.errors import NotAllowed, NotFound, ValidationError
from deliberate.services.pagination import PAGE_SIZE_MAX
from tests.conftest import add_statements_in_order


def add_statements(db, round_, n: int, *, state: str = "pending", start=None, prefix="Statement"):
    """Add n statements; created one second apart from `start` (default: now)."""
    texts = [f"{prefix} {i} about the campaign" for i in range(n)]
    return add_statements_in_order(db, round_, texts, state=state, start=start)


def walk(fetch, limit: int, max_pages: int = 100) -> list[list]:
    """Follow the `after` cursors from the first page; return the pages' items."""
    pages, page = [], fetch(limit=limit)
    assert page.first
    while True:
        pages.append(list(page.items))
        if page.after is None:
            return pages
        assert len(pages) < max_pages, "the pages never end"
        page = fetch(limit=limit, after_id=page.after)
        assert not page.first


def walk_back(fetch, limit: int, from_after: int) -> list[list]:
    """Follow the `before` cursors from the page after `from_after` back to the first page."""
    pages, page = [], fetch(limit=limit, after_id=from_after)
    while True:
        pages.insert(0, list(page.items))
        if page.before is None:
            return pages
        page = fetch(limit=limit, before_id=page.before)


def ids(items) -> list[int]:
    return [s.id for s in items]


# --- the moderation queue ----------------------------------------------------------------


def queue(facilitator, round_, state="pending"):
    def fetch(**kw):
        return statements.moderation_page(facilitator, round_.id, state, **kw)

    return fetch


def test_moderation_pages_visit_every_statement_once_in_order(db, factory, facilitator):
    round_ = factory.round()
    made = add_statements(db, round_, 11)
    fetch = queue(facilitator, round_)
    pages = walk(fetch, 4)
    assert [len(p) for p in pages] == [4, 4, 3]
    assert [s.id for p in pages for s in p] == ids(made)
    whole = statements.moderation_page(facilitator, round_.id, limit=PAGE_SIZE_MAX)
    assert ids(whole.items) == ids(made) and whole.after is None
    # Back from the last page, page by page, to the first.
    back = walk_back(fetch, 4, pages[1][-1].id)
    assert [ids(p) for p in back] == [ids(p) for p in pages]
    assert statements.count_moderation_queue(facilitator, round_.id) == 11
    assert statements.count_moderation_queue(facilitator, round_.id, "accepted") == 0


def test_moderation_order_is_by_time_then_id_even_when_times_tie(db, factory, facilitator):
    round_ = factory.round()
    now = utcnow()
    late = add_statements(db, round_, 3, start=now + timedelta(hours=1), prefix="Late")
    tied = add_statements(db, round_, 5, start=now, prefix="Tied")
    for s in tied:
        s.created_at = now
    db.session.commit()
    expected = sorted(ids(tied)) + ids(late)
    pages = walk(queue(facilitator, round_, "all"), 2)
    assert [s.id for p in pages for s in p] == expected


def test_statements_added_or_moderated_between_pages_are_neither_missed_nor_repeated(
    db, factory, facilitator, member
):
    round_ = factory.round()
    made = add_statements(db, round_, 6, start=utcnow() - timedelta(hours=1))
    fetch = queue(facilitator, round_)
    first = fetch(limit=3)
    assert ids(first.items) == ids(made[:3])
    # Between the loads: the last statement of page 1 (the cursor) is accepted, one of page 2
    # rejected, and new ones written; the next pages hold every statement still waiting, once,
    # in order.
    statements.accept_statement(facilitator, made[2].id)
    statements.reject_statement(facilitator, made[4].id, "Off topic")
    new = [statements.submit_statement(member, round_.id, f"New statement {i}") for i in (1, 2)]
    rest, page = [], fetch(limit=3, after_id=first.after)
    while True:
        rest += ids(page.items)
        if page.after is None:
            break
        page = fetch(limit=3, after_id=page.after)
    assert rest == [made[3].id, made[5].id] + ids(new)


def test_a_page_starting_at_a_statement(db, factory, facilitator):
    round_ = factory.round()
    made = add_statements(db, round_, 7)
    page = statements.moderation_page(facilitator, round_.id, "all", limit=3, from_id=made[4].id)
    assert ids(page.items) == ids(made[4:7])
    assert page.after is None and page.before == made[4].id
    earlier = statements.moderation_page(
        facilitator, round_.id, "all", limit=3, before_id=page.before
    )
    assert ids(earlier.items) == ids(made[1:4]) and earlier.before == made[1].id


def test_previous_from_near_the_start_gives_a_full_first_page(db, factory, facilitator):
    round_ = factory.round()
    made = add_statements(db, round_, 7)
    page = statements.moderation_page(facilitator, round_.id, limit=4, before_id=made[2].id)
    assert ids(page.items) == ids(made[:4]) and page.first and page.after == made[3].id


@pytest.mark.parametrize("cursor", [0, -3, 2**31, 10**20, "7", "x", None, 1.5, True])
def test_bad_or_unknown_cursors_give_the_first_page(db, factory, facilitator, cursor):
    round_ = factory.round()
    made = add_statements(db, round_, 5)
    for name in ("after_id", "before_id", "from_id"):
        page = statements.moderation_page(facilitator, round_.id, limit=2, **{name: cursor})
        assert ids(page.items) == ids(made[:2]) and page.first, name


def test_a_cursor_from_another_round_gives_the_first_page(db, factory, facilitator):
    round_, other = factory.round(), factory.round()
    made = add_statements(db, round_, 4)
    elsewhere = add_statements(db, other, 2, start=utcnow() - timedelta(days=1))
    page = statements.moderation_page(facilitator, round_.id, limit=2, after_id=elsewhere[0].id)
    assert ids(page.items) == ids(made[:2]) and page.first


def test_an_empty_page_after_the_end_links_back(db, factory, facilitator):
    round_ = factory.round()
    made = add_statements(db, round_, 3)
    page = statements.moderation_page(facilitator, round_.id, limit=5, after_id=made[-1].id)
    assert page.items == [] and page.after is None and page.before == made[-1].id


def test_moderation_pages_are_for_facilitators_only(db, factory, facilitator, member):
    round_ = factory.round()
    add_statements(db, round_, 2)
    for who in (member, factory.user(Role.LEADERSHIP), None):
        with pytest.raises(NotAllowed):
            statements.moderation_page(who, round_.id)
        with pytest.raises(NotAllowed):
            statements.count_moderation_queue(who, round_.id)
    with pytest.raises(NotFound):
        statements.moderation_page(facilitator, 4242)
    with pytest.raises(ValidationError):
        statements.moderation_page(facilitator, round_.id, "weird")


def test_page_sizes_are_bounded(db, factory, facilitator):
    round_ = factory.round()
    add_statements(db, round_, 3)
    assert len(statements.moderation_page(facilitator, round_.id, limit=0).items) == 1
    assert len(statements.moderation_page(facilitator, round_.id, limit=-5).items) == 1
    with pytest.raises(ValidationError):
        statements.moderation_page(facilitator, round_.id, limit="10")


def test_a_page_loads_authors_and_revisions_in_a_fixed_number_of_queries(
    db, factory, facilitator, org
):
    round_ = factory.round()

    def queries_for_a_page(n: int) -> int:
        made = add_statements(db, round_, n, prefix=f"Batch {n}")
        for s in made:
            s.author_id = factory.user(organisation=org).id
        db.session.commit()
        for s in made:
            statements.correct_statement(facilitator, s.id, s.text + " (fixed)")
        db.session.expire_all()
        seen = []
        listener = lambda *args: seen.append(1)  # noqa: E731
        event.listen(_db.engine, "before_cursor_execute", listener)
        try:
            page = statements.moderation_page(facilitator, round_.id, "all", limit=100)
            for s in page.items:
                _ = [r.previous_text for r in s.revisions]
                _ = s.author.organisation.name
        finally:
            event.remove(_db.engine, "before_cursor_execute", listener)
        assert len(page.items) >= n
        return len(seen)

    assert queries_for_a_page(2) == queries_for_a_page(8)


# --- people ------------------------------------------------------------------------------


def test_people_pages_follow_the_name_order(factory, org):
    facilitator = factory.user(Role.FACILITATOR, name="Mia")
    names = ["amy", "Bob", "bob", "Bob", "carl", "Dee", "dee", "Eve", "zed", "Zoë"]
    for name in names:
        factory.user(organisation=org, name=name)

    def fetch(**kw):
        return accounts.people_page(facilitator, **kw)

    pages = walk(fetch, 3)
    assert [len(p) for p in pages] == [3, 3, 3, 2]
    whole = accounts.people_page(facilitator, limit=PAGE_SIZE_MAX).items
    assert [u.id for p in pages for u in p] == [u.id for u in whole]
    back = walk_back(fetch, 3, pages[2][-1].id)
    assert [[u.id for u in p] for p in back] == [[u.id for u in p] for p in pages]
    assert accounts.count_people(facilitator) == len(names) + 1


def test_people_pages_of_one_organisation_and_bad_cursors(factory, org):
    facilitator = factory.user(Role.FACILITATOR)
    other = factory.organisation()
    ours = [factory.user(organisation=org, name=f"Ours {i}") for i in range(5)]
    theirs = factory.user(organisation=other, name="Theirs")

    def fetch(**kw):
        return accounts.people_page(facilitator, org.id, **kw)

    assert [u.id for p in walk(fetch, 2) for u in p] == [u.id for u in ours]
    assert accounts.count_people(facilitator, org.id) == 5
    # A person of another organisation, an unknown id or a bad value: the first page.
    for cursor in (theirs.id, 999999, -1, "x", 10**20):
        page = accounts.people_page(facilitator, org.id, limit=2, after_id=cursor)
        assert [u.id for u in page.items] == [ours[0].id, ours[1].id] and page.first
    assert accounts.people_page(facilitator, 10**20).items == []
    assert accounts.count_people(facilitator, 10**20) == 0
    for role in (Role.MEMBER, Role.LEADERSHIP):
        with pytest.raises(NotAllowed):
            accounts.people_page(factory.user(role))


def test_people_added_between_pages_are_not_missed(factory, org):
    facilitator = factory.user(Role.FACILITATOR, name="Aaron")
    for name in ("Cara", "Fay", "Ian", "Lea"):
        factory.user(organisation=org, name=name)
    first = accounts.people_page(facilitator, limit=2)
    assert [u.name for u in first.items] == ["Aaron", "Cara"]
    factory.user(organisation=org, name="Bea")  # sorts before the cursor: on page 1 next time
    factory.user(organisation=org, name="Gus")
    rest, page = [], accounts.people_page(facilitator, limit=2, after_id=first.after)
    while True:
        rest += [u.name for u in page.items]
        if page.after is None:
            break
        page = accounts.people_page(facilitator, limit=2, after_id=page.after)
    assert rest == ["Fay", "Gus", "Ian", "Lea"]


# --- a member's votes --------------------------------------------------------------------


def test_member_votes_pages_match_my_votes(db, factory, member):
    round_ = factory.round(statements=[f"Seed statement number {i}" for i in range(9)])
    for i, s in enumerate(sorted(round_.statements, key=lambda s: s.id)):
        if i != 4:
            voting.cast_vote(member, s.id, (i % 3) - 1)

    def fetch(**kw):
        return voting.member_votes_page(member, round_.id, **kw)

    pages = walk(fetch, 3)
    assert [len(p) for p in pages] == [3, 3, 2]
    everything = [(s.id, v) for p in pages for s, v in p]
    assert everything == [(s.id, v) for s, v in voting.my_votes(member, round_.id)]
    back = walk_back(fetch, 3, pages[1][-1][0].id)
    assert [[s.id for s, _ in p] for p in back] == [[s.id for s, _ in p] for p in pages]
    # A cursor that is not a statement of the round gives the first page.
    other = factory.round(statements=["A statement of another round"])
    for cursor in (other.statements[0].id, 987654):
        page = fetch(limit=3, after_id=cursor)
        assert [s.id for s, _ in page.items] == [s.id for s, _ in pages[0]] and page.first
    # Someone else's votes are not theirs; a round they may not see is not found.
    assert voting.member_votes_page(factory.user(), round_.id).items == []
    hidden = factory.round()
    hidden.organisations = [factory.organisation()]
    db.session.commit()
    with pytest.raises(NotFound):
        voting.member_votes_page(member, hidden.id)


# --- a round's statements ----------------------------------------------------------------


def test_round_statement_pages_with_their_counts(db, factory, facilitator):
    round_ = factory.round(statements=[f"Seed statement number {i}" for i in range(7)])
    ordered = sorted(round_.statements, key=lambda s: s.id)
    voters = [factory.user() for _ in range(3)]
    for v in voters:
        voting.cast_vote(v, ordered[5].id, 1)
    voting.cast_vote(voters[0], ordered[0].id, -1)

    def fetch(**kw):
        return rounds.round_overview_page(facilitator, round_.id, **kw)[1]

    pages = walk(fetch, 3)
    rows = [r for p in pages for r in p]
    assert [r.statement.id for r in rows] == [s.id for s in ordered]
    counts = {r.statement.id: (r.votes, r.agree) for r in rows}
    assert counts[ordered[5].id] == (3, 3)
    assert counts[ordered[0].id] == (1, None)  # no split below three votes
    overview, page = rounds.round_overview_page(facilitator, round_.id, limit=3)
    assert overview.has_votes and overview.participation.votes == 4
    assert overview.statements == page.items
    with pytest.raises(NotAllowed):
        rounds.round_overview_page(voters[0], round_.id)
    with pytest.raises(NotFound):
        rounds.round_overview_page(facilitator, 4242)
