"""The report pages: who sees what, naming and hiding (Post/Redirect/Get), escaping, the map."""

from __future__ import annotations

import io
import re
import xml.etree.ElementTree as ET

import pytest
from flask import g
from PIL import Image
from sqlalchemy import select

from deliberate.extensions import db
from deliberate.models import AuditEvent, GroupName, Role, Round, Statement, User
from deliberate.services.demo import (
    FACILITATOR_EMAIL,
    LEADERSHIP_EMAIL,
    MEMBER_EMAIL,
    load_demo,
)
from deliberate.services.snapshots import latest_snapshot, refresh_snapshot
from tests.conftest import login

PASSWORDS = {
    FACILITATOR_EMAIL: "demo-facilitator-pass",
    LEADERSHIP_EMAIL: "demo-leadership-pass",
    MEMBER_EMAIL: "demo-member-pass",
}
XSS_STATEMENT = "<script>alert(1)</script>"
XSS_GROUP = '<b onmouseover="x()">Bold</b> & co'
CSRF_TESTS = {"test_forms_need_the_csrf_token"}


@pytest.fixture
def app_config(app_config, request):
    app_config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 8}
    if request.node.name in CSRF_TESTS:  # CSRF on where the test is about it
        app_config["WTF_CSRF_ENABLED"] = True
    return app_config


@pytest.fixture
def demo(app):
    logins = load_demo()
    refresh_snapshot(logins.round_id, force=True)
    return logins


def _user(email: str) -> User:
    return db.session.scalar(select(User).where(User.email == email))


def sign_in(client, email: str, password: str | None = None):
    g.pop("_login_user", None)
    user = _user(email)
    password = password or PASSWORDS.get(email) or "demo-member-pass"
    if client.application.config.get("WTF_CSRF_ENABLED"):
        form = client.get("/login").get_data(as_text=True)
        token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', form).group(1)
        g.pop("_login_user", None)
        response = client.post(
            "/login", data={"email": user.email, "password": password, "csrf_token": token}
        )
    else:
        response = login(client, user, password)
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:300]
    return client


def _voter() -> User:
    """A simulated demo member placed in a group (they voted on many statements)."""
    result = latest_snapshot(_demo_round_id()).result
    for group in result["groups"]:
        for pid in group["members"]:
            user = db.session.get(User, int(pid))
            if user.role == Role.MEMBER and result["user_vote_counts"][str(pid)] >= 7:
                return user
    raise AssertionError("no voter")


def _demo_round_id() -> int:
    return db.session.scalar(select(Round.id).where(Round.state == "open"))


def _url(round_id: int, tail: str = "") -> str:
    return f"/rounds/{round_id}/report{tail}"


# ------------------------------------------------------------------------------- who sees it


@pytest.mark.parametrize("email", [FACILITATOR_EMAIL, LEADERSHIP_EMAIL])
def test_report_renders_for_staff(client, demo, email):
    sign_in(client, email)
    response = client.get(_url(demo.round_id))
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    for heading in (
        "What unites the coalition",
        "What divides the coalition",
        "Opinion groups",
        "Uncertain statements",
        "Every statement",
        "Coverage by organisation",
        "One organisation, one voice",
        "Method and caveats",
    ):
        assert heading in page
    result = latest_snapshot(demo.round_id).result
    first = db.session.get(Statement, int(result["consensus"]["agree"][0]))
    assert first.text in page
    assert re.search(
        r"agreed by \d+% overall, by at least \d+% in every group; (robust|tentative)",
        page,
        re.IGNORECASE,
    )
    # The map inline, with its text alternative.
    assert 'role="img"' in page and '<title id="opinion-map-title">' in page
    assert 'id="map-text-alternative"' in page
    assert "Group A, 26 members" in page or re.search(r"Group A, \d+ members", page)
    # Forms to name and hide only for facilitators.
    has_forms = "/report/groups/0/name" in page and "Hide from report" in page
    assert has_forms == (email == FACILITATOR_EMAIL)
    assert "style=" not in page  # CSP: no inline style


