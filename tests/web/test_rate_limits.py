"""Rate limits: every limited endpoint answers 429 with a clear message and Retry-After, per
account and per address; windows end; the database storage is shared by app instances and
processes, increments atomically, and failing storage never fails a request.

The apps here run requests WITHOUT a long-lived app context (as a real server does), so each
request has its own database session, and they use the default storage: the app's database.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from deliberate import create_app, ratelimit
from deliberate.database import configure_sqlite
from deliberate.extensions import db as _db
from deliberate.extensions import limiter
from deliberate.models import RateLimitCounter, Role, Statement, Vote
from deliberate.ratelimit import DatabaseStorage
from tests.conftest import PASSWORD, Factory

ROOT = Path(__file__).resolve().parents[2]

# Limits that never get in the way of a test's set-up.
ROOMY = dict.fromkeys(ratelimit.DEFAULT_LIMITS, "1000 per minute")


@contextmanager
def limited_app(app_config, password_hash, **limits):
    """An app with rate limits on (database storage) and a member, a facilitator and a round."""
    config = {**app_config, "RATELIMIT_ENABLED": True, **ROOMY, **limits}
    config.pop("RATELIMIT_STORAGE_URI", None)
    # Every count written at once, so that two app instances agree exactly (the write-behind
    # default is tested on its own below).
    config.setdefault("RATELIMIT_SYNC_SECONDS", 0)
    app = create_app(config)
    with app.app_context():
        make = Factory(_db, password_hash)
        org = make.organisation("North")
        people = {
            "ana": make.user(Role.MEMBER, organisation=org, email="ana@example.org"),
            "ben": make.user(Role.MEMBER, organisation=org, email="ben@example.org"),
            "cat": make.user(Role.MEMBER, organisation=org, email="cat@example.org"),
            "fay": make.user(Role.FACILITATOR, email="fay@example.org"),
        }
        round_ = make.round(statements=["Housing first", "More legal aid"])
        app.config["TEST_IDS"] = {
            "round": round_.id,
            "statement": _db.session.scalars(
                select(Statement.id).where(Statement.round_id == round_.id)
            ).first(),
            **{name: user.id for name, user in people.items()},
        }
        _db.session.remove()
    try:
        yield app
    finally:
        with app.app_context():
            _db.session.remove()
            _db.engine.dispose()


def logged_in(app, name: str, address: str = "127.0.0.1"):
    """A client logged in as `name` from `address` (sessions are tied to their address)."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    response = client.post("/login", data={"email": f"{name}@example.org", "password": PASSWORD})
    assert response.status_code == 303, response.get_data(as_text=True)[:300]
    return client


def at(address: str) -> dict:
    return {"environ_base": {"REMOTE_ADDR": address}}


def assert_limited(response, *, json: bool = False) -> None:
    assert response.status_code == 429, response.get_data(as_text=True)[:300]
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and int(retry_after) >= 0
    if json:
        message = response.get_json()["error"]["message"]
    else:
        assert response.mimetype == "text/html"
        message = response.get_data(as_text=True)
        assert "<main" in message  # the site's error page
    assert "Too many requests" in message and "try again" in message


def counters(app) -> dict[str, int]:
    with app.app_context():
        rows = _db.session.execute(select(RateLimitCounter.key, RateLimitCounter.count)).all()
        _db.session.remove()
    return dict(rows)


# --- each endpoint: per account and per address -----------------------------------------------


def test_login_per_account_and_per_address(app_config, password_hash):
    limits = {"RATELIMIT_LOGIN": "3 per minute", "RATELIMIT_LOGIN_PER_ADDRESS": "5 per minute"}
    with limited_app(app_config, password_hash, **limits) as app:
        client = app.test_client()
        # The same account from four addresses: the fourth try is refused, even with the
        # right password.
        for n in range(3):
            wrong = {"email": "ana@example.org", "password": "a wrong guess"}
            assert client.post("/login", data=wrong, **at(f"10.0.0.{n}")).status_code == 400
        right = {"email": " ANA@example.org", "password": PASSWORD}
        assert_limited(client.post("/login", data=right, **at("10.0.0.9")))
        # Other accounts from one address: five tries, then that address is refused.
        for name in ("ben", "cat", "fay", "x1", "x2"):
            data = {"email": f"{name}@example.org", "password": "a wrong guess"}
            assert client.post("/login", data=data, **at("10.0.1.1")).status_code == 400
        data = {"email": "ben@example.org", "password": PASSWORD}
        assert_limited(client.post("/login", data=data, **at("10.0.1.1")))
        # Ben from elsewhere is fine; only POSTs count.
        assert client.post("/login", data=data, **at("10.0.2.1")).status_code == 303
        assert client.get("/login", **at("10.0.1.1")).status_code in (200, 302)
        # The counters are in the database, under hashed keys (no email address in them).
        keys = counters(app)
        assert any("login:account" in key for key in keys)
        assert not any("@" in key for key in keys)


