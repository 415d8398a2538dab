"""Web: the people pages (invitations, reset links, roles, organisations)."""

from __future__ import annotations

import base64
import csv
import io
import re
from html import unescape

import pytest
from sqlalchemy import select

from deliberate.models import AuditEvent, Invitation, Organisation, Role, User
from deliberate.services import accounts, invitations

CSV = "name,email,organisation\nAmy <b>,amy@example.org,North\nBob,bob@example.org,\n"


def links_on(html: str) -> list[str]:
    return [unescape(v) for v in re.findall(r'class="copy-field" value="([^"]+)"', html)]


def download_csv(html: str) -> list[list[str]]:
    match = re.search(r'href="data:text/csv;charset=utf-8;base64,([^"]+)"', html)
    assert match
    return list(csv.reader(io.StringIO(base64.b64decode(match.group(1)).decode("utf-8"))))


@pytest.mark.parametrize(
    "role, status",
    [
        (None, 302),
        (Role.MEMBER, 403),
        (Role.LEADERSHIP, 403),
        (Role.FACILITATOR, 200),
        (Role.ADMIN, 200),
    ],
)
def test_people_pages_are_for_facilitators_and_admins(client, factory, login_as, role, status):
    if role is not None:
        login_as(factory.user(role))
    for path in ("/facilitate/people/", "/facilitate/people/invite"):
        assert client.get(path).status_code == status
    target = factory.user()
    expected_post = {302: 302, 403: 403, 200: 303}[status]
    # Facilitators and admins get the page showing the link (200), not a redirect.
    reset = client.post(f"/facilitate/people/{target.id}/reset-link")
    assert reset.status_code == status
    response = client.post("/facilitate/people/organisations", data={"name": "X"})
    assert response.status_code == expected_post


def test_index_lists_people_and_organisations(client, factory, login_as):
    north = factory.organisation("North")
    factory.user(organisation=north, name="Amy <script>", email="amy@example.org")
    factory.user(name="Invitee", password=False)
    login_as(factory.user(Role.FACILITATOR, name="Fran"))
    html = client.get("/facilitate/people/").get_data(as_text=True)
    assert "Amy &lt;script&gt;" in html and "Amy <script>" not in html
    assert "Invited, not joined" in html
    assert "North" in html
    # Facilitators see no role forms; admins do.
    assert 'name="role"' not in html
    filtered = client.get(f"/facilitate/people/?organisation={north.id}").get_data(as_text=True)
    assert "amy@example.org" in filtered and "Invitee" not in filtered


def test_invite_by_pasting_shows_links_once_with_a_csv_download(client, factory, login_as, db):
    round_ = factory.round(question="Our joint ask?")
    login_as(factory.user(Role.FACILITATOR))
    form = client.get("/facilitate/people/invite").get_data(as_text=True)
    assert "Our joint ask?" in form
    response = client.post(
        "/facilitate/people/invite", data={"csv_text": CSV, "round_id": str(round_.id)}
    )
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    links = links_on(html)
    assert len(links) == 2 and all(link.startswith("http://localhost/invite/") for link in links)
    assert "Amy &lt;b&gt;" in html
    rows = download_csv(html)
    assert rows[0] == ["name", "email", "organisation", "link"]
    assert [r[3] for r in rows[1:]] == links
    stored = db.session.scalars(select(Invitation)).all()
    assert {s.round_id for s in stored} == {round_.id}
    assert all(link.rsplit("/", 1)[1] not in {s.token_hash for s in stored} for link in links)
    assert response.headers["Cache-Control"] == "no-store"
    # The link works in the accept flow and leads to the round.
    client.post("/logout")
    path = links[1].removeprefix("http://localhost")
    accepted = client.post(
        path, data={"name": "Bob", "password": "bob's passphrase", "confirm": "bob's passphrase"}
    )
    assert accepted.status_code == 303 and accepted.location.endswith(f"/rounds/{round_.id}")


