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
    config = {**app_config, "RATELIMIT_ENABLED": True}
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
