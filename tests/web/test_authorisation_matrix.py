"""The authorisation matrix: every route x every kind of visitor -> the expected status.

The table below is the specification. Each (method, rule) of `app.url_map` (static aside) has a
row giving the status for: anonymous, a member of organisation A, a member of organisation B
(the rounds under test are for organisation A only), leadership, a facilitator and an admin.
`LOGIN` means a redirect to the login page. For POST routes, EFFECTS also says whose request
actually changes the database, so that a refusal answered with a redirect and a flash message
is told apart from a success.

Every request gets fresh sample objects (rounds, statements, people, tokens), so requests do
not depend on each other: the facilitator closing a round does not change what the admin gets.
`test_every_route_is_in_the_matrix` fails when a route is added without a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from urllib.parse import urlsplit

import pytest
from sqlalchemy import func, select
from werkzeug.security import generate_password_hash

from deliberate.models import (
    ApiToken,
    AuditEvent,
    GroupName,
    Invitation,
    Organisation,
    Role,
    Round,
    RoundState,
    Statement,
    User,
    Vote,
)
from deliberate.services import invitations
from tests.conftest import PASSWORD, login

# The visitors, in the order of the table's columns.
ANON, MEMBER, OTHER_ORG, LEADERSHIP, FACILITATOR, ADMIN = (
    "anonymous",
    "member",
    "other_org",
    "leadership",
    "facilitator",
    "admin",
)
VISITORS = (ANON, MEMBER, OTHER_ORG, LEADERSHIP, FACILITATOR, ADMIN)
LOGIN = "login"  # 302 to /login?next=...


def row(anonymous, member, other_org, leadership, facilitator, admin) -> dict[str, object]:
    return dict(
        zip(VISITORS, (anonymous, member, other_org, leadership, facilitator, admin), strict=True)
    )


# (method, rule) -> expected status per visitor.
MATRIX: dict[tuple[str, str], dict[str, object]] = {
    # --- public
    ("GET", "/healthz"): row(200, 200, 200, 200, 200, 200),
    ("GET", "/"): row(LOGIN, 302, 302, 302, 302, 302),
    ("GET", "/login"): row(200, 302, 302, 302, 302, 302),
    # Wrong credentials: a 400 with the form again, for anyone.
    ("POST", "/login"): row(400, 400, 400, 400, 400, 400),
    ("POST", "/logout"): row(303, 303, 303, 303, 303, 303),
    # Invitation and reset links work for whoever holds them.
    ("GET", "/invite/<token>"): row(200, 200, 200, 200, 200, 200),
    ("POST", "/invite/<token>"): row(303, 303, 303, 303, 303, 303),
    ("GET", "/reset/<token>"): row(200, 200, 200, 200, 200, 200),
    ("POST", "/reset/<token>"): row(303, 303, 303, 303, 303, 303),
    # --- any logged-in account
    ("GET", "/account"): row(LOGIN, 200, 200, 200, 200, 200),
    ("POST", "/account"): row(LOGIN, 303, 303, 303, 303, 303),
    ("POST", "/account/logout-everywhere"): row(LOGIN, 303, 303, 303, 303, 303),
    ("GET", "/rounds"): row(LOGIN, 200, 200, 200, 200, 200),
    # --- a round for organisation A: B's member may not know it exists
    ("GET", "/rounds/<int:round_id>"): row(LOGIN, 200, 404, 200, 200, 200),
    ("GET", "/rounds/<int:round_id>/votes"): row(LOGIN, 200, 404, 200, 200, 200),
    ("POST", "/rounds/<int:round_id>/vote"): row(LOGIN, 303, 404, 303, 303, 303),
    ("POST", "/rounds/<int:round_id>/statements"): row(LOGIN, 303, 404, 403, 403, 403),
    ("GET", "/api/rounds/<int:round_id>/next"): row(401, 200, 404, 200, 200, 200),
    ("POST", "/api/rounds/<int:round_id>/votes"): row(401, 200, 404, 403, 403, 403),
    # --- facilitators and admins
    ("GET", "/facilitate/"): row(LOGIN, 403, 403, 403, 200, 200),
    ("GET", "/facilitate/audit"): row(LOGIN, 403, 403, 403, 200, 200),
    ("GET", "/facilitate/rounds/new"): row(LOGIN, 403, 403, 403, 200, 200),
    ("POST", "/facilitate/rounds/new"): row(LOGIN, 403, 403, 403, 303, 303),
    ("GET", "/facilitate/rounds/<int:round_id>"): row(LOGIN, 403, 403, 403, 200, 200),
    ("GET", "/facilitate/rounds/<int:round_id>/edit"): row(LOGIN, 403, 403, 403, 200, 200),
    ("POST", "/facilitate/rounds/<int:round_id>/edit"): row(LOGIN, 403, 403, 403, 303, 303),
    ("POST", "/facilitate/rounds/<int:round_id>/open"): row(LOGIN, 403, 403, 403, 303, 303),
    ("POST", "/facilitate/rounds/<int:round_id>/close"): row(LOGIN, 403, 403, 403, 303, 303),
    ("POST", "/facilitate/rounds/<int:round_id>/publish"): row(LOGIN, 403, 403, 403, 303, 303),
    ("POST", "/facilitate/rounds/<int:round_id>/seed"): row(LOGIN, 403, 403, 403, 303, 303),
    ("GET", "/facilitate/rounds/<int:round_id>/moderation"): row(LOGIN, 403, 403, 403, 200, 200),
    ("POST", "/facilitate/statements/<int:statement_id>/accept"): row(
        LOGIN, 403, 403, 403, 303, 303
    ),
    ("POST", "/facilitate/statements/<int:statement_id>/reject"): row(
        LOGIN, 403, 403, 403, 303, 303
    ),
    ("POST", "/facilitate/statements/<int:statement_id>/correct"): row(
        LOGIN, 403, 403, 403, 303, 303
    ),
    ("POST", "/facilitate/statements/<int:statement_id>/merge"): row(
        LOGIN, 403, 403, 403, 303, 303
    ),
    ("GET", "/facilitate/rounds/<int:round_id>/next"): row(LOGIN, 403, 403, 403, 200, 200),
    ("POST", "/facilitate/rounds/<int:round_id>/next"): row(LOGIN, 403, 403, 403, 303, 303),
    # Comparing two rounds: facilitators and leadership.
    ("GET", "/facilitate/compare"): row(LOGIN, 403, 403, 200, 200, 200),
    # The round report: staff always; a member of A who has not voted yet may not (the round's
    # results setting is "after voting"); B's member may not know the round exists.
    ("GET", "/rounds/<int:round_id>/report"): row(LOGIN, 403, 404, 200, 200, 200),
    ("GET", "/rounds/<int:round_id>/report/map.svg"): row(LOGIN, 403, 404, 200, 200, 200),
    ("GET", "/rounds/<int:round_id>/report/map.png"): row(LOGIN, 403, 404, 200, 200, 200),
    ("POST", "/rounds/<int:round_id>/report/groups/<int:group_id>/name"): row(
        LOGIN, 403, 403, 403, 303, 303
    ),
    ("POST", "/rounds/<int:round_id>/report/statements/<int:statement_id>/hide"): row(
        LOGIN, 403, 403, 403, 303, 303
    ),
    ("POST", "/rounds/<int:round_id>/report/statements/<int:statement_id>/show"): row(
        LOGIN, 403, 403, 403, 303, 303
    ),
    # Exports and the board paper: facilitators, leadership and admins; members never (403 for
    # any round, so it reveals nothing). Participants' identities: facilitators only, by POST.
    ("GET", "/rounds/<int:round_id>/exports"): row(LOGIN, 403, 403, 200, 200, 200),
    ("GET", "/rounds/<int:round_id>/export/<name>.csv"): row(LOGIN, 403, 403, 200, 200, 200),
    ("GET", "/rounds/<int:round_id>/export/all.zip"): row(LOGIN, 403, 403, 200, 200, 200),
    ("GET", "/rounds/<int:round_id>/export/snapshot.json"): row(LOGIN, 403, 403, 200, 200, 200),
    ("GET", "/rounds/<int:round_id>/board-paper"): row(LOGIN, 403, 403, 200, 200, 200),
    ("GET", "/rounds/<int:round_id>/board-paper.md"): row(LOGIN, 403, 403, 200, 200, 200),
    ("GET", "/rounds/<int:round_id>/board-paper.pdf"): row(LOGIN, 403, 403, 200, 200, 200),
    ("POST", "/rounds/<int:round_id>/export/identities"): row(LOGIN, 403, 403, 403, 200, 200),
    ("GET", "/facilitate/people/"): row(LOGIN, 403, 403, 403, 200, 200),
    ("GET", "/facilitate/people/invite"): row(LOGIN, 403, 403, 403, 200, 200),
    ("POST", "/facilitate/people/invite"): row(LOGIN, 403, 403, 403, 200, 200),
    ("POST", "/facilitate/people/organisations"): row(LOGIN, 403, 403, 403, 303, 303),
    ("POST", "/facilitate/people/<int:user_id>/reset-link"): row(LOGIN, 403, 403, 403, 200, 200),
    # --- admins only
    ("POST", "/facilitate/people/<int:user_id>/role"): row(LOGIN, 403, 403, 403, 403, 303),
    ("POST", "/facilitate/people/<int:user_id>/active"): row(LOGIN, 403, 403, 403, 403, 303),
    # --- personal data (web/account.py): everyone downloads and erases their own account (the
    # only admin may not: 409, the last admin); admins erase someone else's.
    ("GET", "/account/data"): row(LOGIN, 200, 200, 200, 200, 200),
    ("GET", "/account/data/download"): row(LOGIN, 200, 200, 200, 200, 200),
    ("GET", "/account/erase"): row(LOGIN, 200, 200, 200, 200, 200),
    ("POST", "/account/erase"): row(LOGIN, 303, 303, 303, 303, 409),
    ("GET", "/facilitate/people/<int:user_id>/erase"): row(LOGIN, 403, 403, 403, 403, 200),
    ("POST", "/facilitate/people/<int:user_id>/erase"): row(LOGIN, 403, 403, 403, 403, 303),
    # --- the JSON API (web/api_v1.py): the browser session here (tokens: test_api_v1.py); the
    # same rules as the pages, answered in JSON (401, not a redirect, when not logged in).
    ("GET", "/api/openapi.json"): row(200, 200, 200, 200, 200, 200),
    ("GET", "/api/docs"): row(200, 200, 200, 200, 200, 200),
    ("GET", "/api/v1/me"): row(401, 200, 200, 200, 200, 200),
    ("GET", "/api/v1/rounds"): row(401, 200, 200, 200, 200, 200),
    ("GET", "/api/v1/rounds/<int:round_id>"): row(401, 200, 404, 200, 200, 200),
    ("GET", "/api/v1/rounds/<int:round_id>/statements"): row(401, 200, 404, 200, 200, 200),
    ("POST", "/api/v1/rounds/<int:round_id>/statements"): row(401, 201, 404, 403, 403, 403),
    ("GET", "/api/v1/rounds/<int:round_id>/votes"): row(401, 200, 404, 200, 200, 200),
    ("POST", "/api/v1/rounds/<int:round_id>/votes"): row(401, 200, 404, 403, 403, 403),
    ("GET", "/api/v1/rounds/<int:round_id>/results"): row(401, 403, 404, 200, 200, 200),
    # --- API tokens: everyone manages their own (a new token is shown on the answer page).
    ("GET", "/account/api-tokens"): row(LOGIN, 200, 200, 200, 200, 200),
    ("POST", "/account/api-tokens"): row(LOGIN, 200, 200, 200, 200, 200),
    ("POST", "/account/api-tokens/<int:token_id>/revoke"): row(LOGIN, 303, 303, 303, 303, 303),
}


STAFF = {FACILITATOR, ADMIN}
EVERYONE_LOGGED_IN = {MEMBER, OTHER_ORG, LEADERSHIP, FACILITATOR, ADMIN}

# (method, rule) -> the visitors whose request changes the database. Every POST route has a
# row (login and logout aside). A refusal may be answered with a redirect and a flash message
# (the plain vote form does that), so the status alone does not prove a refusal.
WRITES: dict[tuple[str, str], set[str]] = {
    ("POST", "/invite/<token>"): set(VISITORS),
    ("POST", "/reset/<token>"): set(VISITORS),
    ("POST", "/account"): EVERYONE_LOGGED_IN,
    ("POST", "/account/logout-everywhere"): EVERYONE_LOGGED_IN,
    # Only members of the round's organisations vote and write; staff (no organisation) read.
    ("POST", "/rounds/<int:round_id>/vote"): {MEMBER},
    ("POST", "/rounds/<int:round_id>/statements"): {MEMBER},
    ("POST", "/api/rounds/<int:round_id>/votes"): {MEMBER},
    ("POST", "/facilitate/rounds/new"): STAFF,
    ("POST", "/facilitate/rounds/<int:round_id>/edit"): STAFF,
    ("POST", "/facilitate/rounds/<int:round_id>/open"): STAFF,
    ("POST", "/facilitate/rounds/<int:round_id>/close"): STAFF,
    ("POST", "/facilitate/rounds/<int:round_id>/publish"): STAFF,
    ("POST", "/facilitate/rounds/<int:round_id>/seed"): STAFF,
    ("POST", "/facilitate/statements/<int:statement_id>/accept"): STAFF,
    ("POST", "/facilitate/statements/<int:statement_id>/reject"): STAFF,
    ("POST", "/facilitate/statements/<int:statement_id>/correct"): STAFF,
    ("POST", "/facilitate/statements/<int:statement_id>/merge"): STAFF,
    ("POST", "/facilitate/rounds/<int:round_id>/next"): STAFF,
    ("POST", "/rounds/<int:round_id>/report/groups/<int:group_id>/name"): STAFF,
    ("POST", "/rounds/<int:round_id>/report/statements/<int:statement_id>/hide"): STAFF,
    ("POST", "/rounds/<int:round_id>/report/statements/<int:statement_id>/show"): STAFF,
    ("POST", "/rounds/<int:round_id>/export/identities"): STAFF,
    ("POST", "/facilitate/people/invite"): STAFF,
    ("POST", "/facilitate/people/organisations"): STAFF,
    ("POST", "/facilitate/people/<int:user_id>/reset-link"): STAFF,
    ("POST", "/facilitate/people/<int:user_id>/role"): {ADMIN},
    ("POST", "/facilitate/people/<int:user_id>/active"): {ADMIN},
    ("POST", "/account/erase"): {MEMBER, OTHER_ORG, LEADERSHIP, FACILITATOR},
    ("POST", "/facilitate/people/<int:user_id>/erase"): {ADMIN},
    ("POST", "/api/v1/rounds/<int:round_id>/statements"): {MEMBER},
    ("POST", "/api/v1/rounds/<int:round_id>/votes"): {MEMBER},
    ("POST", "/account/api-tokens"): EVERYONE_LOGGED_IN,
    ("POST", "/account/api-tokens/<int:token_id>/revoke"): EVERYONE_LOGGED_IN,
}
NO_WRITE_CHECK = {("POST", "/login"), ("POST", "/logout")}


# --- sample objects, fresh for every request ----------------------------------------------


@dataclass
class Actors:
    users: dict[str, User | None]
    org_a: Organisation
    org_b: Organisation


class Samples:
    """Makes the objects a route's URL and form need, new for each request."""

    def __init__(self, db, factory, actors: Actors):
        self.db, self.factory, self.actors = db, factory, actors
        self._n = count(1)

    def n(self) -> int:
        return next(self._n)

    def round(self, state: RoundState = RoundState.OPEN) -> Round:
        n = self.n()
        round_ = self.factory.round(
            state=state,
            question=f"Matrix round {n}?",
            statements=[f"Matrix statement {n}.{i}" for i in range(3)],
        )
        round_.organisations = [self.actors.org_a]
        author = self.factory.user(Role.MEMBER, organisation=self.actors.org_a)
        self.db.session.add(
            Statement(
                round_id=round_.id,
                text=f"Pending statement {n}",
                normalised_text=f"pending statement {n}",
                author_id=author.id,
                origin="member",
                moderation_state="pending",
            )
        )
        self.db.session.commit()
        return round_

    def accepted_statement(self, round_: Round) -> Statement:
        return next(s for s in round_.statements if s.moderation_state == "accepted")

    def pending_statement(self) -> Statement:
        round_ = self.round()
        return next(s for s in round_.statements if s.moderation_state == "pending")

    def person(self) -> User:
        return self.factory.user(Role.MEMBER, organisation=self.actors.org_a)

    def invite_token(self) -> str:
        n = self.n()
        row_ = invitations.InvitationRow(name=f"Invitee {n}", email=f"invitee{n}@example.org")
        issued = invitations.invite_members(None, [row_], base_url="http://localhost/")
        return issued[0].link.rsplit("/", 1)[1]

    def reset_token(self) -> str:
        link = invitations.issue_password_reset(None, self.person().id, "http://localhost/")
        return link.rsplit("/", 1)[1]


