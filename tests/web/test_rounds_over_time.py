"""Web: starting the next round with statements carried forward, and the comparison page."""

from __future__ import annotations

import re

import pytest
from sqlalchemy import func, select

from deliberate.models import AuditEvent, Role, Round, RoundState, Snapshot, Statement
from tests.conftest import login

TEXTS = ["Housing first", "Cheaper buses", "More parks"]
XSS = '<script>alert("x")</script> & <b>bold</b>'


def counts(db) -> tuple[int, int, int]:
    db.session.rollback()
    return (
        db.session.scalar(select(func.count()).select_from(Round)),
        db.session.scalar(select(func.count()).select_from(Statement)),
        db.session.scalar(select(func.count()).select_from(AuditEvent)),
    )


def by_text(round_: Round, text: str) -> Statement:
    return next(s for s in round_.statements if s.text == text)


def result_for(round_: Round, figures: dict[str, tuple[int, int, float]]) -> dict:
    """A snapshot result ({text: (agree, disagree, bridging)}) shaped like to_dict()."""
    ids = {s.text: str(s.id) for s in round_.statements}
    return {
        "k": 2,
        "statement_stats": {
            ids[t]: {"agree": a, "disagree": d, "pass": 0, "seen": a + d}
            for t, (a, d, _) in figures.items()
        },
        "bridging": {ids[t]: b for t, (_, _, b) in figures.items()},
        "group_informed_consensus": {ids[t]: b * b for t, (_, _, b) in figures.items()},
        "groups": [
            {
                "id": 0,
                "n_members": 5,
                "votes": {
                    ids[t]: {"agree": a, "disagree": d, "pass": 0, "seen": a + d}
                    for t, (a, d, _) in figures.items()
                },
            }
        ],
    }


def add_snapshot(db, round_: Round, result: dict) -> None:
    db.session.add(Snapshot(round_id=round_.id, result=result, n_votes=1, vote_watermark=1))
    db.session.commit()


@pytest.fixture
def facilitator(factory):
    return factory.user(Role.FACILITATOR)


@pytest.fixture
def leadership(factory):
    return factory.user(Role.LEADERSHIP)


@pytest.fixture
def member(factory):
    return factory.user(Role.MEMBER, organisation=factory.organisation())


@pytest.fixture
def source(db, factory):
    round_ = factory.round(
        state=RoundState.CLOSED, question="How should the city spend money?", statements=TEXTS
    )
    add_snapshot(
        db,
        round_,
        result_for(
            round_,
            {
                "Housing first": (9, 1, 0.8),
                "Cheaper buses": (3, 7, 0.35),
                "More parks": (5, 5, 0.5),
            },
        ),
    )
    return round_


def next_url(round_: Round) -> str:
    return f"/facilitate/rounds/{round_.id}/next"


# --- starting the next round -------------------------------------------------------------------


def checked_ids(html: str) -> set[int]:
    return {
        int(m.group(1))
        for m in re.finditer(
            r'<input type="checkbox" name="statement_ids" value="(\d+)"[^>]*checked', html
        )
    }


def test_next_round_form_lists_statements_and_preselects_high_bridging(
    client, login_as, facilitator, source
):
    login_as(facilitator)
    response = client.get(next_url(source))
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    for text in TEXTS:
        assert text in html
    assert checked_ids(html) == {by_text(source, "Housing first").id}
    assert "Bridging 80%" in html
    assert "9 of 10 who saw it agree" in html
    assert 'value="How should the city spend money?"' in html  # the question prefilled


def test_next_round_without_a_snapshot_preselects_nothing(client, login_as, facilitator, factory):
    round_ = factory.round(statements=TEXTS)
    login_as(facilitator)
    html = client.get(next_url(round_)).get_data(as_text=True)
    assert checked_ids(html) == set()
    assert "has not been analysed yet" in html


def test_post_creates_the_draft_and_redirects_to_it(client, db, login_as, facilitator, source):
    login_as(facilitator)
    chosen = [by_text(source, "Housing first").id, by_text(source, "More parks").id]
    response = client.post(
        next_url(source),
        data={"question": "What next for the budget?", "context": "Ctx", "statement_ids": chosen},
    )
    assert response.status_code == 303
    new = db.session.scalars(
        select(Round).where(Round.question == "What next for the budget?")
    ).one()
    assert response.headers["Location"].endswith(f"/facilitate/rounds/{new.id}")
    assert new.state == "draft" and new.previous_round_id == source.id
    assert sorted(s.carried_from_id for s in new.statements) == sorted(chosen)
    page = client.get(response.headers["Location"])
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "2 statements carried forward" in html
    # The new round's page links to the comparison with the round it continues.
    assert f"/facilitate/compare?a={source.id}&amp;b={new.id}" in html


