"""The vote fast path (web/fast_vote.py) answers exactly as the view does.

Each test runs the same requests against two apps on two identical databases, one with the
fast path and one without (FAST_VOTE_PATH off: every vote goes through the Flask view), with
CSRF protection and rate limits on, and compares the answers (status, JSON, headers) and what
ended up in the database. It also checks which requests the fast path answered itself and
which it handed to the view, so a fast path that silently handed everything over would fail.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

import pytest
from sqlalchemy import select

from deliberate import create_app
from deliberate.extensions import db as _db
from deliberate.models import Organisation, Round, Statement, User, Vote, VoteEvent
from deliberate.services.passwords import hash_password
from deliberate.web.fast_vote import fast_path
from tests.conftest import PASSWORD, make_config

CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')
# Headers whose value is a time: compared by presence only.
TIMED = {"X-RateLimit-Reset", "Retry-After", "Date"}


@dataclass
class World:
    app: object
    ids: dict[str, int] = field(default_factory=dict)

    @property
    def fast(self):
        return fast_path(self.app)


def build(tmp_path, database_url, *, fast: bool, **overrides) -> World:
    """An app with CSRF and rate limits on, and the same rows on every call (same ids)."""
    config = make_config(
        tmp_path,
        database_url,
        WTF_CSRF_ENABLED=True,
        RATELIMIT_ENABLED=True,
        RATELIMIT_STORAGE_URI="memory://",
        FAST_VOTE_PATH=fast,
        **overrides,
    )
    app = create_app(config)
    world = World(app)
    with app.app_context():
        org = Organisation(name="Tenants United")
        _db.session.add(org)
        _db.session.flush()
        people = {}
        for key, role in (("amy", "member"), ("ben", "member"), ("cat", "member")):
            user = User(
                email=f"{key}@example.org",
                name=key.title(),
                role=role,
                organisation_id=org.id,
                password_hash=hash_password(PASSWORD),
            )
            _db.session.add(user)
            people[key] = user
        open_round = Round(question="What first?", state="open", moderation="pre")
        closed = Round(question="Closed?", state="closed", moderation="pre")
        _db.session.add_all([open_round, closed])
        _db.session.flush()

        def statement(round_, text, author=None, state="accepted") -> Statement:
            return Statement(
                round_id=round_.id,
                text=text,
                normalised_text=text.lower(),
                origin="seed" if author is None else "member",
                author_id=None if author is None else people[author].id,
                moderation_state=state,
            )

        texts = ["More buses", "Fewer cars", "Cheaper rent", "Later libraries"]
        statements = [statement(open_round, text) for text in texts]
        own = statement(open_round, "Amy's idea", author="amy")
        pending = statement(open_round, "Not yet moderated", author="ben", state="pending")
        shut = statement(closed, "Too late")
        _db.session.add_all([*statements, own, pending, shut])
        _db.session.commit()
        world.ids = {
            "round": open_round.id,
            "closed": closed.id,
            "s": [s.id for s in statements],
            "own": own.id,
            "pending": pending.id,
            "shut": shut.id,
            **{key: user.id for key, user in people.items()},
        }
        _db.session.remove()
    return world


def log_in(world: World, email: str, https: bool = False):
    client = world.app.test_client()
    client.base = {"base_url": "https://vote.example.org"} if https else {}
    page = client.get("/login", **client.base).get_data(as_text=True)
    token = CSRF_META.search(page).group(1)
    response = client.post(
        "/login",
        data={"email": email, "password": PASSWORD, "csrf_token": token},
        headers={"Referer": "https://vote.example.org/login"} if https else {},
        **client.base,
    )
    assert response.status_code == 303, response.get_data(as_text=True)[:300]
    page = client.get(f"/rounds/{world.ids['round']}", **client.base).get_data(as_text=True)
    client.csrf = CSRF_META.search(page).group(1)
    return client


def vote(client, round_id, statement_id, value, **kwargs):
    headers = {"X-CSRFToken": client.csrf, **kwargs.pop("headers", {})}
    random.seed(7)  # routing's draw: the same on both apps
    return client.post(
        f"/api/rounds/{round_id}/votes",
        json={"statement_id": statement_id, "value": value},
        headers=headers,
        **getattr(client, "base", {}),
        **kwargs,
    )


def _header(name: str, value: str) -> str:
    if name in TIMED:
        return "<time>"
    if name == "Set-Cookie":  # the cookie's name and attributes; its value is signed anew
        cookie, _, attributes = value.partition(";")
        empty = cookie.endswith("=")
        return f"{cookie.split('=', 1)[0]}={'' if empty else '<value>'};{attributes}"
    return value


def observed(response) -> tuple:
    headers = sorted((name, _header(name, value)) for name, value in response.headers.items())
    return response.status_code, response.get_json(silent=True), headers


def stored(world: World) -> tuple:
    with world.app.app_context():
        votes = _db.session.execute(
            select(Vote.user_id, Vote.statement_id, Vote.value).order_by(Vote.id)
        ).all()
        events = _db.session.execute(
            select(VoteEvent.user_id, VoteEvent.statement_id, VoteEvent.value).order_by(
                VoteEvent.id
            )
        ).all()
        _db.session.remove()
    return [tuple(v) for v in votes], [tuple(e) for e in events]


def both(tmp_path, new_database_url, script, **overrides):
    """Run `script(world)` on the fast-path app and on the view-only app; return both runs'
    answers, stored rows and fast-path counters."""
    runs = {}
    for fast in (True, False):
        world = build(tmp_path / str(fast), new_database_url(), fast=fast, **overrides)
        answers = [observed(r) for r in script(world)]
        counters = (world.fast.answered, world.fast.handed_over) if fast else None
        runs[fast] = (answers, stored(world), counters)
        with world.app.app_context():
            _db.engine.dispose()
    return runs


def assert_same(runs):
    fast_answers, fast_rows, _ = runs[True]
    view_answers, view_rows, _ = runs[False]
    assert len(fast_answers) == len(view_answers)
    for i, (a, b) in enumerate(zip(fast_answers, view_answers, strict=True)):
        assert a == b, f"answer {i} differs:\nfast: {a}\nview: {b}"
    assert fast_rows == view_rows


def test_ordinary_votes_are_answered_by_the_fast_path_as_by_the_view(tmp_path, new_database_url):
    def script(world):
        amy = log_in(world, "amy@example.org")
        s = world.ids["s"]
        return [
            vote(amy, world.ids["round"], s[0], 1),  # new
            vote(amy, world.ids["round"], s[1], -1),  # new
            vote(amy, world.ids["round"], s[1], 0),  # changed
            vote(amy, world.ids["round"], s[1], 0),  # unchanged
            vote(amy, world.ids["round"], s[2], 1),
            vote(amy, world.ids["round"], s[3], 1),  # the last one: next is null
        ]

    runs = both(tmp_path, new_database_url, script)
    assert_same(runs)
    answers = runs[True][0]
    assert [a[1]["status"] for a in answers] == ["new", "new", "changed", "unchanged", "new", "new"]
    progress = answers[-1][1]["progress"]
    assert answers[-1][1]["next"] is None and progress["voted"] == progress["total"]
    header_names = {name for name, _ in answers[0][2]}
    assert {"Content-Security-Policy", "X-RateLimit-Limit", "Vary", "Cache-Control"} <= header_names
    assert runs[True][2] == (6, 0)  # all six answered by the fast path
    votes, events = runs[True][1]
    assert len(votes) == 4 and len(events) == 5  # the unchanged vote wrote nothing


def test_refusals_are_the_views_answers_and_write_nothing(tmp_path, new_database_url):
    def script(world):
        amy = log_in(world, "amy@example.org")
        ids, s = world.ids, world.ids["s"]
        return [
            vote(amy, ids["round"], 10**6, 1),  # no such statement
            vote(amy, ids["round"], ids["pending"], 1),  # not visible
            vote(amy, ids["round"], ids["own"], 1),  # own statement
            vote(amy, ids["closed"], ids["shut"], 1),  # round closed
            vote(amy, 10**6, s[0], 1),  # no such round
            vote(amy, ids["round"], ids["shut"], 1),  # a statement of another round
            vote(amy, ids["round"], s[0], 2),  # bad value (the view's message)
            vote(amy, ids["round"], s[0], 1, headers={"X-CSRFToken": "forged"}),
            amy.post(f"/api/rounds/{ids['round']}/votes", json={"statement_id": s[0], "value": 1}),
            amy.post(  # not JSON
                f"/api/rounds/{ids['round']}/votes",
                data='{"statement_id": 1, "value": 1}',
                headers={"X-CSRFToken": amy.csrf, "Content-Type": "text/plain"},
            ),
            amy.post(  # a NUL character in the body
                f"/api/rounds/{ids['round']}/votes",
                json={"statement_id": s[0], "value": 1, "note": "a\x00b"},
                headers={"X-CSRFToken": amy.csrf},
            ),
            world.app.test_client().post(  # nobody logged in
                f"/api/rounds/{ids['round']}/votes",
                json={"statement_id": s[0], "value": 1},
                headers={"X-CSRFToken": amy.csrf},
            ),
        ]

    runs = both(tmp_path, new_database_url, script)
    assert_same(runs)
    statuses = [a[0] for a in runs[True][0]]
    assert statuses == [404, 404, 403, 409, 404, 404, 400, 400, 400, 400, 400, 400]
    assert runs[True][1] == ([], [])
    assert runs[True][2] == (0, 12)  # every one handed to the view


def test_ended_sessions_are_refused(tmp_path, new_database_url):
    """A password change (auth version) or a deactivation ends the session at once; a session
    cookie used from another browser trips Flask-Login's session protection."""

    def script(world):
        amy = log_in(world, "amy@example.org")
        ben = log_in(world, "ben@example.org")
        cat = log_in(world, "cat@example.org")
        s = world.ids["s"]
        answers = [vote(amy, world.ids["round"], s[0], 1), vote(ben, world.ids["round"], s[0], 1)]
        with world.app.app_context():
            _db.session.get(User, world.ids["amy"]).auth_version += 1
            _db.session.get(User, world.ids["ben"]).active = False
            _db.session.commit()
            _db.session.remove()
        answers += [
            vote(amy, world.ids["round"], s[1], 1),
            vote(ben, world.ids["round"], s[1], 1),
            vote(cat, world.ids["round"], s[1], 1, headers={"User-Agent": "another browser"}),
            vote(cat, world.ids["round"], s[1], 1),  # that request logged the session out
        ]
        return answers

    runs = both(tmp_path, new_database_url, script)
    assert_same(runs)
    assert [a[0] for a in runs[True][0]] == [200, 200, 401, 401, 401, 401]
    assert runs[True][2] == (2, 4)


