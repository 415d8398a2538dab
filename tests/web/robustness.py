"""Shared by the robustness and security tests: a sample coalition, one plausible request per
POST route (`CASES`), and whole-database comparisons."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

from sqlalchemy import String, event, select
from werkzeug.security import generate_password_hash

from deliberate.models import Role, RoundState, Statement
from deliberate.services import invitations, voting
from tests.conftest import PASSWORD, Factory

# A cheap hash of PASSWORD: logging in is part of almost every test here, scrypt is slow.
CHEAP_HASH = generate_password_hash(PASSWORD, method="pbkdf2:sha256:1000")
NEW_PASSWORD = "another fine password"
UNKNOWN_ID = 999_999

# --- database checks -----------------------------------------------------------------------


def db_state(db) -> dict[str, list[tuple]]:
    """Return every table's rows as committed (a fresh connection, not the test's session)."""
    # The app context outlives requests in tests: end the session's transaction as the end of
    # a request does in production (SQLite's BEGIN IMMEDIATE would otherwise hold the lock).
    db.session.rollback()
    state = {}
    with db.engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            rows = conn.execute(select(table)).all()
            state[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return state


def changed_tables(before: dict, after: dict) -> list[str]:
    return [name for name in before if before[name] != after[name]]


def overlong_values(db, state: dict) -> list[str]:
    """Return stored strings longer than their column (PostgreSQL would refuse them)."""
    problems = []
    for table in db.metadata.sorted_tables:
        columns = list(table.columns)
        for i, column in enumerate(columns):
            if isinstance(column.type, String) and column.type.length:
                for row in state[table.name]:
                    value = row[i]
                    if isinstance(value, str) and len(value) > column.type.length:
                        problems.append(
                            f"{table.name}.{column.name}: {len(value)} > {column.type.length}"
                        )
    return problems


def _has_nul(value) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, bytes):
        return b"\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


class SqlWatch:
    """Record SQL statements whose parameters carry a NUL character."""

    def __init__(self, engine):
        self.engine = engine
        self.nul_statements: list[str] = []

    def __enter__(self):
        event.listen(self.engine, "before_cursor_execute", self._check)
        return self

    def __exit__(self, *exc):
        event.remove(self.engine, "before_cursor_execute", self._check)

    def _check(self, conn, cursor, statement, parameters, context, executemany):
        if _has_nul(parameters):
            self.nul_statements.append(" ".join(statement.split())[:120])

    def take(self) -> list[str]:
        found, self.nul_statements = self.nul_statements, []
        return found


# --- the sample coalition ------------------------------------------------------------------


@dataclass
class World:
    app: object
    db: object
    ids: SimpleNamespace
    clients: dict = field(default_factory=dict)
    sql: SqlWatch | None = None

    def client(self, role: str):
        return self.clients[role]

    def flashes(self, client) -> list[tuple[str, str]]:
        """Return and clear the flashed messages waiting in the client's session."""
        with client.session_transaction() as session:
            return list(session.pop("_flashes", []))


CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


def csrf_token_of(client, page: str = "/login") -> str | None:
    """Return the CSRF token from the page's <meta name="csrf-token">, if it has one."""
    match = CSRF_META.search(client.get(page).get_data(as_text=True))
    return match.group(1) if match else None


def _login(client, email: str) -> None:
    data = {"email": email, "password": PASSWORD}
    if client.application.config["WTF_CSRF_ENABLED"]:
        data["csrf_token"] = csrf_token_of(client)
    response = client.post("/login", data=data)
    assert response.status_code == 303, response.get_data(as_text=True)[:300]
    with client.session_transaction() as session:
        session.pop("_flashes", None)


