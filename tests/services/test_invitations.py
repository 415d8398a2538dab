"""Invitations and password resets: CSV parsing, issuing links, single use, expiry."""

from __future__ import annotations

import csv
import hashlib
import io
import threading
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from deliberate.extensions import db as _db
from deliberate.models import AuditEvent, Invitation, Organisation, Role, User, utcnow
from deliberate.services import accounts, invitations
from deliberate.services.errors import InvalidToken, NotAllowed, NotFound, ValidationError
from deliberate.services.invitations import InvitationRow
from deliberate.services.passwords import verify_password
from tests.conftest import PASSWORD, only_sqlite
from tests.lock_probe import WriteLockProbe

BASE = "https://deliberate.example"
NEW_PASSWORD = "my own passphrase"


def token_of(link: str) -> str:
    return link.rsplit("/", 1)[1]


def rows(*people) -> list[InvitationRow]:
    return [InvitationRow(name=n, email=e, organisation=o) for n, e, o in people]


# --- parse_invitation_csv ------------------------------------------------------------------


def test_parse_reads_rows_case_insensitive_header_and_bom():
    text = "\ufeffName, EMAIL ,Organisation\r\nAmy,Amy@Example.org,North\n\nBob,bob@example.org,\n"
    parsed = invitations.parse_invitation_csv(text)
    assert [(r.name, r.email, r.organisation, r.line) for r in parsed] == [
        ("Amy", "amy@example.org", "North", 2),
        ("Bob", "bob@example.org", None, 4),
    ]


def test_parse_accepts_columns_in_any_order_and_extra_columns():
    parsed = invitations.parse_invitation_csv(
        "organisation,notes,email,name\nNorth,hi,amy@example.org,Amy\n"
    )
    assert parsed[0] == InvitationRow("Amy", "amy@example.org", "North", 2)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty"),
        ("name,email\nAmy,amy@example.org\n", "missing: organisation"),
        ("name,email,organisation\n", "nobody to invite"),
        ("a,b,c\nAmy,amy@example.org,North\n", "Line 1 must be the header"),
    ],
)
def test_parse_refuses_bad_files(text, message):
    with pytest.raises(ValidationError, match=message):
        invitations.parse_invitation_csv(text)


def test_parse_reports_every_bad_row_with_its_line_number():
    text = (
        "name,email,organisation\n"
        "Amy,amy@example.org,North\n"
        ",nobody@example.org,North\n"
        "Bob,not-an-email,South\n"
        "Amy again,AMY@example.org,North\n"
        "Cat,cat@example.org," + "x" * 201 + "\n"
    )
    with pytest.raises(ValidationError) as caught:
        invitations.parse_invitation_csv(text)
    message = caught.value.message
    assert "Line 3: Enter a name." in message
    assert "Line 4:" in message and "not-an-email" in message
    assert "Line 5: amy@example.org is already on line 2." in message
    assert "Line 6:" in message and "organisation name" in message
    assert "Line 2" not in message


def test_parse_refuses_more_than_5000_rows():
    lines = ["name,email,organisation"] + [f"P{i},p{i}@example.org,Org" for i in range(5001)]
    with pytest.raises(ValidationError, match="more than 5,000"):
        invitations.parse_invitation_csv("\n".join(lines))
    assert len(invitations.parse_invitation_csv("\n".join(lines[:5001]))) == 5000


# --- invite_members ------------------------------------------------------------------------


def test_invite_creates_organisations_users_and_hashed_single_links(factory, db):
    facilitator = factory.user(Role.FACILITATOR)
    factory.organisation("North")
    round_ = factory.round()
    issued = invitations.invite_members(
        facilitator,
        rows(
            ("Amy", "amy@example.org", "north"),
            ("Bob", "bob@example.org", "South"),
            ("Cat", "cat@example.org", None),
        ),
        round_id=round_.id,
        base_url=BASE + "/",
    )
    assert [i.email for i in issued] == ["amy@example.org", "bob@example.org", "cat@example.org"]
    assert [i.organisation for i in issued] == ["North", "South", ""]
    assert {o.name for o in db.session.scalars(select(Organisation))} == {"North", "South"}
    for item in issued:
        assert item.link.startswith(f"{BASE}/invite/")
        assert item.user.password_hash is None and item.user.role == "member"
    stored = db.session.scalars(select(Invitation)).all()
    tokens = {token_of(i.link) for i in issued}
    assert {s.token_hash for s in stored} == {
        hashlib.sha256(t.encode()).hexdigest() for t in tokens
    }
    assert all(s.round_id == round_.id and s.purpose == "invite" for s in stored)
    assert all(len(t) >= 43 for t in tokens)
    event = db.session.scalars(select(AuditEvent)).one()
    assert event.action == "invitation.create" and event.round_id == round_.id
    assert event.details["invited"] == 3 and event.details["organisations_created"] == 1
    assert not any(t in str(event.details) for t in tokens)