def test_invitation_and_reset_links_per_link_and_per_address(app_config, password_hash):
    limits = {"RATELIMIT_INVITE": "2 per minute", "RATELIMIT_INVITE_PER_ADDRESS": "4 per minute"}
    with limited_app(app_config, password_hash, **limits) as app:
        client = app.test_client()
        for kind in ("invite", "reset"):
            # One link guessed from many addresses.
            for n in range(2):
                response = client.post(f"/{kind}/some-token", data={}, **at(f"10.1.0.{n}"))
                assert response.status_code == 400
            assert_limited(client.post(f"/{kind}/some-token", data={}, **at("10.1.0.9")))
            # Many links from one address.
            for n in range(4):
                response = client.post(f"/{kind}/token-{n}", data={}, **at("10.1.1.1"))
                assert response.status_code == 400
            assert_limited(client.post(f"/{kind}/token-9", data={}, **at("10.1.1.1")))


def test_votes_per_member_and_per_address(app_config, password_hash):
    limits = {"RATELIMIT_VOTE": "3 per minute", "RATELIMIT_VOTE_PER_ADDRESS": "5 per minute"}
    with limited_app(app_config, password_hash, **limits) as app:
        ids = app.config["TEST_IDS"]
        url = f"/rounds/{ids['round']}/vote"
        vote = {"statement_id": ids["statement"], "value": "1"}
        # One member on four devices, each at its own address: the fourth vote is refused.
        devices = [logged_in(app, "ana", f"10.2.0.{n}") for n in range(4)]
        for device in devices[:3]:
            assert device.post(url, data=vote).status_code == 303
        assert_limited(devices[3].post(url, data=vote))
        # Two other members behind one address: five votes between them, then refused.
        ben, cat = logged_in(app, "ben", "10.2.1.1"), logged_in(app, "cat", "10.2.1.1")
        statuses = [member.post(url, data=vote).status_code for member in (ben, cat, ben, cat, ben)]
        assert statuses == [303] * 5
        assert_limited(cat.post(url, data=vote))
        with app.app_context():
            assert _db.session.scalar(select(func.count()).select_from(Vote)) == 3
            _db.session.remove()


def test_json_votes_are_limited_with_a_json_answer(app_config, password_hash):
    with limited_app(app_config, password_hash, RATELIMIT_VOTE="2 per minute") as app:
        ids = app.config["TEST_IDS"]
        ana = logged_in(app, "ana")
        body = {"statement_id": ids["statement"], "value": 1}
        url = f"/api/rounds/{ids['round']}/votes"
        assert [ana.post(url, json=body).status_code for _ in range(2)] == [200, 200]
        assert_limited(ana.post(url, json=body), json=True)


def test_statements_per_member_and_per_address(app_config, password_hash):
    limits = {
        "RATELIMIT_STATEMENT": "2 per hour",
        "RATELIMIT_STATEMENT_PER_ADDRESS": "3 per hour",
    }
    with limited_app(app_config, password_hash, **limits) as app:
        ids = app.config["TEST_IDS"]
        url = f"/rounds/{ids['round']}/statements"
        devices = [logged_in(app, "ana", f"10.3.0.{n}") for n in range(3)]
        for n, device in enumerate(devices[:2]):
            data = {"text": f"Open a welcome centre in town number {n}"}
            assert device.post(url, data=data).status_code == 303
        assert_limited(devices[2].post(url, data={"text": "One statement too many"}))
        ben, cat = logged_in(app, "ben", "10.3.1.1"), logged_in(app, "cat", "10.3.1.1")
        for n, member in enumerate((ben, cat, ben)):
            data = {"text": f"Pool the legal aid budget, idea {n}"}
            assert member.post(url, data=data).status_code == 303
        assert_limited(cat.post(url, data={"text": "Another one"}))
        with app.app_context():
            written = _db.session.scalar(
                select(func.count()).select_from(Statement).where(Statement.origin == "member")
            )
            assert written == 5
            _db.session.remove()