def build_world(app, db) -> World:
    """Organisations, people of every role, rounds in each state, statements, votes, links."""
    make = Factory(db, CHEAP_HASH)
    org_a, org_b = make.organisation("Welcome Group A"), make.organisation("Legal Aid B")
    member = make.user(Role.MEMBER, organisation=org_a, email="member@example.org")
    member2 = make.user(Role.MEMBER, organisation=org_a, email="member2@example.org")
    other = make.user(Role.MEMBER, organisation=org_b, email="other@example.org")
    facilitator = make.user(Role.FACILITATOR, email="facilitator@example.org")
    admin = make.user(Role.ADMIN, email="admin@example.org")
    make.user(Role.ADMIN, email="admin2@example.org")  # so that role changes are not "last admin"
    make.user(Role.LEADERSHIP, email="leader@example.org")

    round_ = make.round(
        statements=[f"Seed statement number {i} about welcoming refugees" for i in range(1, 5)]
    )
    seeds = [s.id for s in round_.statements]
    pending = Statement(
        round_id=round_.id,
        text="A pending member statement",
        author_id=member2.id,
        normalised_text="a pending member statement",
        origin="member",
        moderation_state="pending",
    )
    db.session.add(pending)
    draft = make.round(state=RoundState.DRAFT, statements=["A seed statement in the draft"])
    closed = make.round(state=RoundState.CLOSED, statements=["A seed statement in the closed"])
    db.session.commit()
    voting.cast_vote(member2, seeds[0], 1, round_id=round_.id)
    voting.cast_vote(other, seeds[1], -1, round_id=round_.id)

    invited = invitations.invite_members(
        None,
        [
            invitations.InvitationRow(
                name="Invited Person", email="invited@example.org", organisation=org_a.name
            )
        ],
        round_id=round_.id,
        base_url="http://localhost",
    )[0]
    reset_link = invitations.issue_password_reset(None, member2.id, "http://localhost")

    ids = SimpleNamespace(
        org_a=org_a.id,
        org_b=org_b.id,
        member=member.id,
        member2=member2.id,
        other=other.id,
        facilitator=facilitator.id,
        admin=admin.id,
        round=round_.id,
        seeds=seeds,
        pending=pending.id,
        draft=draft.id,
        closed=closed.id,
        closed_seed=closed.statements[0].id,
        invite_token=invited.link.rsplit("/", 1)[1],
        reset_token=reset_link.rsplit("/", 1)[1],
    )
    world = World(app=app, db=db, ids=ids)
    world.clients["anon"] = app.test_client()
    for role, email in (
        ("member", "member@example.org"),
        ("facilitator", "facilitator@example.org"),
        ("admin", "admin@example.org"),
    ):
        client = app.test_client()
        _login(client, email)
        world.clients[role] = client
    return world


# --- the cases -----------------------------------------------------------------------------


def round_form(question: str = "What should the coalition campaign on next?", **extra) -> dict:
    form = {
        "question": question,
        "context": "Some **context** for the round.",
        "allow_member_statements": "y",
        "moderation": "pre",
        "statement_max_length": "280",
        "results_visibility": "after_voting",
        "author_display": "anonymous",
        "opens_at": "",
        "closes_at": "",
    }
    form.update(extra)
    return form


@dataclass(frozen=True)
class Case:
    """How to call one POST route with a plausible body, as a user allowed to use it."""

    role: str
    url: Callable[[SimpleNamespace], str]
    fields: Callable[[SimpleNamespace], dict] | None = None  # None: the route takes no input
    # Every junk value in any field must be refused (no junk value can make the request valid).
    strict: bool = False
    ints: tuple[str, ...] = ()  # fields that must hold a whole number
    # Fields that accept any value (a checkbox is on whatever its value; a hidden "back to this
    # queue" field falls back to a default), so even 100,000 characters may pass.
    lenient: tuple[str, ...] = ()
    # Unknown ids in fields, each of which must be refused.
    unknown_in_fields: Callable[[SimpleNamespace], list[dict]] = lambda ids: []
    # URL with an unknown id (or token) in it.
    unknown_url: Callable[[], str] | None = None
    json: bool = False