def test_a_limit_without_room_is_the_views_429_and_counted_once(tmp_path, new_database_url):
    def script(world):
        amy = log_in(world, "amy@example.org")
        s = world.ids["s"]
        answers = [vote(amy, world.ids["round"], s[i % 4], i % 2) for i in range(5)]
        answers.append(vote(amy, world.ids["round"], 10**6, 1))  # refused: counted once
        return answers

    runs = both(tmp_path, new_database_url, script, RATELIMIT_VOTE="4 per minute")
    assert_same(runs)
    answers = runs[True][0]
    assert [a[0] for a in answers] == [200, 200, 200, 200, 429, 429]
    # The headers show the per-address limit (2400 a minute): each vote counted once.
    remaining = [dict(a[2]).get("X-RateLimit-Remaining") for a in answers]
    assert remaining == ["2399", "2398", "2397", "2396", "0", "0"]  # then the breached one
    assert runs[True][2] == (4, 2)


def test_a_refused_vote_is_counted_once_against_the_limit(tmp_path, new_database_url):
    """A vote the fast path counted and then handed to the view (here: not allowed) is not
    counted again by the view's limits."""

    def script(world):
        amy = log_in(world, "amy@example.org")
        ids = world.ids
        answers = [vote(amy, ids["round"], ids["own"], 1) for _ in range(3)]
        answers.append(vote(amy, ids["round"], ids["s"][0], 1))
        return answers

    runs = both(tmp_path, new_database_url, script, RATELIMIT_VOTE="4 per minute")
    assert_same(runs)
    answers = runs[True][0]
    assert [a[0] for a in answers] == [403, 403, 403, 200]
    remaining = [dict(a[2])["X-RateLimit-Remaining"] for a in answers]
    assert remaining == ["2399", "2398", "2397", "2396"]