def test_invite_expires_after_the_configured_ttl(factory, app):
    app.config["INVITATION_TTL_HOURS"] = 5
    issued = invitations.invite_members(None, rows(("Amy", "amy@example.org", None)), base_url=BASE)
    stored = invitations.find_invitation(token_of(issued[0].link), "invite")
    assert timedelta(hours=4.9) < stored.expires_at - utcnow() <= timedelta(hours=5)


def test_existing_users_with_a_password_get_no_new_link(factory, db):
    factory.user(email="amy@example.org")
    pending = factory.user(email="bob@example.org", password=False)
    first = invitations.invite_members(None, rows(("Bob", "bob@example.org", None)), base_url=BASE)
    issued = invitations.invite_members(
        None,
        rows(("Amy", "amy@example.org", None), ("Bob", "BOB@example.org", "New Org")),
        base_url=BASE,
    )
    assert issued[0].link is None and issued[0].status == "already has an account"
    assert issued[1].link and issued[1].user.id == pending.id
    # The newer link replaces the earlier one.
    with pytest.raises(InvalidToken):
        invitations.find_invitation(token_of(first[0].link), "invite")
    invitations.find_invitation(token_of(issued[1].link), "invite")
    assert db.session.scalar(select(User).where(User.email == "bob@example.org")).id == pending.id


def test_invite_refusals_write_nothing(factory, db):
    facilitator = factory.user(Role.FACILITATOR)
    with pytest.raises(NotFound):
        invitations.invite_members(
            facilitator, rows(("Amy", "amy@example.org", "North")), round_id=999, base_url=BASE
        )
    with pytest.raises(ValidationError):
        invitations.invite_members(
            facilitator,
            rows(("Amy", "amy@example.org", "North"), ("Bob", "bad", "North")),
            base_url=BASE,
        )
    for role in (Role.MEMBER, Role.LEADERSHIP):
        with pytest.raises(NotAllowed):
            invitations.invite_members(
                factory.user(role), rows(("Amy", "amy@example.org", "North")), base_url=BASE
            )
    assert db.session.scalars(select(Organisation)).all() == []
    assert db.session.scalars(select(Invitation)).all() == []
    assert db.session.scalar(select(User).where(User.email == "amy@example.org")) is None


def test_links_csv_guards_against_formula_injection(db):
    issued = invitations.invite_members(
        None, rows(("=HYPERLINK(1)", "amy@example.org", "+Org")), base_url=BASE
    )
    parsed = list(csv.reader(io.StringIO(invitations.links_csv(issued))))
    assert parsed[0] == ["name", "email", "organisation", "link"]
    assert parsed[1][:3] == ["'=HYPERLINK(1)", "amy@example.org", "'+Org"]
    assert parsed[1][3] == issued[0].link


# --- accepting -----------------------------------------------------------------------------


def invite_one(email="amy@example.org", **kwargs) -> str:
    issued = invitations.invite_members(None, rows(("Amy", email, None)), base_url=BASE, **kwargs)
    return token_of(issued[0].link)


def test_accept_sets_the_password_and_name_once(db):
    token = invite_one()
    user = invitations.accept_invitation(token, NEW_PASSWORD, "Amy Jones")
    assert verify_password(user.password_hash, NEW_PASSWORD) and user.name == "Amy Jones"
    assert accounts.authenticate("amy@example.org", NEW_PASSWORD) == user
    with pytest.raises(InvalidToken, match="This link is invalid, used or expired."):
        invitations.accept_invitation(token, "another passphrase")
    assert verify_password(db.session.get(User, user.id).password_hash, NEW_PASSWORD)


def test_accept_with_a_bad_password_leaves_the_link_usable(db):
    token = invite_one()
    with pytest.raises(ValidationError):
        invitations.accept_invitation(token, "short")
    with pytest.raises(ValidationError):
        invitations.accept_invitation(token, "amy@example.org")
    invitations.accept_invitation(token, NEW_PASSWORD)


def test_expired_unknown_and_wrong_purpose_links_are_invalid(db):
    token = invite_one(ttl_hours=1)
    for bad, purpose in [
        (token, "reset"),
        ("nonsense", "invite"),
        ("x" * 500, "invite"),
        ("", "invite"),
    ]:
        with pytest.raises(InvalidToken):
            invitations.find_invitation(bad, purpose)
    db.session.execute(update(Invitation).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    with pytest.raises(InvalidToken):
        invitations.accept_invitation(token, NEW_PASSWORD)


def test_deactivated_users_cannot_use_their_link(factory, db):
    token = invite_one()
    accounts.set_active(None, db.session.scalar(select(User.id)), False)
    with pytest.raises(InvalidToken):
        invitations.accept_invitation(token, NEW_PASSWORD)


def test_accept_is_single_use_even_when_the_lookup_raced(db, monkeypatch):
    """Between the lookup and the write another request used the link: the UPDATE guard wins."""
    token = invite_one()
    invitation = invitations.find_invitation(token, "invite")
    db.session.execute(update(Invitation).values(used_at=utcnow()))
    db.session.commit()
    monkeypatch.setattr(invitations, "find_invitation", lambda t, p: invitation)
    with pytest.raises(InvalidToken):
        invitations.accept_invitation(token, NEW_PASSWORD)
    assert db.session.scalar(select(User)).password_hash is None


def test_concurrent_accepts_let_exactly_one_through(app, db):
    token = invite_one()
    db.session.remove()
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def attempt(i: int) -> None:
        with app.app_context():
            barrier.wait()
            try:
                invitations.accept_invitation(token, f"passphrase number {i}")
                outcomes.append(f"ok:{i}")
            except InvalidToken:
                outcomes.append("invalid")
            finally:
                _db.session.remove()

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o.startswith("ok:")]
    assert len(winners) == 1 and outcomes.count("invalid") == 5
    user = db.session.scalar(select(User))
    assert verify_password(user.password_hash, f"passphrase number {winners[0][3:]}")