def test_member_without_enough_votes_gets_403_and_no_figures(client, demo):
    sign_in(client, MEMBER_EMAIL)  # Sam has not voted
    for tail in ("", "/map.svg", "/map.png"):
        response = client.get(_url(demo.round_id, tail))
        assert response.status_code == 403
        page = response.get_data(as_text=True)
        assert "after they have voted on 7 statements" in page
        assert "% agree" not in page and "<svg" not in page
    round_page = client.get(f"/rounds/{demo.round_id}").get_data(as_text=True)
    assert _url(demo.round_id) not in round_page  # no Results link yet


def test_member_who_voted_sees_their_view(client, demo):
    voter = _voter()
    sign_in(client, voter.email, "demo-member-pass")
    round_page = client.get(f"/rounds/{demo.round_id}").get_data(as_text=True)
    assert f'href="{_url(demo.round_id)}"' in round_page  # the Results link
    page = client.get(_url(demo.round_id)).get_data(as_text=True)
    assert "Where you stand" in page and "You are in Group " in page
    assert "You are here" in page
    assert "Coverage by organisation" not in page
    assert "Hide from report" not in page and "/name" not in page
    svg = client.get(_url(demo.round_id, "/map.svg"))
    assert svg.status_code == 200 and b"You are here" in svg.data


def test_member_of_a_round_without_visible_results_gets_403(client, demo):
    round_ = db.session.get(Round, demo.round_id)
    round_.results_visibility = "never"
    db.session.commit()
    voter = _voter()
    sign_in(client, voter.email, "demo-member-pass")
    response = client.get(_url(demo.round_id))
    assert response.status_code == 403
    page = response.get_data(as_text=True)
    assert "do not share the results of this round with members" in page
    result = latest_snapshot(demo.round_id).result
    first = db.session.get(Statement, int(result["consensus"]["agree"][0]))
    assert first.text not in page and "% agree" not in page and "Group A" not in page
    assert client.get(_url(demo.round_id, "/map.png")).status_code == 403
    assert _url(demo.round_id) not in client.get(f"/rounds/{demo.round_id}").get_data(as_text=True)


def test_anonymous_is_sent_to_log_in(client, demo):
    response = client.get(_url(demo.round_id))
    assert response.status_code == 302 and "/login" in response.headers["Location"]


def test_facilitator_round_page_links_to_the_results(client, demo):
    sign_in(client, FACILITATOR_EMAIL)
    page = client.get(f"/facilitate/rounds/{demo.round_id}").get_data(as_text=True)
    assert f'href="{_url(demo.round_id)}"' in page


def test_report_before_the_analysis_ran(client, demo):
    sign_in(client, LEADERSHIP_EMAIL)
    earlier = db.session.scalar(select(Round.id).where(Round.state == "closed"))
    if latest_snapshot(earlier) is not None:
        pytest.skip("the earlier demo round has a snapshot")
    response = client.get(_url(earlier))
    assert response.status_code == 200
    assert "The analysis has not run yet" in response.get_data(as_text=True)


def test_sort_links_work_without_javascript(client, demo):
    sign_in(client, LEADERSHIP_EMAIL)
    page = client.get(_url(demo.round_id)).get_data(as_text=True)
    for key in ("consensus", "bridging", "divisiveness", "votes"):
        assert f"{_url(demo.round_id)}?sort={key}#statements" in page
    by_votes = client.get(_url(demo.round_id, "?sort=votes")).get_data(as_text=True)
    assert 'aria-current="true">Votes<' in by_votes
    assert client.get(_url(demo.round_id, "?sort=nonsense")).status_code == 400


def _table_ids(page: str) -> list[int]:
    table = page.split('id="statements"', 1)[1].split("</table>", 1)[0]
    return [int(i) for i in re.findall(r'<tr data-statement-id="(\d+)"', table)]


