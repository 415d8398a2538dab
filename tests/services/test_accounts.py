"""Accounts service: logging in, organisations, users, roles, passwords."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from deliberate.models import AuditEvent, Organisation, Role, User
from deliberate.services import accounts
from deliberate.services.errors import Conflict, NotAllowed, NotFound, ValidationError
from deliberate.services.passwords import verify_password
from tests.conftest import PASSWORD, only_sqlite
from tests.lock_probe import WriteLockProbe

NEW_PASSWORD = "a brand new passphrase"


def audit_actions(db) -> list[str]:
    return [e.action for e in db.session.scalars(select(AuditEvent).order_by(AuditEvent.id))]


# --- authenticate --------------------------------------------------------------------------


def test_authenticate_with_the_right_password_records_the_login(factory):
    user = factory.user(email="ana@example.org")
    assert user.last_login_at is None
    assert accounts.authenticate("  ANA@Example.org ", PASSWORD) == user
    assert user.last_login_at is not None


@only_sqlite
@pytest.mark.parametrize("password", [PASSWORD, "a wrong guess!"])
def test_the_password_is_checked_without_holding_the_write_lock(db, factory, monkeypatch, password):
    """Checking a password costs tens of milliseconds (scrypt): SQLite's write lock, which
    every vote needs, must not be held meanwhile (a login is a POST: its transactions would
    otherwise begin with BEGIN IMMEDIATE)."""
    from deliberate.database import write_intent

    factory.user(email="ana@example.org")
    db.session.commit()
    probe = WriteLockProbe(db.engine.url.database, accounts.verify_password)
    monkeypatch.setattr(accounts, "verify_password", probe)
    with write_intent(True):  # as in a POST request
        if password == PASSWORD:
            assert accounts.authenticate("ana@example.org", password).last_login_at is not None
        else:
            with pytest.raises(accounts.LoginFailed):
                accounts.authenticate("ana@example.org", password)
    assert probe.free == [True]


@only_sqlite
def test_a_password_change_hashes_without_holding_the_write_lock(db, factory, monkeypatch):
    from deliberate.database import write_intent

    user = factory.user()
    version = user.auth_version
    db.session.commit()  # ends the transaction that read it (the test's writes as a POST's)
    path = db.engine.url.database
    checks = WriteLockProbe(path, accounts.verify_password)
    hashes = WriteLockProbe(path, accounts.hash_password)
    monkeypatch.setattr(accounts, "verify_password", checks)
    monkeypatch.setattr(accounts, "hash_password", hashes)
    with write_intent(True):
        accounts.change_password(user, PASSWORD, NEW_PASSWORD)
    assert checks.free == [True, True] and hashes.free == [True]
    db.session.expire_all()
    assert user.auth_version == version + 1 and verify_password(user.password_hash, NEW_PASSWORD)


@pytest.mark.parametrize(
    "email, password",
    [
        ("ana@example.org", "wrong password!"),
        ("nobody@example.org", PASSWORD),
        ("", PASSWORD),
        ("ana@example.org", ""),
        ("x" * 400 + "@example.org", PASSWORD),
    ],
)
def test_authenticate_failures_share_one_vague_message(factory, email, password):
    factory.user(email="ana@example.org")
    with pytest.raises(accounts.LoginFailed) as caught:
        accounts.authenticate(email, password)
    assert caught.value.message == "Email or password is incorrect."


def test_users_without_password_or_inactive_cannot_log_in(factory, db):
    factory.user(email="invited@example.org", password=False)
    inactive = factory.user(email="gone@example.org")
    inactive.active = False
    db.session.commit()
    for email in ("invited@example.org", "gone@example.org"):
        with pytest.raises(accounts.LoginFailed, match="Email or password is incorrect."):
            accounts.authenticate(email, PASSWORD)


def test_unknown_email_still_verifies_a_dummy_hash(factory, monkeypatch):
    checked = []
    real = accounts.verify_password
    monkeypatch.setattr(accounts, "verify_password", lambda h, p: checked.append(h) or real(h, p))
    with pytest.raises(accounts.LoginFailed):
        accounts.authenticate("nobody@example.org", PASSWORD)
    assert checked and checked[0].startswith("scrypt:")


# --- organisations -------------------------------------------------------------------------


def test_facilitator_creates_an_organisation_trimmed_and_audited(factory, db):
    facilitator = factory.user(Role.FACILITATOR)
    org = accounts.create_organisation(facilitator, "   Welcome   North  ")
    assert org.name == "Welcome North"
    event = db.session.scalars(select(AuditEvent)).one()
    assert (event.action, event.actor_id, event.target_id) == (
        "organisation.create",
        facilitator.id,
        org.id,
    )


def test_organisation_names_are_unique_ignoring_case(factory):
    admin = factory.user(Role.ADMIN)
    accounts.create_organisation(admin, "Welcome North")
    with pytest.raises(Conflict, match="already exists"):
        accounts.create_organisation(admin, "welcome north")


@pytest.mark.parametrize("name", ["", "   ", "x" * 201, "bad\x00name"])
def test_bad_organisation_names_are_refused(factory, db, name):
    with pytest.raises(ValidationError):
        accounts.create_organisation(factory.user(Role.ADMIN), name)
    assert db.session.scalars(select(Organisation)).all() == []


@pytest.mark.parametrize("role", [Role.MEMBER, Role.LEADERSHIP])
def test_members_and_leadership_cannot_create_organisations(factory, role):
    with pytest.raises(NotAllowed):
        accounts.create_organisation(factory.user(role), "Welcome North")


def test_the_system_creates_organisations(db):
    assert accounts.create_organisation(None, "Welcome North").id is not None


# --- users ---------------------------------------------------------------------------------


def test_create_user_validates_and_lowercases_the_email(factory, db):
    org = factory.organisation("Welcome North")
    user = accounts.create_user(
        None,
        email=" Ana.Lopez@Example.ORG ",
        name=" Ana  López ",
        organisation="welcome north",
        password=NEW_PASSWORD,
        role="facilitator",
    )
    assert user.email == "ana.lopez@example.org"
    assert user.name == "Ana López"
    assert user.organisation_id == org.id
    assert user.role == "facilitator"
    assert verify_password(user.password_hash, NEW_PASSWORD)


def test_create_user_without_password_cannot_log_in_yet(db):
    user = accounts.create_user(None, email="ana@example.org", name="Ana")
    assert user.password_hash is None and user.role == "member"
    with pytest.raises(accounts.LoginFailed):
        accounts.authenticate("ana@example.org", "")


def test_create_user_finds_the_organisation_by_id(factory):
    org = factory.organisation()
    assert (
        accounts.create_user(
            None, email="a@example.org", name="A", organisation=org.id
        ).organisation_id
        == org.id
    )
    assert (
        accounts.create_user(
            None, email="b@example.org", name="B", organisation=str(org.id)
        ).organisation_id
        == org.id
    )


@pytest.mark.parametrize(
    "fields, error",
    [
        ({"email": "not-an-email"}, ValidationError),
        ({"email": ""}, ValidationError),
        ({"name": ""}, ValidationError),
        ({"role": "superuser"}, ValidationError),
        ({"password": "short"}, ValidationError),
        ({"organisation": "No Such Org"}, NotFound),
        ({"organisation": 9999}, NotFound),
    ],
)
def test_create_user_refuses_bad_input_and_writes_nothing(db, fields, error):
    values = {"email": "ana@example.org", "name": "Ana", "password": NEW_PASSWORD} | fields
    with pytest.raises(error):
        accounts.create_user(None, **values)
    assert db.session.scalars(select(User)).all() == []


def test_duplicate_email_is_a_conflict(factory):
    factory.user(email="ana@example.org")
    with pytest.raises(Conflict):
        accounts.create_user(None, email="ANA@example.org", name="Ana again")


def test_facilitator_may_create_members_but_not_admins(factory):
    facilitator = factory.user(Role.FACILITATOR)
    member = accounts.create_user(facilitator, email="m@example.org", name="M")
    assert member.role == "member"
    with pytest.raises(NotAllowed):
        accounts.create_user(facilitator, email="boss@example.org", name="B", role="admin")
    with pytest.raises(NotAllowed):
        accounts.create_user(factory.user(Role.MEMBER), email="x@example.org", name="X")


# --- roles and activation ------------------------------------------------------------------


def test_admin_sets_a_role_and_it_is_audited(factory, db):
    admin = factory.user(Role.ADMIN)
    member = factory.user()
    accounts.set_role(admin, member.id, "facilitator")
    assert db.session.get(User, member.id).role == "facilitator"
    event = db.session.scalars(select(AuditEvent)).one()
    assert event.action == "user.set_role"
    assert event.details == {"old": "member", "new": "facilitator"}


@pytest.mark.parametrize("role", [Role.FACILITATOR, Role.LEADERSHIP, Role.MEMBER])
def test_only_admins_set_roles(factory, db, role):
    actor = factory.user(role)
    member = factory.user()
    for new_role in ("admin", "facilitator"):
        with pytest.raises(NotAllowed):
            accounts.set_role(actor, member.id, new_role)
    assert db.session.get(User, member.id).role == "member"


def test_set_role_refuses_unknown_roles_and_people(factory):
    admin = factory.user(Role.ADMIN)
    with pytest.raises(ValidationError):
        accounts.set_role(admin, factory.user().id, "owner")
    with pytest.raises(NotFound):
        accounts.set_role(admin, 9999, "member")


def test_the_last_admin_keeps_the_admin_role(factory, db):
    admin = factory.user(Role.ADMIN)
    with pytest.raises(Conflict, match="last admin"):
        accounts.set_role(admin, admin.id, "member")
    other = factory.user(Role.ADMIN)
    accounts.set_role(admin, other.id, "member")
    assert other.role == "member"
    with pytest.raises(Conflict):
        accounts.set_active(None, admin.id, False)


def test_admin_deactivates_and_reactivates_an_account(factory, db):
    admin = factory.user(Role.ADMIN)
    member = factory.user(email="m@example.org")
    accounts.set_active(admin, member.id, False)
    with pytest.raises(accounts.LoginFailed):
        accounts.authenticate("m@example.org", PASSWORD)
    accounts.set_active(admin, member.id, True)
    assert accounts.authenticate("m@example.org", PASSWORD) == member
    assert audit_actions(db) == ["user.deactivate", "user.activate"]
    with pytest.raises(Conflict):
        accounts.set_active(admin, admin.id, False)
    with pytest.raises(NotAllowed):
        accounts.set_active(factory.user(Role.FACILITATOR), member.id, False)


# --- passwords and sessions ----------------------------------------------------------------


def test_change_password_bumps_auth_version(factory):
    user = factory.user()
    version = user.auth_version
    accounts.change_password(user, PASSWORD, NEW_PASSWORD)
    assert user.auth_version == version + 1
    assert verify_password(user.password_hash, NEW_PASSWORD)


@pytest.mark.parametrize(
    "current, new, error",
    [
        ("wrong current pw", NEW_PASSWORD, accounts.WrongPassword),
        (PASSWORD, "short", ValidationError),
        (PASSWORD, PASSWORD, ValidationError),
    ],
)
def test_change_password_refusals_change_nothing(factory, current, new, error):
    user = factory.user()
    version, old_hash = user.auth_version, user.password_hash
    with pytest.raises(error):
        accounts.change_password(user, current, new)
    assert (user.auth_version, user.password_hash) == (version, old_hash)


def test_logout_everywhere_bumps_auth_version(factory):
    user = factory.user()
    old_id = user.get_id()
    accounts.logout_everywhere(user)
    assert user.get_id() != old_id


# --- listing -------------------------------------------------------------------------------


def test_list_people_and_organisations_for_facilitators_only(factory):
    north = factory.organisation("North")
    south = factory.organisation("South")
    facilitator = factory.user(Role.FACILITATOR, name="Zed")
    a = factory.user(organisation=north, name="Amy")
    b = factory.user(organisation=south, name="bob")
    assert [u.name for u in accounts.people_page(facilitator).items] == ["Amy", "bob", "Zed"]
    assert accounts.people_page(facilitator, north.id).items == [a]
    assert [o.name for o in accounts.list_organisations(facilitator)] == ["North", "South"]
    assert accounts.count_members_by_organisation(facilitator) == {north.id: 1, south.id: 1}
    assert accounts.get_person(facilitator, b.id) == b
    for role in (Role.MEMBER, Role.LEADERSHIP):
        with pytest.raises(NotAllowed):
            accounts.people_page(factory.user(role))
        with pytest.raises(NotAllowed):
            accounts.list_organisations(factory.user(role))
