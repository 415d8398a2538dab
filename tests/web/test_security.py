"""Security: CSRF on every POST route, member text never executed, headers, cookies, rate limits.

CSRF protection is ON for every test in this module (the `app_config` override below), so each
POST here carries the token taken from a page, as a browser would.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from html.parser import HTMLParser

import pytest
from sqlalchemy import func, select

from deliberate import create_app
from deliberate.extensions import db as _db
from deliberate.models import Invitation, Round, Statement, User, Vote
from deliberate.services import snapshots, voting
from tests.conftest import PASSWORD, Factory, RequestIsolatedClient
from tests.web.robustness import (
    CASES,
    CHEAP_HASH,
    build_world,
    changed_tables,
    csrf_token_of,
    db_state,
    post_rules,
    round_form,
)


@pytest.fixture
def app_config(app_config):
    app_config["WTF_CSRF_ENABLED"] = True
    return app_config


@pytest.fixture
def world(app, db):
    return build_world(app, db)


# --- HTML helpers --------------------------------------------------------------------------


class PageParser(HTMLParser):
    """Collect forms (action -> hidden fields), every start tag, and inline script/style text."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.forms: list[tuple[str, dict[str, str]]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[tuple[str, str]] = []  # (script|style, text)
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag == "form":
            self.forms.append((attributes.get("action") or "", {}))
        elif tag == "input" and self.forms and attributes.get("name"):
            self.forms[-1][1].setdefault(attributes["name"], attributes.get("value") or "")
        if tag in ("script", "style"):
            self._open = tag

    def handle_endtag(self, tag):
        if tag == self._open:
            self._open = None

    def handle_data(self, data):
        if self._open and data.strip():
            self.inline.append((self._open, data))


def parse(html: str) -> PageParser:
    parser = PageParser()
    parser.feed(html)
    parser.close()
    return parser


def form_fields(html: str, action: str, page: str | None = None) -> dict[str, str]:
    """Return the hidden fields of the first form posting to `action` (from `page`)."""
    for form_action, fields in parse(html).forms:
        if form_action == action or (not form_action and action == page):
            return fields
    raise AssertionError(f"no form posting to {action}")


def token_from(client, page: str) -> str:
    token = csrf_token_of(client, page)
    assert token, f"{page} has no <meta name='csrf-token'>"
    return token


def post(client, url: str, data: dict, page: str, **kwargs):
    """POST like a browser: with the CSRF token read from `page`."""
    return client.post(url, data={**data, "csrf_token": token_from(client, page)}, **kwargs)


# --- CSRF ----------------------------------------------------------------------------------


def test_every_post_route_refuses_a_missing_or_wrong_csrf_token(app, world):
    assert post_rules(app) == set(CASES), "a POST route is missing from robustness.CASES"
    ids = world.ids
    # A real token, but of another browser's session.
    foreign = csrf_token_of(app.test_client(), "/login")
    for rule, case in sorted(CASES.items()):
        client = world.client(case.role)
        url = case.url(ids)
        body = case.fields(ids) if case.fields else {}
        for label, token in (
            ("no token", None),
            ("a forged token", "x" * 40),
            ("another session's token", foreign),
        ):
            before = db_state(world.db)
            if case.json:
                headers = {"X-CSRFToken": token} if token else {}
                response = client.post(url, json=body, headers=headers)
            else:
                data = {**body, "csrf_token": token} if token else body
                response = client.post(url, data=data)
            what = f"POST {rule} with {label}"
            assert response.status_code == 400, f"{what} -> {response.status_code}"
            assert changed_tables(before, db_state(world.db)) == [], f"{what} wrote"
            if case.json:
                assert response.get_json()["error"]["message"], what
            else:
                assert "security token" in response.get_data(as_text=True), what
        if rule in ("/logout", "/account/logout-everywhere"):
            continue  # they would log the client out for the routes after them
        # With the session's own token the same request gets past the CSRF check.
        # (An anonymous client may be logged in by now, by an invitation link.)
        token = csrf_token_of(client, "/account") or csrf_token_of(client, "/login")
        if case.json:
            response = client.post(url, json=body, headers={"X-CSRFToken": token})
        else:
            response = client.post(url, data={**body, "csrf_token": token})
        text = response.get_data().decode("utf-8", "replace")  # the export is a zip
        assert response.status_code < 500 and "security token" not in text, f"{rule}: {text[:300]}"