def test_the_statements_table_is_paged_in_the_chosen_order(client, demo, monkeypatch):
    """A round may hold thousands of statements: the table shows one page of them, the
    pages together show every statement once, in the sort, and the sort stays in the links."""
    from deliberate.web import report as report_views

    monkeypatch.setattr(report_views, "REPORT_STATEMENTS_PAGE_SIZE", 4)
    sign_in(client, FACILITATOR_EMAIL)
    for sort in ("votes", "bridging"):
        whole = _table_ids(client.get(_url(demo.round_id, f"?sort={sort}")).get_data(as_text=True))
        assert len(whole) == 4
        seen, number = [], 1
        while True:
            page = client.get(_url(demo.round_id, f"?sort={sort}&page={number}"))
            body = page.get_data(as_text=True)
            ids = _table_ids(body)
            assert page.status_code == 200 and 1 <= len(ids) <= 4
            seen += ids
            following = f"{_url(demo.round_id)}?sort={sort}&amp;page={number + 1}#statements"
            if following not in body:
                break
            assert f"{(number - 1) * 4 + 1}&ndash;{number * 4} of " in body
            number += 1
        assert number > 1 and len(seen) == len(set(seen))
        assert whole == seen[:4]
        report = client.get(_url(demo.round_id, f"?sort={sort}&page=1")).get_data(as_text=True)
        assert _table_ids(report) == whole
    statements = db.session.scalars(
        select(Statement.id).where(Statement.round_id == demo.round_id)
    ).all()
    assert set(seen) <= set(statements)
    # Out of range or not a number: the nearest page, never an error.
    last = client.get(_url(demo.round_id, "?sort=bridging&page=99999")).get_data(as_text=True)
    assert _table_ids(last) == ids
    for bad in ("0", "-3", "abc", ""):
        body = client.get(_url(demo.round_id, f"?sort=bridging&page={bad}")).get_data(as_text=True)
        assert _table_ids(body) == whole
    # Hiding a statement from page 2 comes back to page 2.
    second = client.get(_url(demo.round_id, "?sort=bridging&page=2")).get_data(as_text=True)
    target = _table_ids(second)[0]
    response = client.post(_url(demo.round_id, f"/statements/{target}/hide?sort=bridging&page=2"))
    assert response.headers["Location"].endswith(
        f"{_url(demo.round_id)}?sort=bridging&page=2#statements"
    )
    assert f'/statements/{target}/hide?sort=bridging&amp;page=2"' in second


# ------------------------------------------------------------------------------- the map


def test_map_svg_and_png(client, demo):
    sign_in(client, LEADERSHIP_EMAIL)
    svg = client.get(_url(demo.round_id, "/map.svg"))
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    root = ET.fromstring(svg.data)
    assert root.get("role") == "img"
    assert b"You are here" not in svg.data
    png = client.get(_url(demo.round_id, "/map.png"))
    assert png.status_code == 200 and png.mimetype == "image/png"
    assert Image.open(io.BytesIO(png.data)).size[0] == 1200


# --------------------------------------------------------------------------- facilitators' edits


def test_naming_a_group_redirects_and_shows_the_name(client, demo):
    sign_in(client, FACILITATOR_EMAIL)
    response = client.post(_url(demo.round_id, "/groups/1/name"), data={"name": "Local welcome"})
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"{_url(demo.round_id)}#groups")
    page = client.get(_url(demo.round_id)).get_data(as_text=True)
    assert "is now called" in page and "Local welcome" in page
    assert re.search(r"Local welcome, \d+ members", page)  # the map's text alternative
    assert db.session.scalar(select(GroupName)).name == "Local welcome"
    assert db.session.scalar(select(AuditEvent).where(AuditEvent.action == "report.group_name"))


def test_naming_refuses_bad_input_without_writing(client, demo):
    sign_in(client, FACILITATOR_EMAIL)
    response = client.post(_url(demo.round_id, "/groups/0/name"), data={"name": "x" * 200})
    assert response.status_code == 303
    assert "at most 80 characters" in client.get(_url(demo.round_id)).get_data(as_text=True)
    assert (
        client.post(_url(demo.round_id, "/groups/42/name"), data={"name": "X"}).status_code == 404
    )
    assert db.session.scalar(select(GroupName)) is None


def test_leadership_cannot_name_or_hide(client, demo):
    sign_in(client, LEADERSHIP_EMAIL)
    statement_id = int(latest_snapshot(demo.round_id).result["divisive"][0])
    assert client.post(_url(demo.round_id, "/groups/0/name"), data={"name": "X"}).status_code == 403
    assert client.post(_url(demo.round_id, f"/statements/{statement_id}/hide")).status_code == 403
    assert not db.session.get(Statement, statement_id).hidden_in_report