def test_https_needs_a_same_origin_referrer_as_flask_wtf_does(tmp_path, new_database_url):
    def script(world):
        amy = log_in(world, "amy@example.org", https=True)
        url = "https://vote.example.org/rounds/1"
        s = world.ids["s"]
        return [
            vote(amy, world.ids["round"], s[0], 1, headers={"Referer": url}),
            vote(amy, world.ids["round"], s[1], 1),  # no Referer
            vote(amy, world.ids["round"], s[1], 1, headers={"Referer": "https://evil.example/"}),
        ]

    runs = both(tmp_path, new_database_url, script, SESSION_COOKIE_SECURE=True)
    assert_same(runs)
    answers = runs[True][0]
    assert [a[0] for a in answers] == [200, 400, 400]
    assert "Strict-Transport-Security" in dict(answers[0][2])
    assert runs[True][2] == (1, 2)


def test_unusual_requests_are_handed_over_and_answered_by_the_view(tmp_path, new_database_url):
    def script(world):
        amy = log_in(world, "amy@example.org")
        ids, s = world.ids, world.ids["s"]
        random.seed(7)
        return [
            amy.post(  # a query string
                f"/api/rounds/{ids['round']}/votes?x=1",
                json={"statement_id": s[0], "value": 1},
                headers={"X-CSRFToken": amy.csrf},
            ),
            amy.post(  # the charset parameter is fine
                f"/api/rounds/{ids['round']}/votes",
                data=f'{{"statement_id": {s[1]}, "value": -1}}',
                headers={
                    "X-CSRFToken": amy.csrf,
                    "Content-Type": "application/json; charset=utf-8",
                },
            ),
        ]

    runs = both(tmp_path, new_database_url, script)
    assert_same(runs)
    assert [a[0] for a in runs[True][0]] == [200, 200]
    assert runs[True][2] == (1, 1)


def test_the_fast_path_can_be_turned_off(tmp_path, new_database_url):
    world = build(tmp_path, new_database_url(), fast=False)
    assert world.fast is None
    amy = log_in(world, "amy@example.org")
    assert vote(amy, world.ids["round"], world.ids["s"][0], 1).status_code == 200
    with world.app.app_context():
        _db.engine.dispose()


@pytest.mark.parametrize("cookie", ["not-a-session", ""])
def test_a_bad_session_cookie_is_the_views_401(tmp_path, new_database_url, cookie):
    def script(world):
        client = world.app.test_client()
        client.set_cookie("session", cookie)
        return [
            client.post(
                f"/api/rounds/{world.ids['round']}/votes",
                json={"statement_id": world.ids["s"][0], "value": 1},
                headers={"X-CSRFToken": "x"},
            )
        ]

    runs = both(tmp_path, new_database_url, script)
    assert_same(runs)
    assert runs[True][0][0][0] == 400  # CSRF first, as the view: no session token