@pytest.mark.parametrize(
    "data",
    [
        {"question": "", "statement_ids": ["ID"]},
        {"question": "Hm", "statement_ids": ["ID"]},
        {"question": "Fine question?", "statement_ids": ["abc"]},
        {"question": "Fine question?", "statement_ids": ["999999"]},
        {"question": "Fine question?", "statement_ids": ["ID", "OTHER"]},
        {"question": "x" * 600, "statement_ids": []},
    ],
)
def test_bad_input_is_a_400_and_writes_nothing(
    client, db, factory, login_as, facilitator, source, data
):
    other = factory.round(statements=["Another round's statement"])
    replace = {"ID": str(source.statements[0].id), "OTHER": str(other.statements[0].id)}
    data = {**data, "statement_ids": [replace.get(v, v) for v in data["statement_ids"]]}
    login_as(facilitator)
    before = counts(db)
    response = client.post(next_url(source), data=data)
    assert response.status_code == 400
    assert counts(db) == before
    html = response.get_data(as_text=True)
    assert 'class="flash flash-error"' in html


def test_csrf_is_required(app, client, db, login_as, facilitator, source):
    login_as(facilitator)
    app.config["WTF_CSRF_ENABLED"] = True
    before = counts(db)
    response = client.post(
        next_url(source),
        data={"question": "What next?", "statement_ids": [source.statements[0].id]},
    )
    assert response.status_code == 400
    assert counts(db) == before


def test_links_on_the_facilitator_pages(client, login_as, facilitator, source):
    login_as(facilitator)
    assert next_url(source) in client.get(f"/facilitate/rounds/{source.id}").get_data(as_text=True)
    assert "/facilitate/compare" in client.get("/facilitate/").get_data(as_text=True)


# --- authorisation -------------------------------------------------------------------------------


def test_members_and_leadership_cannot_start_the_next_round(app, db, member, leadership, source):
    before = counts(db)
    for user in (member, leadership):
        client = app.test_client()
        login(client, user)
        assert client.get(next_url(source)).status_code == 403
        response = client.post(next_url(source), data={"question": "What next?"})
        assert response.status_code == 403
    assert counts(db) == before


def test_anonymous_visitors_are_sent_to_log_in(client, source):
    for url in (next_url(source), "/facilitate/compare"):
        response = client.get(url)
        assert response.status_code == 302
        assert "/login" in response.headers["Location"]


def test_compare_is_for_facilitators_and_leadership(app, factory, member, leadership, facilitator):
    a, b = factory.round(statements=TEXTS), factory.round(statements=TEXTS)
    url = f"/facilitate/compare?a={a.id}&b={b.id}"
    for user, status in ((member, 403), (leadership, 200), (facilitator, 200)):
        client = app.test_client()
        login(client, user)
        assert client.get(url).status_code == status, user.role
        assert client.get("/facilitate/compare").status_code == status, user.role


def test_bad_ids(client, login_as, facilitator, source, factory):
    other = factory.round()
    login_as(facilitator)
    assert client.get("/facilitate/rounds/999999/next").status_code == 404
    assert (
        client.post("/facilitate/rounds/999999/next", data={"question": "Next?"}).status_code == 404
    )
    assert client.get(f"/facilitate/compare?a={source.id}&b=999999").status_code == 404
    assert client.get(f"/facilitate/compare?a=99999999999999999999&b={other.id}").status_code in (
        400,
        404,
    )
    for query in (f"a=abc&b={other.id}", f"a={source.id}&b=-1", f"a={source.id}&b=1.5"):
        response = client.get(f"/facilitate/compare?{query}")
        assert response.status_code == 400, query
        assert "Choose the two rounds" in response.get_data(as_text=True)
    response = client.get(f"/facilitate/compare?a={source.id}&b={source.id}")
    assert response.status_code == 400
    assert "two different rounds" in response.get_data(as_text=True)


# --- the comparison page ------------------------------------------------------------------------