def test_forms_work_with_the_token_from_their_page(app, world):
    ids = world.ids
    member, facilitator = world.client("member"), world.client("facilitator")

    def count(model) -> int:
        world.db.session.rollback()
        return world.db.session.scalar(select(func.count()).select_from(model))

    # Vote: the token and statement come from the vote form on the round page.
    page = member.get(f"/rounds/{ids.round}").get_data(as_text=True)
    fields = form_fields(page, f"/rounds/{ids.round}/vote")
    votes = count(Vote)
    response = member.post(f"/rounds/{ids.round}/vote", data={**fields, "value": "1"})
    assert response.status_code == 303 and count(Vote) == votes + 1

    # The JavaScript vote: the token from <meta name="csrf-token"> in the X-CSRFToken header.
    page = member.get(f"/rounds/{ids.round}").get_data(as_text=True)
    statement_id = int(form_fields(page, f"/rounds/{ids.round}/vote")["statement_id"])
    response = member.post(
        f"/api/rounds/{ids.round}/votes",
        json={"statement_id": statement_id, "value": -1},
        headers={"X-CSRFToken": token_from(member, f"/rounds/{ids.round}")},
    )
    assert response.status_code == 200 and count(Vote) == votes + 2

    # Writing a statement.
    page = member.get(f"/rounds/{ids.round}").get_data(as_text=True)
    fields = form_fields(page, f"/rounds/{ids.round}/statements")
    statements = count(Statement)
    response = member.post(
        f"/rounds/{ids.round}/statements", data={**fields, "text": "Open more welcome centres"}
    )
    assert response.status_code == 303 and count(Statement) == statements + 1

    # Creating a round.
    page = facilitator.get("/facilitate/rounds/new").get_data(as_text=True)
    fields = form_fields(page, "/facilitate/rounds/new", "/facilitate/rounds/new")
    rounds = count(Round)
    response = facilitator.post("/facilitate/rounds/new", data={**fields, **round_form()})
    assert response.status_code == 303 and count(Round) == rounds + 1

    # Accepting a statement in the moderation queue.
    page = facilitator.get(f"/facilitate/rounds/{ids.round}/moderation").get_data(as_text=True)
    action = f"/facilitate/statements/{ids.pending}/accept"
    response = facilitator.post(action, data=form_fields(page, action))
    assert response.status_code == 303
    world.db.session.rollback()
    assert world.db.session.get(Statement, ids.pending).moderation_state == "accepted"

    # Inviting people.
    page = facilitator.get("/facilitate/people/invite").get_data(as_text=True)
    fields = form_fields(page, "/facilitate/people/invite", "/facilitate/people/invite")
    invitations = count(Invitation)
    response = facilitator.post(
        "/facilitate/people/invite",
        data={
            **fields,
            "csv_text": "name,email,organisation\nNew Person,new@example.org,Welcome Group A",
            "round_id": "0",
        },
    )
    assert response.status_code == 200 and count(Invitation) == invitations + 1

    # Logging out: the token from the form in the navigation.
    page = member.get("/rounds").get_data(as_text=True)
    response = member.post("/logout", data=form_fields(page, "/logout"))
    assert response.status_code == 303
    assert member.get("/rounds").status_code == 302  # to the login page


# --- stored XSS ----------------------------------------------------------------------------

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
JS_URL = "javascript:alert(1)"
ESCAPED = ("&lt;script&gt;alert(1)&lt;/script&gt;", "&lt;img src=x onerror=alert(1)&gt;")
CONTEXT = "\n\n".join(
    [
        f"Some context. {SCRIPT}",
        IMG,
        f"[a link]({JS_URL}) and [another](JAVASCRIPT:alert(1))",
        f'<a href="{JS_URL}">raw link</a> <iframe src="{JS_URL}"></iframe>',
        "<svg onload=alert(1)></svg> <b onmouseover=alert(1)>bold</b>",
        f'<img src="{JS_URL}"> <p style="color:red">styled</p>',
    ]
)