# --- password resets -----------------------------------------------------------------------


def test_facilitator_issues_a_reset_and_it_logs_out_everywhere(factory, db):
    facilitator = factory.user(Role.FACILITATOR)
    member = factory.user(email="m@example.org")
    version = member.auth_version
    link = invitations.issue_password_reset(facilitator, member.id, BASE)
    assert link.startswith(f"{BASE}/reset/")
    user = invitations.reset_password(token_of(link), NEW_PASSWORD)
    assert user.auth_version == version + 1
    assert accounts.authenticate("m@example.org", NEW_PASSWORD) == user
    with pytest.raises(InvalidToken):
        invitations.reset_password(token_of(link), "yet another passphrase")
    actions = [e.action for e in db.session.scalars(select(AuditEvent))]
    assert actions == ["user.password_reset_link"]


def test_a_new_reset_link_replaces_the_old_one(factory):
    member = factory.user()
    first = invitations.issue_password_reset(None, member.id, BASE)
    second = invitations.issue_password_reset(None, member.id, BASE)
    with pytest.raises(InvalidToken):
        invitations.reset_password(token_of(first), NEW_PASSWORD)
    invitations.reset_password(token_of(second), NEW_PASSWORD)


def test_reset_link_expires(factory, app):
    app.config["RESET_TTL_HOURS"] = 0
    link = invitations.issue_password_reset(None, factory.user().id, BASE)
    with pytest.raises(InvalidToken):
        invitations.reset_password(token_of(link), NEW_PASSWORD)


def test_reset_permissions(factory):
    facilitator = factory.user(Role.FACILITATOR)
    admin = factory.user(Role.ADMIN)
    with pytest.raises(NotAllowed):
        invitations.issue_password_reset(facilitator, admin.id, BASE)
    assert invitations.issue_password_reset(admin, admin.id, BASE)
    with pytest.raises(NotAllowed):
        invitations.issue_password_reset(factory.user(Role.MEMBER), facilitator.id, BASE)
    with pytest.raises(NotFound):
        invitations.issue_password_reset(admin, 9999, BASE)


def test_invite_token_cannot_reset_and_reset_keeps_password_rules(factory):
    member = factory.user(email="m@example.org")
    link = invitations.issue_password_reset(None, member.id, BASE)
    with pytest.raises(ValidationError):
        invitations.reset_password(token_of(link), "m@example.org")
    with pytest.raises(InvalidToken):
        invitations.accept_invitation(token_of(link), NEW_PASSWORD)
    assert accounts.authenticate("m@example.org", PASSWORD) == member


def test_a_concurrent_duplicate_becomes_a_conflict_and_nothing_is_saved(db, monkeypatch):
    from sqlalchemy.exc import IntegrityError

    from deliberate.services.errors import Conflict

    real = invitations._write_invitations

    def racing(*args, **kwargs):
        result = real(*args, **kwargs)
        raise IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed: users.email"))
        return result

    monkeypatch.setattr(invitations, "_write_invitations", racing)
    with pytest.raises(Conflict, match="Nothing was saved"):
        invitations.invite_members(None, rows(("Amy", "amy@example.org", "North")), base_url=BASE)
    assert db.session.scalars(select(User)).all() == []
    assert db.session.scalars(select(Organisation)).all() == []
    assert db.session.scalars(select(Invitation)).all() == []


@only_sqlite
@pytest.mark.parametrize("purpose", ["invite", "reset"])
def test_links_hash_the_password_without_holding_the_write_lock(factory, db, monkeypatch, purpose):
    """Setting a password through a link hashes it (scrypt) while SQLite's write lock, which
    every vote needs, is free; only the short write that follows takes it."""
    from deliberate.database import write_intent

    if purpose == "invite":
        token = invite_one()
    else:
        token = token_of(invitations.issue_password_reset(None, factory.user().id, BASE))
    db.session.commit()
    probe = WriteLockProbe(db.engine.url.database, invitations.hash_password)
    monkeypatch.setattr(invitations, "hash_password", probe)
    with write_intent(True):  # as in a POST request
        if purpose == "invite":
            user = invitations.accept_invitation(token, NEW_PASSWORD)
        else:
            user = invitations.reset_password(token, NEW_PASSWORD)
    assert probe.free == [True]
    assert accounts.authenticate(user.email, NEW_PASSWORD) == user
