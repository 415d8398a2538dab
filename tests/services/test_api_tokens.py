"""Personal API tokens: created hashed, shown once, found by hash, refused when they should be."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from sqlalchemy import select

from deliberate.models import ApiToken, AuditEvent, Role, utcnow
from deliberate.services import api_tokens
from deliberate.services.errors import Conflict, NotAllowed, NotFound, ValidationError


@pytest.fixture
def member(factory):
    return factory.user(Role.MEMBER, organisation=factory.organisation())


def test_a_token_is_stored_only_as_its_hash_and_authenticates_its_user(db, member):
    issued = api_tokens.create_token(member, "  Budget   sheet ", 30)
    assert issued.secret.startswith("dlb_") and len(issued.secret) >= 40
    row = db.session.scalar(select(ApiToken))
    assert row.name == "Budget sheet"
    assert row.token_hash == hashlib.sha256(issued.secret.encode()).hexdigest()
    assert issued.secret not in (row.token_hash, row.prefix, row.name)
    assert issued.secret.startswith(row.prefix) and len(row.prefix) < 16
    assert row.expires_at - row.created_at == timedelta(days=30)
    assert api_tokens.authenticate(issued.secret).id == member.id


def test_two_tokens_differ(member):
    one = api_tokens.create_token(member, "one").secret
    two = api_tokens.create_token(member, "two").secret
    assert one != two


@pytest.mark.parametrize(
    "secret",
    [None, "", "dlb_", "dlb_short", "Bearer dlb_x", "x" * 60, "dlb_" + "a" * 43 + "\n", 42],
)
def test_malformed_or_unknown_tokens_are_refused(member, secret):
    api_tokens.create_token(member, "real")
    assert api_tokens.authenticate(secret) is None
    assert api_tokens.authenticate("dlb_" + "A" * 43) is None  # well formed, unknown


def test_revoked_expired_deactivated_and_erased_tokens_stop_working(db, factory):
    user = factory.user(Role.MEMBER)
    revoked = api_tokens.create_token(user, "revoked")
    api_tokens.revoke_token(user, revoked.token.id)
    assert api_tokens.authenticate(revoked.secret) is None

    expiring = api_tokens.create_token(user, "expiring", 1)
    assert api_tokens.authenticate(expiring.secret) is not None
    assert api_tokens.authenticate(expiring.secret, now=utcnow() + timedelta(days=2)) is None

    live = api_tokens.create_token(user, "live")
    user.active = False
    db.session.commit()
    assert api_tokens.authenticate(live.secret) is None
    user.active = True
    user.erased_at = utcnow()
    db.session.commit()
    assert api_tokens.authenticate(live.secret) is None


def test_password_change_and_logout_everywhere_leave_tokens_working(db, member):
    issued = api_tokens.create_token(member, "integration")
    member.auth_version += 1  # what change_password and logout_everywhere do
    db.session.commit()
    assert api_tokens.authenticate(issued.secret).id == member.id


def test_last_used_is_recorded_at_most_once_a_minute(db, member):
    issued = api_tokens.create_token(member, "sheet")
    start = utcnow()
    api_tokens.authenticate(issued.secret, now=start)
    db.session.expire_all()
    assert db.session.get(ApiToken, issued.token.id).last_used_at == start
    api_tokens.authenticate(issued.secret, now=start + timedelta(seconds=30))
    db.session.expire_all()
    assert db.session.get(ApiToken, issued.token.id).last_used_at == start
    later = start + timedelta(minutes=2)
    api_tokens.authenticate(issued.secret, now=later)
    db.session.expire_all()
    assert db.session.get(ApiToken, issued.token.id).last_used_at == later


@pytest.mark.parametrize(
    ("name", "days"),
    [("", None), ("   ", None), ("x" * 81, None), ("ok", 0), ("ok", 3651), ("ok", "30"), (7, None)],
)
def test_bad_names_and_expiries_are_refused_without_a_write(db, member, name, days):
    with pytest.raises(ValidationError):
        api_tokens.create_token(member, name, days)
    assert db.session.scalar(select(ApiToken)) is None


def test_names_are_unique_among_active_tokens(member):
    api_tokens.create_token(member, "Sheet")
    with pytest.raises(Conflict):
        api_tokens.create_token(member, "sheet")


def test_the_number_of_active_tokens_is_bounded(member, monkeypatch):
    monkeypatch.setattr(api_tokens, "MAX_ACTIVE_TOKENS", 2)
    api_tokens.create_token(member, "a")
    second = api_tokens.create_token(member, "b")
    with pytest.raises(Conflict):
        api_tokens.create_token(member, "c")
    api_tokens.revoke_token(member, second.token.id)
    api_tokens.create_token(member, "c")


def test_only_the_owner_revokes_and_lists_a_token(factory, member):
    other = factory.user(Role.ADMIN)
    issued = api_tokens.create_token(member, "mine")
    with pytest.raises(NotFound):
        api_tokens.revoke_token(other, issued.token.id)
    assert api_tokens.list_tokens(other) == []
    assert [t.id for t in api_tokens.list_tokens(member)] == [issued.token.id]
    with pytest.raises(NotFound):
        api_tokens.revoke_token(member, 2**40)
    api_tokens.revoke_token(member, issued.token.id)
    with pytest.raises(Conflict):
        api_tokens.revoke_token(member, issued.token.id)
    with pytest.raises(NotAllowed):
        api_tokens.create_token(None, "anonymous")


def test_creation_and_revocation_are_in_the_audit_log_without_the_secret(db, member):
    issued = api_tokens.create_token(member, "logged")
    api_tokens.revoke_token(member, issued.token.id)
    events = list(db.session.scalars(select(AuditEvent).order_by(AuditEvent.id)))
    assert [e.action for e in events] == ["api_token.create", "api_token.revoke"]
    assert all(e.actor_id == member.id and e.target_id == issued.token.id for e in events)
    assert all(issued.secret not in str(e.details) for e in events)


def test_tokens_of_and_revoke_all_for_data_protection(db, factory, member):
    other = factory.user(Role.MEMBER)
    kept = api_tokens.create_token(other, "other's")
    first = api_tokens.create_token(member, "first")
    second = api_tokens.create_token(member, "second")
    api_tokens.revoke_token(member, first.token.id)
    assert {t.name for t in api_tokens.tokens_of(member)} == {"first", "second"}
    assert api_tokens.revoke_all(member) == 1  # the one still active
    db.session.commit()
    assert api_tokens.authenticate(second.secret) is None
    assert api_tokens.authenticate(kept.secret).id == other.id
    assert all(t.revoked_at is not None for t in api_tokens.tokens_of(member))


def test_deactivating_an_account_revokes_its_tokens_for_good(db, factory):
    from deliberate.services import accounts

    admin = factory.user(Role.ADMIN)
    user = factory.user(Role.MEMBER)
    other = factory.user(Role.MEMBER)
    first = api_tokens.create_token(user, "first")
    second = api_tokens.create_token(user, "second")
    kept = api_tokens.create_token(other, "someone else's")
    accounts.set_active(admin, user.id, False)
    accounts.set_active(admin, user.id, True)
    assert api_tokens.authenticate(first.secret) is None
    assert api_tokens.authenticate(second.secret) is None
    assert api_tokens.authenticate(kept.secret).id == other.id
    event = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "user.deactivate")
    ).one()
    assert event.target_id == user.id and event.details == {"api_tokens_revoked": 2}
