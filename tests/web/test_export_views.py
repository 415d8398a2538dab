"""Export routes: content types, attachments, authorisation, CSRF, the board paper."""

from __future__ import annotations

import csv
import io
import re
import zipfile

import pytest
from sqlalchemy import select

from deliberate.models import AuditEvent, Role, Round, RoundState, Statement
from deliberate.services import demo
from deliberate.services.snapshots import refresh_snapshot
from deliberate.services.voting import cast_vote
from tests.conftest import PASSWORD, login

CSV_NAMES = ["summary", "comments", "votes", "participants-votes", "comment-groups"]


def _log_in(client, user, password=PASSWORD):
    response = login(client, user, password)
    assert response.status_code in (302, 303), response.get_data(as_text=True)[:300]
    return client


@pytest.fixture
def small_round(app, db, factory):
    round_ = factory.round(statements=["=1+1 is a formula", "We should work with MPs."])
    voters = [factory.user(Role.MEMBER) for _ in range(4)]
    for i, voter in enumerate(voters):
        for statement in round_.statements:
            cast_vote(voter, statement.id, (1, -1, 0, 1)[i])
    refresh_snapshot(round_.id, force=True)
    return round_


@pytest.fixture
def demo_round(app, db):
    demo.load_demo()
    round_ = db.session.scalars(select(Round).where(Round.state == RoundState.OPEN)).first()
    refresh_snapshot(round_.id, force=True)
    return round_


@pytest.mark.parametrize("name", CSV_NAMES)
def test_csv_downloads(client, factory, small_round, name):
    _log_in(client, factory.user(Role.LEADERSHIP))
    response = client.get(f"/rounds/{small_round.id}/export/{name}.csv")
    assert response.status_code == 200
    assert response.mimetype == "text/csv"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="round-{small_round.id}-{name}.csv"'
    )
    assert response.is_streamed
    rows = list(csv.reader(io.StringIO(response.get_data(as_text=True))))
    assert len(rows) >= 2


def test_zip_and_json(client, factory, small_round):
    _log_in(client, factory.user(Role.FACILITATOR))
    response = client.get(f"/rounds/{small_round.id}/export/all.zip")
    assert response.status_code == 200 and response.mimetype == "application/zip"
    assert "attachment" in response.headers["Content-Disposition"]
    names = zipfile.ZipFile(io.BytesIO(response.data)).namelist()
    assert sorted(names) == sorted(f"{n}.csv" for n in CSV_NAMES)
    response = client.get(f"/rounds/{small_round.id}/export/snapshot.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert response.json["round"]["id"] == small_round.id
    assert response.json["snapshot"]["params"]


def test_unknown_file_is_404(client, factory, small_round):
    _log_in(client, factory.user(Role.FACILITATOR))
    assert client.get(f"/rounds/{small_round.id}/export/passwords.csv").status_code == 404
    assert client.get(f"/rounds/{small_round.id}/export/participants.csv").status_code == 404
    assert client.get("/rounds/99999/export/votes.csv").status_code == 404


def test_members_cannot_download(client, factory, small_round, db):
    _log_in(client, factory.user(Role.MEMBER))
    rid = small_round.id
    for url in [
        *(f"/rounds/{rid}/export/{n}.csv" for n in CSV_NAMES),
        f"/rounds/{rid}/export/all.zip",
        f"/rounds/{rid}/export/snapshot.json",
        f"/rounds/{rid}/exports",
        f"/rounds/{rid}/board-paper",
        f"/rounds/{rid}/board-paper.md",
        f"/rounds/{rid}/board-paper.pdf",
    ]:
        assert client.get(url).status_code == 403, url
    assert client.post(f"/rounds/{rid}/export/identities", data={"confirm": "y"}).status_code == 403
    assert not db.session.scalars(select(AuditEvent).where(AuditEvent.round_id == rid)).all()


def test_anonymous_is_sent_to_log_in(client, small_round):
    response = client.get(f"/rounds/{small_round.id}/export/votes.csv")
    assert response.status_code in (302, 401)


def test_exports_page_lists_downloads(client, factory, small_round):
    _log_in(client, factory.user(Role.LEADERSHIP))
    page = client.get(f"/rounds/{small_round.id}/exports").get_data(as_text=True)
    for name in CSV_NAMES:
        assert f"/rounds/{small_round.id}/export/{name}.csv" in page
    assert "board-paper.pdf" in page and "snapshot.json" in page
    assert "export/identities" not in page  # leadership: no identities option


def test_identities_need_a_facilitator_a_post_and_csrf(app, client, factory, small_round, db):
    facilitator = factory.user(Role.FACILITATOR)
    _log_in(client, facilitator)
    app.config["WTF_CSRF_ENABLED"] = True
    rid = small_round.id
    assert client.get(f"/rounds/{rid}/export/identities").status_code == 405
    # no CSRF token: refused
    assert client.post(f"/rounds/{rid}/export/identities", data={"confirm": "y"}).status_code == 400
    page = client.get(f"/rounds/{rid}/exports").get_data(as_text=True)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page) or re.search(
        r'name="csrf_token" value="([^"]+)"', page
    )
    assert token
    # not confirmed: back to the page with a message, nothing exported
    response = client.post(f"/rounds/{rid}/export/identities", data={"csrf_token": token.group(1)})
    assert response.status_code == 302
    assert not db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "export.identities")
    ).all()
    response = client.post(
        f"/rounds/{rid}/export/identities", data={"csrf_token": token.group(1), "confirm": "y"}
    )
    assert response.status_code == 200 and response.mimetype == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.data))
    assert "participants.csv" in archive.namelist()
    logged = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "export.identities")
    ).all()
    assert [e.actor_id for e in logged] == [facilitator.id]