def test_exports_per_user_and_per_address(app_config, password_hash):
    limits = {"RATELIMIT_EXPORT": "2 per minute", "RATELIMIT_EXPORT_PER_ADDRESS": "3 per minute"}
    with limited_app(app_config, password_hash, **limits) as app:
        ids = app.config["TEST_IDS"]
        csv_url = f"/rounds/{ids['round']}/export/votes.csv"
        json_url = f"/rounds/{ids['round']}/export/snapshot.json"
        # Every download shares the user's count, whatever the format and address.
        devices = [logged_in(app, "fay", f"10.4.0.{n}") for n in range(3)]
        assert devices[0].get(csv_url).status_code == 200
        assert devices[1].get(json_url).status_code < 429
        assert_limited(devices[2].get(csv_url))
        # From one address, everyone's requests count (members are refused, but counted).
        ana, ben = logged_in(app, "ana", "10.4.1.1"), logged_in(app, "ben", "10.4.1.1")
        statuses = [member.get(csv_url).status_code for member in (ana, ben, ana)]
        assert statuses == [403] * 3
        assert_limited(ben.get(csv_url))


def test_limits_end_with_their_window(app_config, password_hash, monkeypatch):
    with limited_app(app_config, password_hash, RATELIMIT_LOGIN="2 per minute") as app:
        client = app.test_client()
        data = {"email": "ana@example.org", "password": "a wrong guess"}
        assert [client.post("/login", data=data).status_code for _ in range(2)] == [400, 400]
        assert_limited(client.post("/login", data=data))
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 61)
        right = {"email": "ana@example.org", "password": PASSWORD}
        assert client.post("/login", data=right).status_code == 303


def test_limit_values_come_from_the_environment(app_config, monkeypatch):
    monkeypatch.setenv("DELIBERATE_RATELIMIT_VOTE", "5000 per minute")
    monkeypatch.setenv("DELIBERATE_RATELIMIT_LOGIN_PER_ADDRESS", "100 per second")
    monkeypatch.delenv("DELIBERATE_RATELIMIT_STORAGE_URI", raising=False)
    config = {k: v for k, v in app_config.items() if not k.startswith("RATELIMIT_")}
    app = create_app(config)
    try:
        assert app.config["RATELIMIT_VOTE"] == "5000 per minute"
        assert app.config["RATELIMIT_LOGIN_PER_ADDRESS"] == "100 per second"
        assert app.config["RATELIMIT_STATEMENT"] == ratelimit.DEFAULT_LIMITS["RATELIMIT_STATEMENT"]
        assert app.config["RATELIMIT_STORAGE_URI"] == "database://"
    finally:
        with app.app_context():
            _db.engine.dispose()


# --- the database storage --------------------------------------------------------------------


def test_two_app_instances_share_the_counters(app_config, password_hash):
    limits = {"RATELIMIT_LOGIN": "3 per minute"}
    with limited_app(app_config, password_hash, **limits) as first:
        exact = {"RATELIMIT_ENABLED": True, "RATELIMIT_SYNC_SECONDS": 0}
        second = create_app({**app_config, **exact, **ROOMY, **limits})
        try:
            data = {"email": "ana@example.org", "password": "a wrong guess"}
            one, two = first.test_client(), second.test_client()
            assert one.post("/login", data=data).status_code == 400
            assert two.post("/login", data=data).status_code == 400
            assert one.post("/login", data=data).status_code == 400
            assert_limited(two.post("/login", data={**data, "password": PASSWORD}))
            with second.app_context():
                assert _db.engine is not None
            assert max(counters(first).values()) == 4
        finally:
            with second.app_context():
                _db.engine.dispose()


def storage_engine(url: str):
    engine = create_engine(url)
    configure_sqlite(engine)
    return engine


@pytest.fixture
def storages(app):
    """Two storages on two engines (two connection pools) sharing the test's database."""
    url = _db.engine.url.render_as_string(hide_password=False)
    engines = [storage_engine(url), storage_engine(url)]
    yield [DatabaseStorage("database://", engine=engine) for engine in engines]
    for engine in engines:
        engine.dispose()


class FakeClock:
    def __init__(self):
        self.now = time.time()

    def time(self) -> float:
        return self.now


def test_storage_counts_expires_and_clears(storages, monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(ratelimit, "time", clock)
    one, two = storages
    assert one.check() and two.check()
    assert one.get("k") == 0 and one.get_expiry("k") == clock.now
    assert one.incr("k", 60) == 1
    assert two.incr("k", 60) == 2
    assert two.incr("k", 60, amount=3) == 5
    assert one.get("k") == 5 and two.get("k") == 5
    assert one.get_expiry("k") == pytest.approx(clock.now + 60)
    clock.now += 30
    assert one.incr("k", 60) == 6  # the same window: its end does not move
    assert two.get_expiry("k") == pytest.approx(clock.now + 30)
    clock.now += 31  # the window has ended
    assert one.get("k") == 0
    assert two.incr("k", 60) == 1
    assert one.get_expiry("k") == pytest.approx(clock.now + 60)
    one.incr("other", 10)
    two.clear("k")
    assert one.get("k") == 0 and one.get("other") == 1
    clock.now += 100
    assert one.delete_expired() == 1  # "other" has expired; nothing else is left
    one.incr("a", 60)
    one.incr("b", 60)
    assert two.reset() == 2
    assert one.get("a") == 0


def test_storage_increments_are_atomic_across_connections(storages):
    errors: list[BaseException] = []

    def hammer(storage):
        try:
            for _ in range(25):
                storage.incr("shared", 60)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=hammer, args=(s,)) for s in storages * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert storages[0].get("shared") == 100