@pytest.fixture
def compared(client, db, login_as, facilitator, source):
    """Round B carries all of A's statements; one has script-like text; B has a snapshot."""
    login_as(facilitator)
    xss = Statement(
        round_id=source.id,
        text=XSS,
        normalised_text=XSS.lower(),
        origin="seed",
        moderation_state="accepted",
    )
    db.session.add(xss)
    db.session.commit()
    ids = [s.id for s in source.statements]
    response = client.post(next_url(source), data={"question": "Round two?", "statement_ids": ids})
    assert response.status_code == 303
    b = db.session.scalars(select(Round).where(Round.question == "Round two?")).one()
    add_snapshot(
        db,
        b,
        result_for(
            b,
            {
                "Housing first": (19, 1, 0.9),  # +0.10: towards
                "Cheaper buses": (1, 9, 0.15),  # -0.20: away, the biggest move
                "More parks": (5, 5, 0.52),  # +0.02: little change
            },
        ),
    )
    return source, b


def test_comparison_page_in_plain_words_biggest_move_first(client, compared):
    a, b = compared
    response = client.get(f"/facilitate/compare?a={a.id}&b={b.id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "Moved towards consensus: 1 statement." in html
    assert "Moved away from consensus: 1 statement." in html
    assert "Little change: 1 statement." in html
    assert "comparable" in html and "group-informed consensus" in html
    # The statement that moved most comes first.
    positions = [html.index(t) for t in ("Cheaper buses", "Housing first", "More parks")]
    assert positions == sorted(positions)
    assert "−20 points" in html or "-20 points" in html
    assert "+10 points" in html
    # The script-like statement has no votes in round B: its cell is suppressed, and says so.
    assert "fewer than 3 people: not shown" in html
    assert "Too few votes to tell: 1 statement." in html
    # Sorted the other way on request.
    html = client.get(f"/facilitate/compare?a={a.id}&b={b.id}&sort=towards").get_data(as_text=True)
    assert html.index("Housing first") < html.index("More parks") < html.index("Cheaper buses")
    # An unknown sort falls back to the default.
    assert client.get(f"/facilitate/compare?a={a.id}&b={b.id}&sort=zzz").status_code == 200


def test_comparison_lists_are_paged_keeping_the_sort(client, compared, monkeypatch):
    """Rounds may hold thousands of statements: each list shows a page; following the links
    shows every matched statement once, in the sort, and the links keep both rounds."""
    from deliberate.web import rounds_over_time

    monkeypatch.setattr(rounds_over_time, "COMPARE_PAGE_SIZE", 1)
    a, b = compared
    url = f"/facilitate/compare?a={a.id}&b={b.id}&sort=change"
    order = ["Cheaper buses", "Housing first", "More parks"]
    seen = []
    for number in (1, 2, 3):
        html = client.get(f"{url}&page={number}").get_data(as_text=True)
        matched = html.split('id="matched"', 1)[1].split('id="only-a"', 1)[0]
        seen += [t for t in order if t in matched]
        assert f"{number}&ndash;{number} of 4" in matched
        if number < 3:
            assert f"page={number + 1}" in matched and f"a={a.id}" in matched
    assert seen == order
    # Out of range: the last page; not a number: the first.
    last = client.get(f"{url}&page=999").get_data(as_text=True)
    assert (
        "4&ndash;4 of 4" in last
        and "Next page" not in last.split('id="matched"')[1].split('id="only-a"')[0]
    )
    first = client.get(f"{url}&page=x").get_data(as_text=True)
    assert "1&ndash;1 of 4" in first


def test_comparison_page_escapes_statement_text(client, compared):
    a, b = compared
    html = client.get(f"/facilitate/compare?a={a.id}&b={b.id}").get_data(as_text=True)
    assert "<script>alert" not in html
    assert "<b>bold</b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;bold&lt;/b&gt;" in html


def test_comparison_without_snapshot_shows_a_message(client, db, login_as, leadership, factory):
    a = factory.round(statements=TEXTS)
    b = factory.round(statements=TEXTS)
    login_as(leadership)
    response = client.get(f"/facilitate/compare?a={a.id}&b={b.id}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    assert "no analysis yet" in html
    assert "In both rounds: 3 statements." in html  # matched by text even without figures
    assert "not analysed yet" in html
    assert "fewer than 3 people: not shown" not in html  # nothing to suppress yet


def test_compare_form_preselects_the_newest_round_and_its_predecessor(client, compared):
    a, b = compared
    html = client.get("/facilitate/compare").get_data(as_text=True)
    assert re.search(rf'<option selected value="{a.id}">|<option value="{a.id}" selected>', html)
    assert re.search(rf'<option selected value="{b.id}">|<option value="{b.id}" selected>', html)
    assert "Moved towards consensus" not in html  # only the chooser until both are given