def test_leadership_cannot_export_identities(client, factory, small_round):
    _log_in(client, factory.user(Role.LEADERSHIP))
    response = client.post(f"/rounds/{small_round.id}/export/identities", data={"confirm": "y"})
    assert response.status_code == 403


def test_board_paper_pdf_markdown_and_page_for_the_demo(client, db, demo_round):
    leader = db.session.scalars(
        select(demo.User).where(demo.User.email == demo.LEADERSHIP_EMAIL)
    ).one()
    _log_in(client, leader, "demo-leadership-pass")
    rid = demo_round.id
    pdf = client.get(f"/rounds/{rid}/board-paper.pdf")
    assert pdf.status_code == 200 and pdf.mimetype == "application/pdf"
    assert pdf.headers["Content-Disposition"] == (
        f'attachment; filename="round-{rid}-board-paper.pdf"'
    )
    assert pdf.data.startswith(b"%PDF")
    pages = len(re.findall(rb"/Type\s*/Page\b", pdf.data))
    assert pages > 1
    assert b"/Subtype /Image" in pdf.data  # the opinion map is embedded

    md = client.get(f"/rounds/{rid}/board-paper.md")
    assert md.status_code == 200 and md.mimetype == "text/markdown"
    text = md.get_data(as_text=True)
    for heading in [
        "## Executive summary",
        "## Where the coalition agrees",
        "## Where the coalition divides",
        "## The opinion groups and what each holds",
        "## Who took part",
        "## Method and caveats",
        "## Appendix: every statement",
    ]:
        assert heading in text, heading
    shown = db.session.scalars(
        select(Statement).where(Statement.round_id == rid, Statement.moderation_state == "accepted")
    ).all()
    assert sum(1 for line in text.splitlines() if re.match(r"^\| \d+ \|", line)) >= len(shown) - 2

    page = client.get(f"/rounds/{rid}/board-paper")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "css/print.css" in html and "<svg" in html
    assert "Appendix: every statement" in html
    actions = [
        (e.action, e.details.get("format"))
        for e in db.session.scalars(
            select(AuditEvent).where(AuditEvent.round_id == rid).order_by(AuditEvent.id)
        )
        if e.action.startswith("export.")
    ]
    assert actions == [
        ("export.board_paper", "pdf"),
        ("export.board_paper", "markdown"),
        ("export.board_paper", "html"),
    ]


def test_board_paper_escapes_member_text(client, factory, db):
    round_ = factory.round(statements=["<script>alert(1)</script> **bold** claim"])
    for voter in [factory.user(Role.MEMBER) for _ in range(3)]:
        cast_vote(voter, round_.statements[0].id, 1)
    refresh_snapshot(round_.id, force=True)
    _log_in(client, factory.user(Role.FACILITATOR))
    html = client.get(f"/rounds/{round_.id}/board-paper").get_data(as_text=True)
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html
    md = client.get(f"/rounds/{round_.id}/board-paper.md").get_data(as_text=True)
    assert "\\<script\\>" in md and "\\*\\*bold\\*\\*" in md
    pdf = client.get(f"/rounds/{round_.id}/board-paper.pdf")
    assert pdf.data.startswith(b"%PDF")


def test_board_paper_before_any_analysis(client, factory):
    round_ = factory.round(statements=["Nobody has voted on this yet."])
    _log_in(client, factory.user(Role.LEADERSHIP))
    assert client.get(f"/rounds/{round_.id}/board-paper.pdf").data.startswith(b"%PDF")
    assert "no results" in client.get(f"/rounds/{round_.id}/board-paper.md").get_data(as_text=True)
    assert client.get(f"/rounds/{round_.id}/exports").status_code == 200


def test_exports_are_rate_limited(app_config, factory_free_app):
    client, round_id = factory_free_app
    codes = [client.get(f"/rounds/{round_id}/export/summary.csv").status_code for _ in range(31)]
    assert codes[:30] == [200] * 30
    assert codes[30] == 429


@pytest.fixture
def factory_free_app(app_config, password_hash):
    """An app with rate limits on (the default test config turns them off)."""
    from deliberate import create_app
    from deliberate.extensions import db as _db
    from deliberate.extensions import limiter
    from deliberate.models import User

    app_config["RATELIMIT_ENABLED"] = True
    app_config["RATELIMIT_STORAGE_URI"] = "memory://"
    app = create_app(app_config)
    with app.app_context():
        limiter.reset()
        user = User(
            email="lead@example.org", name="Lead", role="leadership", password_hash=password_hash
        )
        round_ = Round(question="Rate limited?", state="open")
        _db.session.add_all([user, round_])
        _db.session.commit()
        client = app.test_client()
        _log_in(client, user)
        yield client, round_.id
        _db.session.remove()
        _db.engine.dispose()
