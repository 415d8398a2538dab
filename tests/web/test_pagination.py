"""Bounded list pages: the moderation queue, people, a member's votes and a round's statements
show a page at a time with Next/Previous links; following them visits every row once, in order;
bad cursors give the first page; actions taken on a later page come back to that page."""

from __future__ import annotations

import re
from datetime import timedelta
from html import unescape

import pytest

from deliberate.models import Role, Statement, utcnow
from deliberate.services import statements as statements_service
from deliberate.services import voting
from deliberate.web import facilitate, member, people
from tests.conftest import add_statements_in_order

XSS = "<script>alert(1)</script>"


def text_of(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.get_data(as_text=True)


def link(html: str, rel: str) -> str | None:
    """The href of the page's first link with this rel (next, prev), unescaped."""
    match = re.search(rf'<a href="([^"]+)" rel="{rel}">', html)
    return unescape(match.group(1)) if match else None


def first_page_link(html: str) -> str | None:
    match = re.search(r'<a href="([^"]+)">First page</a>', html)
    return unescape(match.group(1)) if match else None


def walk(client, url: str, item_ids, max_pages: int = 50) -> list[list[int]]:
    """Follow the Next links from `url`; return the ids found on each page."""
    pages = []
    while url is not None:
        html = text_of(client.get(url))
        pages.append(item_ids(html))
        assert len(pages) <= max_pages, "the pages never end"
        url = link(html, "next")
    return pages


def queue_ids(html: str) -> list[int]:
    return [
        int(i)
        for i in re.findall(r'<article class="card moderation-item" [^>]*"statement-(\d+)"', html)
    ]


def people_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'id="role-(\d+)"', html)]


def vote_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r'<li class="card" id="statement-(\d+)">', html)]


def round_ids(html: str) -> list[int]:
    return [int(i) for i in re.findall(r"<tr>\s*<td>(\d+)</td>", html)]


@pytest.fixture
def small_pages(monkeypatch):
    """Pages of 3, so that a few rows make several pages."""
    monkeypatch.setattr(facilitate, "MODERATION_PAGE_SIZE", 3)
    monkeypatch.setattr(facilitate, "ROUND_STATEMENTS_PAGE_SIZE", 3)
    monkeypatch.setattr(people, "PEOPLE_PAGE_SIZE", 3)
    monkeypatch.setattr(member, "VOTES_PAGE_SIZE", 3)


def add_pending(db, round_, n: int, prefix: str = "Pending statement") -> list[int]:
    texts = [f"{prefix} {i}" for i in range(n)]
    start = utcnow() - timedelta(hours=1)
    return [s.id for s in add_statements_in_order(db, round_, texts, start=start)]


# --- the moderation queue ----------------------------------------------------------------


def test_moderation_queue_shows_a_full_page_and_a_next_link(db, factory, as_facilitator):
    size = facilitate.MODERATION_PAGE_SIZE
    round_ = factory.round()
    made = add_pending(db, round_, size + 2)
    html = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation"))
    assert queue_ids(html) == made[:size]
    assert re.search(rf"<strong>{size + 2}</strong> statements waiting", html)
    assert link(html, "next") and link(html, "prev") is None
    second = text_of(as_facilitator.get(link(html, "next")))
    assert queue_ids(second) == made[size:]
    assert link(second, "next") is None and link(second, "prev") and first_page_link(second)


@pytest.mark.parametrize("state", ["pending", "all"])
def test_following_the_links_visits_every_statement_once_in_order(
    db, factory, as_facilitator, small_pages, state
):
    round_ = factory.round()
    made = add_pending(db, round_, 8)
    url = f"/facilitate/rounds/{round_.id}/moderation?state={state}"
    pages = walk(as_facilitator, url, queue_ids)
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [i for p in pages for i in p] == made
    # And back: Previous links from the last page lead through the same pages.
    html = text_of(as_facilitator.get(f"{url}&after={pages[1][-1]}"))
    back = [queue_ids(html)]
    while (prev := link(html, "prev")) is not None:
        html = text_of(as_facilitator.get(prev))
        back.insert(0, queue_ids(html))
    assert back == pages


def test_statements_written_between_page_loads_are_not_missed(
    db, factory, as_facilitator, small_pages, org
):
    round_ = factory.round()
    writer = factory.user(organisation=org)
    made = add_pending(db, round_, 4)
    html = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation"))
    seen = queue_ids(html)
    new = [
        statements_service.submit_statement(writer, round_.id, f"Fresh idea {i}").id for i in (1, 2)
    ]
    pages = walk(as_facilitator, link(html, "next"), queue_ids)
    assert seen + [i for p in pages for i in p] == made + new


@pytest.mark.parametrize(
    "query",
    [
        "after=abc",
        "after=-4",
        "after=0",
        "before=99999999999999999999",
        "after=987654",
        "at=1.5",
        "after=&before=",
        "after=1e3",
    ],
)
def test_bad_cursors_give_the_first_page(db, factory, as_facilitator, small_pages, query):
    round_ = factory.round()
    made = add_pending(db, round_, 5)
    response = as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation?{query}")
    assert queue_ids(text_of(response)) == made[:3]