def test_invite_by_uploading_a_file(client, factory, login_as, db):
    login_as(factory.user(Role.ADMIN))
    data = {
        "csv_file": (io.BytesIO(("\ufeff" + CSV).encode("utf-8")), "people.csv"),
        "round_id": "0",
    }
    response = client.post(
        "/facilitate/people/invite", data=data, content_type="multipart/form-data"
    )
    assert response.status_code == 200
    assert len(links_on(response.get_data(as_text=True))) == 2
    assert db.session.scalar(select(Organisation.name)) == "North"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"csv_text": ""}, "Paste the CSV or choose a file."),
        ({"csv_text": "name,email\nA,a@example.org\n"}, "missing: organisation"),
        ({"csv_text": CSV + "Cat,not-an-email,North\n"}, "Line 4:"),
        ({"csv_text": CSV, "round_id": "999"}, "Not a valid choice"),
        ({"csv_file": (io.BytesIO(b"\xff\xfe\x00bad"), "x.csv")}, "not UTF-8"),
    ],
)
def test_bad_invitations_are_refused_and_write_nothing(
    client, factory, login_as, db, data, message
):
    login_as(factory.user(Role.FACILITATOR))
    response = client.post(
        "/facilitate/people/invite", data=data, content_type="multipart/form-data"
    )
    assert response.status_code == 400
    assert message in unescape(response.get_data(as_text=True))
    assert db.session.scalars(select(Invitation)).all() == []
    assert db.session.scalar(select(User).where(User.email == "amy@example.org")) is None


def test_reset_link_is_shown_once(client, factory, login_as, db):
    member = factory.user(name="Mo", email="mo@example.org")
    login_as(factory.user(Role.FACILITATOR))
    response = client.post(f"/facilitate/people/{member.id}/reset-link")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    (link,) = links_on(html)
    assert "Mo" in html and link.startswith("http://localhost/reset/")
    invitations.find_invitation(link.rsplit("/", 1)[1], "reset")
    assert client.post("/facilitate/people/9999/reset-link").status_code == 404


def test_facilitator_cannot_get_a_reset_link_for_an_admin(client, factory, login_as, db):
    admin = factory.user(Role.ADMIN)
    login_as(factory.user(Role.FACILITATOR))
    assert client.post(f"/facilitate/people/{admin.id}/reset-link").status_code == 403
    assert db.session.scalars(select(Invitation)).all() == []


def test_admin_changes_roles_and_facilitators_cannot(client, factory, login_as, db):
    member = factory.user()
    facilitator = factory.user(Role.FACILITATOR)
    login_as(facilitator)
    assert (
        client.post(f"/facilitate/people/{member.id}/role", data={"role": "admin"}).status_code
        == 403
    )
    client.post("/logout")
    admin = factory.user(Role.ADMIN)
    login_as(admin)
    html = client.get("/facilitate/people/").get_data(as_text=True)
    assert 'name="role"' in html
    response = client.post(f"/facilitate/people/{member.id}/role", data={"role": "leadership"})
    assert response.status_code == 303
    db.session.expire_all()
    assert db.session.get(User, member.id).role == "leadership"
    bad = client.post(f"/facilitate/people/{member.id}/role", data={"role": "owner"})
    assert bad.status_code == 303
    last = client.post(f"/facilitate/people/{admin.id}/role", data={"role": "member"})
    assert last.status_code == 303
    page = client.get("/facilitate/people/").get_data(as_text=True)
    assert "last admin" in page
    db.session.expire_all()
    assert db.session.get(User, admin.id).role == "admin"


def test_admin_deactivates_an_account(client, factory, login_as, db):
    member = factory.user()
    login_as(factory.user(Role.ADMIN))
    response = client.post(f"/facilitate/people/{member.id}/active", data={"active": "0"})
    assert response.status_code == 303
    db.session.expire_all()
    assert db.session.get(User, member.id).active is False
    assert db.session.scalar(select(AuditEvent.action).order_by(AuditEvent.id.desc())) == (
        "user.deactivate"
    )


def test_create_organisation_from_the_page(client, factory, login_as, db):
    login_as(factory.user(Role.FACILITATOR))
    response = client.post("/facilitate/people/organisations", data={"name": " Faith Forum "})
    assert response.status_code == 303
    assert db.session.scalar(select(Organisation.name)) == "Faith Forum"
    again = client.post(
        "/facilitate/people/organisations", data={"name": "faith forum"}, follow_redirects=True
    )
    assert "already exists" in again.get_data(as_text=True)
    assert len(accounts.list_organisations(factory.user(Role.ADMIN))) == 1


def test_people_link_in_the_navigation(client, factory, login_as):
    login_as(factory.user(Role.FACILITATOR))
    html = client.get("/account").get_data(as_text=True)
    assert 'href="/facilitate/people/"' in html