def test_hiding_and_showing_a_statement(client, demo):
    sign_in(client, FACILITATOR_EMAIL)
    statement_id = int(latest_snapshot(demo.round_id).result["consensus"]["agree"][0])
    text = db.session.get(Statement, statement_id).text
    response = client.post(_url(demo.round_id, f"/statements/{statement_id}/hide?sort=votes"))
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"{_url(demo.round_id)}?sort=votes#statements")
    page = client.get(_url(demo.round_id)).get_data(as_text=True)
    assert "1 statement hidden from this report" in page
    # The text is only in the facilitators' hidden list, with a button to show it again.
    hidden_section = page.split('id="hidden"', 1)[1]
    assert page.count(text) == 1 and text in hidden_section
    sign_in(client, LEADERSHIP_EMAIL)
    assert text not in client.get(_url(demo.round_id)).get_data(as_text=True)

    sign_in(client, FACILITATOR_EMAIL)
    response = client.post(_url(demo.round_id, f"/statements/{statement_id}/show"))
    assert response.status_code == 303
    page = client.get(_url(demo.round_id)).get_data(as_text=True)
    assert "statement hidden" not in page and text in page
    actions = [
        e.action
        for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.action.like("report.%")).order_by(AuditEvent.id)
        )
    ]
    assert actions == ["report.hide_statement", "report.show_statement"]


def test_hiding_a_statement_of_another_round_is_not_found(client, demo, factory):
    sign_in(client, FACILITATOR_EMAIL)
    other = factory.round(statements=["Elsewhere entirely"])
    sid = other.statements[0].id
    assert client.post(_url(demo.round_id, f"/statements/{sid}/hide")).status_code == 404
    assert not db.session.get(Statement, sid).hidden_in_report


def test_forms_need_the_csrf_token(client, demo):
    sign_in(client, FACILITATOR_EMAIL)
    statement_id = int(latest_snapshot(demo.round_id).result["divisive"][0])
    assert client.post(_url(demo.round_id, "/groups/0/name"), data={"name": "X"}).status_code == 400
    assert client.post(_url(demo.round_id, f"/statements/{statement_id}/hide")).status_code == 400
    page = client.get(_url(demo.round_id)).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    response = client.post(
        _url(demo.round_id, "/groups/0/name"), data={"name": "Rights first", "csrf_token": token}
    )
    assert response.status_code == 303
    assert db.session.scalar(select(GroupName)).name == "Rights first"
    assert not db.session.get(Statement, statement_id).hidden_in_report


# ------------------------------------------------------------------------------- escaping


def test_member_text_and_group_names_are_escaped(client, demo):
    result = latest_snapshot(demo.round_id).result
    statement = db.session.get(Statement, int(result["divisive"][0]))
    statement.text = XSS_STATEMENT
    db.session.add(GroupName(round_id=demo.round_id, group_id=0, name=XSS_GROUP))
    db.session.commit()
    sign_in(client, FACILITATOR_EMAIL)
    page = client.get(_url(demo.round_id)).get_data(as_text=True)
    assert XSS_STATEMENT not in page and "<b onmouseover" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b onmouseover=" in page
    svg = client.get(_url(demo.round_id, "/map.svg")).get_data(as_text=True)
    assert "<b onmouseover" not in svg and "&lt;b onmouseover" in svg
    root = ET.fromstring(svg)
    texts = ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert any(t.startswith(XSS_GROUP) for t in texts)
    # The page's inline map is well-formed too.
    inline = page[page.index("<svg xmlns") : page.index("</svg>", page.index("<svg xmlns")) + 6]
    ET.fromstring(inline)


def test_small_cells_show_no_shares_on_the_page(client, factory):
    from tests.services.test_report import _crafted_round

    leader = factory.user(Role.LEADERSHIP)
    round_, (s1, s2, s3), _big, _small = _crafted_round(factory)
    g.pop("_login_user", None)
    assert login(client, leader).status_code in (302, 303)
    page = client.get(_url(round_.id)).get_data(as_text=True)
    assert "Group B, fewer than 3 members" in page  # the map's text alternative
    assert "This group has fewer than 3 members, so its votes are not shown." in page
    assert "fewer than 3 members: not shown" in page
    assert "Fewer than 3 votes: not shown" in page  # the statement seen by 2 people
    assert "fewer than 3 organisations" in page
    # Group B's two members agreed 2 of 2: no 100% figure appears for them anywhere.
    group_b_rows = re.findall(r"Group B</span>.{0,400}", page, re.DOTALL)
    assert group_b_rows and all("100% agree" not in row for row in group_b_rows)
