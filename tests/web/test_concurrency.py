"""Concurrent voting through a real HTTP server on a file database: no vote lost or doubled.

20 members, each in their own thread with their own login session, vote on 50 statements
(1,000 first votes) through the JSON API while half of them also change votes; then ten
threads race on one member's vote on one statement. Afterwards the database must hold exactly
one row per acknowledged (statement, member) pair with the last acknowledged value, and a
history event for every acknowledged cast that changed something, chained by previous_value.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
from collections import defaultdict
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash
from werkzeug.serving import WSGIRequestHandler, make_server

from deliberate.models import Role, Vote, VoteEvent
from tests.conftest import PASSWORD

MEMBERS = 20
STATEMENTS = 50
CHANGES_PER_CHANGER = 10
RACERS = 10


class QuietHandler(WSGIRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: one connection per member

    def log_request(self, *args, **kwargs):  # keep the test output readable
        pass


@pytest.fixture
def server(app):
    """Serve the test's app (and its database file) over HTTP, one thread per request."""
    srv = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv.server_port
    finally:
        srv.shutdown()
        thread.join(timeout=10)


class Browser:
    """One member's HTTP session: its own keep-alive connection and session cookie."""

    def __init__(self, port: int):
        self.port = port
        self.cookie: str | None = None
        self.conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None, headers=None):
        all_headers = {"User-Agent": "deliberate-concurrency-test", "Accept": "application/json"}
        if self.cookie:
            all_headers["Cookie"] = self.cookie
        all_headers.update(headers or {})
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            self.conn.request(method, path, body=body, headers=all_headers)
            response = self.conn.getresponse()
            data = response.read()
        except Exception:
            self.close()
            raise
        if response.will_close:
            self.close()
        for value in response.headers.get_all("Set-Cookie") or []:
            pair = value.split(";", 1)[0]
            if pair.startswith("session="):
                self.cookie = pair
        return response.status, data

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def login(self, email: str) -> None:
        status, body = self.request(
            "POST",
            "/login",
            urlencode({"email": email, "password": PASSWORD}).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 303 and self.cookie, (status, body[:300])

    def vote(self, round_id: int, statement_id: int, value: int):
        body = json.dumps({"statement_id": statement_id, "value": value}).encode()
        status, data = self.request(
            "POST", f"/api/rounds/{round_id}/votes", body, {"Content-Type": "application/json"}
        )
        return status, (json.loads(data) if data else None)


def check_chain(events: list[VoteEvent], final_value: int) -> None:
    """A pair's history starts with a first vote and each event replaces the one before it."""
    assert events[0].previous_value is None
    for before, after in zip(events, events[1:], strict=False):
        assert after.previous_value == before.value
        assert after.value != before.value
    assert events[-1].value == final_value


def test_concurrent_votes_are_stored_exactly_once(app, db, factory, server):
    org = factory.organisation()
    round_ = factory.round(statements=[f"Statement number {i}" for i in range(STATEMENTS)])
    members = [factory.user(Role.MEMBER, organisation=org) for _ in range(MEMBERS)]
    racer = factory.user(Role.MEMBER, organisation=org)
    # A cheap hash: 21 logins through scrypt would cost seconds and test nothing here.
    cheap = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
    for user in (*members, racer):
        user.password_hash = cheap
    db.session.commit()
    round_id = round_.id
    statement_ids = [s.id for s in round_.statements]
    member_ids = [(m.id, m.email) for m in members]
    racer_id, racer_email = racer.id, racer.email
    # Let go of the SQLite file: an open read transaction here would block the server.
    db.session.close()

    acks: dict[int, list[tuple[int, int, str]]] = defaultdict(list)  # user -> (sid, value, status)
    failures: list[str] = []
    start = threading.Barrier(MEMBERS)

    def member_thread(index: int, user_id: int, email: str) -> None:
        rng = random.Random(index)
        browser = Browser(server)
        try:
            browser.login(email)
            order = statement_ids[:]
            rng.shuffle(order)
            casts = [(sid, rng.choice((-1, 0, 1))) for sid in order]
            if index % 2 == 0:  # half of the members also change votes
                casts += [
                    (sid, rng.choice((-1, 0, 1)))
                    for sid in rng.sample(statement_ids, CHANGES_PER_CHANGER)
                ]
            start.wait(timeout=30)
            for n, (sid, value) in enumerate(casts):
                status, data = browser.vote(round_id, sid, value)
                if status != 200 or not data or data.get("recorded") is not True:
                    failures.append(f"member {index} vote {sid}={value}: {status} {data}")
                    continue
                acks[user_id].append((sid, value, data["status"]))
                if n % 25 == 0:  # mix reads in with the writes
                    status, _ = browser.request("GET", f"/api/rounds/{round_id}/next")
                    if status != 200:
                        failures.append(f"member {index} next: {status}")
        except Exception as error:  # noqa: BLE001 - reported through failures
            failures.append(f"member {index}: {error!r}")
        finally:
            browser.close()

    threads = [
        threading.Thread(target=member_thread, args=(i, uid, email))
        for i, (uid, email) in enumerate(member_ids)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "member threads did not finish"
    assert failures == []

    total_acks = sum(len(a) for a in acks.values())
    assert total_acks >= MEMBERS * STATEMENTS

    # --- every acknowledged vote is stored exactly once, with the last acknowledged value ---
    db.session.expire_all()
    rows = db.session.execute(
        select(Vote.statement_id, Vote.user_id, Vote.value, Vote.round_id)
    ).all()
    stored = {(sid, uid): value for sid, uid, value, _ in rows}
    assert len(stored) == len(rows)  # no pair twice
    assert {rid for *_, rid in rows} == {round_id}
    expected: dict[tuple[int, int], int] = {}
    expected_events: dict[tuple[int, int], list[int]] = defaultdict(list)
    for user_id, user_acks in acks.items():
        for sid, value, status in user_acks:
            pair = (sid, user_id)
            if pair not in expected:
                assert status == "new"
            else:
                assert status == ("unchanged" if expected[pair] == value else "changed")
            if status != "unchanged":
                expected_events[pair].append(value)
            expected[pair] = value
    assert stored == expected
    assert len(stored) == MEMBERS * STATEMENTS

    # --- the history has one event per acknowledged cast that changed something ---
    events = db.session.scalars(select(VoteEvent).order_by(VoteEvent.id)).all()
    changing_acks = sum(1 for a in acks.values() for *_, status in a if status != "unchanged")
    assert len(events) == changing_acks
    assert any(status == "changed" for a in acks.values() for *_, status in a)
    by_pair: dict[tuple[int, int], list[VoteEvent]] = defaultdict(list)
    for event in events:
        by_pair[(event.statement_id, event.user_id)].append(event)
    for pair, pair_events in by_pair.items():
        assert [e.value for e in pair_events] == expected_events[pair]
        check_chain(pair_events, stored[pair])

    # --- ten threads race on the same member's vote on the same statement ---
    db.session.close()
    racer_browser = Browser(server)
    racer_browser.login(racer_email)
    racer_browser.close()
    target = statement_ids[0]
    race_results: list[tuple[int, dict | None]] = []
    race_start = threading.Barrier(RACERS)

    def racer_thread(index: int) -> None:
        browser = Browser(server)
        browser.cookie = racer_browser.cookie
        try:
            race_start.wait(timeout=30)
            race_results.append(browser.vote(round_id, target, (-1, 0, 1)[index % 3]))
        except Exception as error:  # noqa: BLE001
            failures.append(f"racer {index}: {error!r}")
        finally:
            browser.close()

    racers = [threading.Thread(target=racer_thread, args=(i,)) for i in range(RACERS)]
    for thread in racers:
        thread.start()
    for thread in racers:
        thread.join(timeout=60)
    assert failures == []
    assert [status for status, _ in race_results] == [200] * RACERS
    statuses = [data["status"] for _, data in race_results]
    assert statuses.count("new") == 1

    db.session.expire_all()
    racer_rows = db.session.scalars(
        select(Vote).where(Vote.user_id == racer_id, Vote.statement_id == target)
    ).all()
    assert len(racer_rows) == 1
    racer_events = db.session.scalars(
        select(VoteEvent)
        .where(VoteEvent.user_id == racer_id, VoteEvent.statement_id == target)
        .order_by(VoteEvent.id)
    ).all()
    assert len(racer_events) == sum(1 for s in statuses if s != "unchanged")
    check_chain(racer_events, racer_rows[0].value)
    assert db.session.scalar(select(func.count()).select_from(Vote)) == MEMBERS * STATEMENTS + 1