CASES: dict[str, Case] = {
    "/login": Case(
        "anon",
        lambda i: "/login",
        lambda i: {"email": "member@example.org", "password": "not the right password"},
        strict=True,
    ),
    "/logout": Case("member", lambda i: "/logout"),
    "/account": Case(
        "member",
        lambda i: "/account",
        lambda i: {"current": PASSWORD, "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
        strict=True,
    ),
    "/account/logout-everywhere": Case("member", lambda i: "/account/logout-everywhere"),
    # Personal data (web/account.py). The sample member's password is wrong on purpose: every
    # variant must be refused, and the member stays for the routes tested after this one.
    "/account/erase": Case(
        "member",
        lambda i: "/account/erase",
        lambda i: {"password": "not the right password", "confirm": "yes"},
        strict=True,
    ),
    "/facilitate/people/<int:user_id>/erase": Case(
        "admin",
        lambda i: f"/facilitate/people/{i.other}/erase",
        lambda i: {"confirm": "yes"},
        strict=True,
        unknown_url=lambda: f"/facilitate/people/{UNKNOWN_ID}/erase",
    ),
    "/api/rounds/<int:round_id>/votes": Case(
        "member",
        lambda i: f"/api/rounds/{i.round}/votes",
        lambda i: {"statement_id": i.seeds[2], "value": 1},
        unknown_url=lambda: f"/api/rounds/{UNKNOWN_ID}/votes",
        json=True,
    ),
    "/facilitate/people/<int:user_id>/active": Case(
        "admin",
        lambda i: f"/facilitate/people/{i.member2}/active",
        lambda i: {"active": "1"},
        unknown_url=lambda: f"/facilitate/people/{UNKNOWN_ID}/active",
    ),
    "/facilitate/people/<int:user_id>/reset-link": Case(
        "facilitator",
        lambda i: f"/facilitate/people/{i.member2}/reset-link",
        unknown_url=lambda: f"/facilitate/people/{UNKNOWN_ID}/reset-link",
    ),
    "/facilitate/people/<int:user_id>/role": Case(
        "admin",
        lambda i: f"/facilitate/people/{i.member2}/role",
        lambda i: {"role": "member"},
        unknown_url=lambda: f"/facilitate/people/{UNKNOWN_ID}/role",
    ),
    "/facilitate/people/invite": Case(
        "facilitator",
        lambda i: "/facilitate/people/invite",
        lambda i: {
            "csv_text": (
                "name,email,organisation\nNew Person,new.person@example.org,Welcome Group A"
            ),
            "round_id": str(i.round),
        },
        ints=("round_id",),
        unknown_in_fields=lambda i: [{"round_id": str(UNKNOWN_ID)}],
    ),
    "/facilitate/people/organisations": Case(
        "facilitator",
        lambda i: "/facilitate/people/organisations",
        lambda i: {"name": "A New Organisation"},
    ),
    "/facilitate/rounds/<int:round_id>/close": Case(
        "facilitator",
        lambda i: f"/facilitate/rounds/{i.round}/close",
        unknown_url=lambda: f"/facilitate/rounds/{UNKNOWN_ID}/close",
    ),
    "/facilitate/rounds/<int:round_id>/edit": Case(
        "facilitator",
        lambda i: f"/facilitate/rounds/{i.draft}/edit",
        lambda i: round_form("An edited question for the draft round?"),
        ints=("statement_max_length", "organisation_ids"),
        lenient=("allow_member_statements",),
        unknown_in_fields=lambda i: [{"organisation_ids": str(UNKNOWN_ID)}],
        unknown_url=lambda: f"/facilitate/rounds/{UNKNOWN_ID}/edit",
    ),
    "/facilitate/rounds/<int:round_id>/next": Case(
        "facilitator",
        lambda i: f"/facilitate/rounds/{i.round}/next",
        lambda i: {"question": "What should the next round ask?", "statement_ids": str(i.seeds[0])},
        ints=("statement_ids",),
        unknown_in_fields=lambda i: [
            {"statement_ids": str(UNKNOWN_ID)},
            {"statement_ids": [str(i.seeds[0]), str(i.pending)]},  # not accepted
        ],
        unknown_url=lambda: f"/facilitate/rounds/{UNKNOWN_ID}/next",
    ),
    "/facilitate/rounds/<int:round_id>/open": Case(
        "facilitator",
        lambda i: f"/facilitate/rounds/{i.draft}/open",
        unknown_url=lambda: f"/facilitate/rounds/{UNKNOWN_ID}/open",
    ),
    "/facilitate/rounds/<int:round_id>/publish": Case(
        "facilitator",
        lambda i: f"/facilitate/rounds/{i.closed}/publish",
        unknown_url=lambda: f"/facilitate/rounds/{UNKNOWN_ID}/publish",
    ),
    "/facilitate/rounds/<int:round_id>/seed": Case(
        "facilitator",
        lambda i: f"/facilitate/rounds/{i.round}/seed",
        lambda i: {"statements": "A brand new seed statement\nAnother new seed statement"},
        unknown_url=lambda: f"/facilitate/rounds/{UNKNOWN_ID}/seed",
    ),
    "/facilitate/rounds/new": Case(
        "facilitator",
        lambda i: "/facilitate/rounds/new",
        lambda i: round_form(),
        ints=("statement_max_length", "organisation_ids"),
        lenient=("allow_member_statements",),
        unknown_in_fields=lambda i: [
            {"organisation_ids": str(UNKNOWN_ID)},
            {"organisation_ids": [str(i.org_a), str(UNKNOWN_ID)]},
        ],
    ),
    "/facilitate/statements/<int:statement_id>/accept": Case(
        "facilitator",
        lambda i: f"/facilitate/statements/{i.pending}/accept",
        unknown_url=lambda: f"/facilitate/statements/{UNKNOWN_ID}/accept",
    ),
    "/facilitate/statements/<int:statement_id>/correct": Case(
        "facilitator",
        lambda i: f"/facilitate/statements/{i.pending}/correct",
        lambda i: {"text": "A corrected pending member statement", "state": "pending"},
        lenient=("state",),
        unknown_url=lambda: f"/facilitate/statements/{UNKNOWN_ID}/correct",
    ),
    "/facilitate/statements/<int:statement_id>/merge": Case(
        "facilitator",
        lambda i: f"/facilitate/statements/{i.pending}/merge",
        lambda i: {"into": str(i.seeds[3]), "state": "pending"},
        ints=("into",),
        lenient=("state",),
        unknown_in_fields=lambda i: [
            {"into": str(UNKNOWN_ID)},
            {"into": str(i.pending)},
            {"into": str(i.closed_seed)},
        ],
        unknown_url=lambda: f"/facilitate/statements/{UNKNOWN_ID}/merge",
    ),
    "/facilitate/statements/<int:statement_id>/reject": Case(
        "facilitator",
        lambda i: f"/facilitate/statements/{i.pending}/reject",
        lambda i: {"reason": "Off topic for this round", "state": "pending"},
        lenient=("state",),
        unknown_url=lambda: f"/facilitate/statements/{UNKNOWN_ID}/reject",
    ),
    "/invite/<token>": Case(
        "anon",
        lambda i: f"/invite/{i.invite_token}",
        lambda i: {"name": "Invited Person", "password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
        unknown_url=lambda: "/invite/no-such-token",
    ),
    "/reset/<token>": Case(
        "anon",
        lambda i: f"/reset/{i.reset_token}",
        lambda i: {"password": NEW_PASSWORD, "confirm": NEW_PASSWORD},
        strict=True,
        unknown_url=lambda: "/reset/no-such-token",
    ),
    "/rounds/<int:round_id>/statements": Case(
        "member",
        lambda i: f"/rounds/{i.round}/statements",
        lambda i: {"text": "A statement of my own about housing"},
        unknown_url=lambda: f"/rounds/{UNKNOWN_ID}/statements",
    ),
    "/rounds/<int:round_id>/export/identities": Case(
        "facilitator",
        lambda i: f"/rounds/{i.round}/export/identities",
        lambda i: {"confirm": "y"},
        lenient=("confirm",),  # a checkbox: any value ticks it
        unknown_url=lambda: f"/rounds/{UNKNOWN_ID}/export/identities",
    ),
    "/rounds/<int:round_id>/report/groups/<int:group_id>/name": Case(
        "facilitator",
        lambda i: f"/rounds/{i.round}/report/groups/0/name",
        lambda i: {"name": "Pragmatists"},
        unknown_url=lambda: f"/rounds/{UNKNOWN_ID}/report/groups/0/name",
    ),
    "/rounds/<int:round_id>/report/statements/<int:statement_id>/hide": Case(
        "facilitator",
        lambda i: f"/rounds/{i.round}/report/statements/{i.seeds[3]}/hide",
        unknown_url=lambda: f"/rounds/{UNKNOWN_ID}/report/statements/{UNKNOWN_ID}/hide",
    ),
    "/rounds/<int:round_id>/report/statements/<int:statement_id>/show": Case(
        "facilitator",
        lambda i: f"/rounds/{i.round}/report/statements/{i.seeds[3]}/show",
        unknown_url=lambda: f"/rounds/{UNKNOWN_ID}/report/statements/{UNKNOWN_ID}/show",
    ),
    "/rounds/<int:round_id>/vote": Case(
        "member",
        lambda i: f"/rounds/{i.round}/vote",
        lambda i: {"statement_id": str(i.seeds[2]), "value": "1"},
        ints=("statement_id", "value"),
        unknown_in_fields=lambda i: [
            {"statement_id": str(UNKNOWN_ID), "value": "1"},
            {"statement_id": "9" * 30, "value": "1"},
            # A statement of another round, and one the member may not vote on (pending).
            {"statement_id": str(i.pending), "value": "1"},
        ],
        unknown_url=lambda: f"/rounds/{UNKNOWN_ID}/vote",
    ),
    # The JSON API for integrations (web/api_v1.py) and API tokens (web/tokens.py).
    "/api/v1/rounds/<int:round_id>/votes": Case(
        "member",
        lambda i: f"/api/v1/rounds/{i.round}/votes",
        lambda i: {"statement_id": i.seeds[2], "value": 1},
        unknown_url=lambda: f"/api/v1/rounds/{UNKNOWN_ID}/votes",
        json=True,
    ),
    "/api/v1/rounds/<int:round_id>/statements": Case(
        "member",
        lambda i: f"/api/v1/rounds/{i.round}/statements",
        lambda i: {"text": "A statement of my own, sent through the API"},
        unknown_url=lambda: f"/api/v1/rounds/{UNKNOWN_ID}/statements",
        json=True,
    ),
    "/account/api-tokens": Case(
        "member",
        lambda i: "/account/api-tokens",
        lambda i: {"name": "My spreadsheet", "expires": "90"},
    ),
    "/account/api-tokens/<int:token_id>/revoke": Case(
        "member",
        lambda i: f"/account/api-tokens/{member_api_token(i)}/revoke",
        unknown_url=lambda: f"/account/api-tokens/{UNKNOWN_ID}/revoke",
    ),
}


def member_api_token(ids: SimpleNamespace) -> int:
    """The id of an API token of the sample member, created on first use."""
    if getattr(ids, "api_token", None) is None:
        from deliberate.extensions import db
        from deliberate.models import User
        from deliberate.services import api_tokens

        member = db.session.get(User, ids.member)
        ids.api_token = api_tokens.create_token(member, "Sample token").token.id
    return ids.api_token


# URL ids the router must answer with 404 whatever the route: beyond the id range, not numbers.
BAD_URL_IDS = ["999999", str(2**31), str(2**63), "-1", "abc", "1.5"]


def post_rules(app) -> set[str]:
    return {
        rule.rule
        for rule in app.url_map.iter_rules()
        if "POST" in (rule.methods or ()) and rule.endpoint != "static"
    }