def assert_no_active_content(html: str, where: str) -> None:
    """No payload may come out as markup: no inline script, event handler or javascript: URL."""
    assert SCRIPT not in html, f"{where}: raw <script> payload"
    page = parse(html)
    for tag, attributes in page.tags:
        handlers = [name for name in attributes if name.startswith("on")]
        assert not handlers, f"{where}: <{tag}> has event handler attributes {handlers}"
        for name in ("href", "src", "action", "formaction", "xlink:href", "data"):
            value = (attributes.get(name) or "").strip().lower()
            assert not value.startswith("javascript:"), f"{where}: <{tag} {name}={value!r}>"
        assert tag not in ("iframe", "object", "embed", "foreignobject"), f"{where}: <{tag}>"
        if tag == "script":
            src = attributes.get("src") or ""
            assert src.startswith("/static/"), f"{where}: <script src={src!r}>"
        if tag == "img":
            assert attributes.get("src") != "x", f"{where}: the <img> payload became markup"
        # The CSP forbids inline style, so a style attribute would be both blocked and a bug.
        assert "style" not in attributes, f"{where}: <{tag} style=...>"
    assert page.inline == [], f"{where}: inline <script>/<style> content {page.inline[:2]}"


def test_member_text_is_never_executed(app, world):
    ids = world.ids
    facilitator, member = world.client("facilitator"), world.client("member")
    checked: dict[str, str] = {}

    def get(client, url: str) -> str:
        response = client.get(url)
        assert response.status_code == 200, f"GET {url} -> {response.status_code}"
        html = response.get_data(as_text=True)
        assert_no_active_content(html, url)
        checked[f"{who[id(client)]} {url}"] = html
        return html

    # An organisation and a person (through an invitation and its acceptance) with payloads.
    response = post(
        facilitator, "/facilitate/people/organisations", {"name": IMG}, "/facilitate/people/"
    )
    assert response.status_code == 303
    quoted_org = '"' + IMG.replace('"', '""') + '"'
    csv_text = f'name,email,organisation\n"{SCRIPT}",xss@example.org,{quoted_org}'
    response = post(
        facilitator,
        "/facilitate/people/invite",
        {"csv_text": csv_text, "round_id": "0"},
        "/facilitate/people/invite",
    )
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    result = response.get_data(as_text=True)
    assert_no_active_content(result, "invitation links")
    assert all(escaped in result for escaped in ESCAPED)
    token = re.search(r"/invite/([A-Za-z0-9_-]{20,})", result).group(1)
    author = app.test_client()
    who = {id(member): "member", id(facilitator): "facilitator", id(author): "author"}
    name = f"{SCRIPT} {IMG} {JS_URL}"
    response = post(
        author,
        f"/invite/{token}",
        {"name": name, "password": "a long new password", "confirm": "a long new password"},
        f"/invite/{token}",
    )
    assert response.status_code == 303, response.get_data(as_text=True)[:500]

    # A round with payloads in the question and the (Markdown) context, statements by organisation.
    response = post(
        facilitator,
        "/facilitate/rounds/new",
        round_form(
            f"{SCRIPT} {IMG} what next?",
            context=CONTEXT,
            moderation="post",
            author_display="organisation",
        ),
        "/facilitate/rounds/new",
    )
    assert response.status_code == 303, response.get_data(as_text=True)[:500]
    round_id = int(response.headers["Location"].rstrip("/").rsplit("/", 1)[1])
    seeds = "\n".join(
        [
            f"{SCRIPT} seed one",
            f"{IMG} seed two",
            f"{JS_URL} seed three",
            f'<a href="{JS_URL}">seed four</a>',
        ]
    )
    page = f"/facilitate/rounds/{round_id}"
    assert post(facilitator, f"{page}/seed", {"statements": seeds}, page).status_code == 303
    assert post(facilitator, f"{page}/open", {}, page).status_code == 303

    # The author writes statements; they show at once (moderation after).
    for text in (
        f"{SCRIPT} by a member",
        f"{IMG} by a member",
        f"{JS_URL} by a member",
        f"{SCRIPT} to be rejected",
        f"{IMG} to be corrected",
        *FORMULAS,
    ):
        response = post(
            author, f"/rounds/{round_id}/statements", {"text": text}, f"/rounds/{round_id}"
        )
        assert response.status_code == 303, response.get_data(as_text=True)[:500]
    world.db.session.rollback()
    by_text = {
        s.text: s.id
        for s in world.db.session.scalars(select(Statement).where(Statement.round_id == round_id))
    }
    queue = f"/facilitate/rounds/{round_id}/moderation"
    response = post(
        facilitator,
        f"/facilitate/statements/{by_text[f'{SCRIPT} to be rejected']}/reject",
        {"reason": f"{SCRIPT} {IMG}"},
        queue,
    )
    assert response.status_code == 303
    response = post(
        facilitator,
        f"/facilitate/statements/{by_text[f'{IMG} to be corrected']}/correct",
        {"text": f"{SCRIPT} {IMG} corrected"},
        queue,
    )
    assert response.status_code == 303

    # Another member of the coalition votes through every statement, looking at each one.
    seen = set()
    for _ in range(20):
        html = get(member, f"/rounds/{round_id}")
        fields = form_fields(html, f"/rounds/{round_id}/vote")
        if not fields.get("statement_id"):
            break
        seen.add(fields["statement_id"])
        html_before = html
        response = member.post(f"/rounds/{round_id}/vote", data={**fields, "value": "0"})
        assert response.status_code == 303
    assert len(seen) >= 7, f"only {len(seen)} statements offered"
    assert ESCAPED[0] in html_before or ESCAPED[1] in html_before

    # Enough voters in two camps for the analysis to find groups; a payload as a group's name.
    make = Factory(world.db, CHEAP_HASH)
    world.db.session.rollback()
    shown = list(
        world.db.session.scalars(
            select(Statement.id)
            .where(Statement.round_id == round_id, Statement.moderation_state != "rejected")
            .order_by(Statement.id)
        )
    )
    for n in range(12):
        voter = make.user(email=f"voter{n}@example.org")
        for k, statement_id in enumerate(shown):
            voting.cast_vote(
                voter,
                statement_id,
                1 if (k < len(shown) // 2) == (n % 2 == 0) else -1,
                round_id=round_id,
            )
    snapshot = snapshots.refresh_snapshot(round_id, force=True)
    groups = (snapshot.result or {}).get("groups") or []
    assert groups, "the analysis found no groups to name"
    group_id = int(groups[0]["id"])
    report = f"/rounds/{round_id}/report"
    response = post(facilitator, f"{report}/groups/{group_id}/name", {"name": SCRIPT}, report)
    assert response.status_code == 303
    for url in (report, f"/rounds/{round_id}/exports", f"/rounds/{round_id}/board-paper"):
        get(facilitator, url)
    assert ESCAPED[0] in checked[f"facilitator {report}"]  # the group's name
    svg = facilitator.get(f"{report}/map.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    assert_no_active_content(svg.get_data(as_text=True).split("?>", 1)[-1], "map.svg")

    for url in (f"/rounds/{round_id}/votes", "/rounds", f"/rounds/{round_id}", report):
        get(member, url)
    for url in ("/rounds", f"/rounds/{round_id}", f"/rounds/{round_id}/votes", "/account"):
        get(author, url)
    for url in (
        "/facilitate/",
        f"/facilitate/rounds/{round_id}",
        f"/facilitate/rounds/{round_id}/edit",
        f"{queue}?state=all",
        f"{queue}?state=rejected",
        "/facilitate/audit",
        f"/facilitate/audit?round={round_id}",
        "/facilitate/people/",
    ):
        get(facilitator, url)

    # Not vacuous: every page shows some of the payloads, escaped.
    for url, html in checked.items():
        assert any(escaped in html for escaped in ESCAPED), f"{url} shows no payload at all"
    people = checked["facilitator /facilitate/people/"]
    assert ESCAPED[0] in people and ESCAPED[1] in people  # the person's and organisation's name
    assert ESCAPED[0] in checked[f"facilitator {queue}?state=rejected"]  # the reason
    votes = checked[f"member /rounds/{round_id}/votes"]
    assert "seed four" in votes and "by a member" in votes and "corrected" in votes
    # The JSON API escapes by being JSON, served as JSON (never sniffed as HTML).
    response = author.get(f"/api/rounds/{round_id}/next")
    assert response.mimetype == "application/json"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert ids  # the sample world's other data was on the pages too

    check_tokens_docs_and_personal_data(author, round_id)
    check_exports(facilitator, round_id)


FORMULAS = (
    '=HYPERLINK("http://evil.example/","click") formula',
    "+SUM(1;2) formula in a statement",
    "@SUM(A1:A2) formula in a statement",
    "-2+3 formula in a statement",
)
NUMBER = re.compile(r"-?\d+(\.\d+)?(e-?\d+)?")


def assert_attachment(response, mimetype: str, where: str) -> None:
    assert response.status_code == 200, f"{where} -> {response.status_code}"
    assert response.mimetype == mimetype, f"{where}: {response.mimetype}"
    assert response.headers["X-Content-Type-Options"] == "nosniff", where
    assert response.headers.get("Content-Disposition", "").startswith("attachment"), where
    assert_security_headers(response, where)


def assert_csv_is_neutralised(text: str, where: str) -> int:
    """No text cell may start like a spreadsheet formula; return how many payload cells."""
    import csv
    import io

    payloads = 0
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            if cell.startswith(("=", "+", "-", "@", "\t", "\r")):
                assert NUMBER.fullmatch(cell), f"{where}: formula cell {cell[:60]!r}"
            payloads += "formula" in cell or "<script>" in cell
    return payloads


def check_tokens_docs_and_personal_data(author, round_id: int) -> None:
    """The author's API token name, the API pages and their personal-data download."""
    import json

    page = "/account/api-tokens"
    response = post(author, page, {"name": f"{SCRIPT} {IMG}", "expires": "90"}, page)
    assert response.status_code == 200, response.get_data(as_text=True)[:500]
    html = response.get_data(as_text=True)
    assert_no_active_content(html, "new token")
    secret = re.search(r'id="token-secret"[^>]*value="([^"]+)"', html)
    assert secret, "the new token's secret is not on the page"
    html = author.get(page).get_data(as_text=True)
    assert_no_active_content(html, page)
    assert ESCAPED[0] in html and ESCAPED[1] in html
    for url in ("/api/docs", "/account/data"):
        response = author.get(url)
        assert response.status_code == 200, url
        assert_no_active_content(response.get_data(as_text=True), url)
    response = author.get("/account/data/download")
    assert_attachment(response, "application/json", "personal data download")
    text = json.dumps(response.get_json())
    assert SCRIPT in text  # the name and statements, as JSON strings: data, not markup
    response = author.get("/api/openapi.json")
    assert response.mimetype == "application/json"
    assert_security_headers(response, "openapi.json")
    # The token API serves member text as JSON, never sniffed as HTML.
    headers = {"Authorization": f"Bearer {secret.group(1)}"}
    for url in (f"/api/v1/rounds/{round_id}", f"/api/v1/rounds/{round_id}/statements"):
        response = app_client_without_cookies(author).get(url, headers=headers)
        assert response.status_code == 200, f"{url}: {response.get_data(as_text=True)[:300]}"
        assert response.mimetype == "application/json", url
        assert SCRIPT in json.dumps(response.get_json()), url  # as a string: data
        assert_security_headers(response, url)


def app_client_without_cookies(client):
    return client.application.test_client()


def check_exports(facilitator, round_id: int) -> None:
    """Every export shows the payloads as data: right content types, neutralised CSV cells."""
    import io
    import zipfile

    base = f"/rounds/{round_id}"
    payload_cells = 0
    for name in ("summary", "comments", "votes", "participants-votes", "comment-groups"):
        response = facilitator.get(f"{base}/export/{name}.csv")
        assert_attachment(response, "text/csv", f"{name}.csv")
        payload_cells += assert_csv_is_neutralised(response.get_data(as_text=True), name)
    assert payload_cells >= len(FORMULAS), "the CSV files show no payload at all"

    def zipped_payloads(response, where: str) -> int:
        assert_attachment(response, "application/zip", where)
        found = 0
        with zipfile.ZipFile(io.BytesIO(response.get_data())) as archive:
            for member in archive.namelist():
                if member.endswith(".csv"):
                    text = archive.read(member).decode("utf-8-sig")
                    found += assert_csv_is_neutralised(text, f"{where}/{member}")
        return found

    assert zipped_payloads(facilitator.get(f"{base}/export/all.zip"), "all.zip") >= 1
    page = f"{base}/exports"
    response = post(facilitator, f"{base}/export/identities", {"confirm": "y"}, page)
    assert zipped_payloads(response, "identities") >= 1  # the author's name among them
    response = facilitator.get(f"{base}/export/snapshot.json")
    assert_attachment(response, "application/json", "snapshot.json")
    response = facilitator.get(f"{base}/board-paper.md")
    assert_attachment(response, "text/markdown", "board-paper.md")
    markdown = response.get_data(as_text=True)
    assert "formula" in markdown or "by a member" in markdown
    # Markup characters in member text are backslash-escaped: no raw tag for a renderer.
    assert re.search(r"(?<!\\)<", markdown) is None, "board-paper.md: unescaped <"
    assert "\\<script\\>" in markdown
    assert "](javascript:" not in markdown.lower()
    response = facilitator.get(f"{base}/board-paper.pdf")
    assert_attachment(response, "application/pdf", "board-paper.pdf")
    assert response.get_data().startswith(b"%PDF")


# --- headers and cookies -------------------------------------------------------------------


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            directives[words[0].lower()] = [w.lower() for w in words[1:]]
    return directives


def assert_security_headers(response, where: str) -> None:
    headers = response.headers
    csp = headers.get("Content-Security-Policy")
    assert csp, f"{where}: no CSP"
    directives = csp_directives(csp)
    for name, sources in directives.items():
        for unsafe in ("'unsafe-inline'", "'unsafe-eval'", "*", "data:", "http:", "https:"):
            if name == "img-src" and unsafe == "data:":
                continue
            assert unsafe not in sources, f"{where}: {name} allows {unsafe}"
    assert directives.get("frame-ancestors") == ["'none'"], where
    assert directives.get("object-src") == ["'none'"], where
    assert "script-src" in directives or "default-src" in directives, where
    assert directives.get("default-src") == ["'self'"], where
    assert headers.get("X-Content-Type-Options") == "nosniff", where
    assert headers.get("X-Frame-Options") == "DENY", where
    assert headers.get("Referrer-Policy") in (
        "no-referrer",
        "same-origin",
        "strict-origin",
        "strict-origin-when-cross-origin",
    ), where
    if response.mimetype == "text/html":
        assert "no-store" in headers.get("Cache-Control", ""), where


def test_security_headers_on_every_kind_of_page(world):
    ids = world.ids
    anon, member, facilitator = (world.client(r) for r in ("anon", "member", "facilitator"))
    samples = [
        (anon, "get", "/login"),
        (anon, "get", "/healthz"),
        (anon, "get", "/no/such/page"),
        (anon, "get", "/static/css/app.css"),
        (anon, "post", "/login"),  # no CSRF token: 400
        (member, "get", "/rounds"),
        (member, "get", f"/rounds/{ids.round}"),
        (member, "get", f"/api/rounds/{ids.round}/next"),
        (member, "get", "/facilitate/"),  # 403
        (facilitator, "get", f"/facilitate/rounds/{ids.round}"),
        (facilitator, "get", "/facilitate/people/"),
        (facilitator, "get", f"/rounds/{ids.round}/report"),
        (facilitator, "get", f"/rounds/{ids.round}/report/map.svg"),
        (facilitator, "get", f"/rounds/{ids.round}/board-paper"),
    ]
    for client, method, url in samples:
        response = getattr(client, method)(url)
        assert response.status_code < 500, url
        assert_security_headers(response, f"{method.upper()} {url}")


def session_cookie_header(response) -> str:
    cookies = [v for k, v in response.headers.items() if k.lower() == "set-cookie"]
    session = [c for c in cookies if c.startswith("session=")]
    assert session, f"no session cookie in {cookies}"
    return session[-1]


def cookie_attributes(header: str) -> dict[str, str]:
    attributes = {}
    for part in header.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        attributes[key.lower()] = value
    return attributes


@contextmanager
def running_app(config: dict):
    app = create_app(config)
    app.test_client_class = RequestIsolatedClient
    with app.app_context():
        try:
            yield app
        finally:
            _db.session.remove()
            _db.engine.dispose()


def _login_response(client, email: str, password: str = PASSWORD, **kwargs):
    page = client.get("/login", **kwargs).get_data(as_text=True)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    data = {"email": email, "password": password, "csrf_token": token}
    return client.post("/login", data=data, **kwargs)


def test_session_cookie_is_httponly_and_samesite(world, app):
    client = app.test_client()
    response = _login_response(client, "member@example.org")
    assert response.status_code == 303
    attributes = cookie_attributes(session_cookie_header(response))
    assert "httponly" in attributes
    assert attributes.get("samesite", "").lower() in ("lax", "strict")
    assert app.config["SESSION_COOKIE_SECURE"] is False  # testing: served over plain HTTP


def test_production_cookies_are_secure(app_config, monkeypatch):
    monkeypatch.delenv("DELIBERATE_SECURE_COOKIES", raising=False)
    config = {**app_config, "DELIBERATE_ENV": "production"}
    with running_app(config) as app:
        assert app.config["SESSION_COOKIE_SECURE"] is True
        assert app.config["REMEMBER_COOKIE_SECURE"] is True
        Factory(_db, CHEAP_HASH).user(email="member@example.org")
        client = app.test_client()
        # Over HTTPS, Flask-WTF also checks that the Referer is this site.
        response = _login_response(
            client,
            "member@example.org",
            base_url="https://localhost",
            headers={"Referer": "https://localhost/login"},
        )
        assert response.status_code == 303, response.get_data(as_text=True)[:500]
        attributes = cookie_attributes(session_cookie_header(response))
        assert {"secure", "httponly"} <= set(attributes)
        assert attributes.get("samesite", "").lower() in ("lax", "strict")
        assert "max-age=" in response.headers.get("Strict-Transport-Security", "")


# --- rate limits ---------------------------------------------------------------------------


def test_login_is_rate_limited_with_a_clear_message(app_config):
    # Per-process counters here: this test keeps one app context (and so one database session)
    # across requests, which a real server never does; tests/web/test_rate_limits.py covers the
    # database storage.
    config = {**app_config, "RATELIMIT_ENABLED": True, "RATELIMIT_STORAGE_URI": "memory://"}
    with running_app(config) as app:
        Factory(_db, CHEAP_HASH).user(email="member@example.org")
        client = app.test_client()
        token = token_from(client, "/login")
        statuses = [
            client.post(
                "/login",
                data={
                    "email": "member@example.org",
                    "password": "wrong guess",
                    "csrf_token": token,
                },
            ).status_code
            for _ in range(10)
        ]
        assert statuses == [400] * 10
        response = client.post(
            "/login",
            data={"email": "member@example.org", "password": PASSWORD, "csrf_token": token},
        )
        assert response.status_code == 429
        body = response.get_data(as_text=True)
        assert "Too many requests" in body and "try again" in body
        assert "<main" in body  # the site's error page, not a bare text
        assert response.headers.get("Retry-After")
        _db.session.rollback()
        user = _db.session.scalar(select(User).where(User.email == "member@example.org"))
        assert user.last_login_at is None  # the right password did not get through either

        # The same account from another address is limited too; another account is not.
        elsewhere = app.test_client()
        elsewhere.environ_base["REMOTE_ADDR"] = "203.0.113.9"
        token = token_from(elsewhere, "/login")
        response = elsewhere.post(
            "/login",
            data={"email": "member@example.org", "password": PASSWORD, "csrf_token": token},
        )
        assert response.status_code == 429
        response = elsewhere.post(
            "/login",
            data={"email": "someone@example.org", "password": "wrong guess", "csrf_token": token},
        )
        assert response.status_code == 400

        # Invitation and reset links are rate-limited as well (guessing tokens is pointless).
        guesser = app.test_client()
        guesser.environ_base["REMOTE_ADDR"] = "198.51.100.7"
        token = token_from(guesser, "/login")
        for link in ("/invite/guessed-token", "/reset/guessed-token"):
            statuses = [
                guesser.post(link, data={"csrf_token": token}).status_code for _ in range(11)
            ]
            assert statuses == [400] * 10 + [429], f"{link}: {statuses}"


# --- headers on every route and every kind of error ------------------------------------------


def get_urls(app, ids) -> list[str]:
    """One URL for every GET route of the app, its parts filled from the sample world."""
    values = {
        "round_id": ids.round,
        "user_id": ids.member2,
        "token": ids.invite_token,
        "name": "votes",
        "filename": "css/app.css",
    }
    urls = []
    for rule in app.url_map.iter_rules():
        if "GET" not in rule.methods:
            continue
        missing = set(rule.arguments) - set(values)
        assert not missing, f"{rule.rule}: no sample value for {missing}; add one above"
        with app.test_request_context():
            from flask import url_for

            urls.append(url_for(rule.endpoint, **{a: values[a] for a in rule.arguments}))
    return sorted(set(urls))


def test_security_headers_on_every_get_route(app, world):
    urls = get_urls(app, world.ids)
    assert len(urls) > 30
    for role in ("anon", "member", "facilitator", "admin"):
        client = world.client(role)
        for url in urls:
            response = client.get(url)
            assert response.status_code < 500, f"{role} GET {url} -> {response.status_code}"
            assert_security_headers(response, f"{role} GET {url} ({response.status_code})")
            assert "Strict-Transport-Security" not in response.headers  # plain HTTP here
            if response.mimetype == "application/json":
                assert "no-store" in response.headers.get("Cache-Control", ""), url
            response.close()


def test_security_headers_on_error_responses(app, world):
    anon, member = world.client("anon"), world.client("member")
    too_big = "x" * (app.config["MAX_CONTENT_LENGTH"] + 10)
    cases = [
        (anon.get("/no/such/page"), 404),
        (anon.get("/api/no/such/thing"), 404),
        (anon.get("/logout"), 405),  # POST only
        (anon.put("/login"), 405),
        (anon.post("/login", data={"email": too_big}), 413),
        (anon.post("/login", data={}), 400),  # no CSRF token
        (member.get(f"/facilitate/rounds/{world.ids.round}"), 403),
        (anon.get(f"/api/rounds/{world.ids.round}/next"), 401),
        (anon.get("/rounds/99999999999999999999"), 404),
        (anon.get("/login?next=%00"), 400),  # NUL in the query
        (anon.head("/login"), 200),
        (anon.options("/login"), 200),
    ]
    for response, status in cases:
        where = f"{response.request.method} {response.request.path}"
        assert response.status_code == status, f"{where} -> {response.status_code}"
        assert_security_headers(response, where)


def test_security_headers_on_500_and_429(app_config):
    config = {
        **app_config,
        "RATELIMIT_ENABLED": True,
        "RATELIMIT_STORAGE_URI": "memory://",
        "RATELIMIT_LOGIN": "1 per minute",
        "PROPAGATE_EXCEPTIONS": False,
        "TESTING": False,
    }
    with running_app(config) as app:

        @app.get("/boom")
        def boom():
            raise RuntimeError("a bug")

        client = app.test_client()
        response = client.get("/boom")
        assert response.status_code == 500
        assert_security_headers(response, "500")
        token = token_from(client, "/login")
        data = {"email": "x@example.org", "password": "a wrong guess", "csrf_token": token}
        assert client.post("/login", data=data).status_code == 400
        response = client.post("/login", data=data)
        assert response.status_code == 429
        assert_security_headers(response, "429")
        response = client.post("/api/v1/rounds/1/votes", json={}, headers={"X-CSRFToken": token})
        assert_security_headers(response, f"API {response.status_code}")


def test_hsts_only_over_https(app, world):
    client = world.client("anon")
    for url in ("/login", "/healthz", "/static/css/app.css", "/no/such/page"):
        secure = client.get(url, base_url="https://localhost")
        assert "max-age=" in secure.headers.get("Strict-Transport-Security", ""), url
        assert_security_headers(secure, f"https {url}")
        plain = client.get(url)
        assert "Strict-Transport-Security" not in plain.headers, url


def test_forwarded_headers_are_ignored_unless_a_proxy_is_trusted(app_config, monkeypatch):
    forwarded = {"X-Forwarded-For": "203.0.113.50", "X-Forwarded-Proto": "https"}
    with running_app(app_config) as app:
        response = app.test_client().get("/healthz", headers=forwarded)
        assert "Strict-Transport-Security" not in response.headers
    with running_app({**app_config, "PROXY_FIX": 1}) as app:

        @app.get("/whoami")
        def whoami():
            from flask import request

            from deliberate.ratelimit import address_key

            return {"key": address_key(), "secure": request.is_secure}

        response = app.test_client().get("/whoami", headers=forwarded)
        assert response.get_json() == {"key": "addr:203.0.113.50", "secure": True}
        assert "max-age=" in response.headers.get("Strict-Transport-Security", "")