@dataclass
class Request:
    """One prepared request and how to tell whether it took effect."""

    url: str
    data: dict | None = None
    json: dict | None = None
    effect: Callable[[], bool] | None = None


NEW_PASSWORD = "a brand new password"


def _count(db, model, *where) -> int:
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def prepare(method: str, rule: str, s: Samples, actor: User | None) -> Request:
    """Build the request for a route, with fresh sample ids and valid form data."""
    db = s.db
    n = s.n()

    if rule in ("/healthz", "/", "/login", "/rounds", "/account", "/facilitate/", "/logout"):
        if (method, rule) == ("POST", "/login"):
            return Request(rule, {"email": "nobody@example.org", "password": "not the password"})
        if (method, rule) == ("POST", "/account"):
            return Request(
                rule,
                {"current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
                effect=_auth_version_moved(db, actor),
            )
        return Request(rule, {} if method == "POST" else None)
    if rule == "/account/logout-everywhere":
        return Request(rule, {}, effect=_auth_version_moved(db, actor))
    if rule in ("/account/data", "/account/data/download", "/account/erase"):
        if method == "POST":
            user_id = actor.id if actor is not None else None
            return Request(
                rule,
                {"password": PASSWORD, "confirm": "yes"},
                effect=lambda: (
                    user_id is not None and db.session.get(User, user_id).erased_at is not None
                ),
            )
        return Request(rule)
    if rule.startswith("/account/api-tokens"):
        return _api_token_request(method, rule, s, actor, n)
    if rule in ("/api/openapi.json", "/api/docs", "/api/v1/me", "/api/v1/rounds"):
        return Request(rule)
    if rule in ("/facilitate/audit", "/facilitate/people/", "/facilitate/people/invite"):
        if method == "POST":  # people/invite
            email = f"new{n}@example.org"
            return Request(
                rule,
                {"csv_text": f"name,email,organisation\nNew {n},{email},", "round_id": "0"},
                effect=lambda: _count(db, User, User.email == email) == 1,
            )
        return Request(rule)
    if rule == "/facilitate/people/organisations":
        name = f"New organisation {n}"
        return Request(
            rule, {"name": name}, effect=lambda: _count(db, Organisation, Organisation.name == name)
        )
    if rule == "/facilitate/rounds/new":
        if method == "GET":
            return Request(rule)
        question = f"A new round {n}?"
        return Request(
            rule,
            _round_form(question),
            effect=lambda: _count(db, Round, Round.question == question) == 1,
        )
    if rule.startswith("/invite/") or rule.startswith("/reset/"):
        token = s.invite_token() if rule.startswith("/invite/") else s.reset_token()
        url = rule.replace("<token>", token)
        if method == "GET":
            return Request(url)
        data = {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD, "name": f"Invitee {n}"}
        return Request(
            url,
            data,
            effect=lambda: (
                _count(
                    db,
                    Invitation,
                    Invitation.used_at.is_not(None),
                    Invitation.id == _last_invite(db),
                )
                == 1
            ),
        )

    if rule == "/facilitate/compare":
        a, b = s.round(), s.round()
        return Request(f"{rule}?a={a.id}&b={b.id}")

    if "/report/" in rule and method == "POST":
        return _report_edit(rule, s, n)

    if "/export" in rule:
        rid = s.round().id
        url = rule.replace("<int:round_id>", str(rid)).replace("<name>", "votes")
        if method == "GET":
            return Request(url)
        return Request(
            url,
            {"confirm": "y"},
            effect=lambda: (
                _count(
                    db,
                    AuditEvent,
                    AuditEvent.action == "export.identities",
                    AuditEvent.round_id == rid,
                )
                == 1
            ),
        )

    if "<int:statement_id>" in rule:
        statement = s.pending_statement()
        url = rule.replace("<int:statement_id>", str(statement.id))
        sid = statement.id
        if rule.endswith("/accept"):
            return Request(url, {}, effect=lambda: _state_of(db, sid) == "accepted")
        if rule.endswith("/reject"):
            return Request(
                url, {"reason": "Off topic"}, effect=lambda: _state_of(db, sid) == "rejected"
            )
        if rule.endswith("/merge"):
            into = s.accepted_statement(statement.round).id
            return Request(
                url, {"into": str(into)}, effect=lambda: _state_of(db, sid) == "rejected"
            )
        text = f"Corrected statement {n}"
        return Request(
            url, {"text": text}, effect=lambda: db.session.get(Statement, sid).text == text
        )

    if "<int:user_id>" in rule:
        person = s.person()
        pid = person.id
        url = rule.replace("<int:user_id>", str(pid))
        if rule.endswith("/erase"):
            if method == "GET":
                return Request(url)
            return Request(
                url,
                {"confirm": "yes"},
                effect=lambda: db.session.get(User, pid).erased_at is not None,
            )
        if rule.endswith("/role"):
            return Request(
                url,
                {"role": "leadership"},
                effect=lambda: db.session.get(User, pid).role == "leadership",
            )
        if rule.endswith("/active"):
            return Request(
                url, {"active": "0"}, effect=lambda: not db.session.get(User, pid).active
            )
        return Request(
            url,
            {},
            effect=lambda: (
                _count(db, Invitation, Invitation.user_id == pid, Invitation.purpose == "reset")
                == 1
            ),
        )

    if "<int:round_id>" in rule:
        state = RoundState.OPEN
        if rule.endswith(("/open", "/seed", "/edit")):
            state = RoundState.DRAFT
        elif rule.endswith("/publish"):
            state = RoundState.CLOSED
        round_ = s.round(state)
        rid = round_.id
        url = rule.replace("<int:round_id>", str(rid))
        if method == "GET":
            return Request(url)
        if rule.endswith(("/vote", "/votes")):
            sid = s.accepted_statement(round_).id
            voted = lambda: _count(db, Vote, Vote.statement_id == sid) == 1  # noqa: E731
            if rule.startswith("/api/"):
                return Request(url, json={"statement_id": sid, "value": 1}, effect=voted)
            return Request(url, {"statement_id": str(sid), "value": "1"}, effect=voted)
        if rule.endswith("/statements"):
            text = f"A member's new statement {n}"
            written = lambda: _count(db, Statement, Statement.text == text) == 1  # noqa: E731
            if rule.startswith("/api/"):
                return Request(url, json={"text": text}, effect=written)
            return Request(url, {"text": text}, effect=written)
        if rule.endswith("/seed"):
            return Request(
                url,
                {"statements": f"Seed one {n}\nSeed two {n}"},
                effect=lambda: _count(db, Statement, Statement.round_id == rid) == 6,
            )
        if rule.endswith("/edit"):
            question = f"Edited question {n}?"
            return Request(
                url,
                _round_form(question),
                effect=lambda: db.session.get(Round, rid).question == question,
            )
        if rule.endswith("/next"):
            question = f"The next round {n}?"
            return Request(
                url,
                {"question": question, "statement_ids": str(s.accepted_statement(round_).id)},
                effect=lambda: _count(db, Round, Round.question == question) == 1,
            )
        target = {"/open": "open", "/close": "closed", "/publish": "published"}
        for suffix, new_state in target.items():
            if rule.endswith(suffix):
                return Request(
                    url,
                    {},
                    effect=lambda new_state=new_state: (
                        db.session.get(Round, rid).state == new_state
                    ),
                )
    raise AssertionError(f"no sample for {method} {rule}: add one to prepare()")


def _report_edit(rule: str, s: Samples, n: int) -> Request:
    """A facilitator's edit of a round's report: name a group, hide or show a statement."""
    db = s.db
    round_ = s.round()
    statement = s.accepted_statement(round_)
    rid, sid = round_.id, statement.id
    url = rule.replace("<int:round_id>", str(rid)).replace("<int:statement_id>", str(sid))
    if "<int:group_id>" in rule:
        # No analysis has run on the sample round: the group is known by its earlier name.
        db.session.add(GroupName(round_id=rid, group_id=0, name=f"Old name {n}"))
        db.session.commit()
        name = f"New name {n}"
        return Request(
            url.replace("<int:group_id>", "0"),
            {"name": name},
            effect=lambda: _count(db, GroupName, GroupName.name == name) == 1,
        )
    hide = rule.endswith("/hide")
    if not hide:
        statement.hidden_in_report = True
        db.session.commit()
    return Request(url, {}, effect=lambda: db.session.get(Statement, sid).hidden_in_report == hide)


def _api_token_request(method: str, rule: str, s: Samples, actor: User | None, n: int) -> Request:
    """List, create or revoke API tokens: a revoked token is the visitor's own."""
    from deliberate.services import api_tokens

    db = s.db
    if method == "GET":
        return Request(rule)
    if rule == "/account/api-tokens":
        name = f"Matrix token {n}"
        return Request(
            rule,
            {"name": name, "expires": "30"},
            effect=lambda: _count(db, ApiToken, ApiToken.name == name) == 1,
        )
    owner = actor if actor is not None else s.person()
    token_id = api_tokens.create_token(owner, f"Matrix token {n}").token.id
    return Request(
        rule.replace("<int:token_id>", str(token_id)),
        {},
        effect=lambda: db.session.get(ApiToken, token_id).revoked_at is not None,
    )


def _auth_version_moved(db, actor: User | None) -> Callable[[], bool]:
    """Whether the actor's sessions were ended (password changed, logged out everywhere)."""
    if actor is None:
        return lambda: False
    user_id, before = actor.id, actor.auth_version
    return lambda: db.session.get(User, user_id).auth_version != before


def _round_form(question: str) -> dict:
    return {
        "question": question,
        "context": "Some *context*.",
        "allow_member_statements": "y",
        "moderation": "pre",
        "statement_max_length": "280",
        "results_visibility": "after_voting",
        "author_display": "anonymous",
    }


def _state_of(db, statement_id: int) -> str:
    return db.session.get(Statement, statement_id).moderation_state


def _last_invite(db) -> int:
    return db.session.scalar(select(func.max(Invitation.id)))


# --- the tests ------------------------------------------------------------------------------


@pytest.fixture
def actors(db, factory) -> Actors:
    org_a = factory.organisation("Organisation A")
    org_b = factory.organisation("Organisation B")
    users = {
        ANON: None,
        MEMBER: factory.user(Role.MEMBER, organisation=org_a),
        OTHER_ORG: factory.user(Role.MEMBER, organisation=org_b),
        LEADERSHIP: factory.user(Role.LEADERSHIP),
        FACILITATOR: factory.user(Role.FACILITATOR),
        ADMIN: factory.user(Role.ADMIN),
    }
    # A cheap hash for the visitors: each test logs five of them in, and scrypt is slow by design.
    cheap = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
    for user in users.values():
        if user is not None:
            user.password_hash = cheap
    db.session.commit()
    return Actors(users=users, org_a=org_a, org_b=org_b)


def app_routes(app) -> set[tuple[str, str]]:
    return {
        (method, rule.rule)
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def test_every_route_is_in_the_matrix(app):
    routes = app_routes(app)
    missing = sorted(routes - MATRIX.keys())
    stale = sorted(MATRIX.keys() - routes)
    assert not missing, f"routes without a row in the authorisation matrix: {missing}"
    assert not stale, f"rows for routes that no longer exist: {stale}"
    posts = {key for key in MATRIX if key[0] == "POST"} - NO_WRITE_CHECK
    assert posts == WRITES.keys(), sorted(posts ^ WRITES.keys())


@pytest.mark.parametrize(("method", "rule"), sorted(MATRIX), ids=lambda v: v)
def test_route_answers_each_visitor_as_the_matrix_says(app, db, factory, actors, method, rule):
    expected = MATRIX[(method, rule)]
    samples = Samples(db, factory, actors)
    problems = []
    for visitor in VISITORS:
        actor = actors.users[visitor]
        client = app.test_client()
        if actor is not None:
            db.session.refresh(actor)
            response = login(client, actor)
            assert response.status_code in (302, 303), f"could not log in as {visitor}"
            db.session.refresh(actor)
        request = prepare(method, rule, samples, actor)
        if request.json is not None:
            response = client.post(request.url, json=request.json)
        elif method == "POST":
            response = client.post(request.url, data=request.data or {})
        else:
            response = client.get(request.url)
        db.session.expire_all()

        want = expected[visitor]
        got: object = response.status_code
        if got == 302 and urlsplit(response.headers["Location"]).path == "/login" and want == LOGIN:
            got = LOGIN
        if got != want:
            problems.append(f"{visitor}: expected {want}, got {response.status_code}")
        assert response.status_code < 500, response.get_data(as_text=True)[:500]
        if (method, rule) in WRITES:
            assert request.effect is not None, f"prepare() has no effect check for {rule}"
            happened = bool(request.effect())
            if happened != (visitor in WRITES[(method, rule)]):
                problems.append(
                    f"{visitor}: the request {'changed' if happened else 'did not change'} the "
                    f"database (status {response.status_code})"
                )
    assert not problems, f"{method} {rule}:\n" + "\n".join(problems)


ID_ROUTES = sorted(key for key in MATRIX if "<int:" in key[1])
# Valid values for every form, so that only the unknown id can be wrong.
UNKNOWN_ID_FORM = {
    "statement_id": "1",
    "value": "1",
    "text": "Some text",
    "reason": "Off topic",
    "statements": "A seed statement",
    "role": "member",
    "active": "0",
    **_round_form("Edited?"),
}


@pytest.mark.parametrize(("method", "rule"), ID_ROUTES, ids=lambda v: v)
def test_unknown_ids_are_not_found_even_for_an_admin(app, db, actors, method, rule):
    client = app.test_client()
    assert login(client, actors.users[ADMIN]).status_code in (302, 303)
    url = rule
    for name in ("round_id", "statement_id", "user_id", "token_id"):
        url = url.replace(f"<int:{name}>", "987654")
    if rule.startswith("/api/") and method == "POST" and rule.endswith("/statements"):
        response = client.post(url, json={"text": "A statement for no round"})
    elif rule.startswith("/api/") and method == "POST":
        response = client.post(url, json={"statement_id": 1, "value": 1})
    elif method == "POST":
        response = client.post(url, data=UNKNOWN_ID_FORM)
    else:
        response = client.get(url)
    assert response.status_code == 404, (method, url, response.status_code)