def test_a_cursor_with_a_nul_byte_is_a_clean_400(db, factory, as_facilitator):
    round_ = factory.round()
    add_pending(db, round_, 2)
    response = as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation?after=1%00")
    assert response.status_code == 400


def test_a_cursor_of_another_round_gives_the_first_page(db, factory, as_facilitator, small_pages):
    round_, other = factory.round(), factory.round()
    made = add_pending(db, round_, 5)
    theirs = add_pending(db, other, 2, prefix="Other round")
    html = text_of(
        as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation?after={theirs[0]}")
    )
    assert queue_ids(html) == made[:3]


def test_a_page_can_start_at_a_statement(db, factory, as_facilitator, small_pages):
    round_ = factory.round()
    made = add_pending(db, round_, 7)
    html = text_of(
        as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation?state=all&at={made[4]}")
    )
    assert queue_ids(html) == made[4:7]


def test_members_still_cannot_see_the_queue(db, factory, client, login_as, org):
    round_ = factory.round()
    made = add_pending(db, round_, 3)
    for role in (Role.MEMBER, Role.LEADERSHIP):
        login_as(factory.user(role, organisation=org))
        for query in ("", f"?after={made[0]}", f"?before={made[2]}", "?after=x"):
            url = f"/facilitate/rounds/{round_.id}/moderation{query}"
            assert client.get(url).status_code == 403, url
        client.post("/logout")


@pytest.mark.parametrize("action", ["accept", "reject", "correct", "merge"])
def test_a_moderation_action_on_page_two_returns_to_page_two(
    db, factory, as_facilitator, small_pages, action
):
    round_ = factory.round(statements=["An accepted statement to merge into"])
    made = add_pending(db, round_, 8)
    page_two_url = link(
        text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}/moderation")), "next"
    )
    page_two = text_of(as_facilitator.get(page_two_url))
    target = queue_ids(page_two)[1]
    # The forms on page 2 carry the state and the page's cursor back.
    cursor = re.search(r"after=(\d+)", page_two_url).group(1)
    assert page_two.count(f'<input type="hidden" name="after" value="{cursor}">') == 4 * 3
    data = {
        "state": "pending",
        "after": cursor,
        "reason": "Off topic",
        "text": "A corrected pending statement",
        "into": round_.statements[0].id,
    }
    response = as_facilitator.post(f"/facilitate/statements/{target}/{action}", data=data)
    assert response.status_code == 303
    assert response.headers["Location"].endswith(
        f"/facilitate/rounds/{round_.id}/moderation?state=pending&after={cursor}"
    )
    back = text_of(as_facilitator.get(response.headers["Location"]))
    expected = (
        [i for i in made[3:6] + made[6:7] if i != target] if action != "correct" else made[3:6]
    )
    assert queue_ids(back) == expected


def test_a_refused_action_on_page_two_shows_page_two_again(
    db, factory, as_facilitator, small_pages
):
    round_ = factory.round()
    made = add_pending(db, round_, 8)
    response = as_facilitator.post(
        f"/facilitate/statements/{made[4]}/reject",
        data={"state": "pending", "after": made[2], "reason": "  "},
    )
    assert response.status_code == 400
    html = response.get_data(as_text=True)
    assert queue_ids(html) == made[3:6]
    assert f'<input type="hidden" name="after" value="{made[2]}">' in html


def test_a_bad_cursor_in_a_form_returns_to_the_first_page(db, factory, as_facilitator):
    round_ = factory.round()
    made = add_pending(db, round_, 2)
    response = as_facilitator.post(
        f"/facilitate/statements/{made[0]}/accept", data={"state": "all", "after": "<x>"}
    )
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/rounds/{round_.id}/moderation?state=all")


def test_text_on_later_pages_is_escaped(db, factory, as_facilitator, small_pages):
    round_ = factory.round()
    add_pending(db, round_, 4)
    add_pending(db, round_, 1, prefix=XSS)
    pages = walk(as_facilitator, f"/facilitate/rounds/{round_.id}/moderation", lambda h: h)
    assert len(pages) == 2
    assert not any(XSS in page for page in pages)
    assert sum("&lt;script&gt;alert(1)&lt;/script&gt; 0" in page for page in pages) == 1


def test_page_two_forms_carry_a_csrf_token(app_config, request, small_pages):
    app_config["WTF_CSRF_ENABLED"] = True
    client = request.getfixturevalue("client")
    factory = request.getfixturevalue("factory")
    db = request.getfixturevalue("db")
    user = factory.user(Role.FACILITATOR)
    html = client.get("/login").get_data(as_text=True)
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"', html).group(1)
    client.post(
        "/login",
        data={"email": user.email, "password": "correct horse battery", "csrf_token": token},
    )
    round_ = factory.round()
    made = add_pending(db, round_, 5)
    page_two = text_of(client.get(f"/facilitate/rounds/{round_.id}/moderation?after={made[2]}"))
    assert queue_ids(page_two) == made[3:5]
    assert page_two.count('name="csrf_token"') >= 2 * 4
    # Without the token, nothing happens.
    response = client.post(
        f"/facilitate/statements/{made[3]}/accept", data={"state": "pending", "after": made[2]}
    )
    assert response.status_code == 400
    db.session.expire_all()
    assert db.session.get(Statement, made[3]).moderation_state == "pending"