@pytest.mark.xdist_group("ratelimit-processes")
def test_storage_is_shared_between_processes(storages):
    url = _db.engine.url.render_as_string(hide_password=False)
    script = textwrap.dedent(
        f"""
        from sqlalchemy import create_engine
        from deliberate.database import configure_sqlite
        from deliberate.ratelimit import DatabaseStorage
        engine = create_engine({url!r})
        configure_sqlite(engine)
        storage = DatabaseStorage("database://", engine=engine)
        for _ in range(30):
            storage.incr("across", 60)
        engine.dispose()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)  # noqa: S603
    for _ in range(30):
        storages[0].incr("across", 60)
    assert child.wait(timeout=60) == 0
    assert storages[1].get("across") == 60


@pytest.mark.xdist_group("ratelimit-processes")
def test_a_failing_storage_never_fails_a_request(app_config, password_hash):
    limits = {"RATELIMIT_LOGIN": "2 per minute"}
    with limited_app(app_config, password_hash, **limits) as app:
        with app.app_context():
            _db.session.execute(text("DROP TABLE rate_limit_counters"))
            _db.session.commit()
            _db.session.remove()
        try:
            client = app.test_client()
            data = {"email": "ana@example.org", "password": "a wrong guess"}
            # The counters fall back to this process's memory: the limit still holds.
            assert [client.post("/login", data=data).status_code for _ in range(2)] == [400] * 2
            assert client.post("/login", data=data).status_code == 429
        finally:
            limiter._storage_dead = False  # the next test's app starts with a healthy storage


def test_key_functions_read_no_database(app_config, password_hash):
    with limited_app(app_config, password_hash) as app:
        ana = logged_in(app, "ana")
        with ana.session_transaction() as session:
            cookie_user = session["_user_id"]
        with app.test_request_context(
            "/x", environ_base={"REMOTE_ADDR": "192.0.2.1"}, headers={"Authorization": "Bearer t"}
        ):
            from flask import session

            assert ratelimit.address_key() == "addr:192.0.2.1"
            assert ratelimit.account_key().startswith("token:")
            session["_user_id"] = cookie_user
            assert ratelimit.account_key() == f"user:{app.config['TEST_IDS']['ana']}"
        with app.test_request_context("/x", environ_base={"REMOTE_ADDR": "192.0.2.1"}):
            assert ratelimit.account_key() == "anon:192.0.2.1"


def test_token_api_votes_and_statements_are_limited_per_member(app_config, password_hash):
    from deliberate.models import User
    from deliberate.services import api_tokens

    limits = {"RATELIMIT_VOTE": "2 per minute", "RATELIMIT_STATEMENT": "1 per hour"}
    with limited_app(app_config, password_hash, **limits) as app:
        ids = app.config["TEST_IDS"]
        with app.app_context():
            secret = api_tokens.create_token(_db.session.get(User, ids["ana"]), "Script").secret
            _db.session.remove()
        client = app.test_client()
        headers = {"Authorization": f"Bearer {secret}"}
        url = f"/api/v1/rounds/{ids['round']}/votes"
        body = {"statement_id": ids["statement"], "value": 1}
        for n in range(2):
            response = client.post(url, json=body, headers=headers, **at(f"10.5.0.{n}"))
            assert response.status_code == 200, response.get_data(as_text=True)[:300]
        assert_limited(client.post(url, json=body, headers=headers, **at("10.5.0.9")), json=True)
        # The member's browser shares the count with their token.
        browser = logged_in(app, "ana", "10.5.1.1")
        vote = {"statement_id": ids["statement"], "value": "0"}
        assert_limited(browser.post(f"/rounds/{ids['round']}/vote", data=vote))
        url = f"/api/v1/rounds/{ids['round']}/statements"
        text = {"text": "Publish the budget for the welcome centres"}
        assert client.post(url, json=text, headers=headers).status_code == 201
        assert_limited(client.post(url, json={"text": "And one more"}, headers=headers), json=True)