# --- people ------------------------------------------------------------------------------


def test_people_pages_visit_everyone_once_in_name_order(factory, client, login_as, org):
    admin = factory.user(Role.ADMIN, name="Ada Admin")
    size = people.PEOPLE_PAGE_SIZE
    others = [factory.user(organisation=org, name=f"Person {i:04d}") for i in range(size + 3)]
    login_as(admin)
    html = text_of(client.get("/facilitate/people/"))
    assert len(people_ids(html)) == size and link(html, "next")
    assert f"({size + 4})" in html  # the count of everyone, not of the page
    pages = walk(client, "/facilitate/people/", people_ids)
    assert [i for p in pages for i in p] == [admin.id] + [u.id for u in others]


def test_people_pages_keep_the_organisation_filter(factory, client, login_as, org, small_pages):
    facilitator = factory.user(Role.ADMIN, name="Zara")
    other = factory.organisation("Other network")
    ours = [factory.user(organisation=org, name=f"Ours {i}") for i in range(7)]
    factory.user(organisation=other, name="Not ours")
    login_as(facilitator)
    pages = walk(client, f"/facilitate/people/?organisation={org.id}", people_ids)
    assert [i for p in pages for i in p] == [u.id for u in ours]
    html = text_of(client.get(f"/facilitate/people/?organisation={org.id}"))
    assert "(7)" in html and f"organisation={org.id}" in link(html, "next")
    for query in ("after=x", "after=-1", f"after={10**20}", "before=0"):
        url = f"/facilitate/people/?organisation={org.id}&{query}"
        assert people_ids(text_of(client.get(url))) == [u.id for u in ours[:3]]


def test_a_role_change_on_page_two_returns_to_page_two(
    db, factory, client, login_as, org, small_pages
):
    admin = factory.user(Role.ADMIN, name="Aaron Admin")
    for i in range(7):
        factory.user(organisation=org, name=f"Person {i}")
    login_as(admin)
    url = link(text_of(client.get(f"/facilitate/people/?organisation={org.id}")), "next")
    page_two = text_of(client.get(url))
    person = people_ids(page_two)[0]
    cursor = re.search(r"after=(\d+)", url).group(1)
    response = client.post(
        f"/facilitate/people/{person}/role",
        data={"role": "facilitator", "organisation": org.id, "after": cursor},
    )
    assert response.status_code == 303
    location = response.headers["Location"]
    assert f"organisation={org.id}" in location and f"after={cursor}" in location
    assert people_ids(text_of(client.get(location))) == people_ids(page_two)


# --- a member's votes --------------------------------------------------------------------


def test_votes_pages_and_changing_a_vote_on_page_two(
    db, factory, client, login_as, org, small_pages
):
    round_ = factory.round(statements=[f"Seed statement {i}" for i in range(8)])
    voter = factory.user(organisation=org)
    ordered = sorted(s.id for s in round_.statements)
    for sid in ordered:
        voting.cast_vote(voter, sid, 1)
    login_as(voter)
    pages = walk(client, f"/rounds/{round_.id}/votes", vote_ids)
    assert [i for p in pages for i in p] == ordered and len(pages) == 3
    html = text_of(client.get(f"/rounds/{round_.id}/votes?after={ordered[2]}"))
    assert vote_ids(html) == ordered[3:6]
    assert "6 of 8" not in html and "8 of 8 statements voted on" in html
    response = client.post(
        f"/rounds/{round_.id}/vote",
        data={"statement_id": ordered[4], "value": "-1", "next": "votes", "after": ordered[2]},
    )
    assert response.status_code == 303
    location = response.headers["Location"]
    assert location.endswith(f"/rounds/{round_.id}/votes?after={ordered[2]}#statement-{ordered[4]}")
    assert vote_ids(text_of(client.get(location))) == ordered[3:6]
    for query in ("after=x", "before=-2", f"after={10**20}", "after=987654", "before=987654"):
        assert vote_ids(text_of(client.get(f"/rounds/{round_.id}/votes?{query}"))) == ordered[:3]


# --- a round's statements ----------------------------------------------------------------


def test_round_page_lists_its_statements_a_page_at_a_time(db, factory, as_facilitator, small_pages):
    round_ = factory.round(statements=[f"Seed statement {i}" for i in range(7)])
    ordered = sorted(s.id for s in round_.statements)
    pages = walk(as_facilitator, f"/facilitate/rounds/{round_.id}", round_ids)
    assert [i for p in pages for i in p] == ordered and len(pages) == 3
    for query in ("before=abc", "after=-1", "after=987654", f"before={10**20}"):
        html = text_of(as_facilitator.get(f"/facilitate/rounds/{round_.id}?{query}"))
        assert round_ids(html) == ordered[:3], query
    assert "7 statements" in html  # the participation count stays the round's
