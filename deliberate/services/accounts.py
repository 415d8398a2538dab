"""Accounts: logging in, organisations, users, roles and passwords.

An `actor` of None means the system itself (the command line run by the operator); the web
layer always passes a logged-in user.
"""

from __future__ import annotations

import secrets
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from ..database import end_read, write_intent
from ..extensions import db
from ..models import ROLE_VALUES, Organisation, Role, User, utcnow
from . import audit
from .authz import require_facilitator, require_role
from .errors import Conflict, DomainError, NotAllowed, NotFound, ValidationError
from .pagination import Page, keyset_page, page_cursor
from .passwords import check_password_rules, hash_password, verify_password
from .rounds import is_valid_id

LOGIN_FAILED = "Email or password is incorrect."
MAX_NAME_LENGTH = 200
MAX_EMAIL_LENGTH = 254


class LoginFailed(DomainError):
    """The email and password do not match an active account (deliberately vague)."""

    status_code = 400

    def __init__(self, message: str = LOGIN_FAILED):
        super().__init__(message)


class WrongPassword(ValidationError):
    """The current password given to confirm a change is not right."""


# --- validation helpers (shared with services.invitations) ---------------------------------


def normalise_email(raw: str | None) -> str:
    """Return the email address validated and lower-cased, or raise ValidationError."""
    text = (raw or "").strip()
    if not text:
        raise ValidationError("Enter an email address.")
    if len(text) > MAX_EMAIL_LENGTH:
        raise ValidationError("That email address is too long.")
    try:
        result = validate_email(text, check_deliverability=False)
    except EmailNotValidError as error:
        raise ValidationError(f"“{text}” is not a valid email address: {error}") from None
    return result.normalized.lower()


def clean_name(raw: str | None, what: str = "name") -> str:
    """Return the name trimmed, refusing empty, over-long or control-character names."""
    text = " ".join((raw or "").split())
    if not text:
        raise ValidationError(f"Enter a {what}.")
    if len(text) > MAX_NAME_LENGTH:
        raise ValidationError(f"Use a {what} of at most {MAX_NAME_LENGTH} characters.")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in text):
        raise ValidationError(f"The {what} contains characters that are not allowed.")
    return text


def clean_role(raw: str | Role | None) -> str:
    """Return the role's value, or refuse one that does not exist."""
    value = str(raw or "").strip().lower()
    if value not in ROLE_VALUES:
        raise ValidationError(f"The role must be one of: {', '.join(ROLE_VALUES)}.")
    return value


def _require_staff(actor: User | None) -> User | None:
    """Let the system (None) through; otherwise require a facilitator or admin."""
    return None if actor is None else require_facilitator(actor)


def _require_admin(actor: User | None) -> User | None:
    """Let the system (None) through; otherwise require an admin."""
    return None if actor is None else require_role(actor, Role.ADMIN)


def _get_user(user_id: int) -> User:
    user = db.session.get(User, user_id) if is_valid_id(user_id) else None
    if user is None:
        raise NotFound("No such person.")
    return user


def _count_active_admins() -> int:
    return db.session.scalar(
        select(func.count()).select_from(User).where(User.role == Role.ADMIN.value, User.active)
    )


def find_organisation_by_name(name: str) -> Organisation | None:
    """Return the organisation with this name, compared case-insensitively."""
    return db.session.scalar(
        select(Organisation).where(func.lower(Organisation.name) == name.strip().lower())
    )


# --- logging in ----------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A hash of a random password, verified when the email is unknown to even out timing."""
    return hash_password(secrets.token_urlsafe(16))


def authenticate(email: str, password: str) -> User:
    """Return the active user with this email and password, recording the login time.

    The password is checked (scrypt: tens of milliseconds of CPU) while nothing is held: the
    user is read in a read transaction (on SQLite a plain BEGIN, which never takes the write
    lock that every vote needs), which ends before the login time is written in a short
    transaction of its own. A caller whose transaction already holds SQLite's write lock
    keeps it (nothing can be done about that here)."""
    address = (email or "").strip().lower()
    user = None
    with write_intent(False):
        if address and len(address) <= MAX_EMAIL_LENGTH:
            user = db.session.scalar(select(User).where(User.email == address))
        if user is None or not user.password_hash:
            verify_password(_dummy_hash(), password or "")
            raise LoginFailed()
        if not verify_password(user.password_hash, password or "") or not user.active:
            raise LoginFailed()
    end_read(db.session())
    with write_intent(True):
        user.last_login_at = utcnow()
        db.session.commit()
    return user


def find_user_by_email(email: str) -> User:
    """Return the user with this email address, or raise NotFound."""
    address = (email or "").strip().lower()
    user = db.session.scalar(select(User).where(User.email == address)) if address else None
    if user is None:
        raise NotFound(f"No account with the email address {address or '(empty)'}.")
    return user


# --- organisations and people --------------------------------------------------------------


def create_organisation(actor: User | None, name: str) -> Organisation:
    """Create a member organisation with a unique name (facilitators and admins)."""
    _require_staff(actor)
    clean = clean_name(name, "organisation name")
    if find_organisation_by_name(clean) is not None:
        raise Conflict(f"An organisation called “{clean}” already exists.")
    organisation = Organisation(name=clean)
    db.session.add(organisation)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(f"An organisation called “{clean}” already exists.") from None
    audit.record(
        actor,
        "organisation.create",
        target_type="organisation",
        target_id=organisation.id,
        name=clean,
    )
    db.session.commit()
    return organisation


def _resolve_organisation(organisation: Organisation | int | str | None) -> Organisation | None:
    if organisation is None or organisation == "":
        return None
    if isinstance(organisation, Organisation):
        return organisation
    if isinstance(organisation, int) and not isinstance(organisation, bool):
        found = db.session.get(Organisation, organisation) if is_valid_id(organisation) else None
        if found is None:
            raise NotFound(f"No organisation with id {organisation}.")
        return found
    if isinstance(organisation, str):
        found = find_organisation_by_name(organisation)
        if found is None and organisation.strip().isdigit():
            number = int(organisation.strip())
            found = db.session.get(Organisation, number) if is_valid_id(number) else None
        if found is None:
            raise NotFound(f"No organisation called “{organisation.strip()}”. Create it first.")
        return found
    raise ValidationError("The organisation must be given by name or id.")


def create_user(
    actor: User | None,
    *,
    email: str,
    name: str,
    role: str | Role = Role.MEMBER,
    organisation: Organisation | int | str | None = None,
    password: str | None = None,
) -> User:
    """Create an account; without a password it can only be used through an invitation."""
    _require_staff(actor)
    address = normalise_email(email)
    clean = clean_name(name)
    role_value = clean_role(role)
    if actor is not None and role_value == Role.ADMIN and actor.role != Role.ADMIN:
        raise NotAllowed("Only an admin can create admin accounts.")
    if password is not None:
        check_password_rules(password, email=address, name=clean)
    org = _resolve_organisation(organisation)
    if db.session.scalar(select(User.id).where(User.email == address)) is not None:
        raise Conflict(f"There is already an account with the email address {address}.")
    user = User(
        email=address,
        name=clean,
        role=role_value,
        organisation_id=org.id if org else None,
        password_hash=hash_password(password) if password is not None else None,
    )
    db.session.add(user)
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()
        raise Conflict(f"There is already an account with the email address {address}.") from None
    audit.record(actor, "user.create", target_type="user", target_id=user.id, role=role_value)
    db.session.commit()
    return user


def set_role(actor: User | None, user_id: int, role: str | Role) -> User:
    """Change a person's role (admins only); the last active admin keeps the admin role."""
    _require_admin(actor)
    role_value = clean_role(role)
    user = _get_user(user_id)
    old = user.role
    if old == role_value:
        return user
    if old == Role.ADMIN and user.active and _count_active_admins() <= 1:
        raise Conflict("This is the last admin: make someone else an admin first.")
    user.role = role_value
    audit.record(
        actor, "user.set_role", target_type="user", target_id=user.id, old=old, new=role_value
    )
    db.session.commit()
    return user


def set_active(actor: User | None, user_id: int, active: bool) -> User:
    """Activate or deactivate an account (admins only); a deactivated account cannot log in."""
    admin = _require_admin(actor)
    user = _get_user(user_id)
    active = bool(active)
    if user.active == active:
        return user
    if active and user.erased_at is not None:
        raise Conflict("This account was erased: invite the person again to make a new one.")
    if not active:
        if admin is not None and admin.id == user.id:
            raise Conflict("You cannot deactivate your own account.")
        if user.role == Role.ADMIN and _count_active_admins() <= 1:
            raise Conflict("This is the last admin: make someone else an admin first.")
    user.active = active
    details = {}
    if not active:
        # A deactivated account's API tokens die with it: reactivation does not revive them.
        from .api_tokens import revoke_all

        details["api_tokens_revoked"] = revoke_all(user)
    audit.record(
        actor,
        "user.activate" if active else "user.deactivate",
        target_type="user",
        target_id=user.id,
        **details,
    )
    db.session.commit()
    return user


def change_password(user: User, current_password: str, new_password: str) -> User:
    """Change the user's own password; every other session of theirs is logged out."""
    # The three scrypt computations happen while nothing is held (see authenticate).
    with write_intent(False):
        if user is None or not user.is_active:
            raise NotAllowed("Please log in first.")
        if not verify_password(user.password_hash, current_password or ""):
            raise WrongPassword("Your current password is not right.")
        check_password_rules(new_password, email=user.email, name=user.name)
        if verify_password(user.password_hash, new_password):
            raise ValidationError("Choose a password different from your current one.")
        hashed = hash_password(new_password)
    end_read(db.session())
    with write_intent(True):
        user.password_hash = hashed
        user.auth_version = User.auth_version + 1  # in SQL: a concurrent change counts too
        db.session.commit()
    return user


def logout_everywhere(user: User) -> User:
    """End every session of the user, on every device."""
    if user is None:
        raise NotAllowed("Please log in first.")
    user.auth_version = (user.auth_version or 1) + 1
    db.session.commit()
    return user


def _not_a_pseudonym():
    """Leave out the stand-ins a retention purge made for a round's former participants."""
    from .personal_data import PSEUDONYM_DOMAIN

    return User.email.not_like(f"%@{PSEUDONYM_DOMAIN}")


PEOPLE_PAGE_SIZE = 100


def _people_query(actor: User, organisation_id: int | None) -> Select | None:
    require_facilitator(actor)
    query = select(User).where(_not_a_pseudonym())
    if organisation_id is not None:
        if not is_valid_id(organisation_id):  # beyond the id range: no such organisation
            return None
        query = query.where(User.organisation_id == organisation_id)
    return query


def _people_order():
    return (func.lower(User.name), User.id)


def people_page(
    actor: User,
    organisation_id: int | None = None,
    *,
    limit: int = PEOPLE_PAGE_SIZE,
    after_id: int | None = None,
    before_id: int | None = None,
) -> Page[User]:
    """Return a page of people by name, optionally of one organisation (facilitators and
    admins). At most one cursor: `after_id` or `before_id`, a person's id; a cursor that is
    not a listed person's gives the first page."""
    query = _people_query(actor, organisation_id)
    if query is None:
        return Page([])
    cursor, direction = page_cursor(after_id, before_id)
    cursor_key = None
    if cursor is not None:
        # The key as the database computes it (lower() differs from str.lower beyond ASCII).
        name = db.session.scalar(
            query.with_only_columns(func.lower(User.name)).where(User.id == cursor)
        )
        cursor_key = None if name is None else (name, cursor)
    return keyset_page(
        query.options(selectinload(User.organisation)),
        _people_order(),
        limit=limit,
        cursor=cursor,
        cursor_key=cursor_key,
        direction=direction,
    )


def count_people(actor: User, organisation_id: int | None = None) -> int:
    """Return how many people `people_page` lists in all (facilitators and admins)."""
    query = _people_query(actor, organisation_id)
    if query is None:
        return 0
    return db.session.scalar(select(func.count()).select_from(query.subquery())) or 0


def get_person(actor: User, user_id: int) -> User:
    """Return one person (facilitators and admins)."""
    require_facilitator(actor)
    return _get_user(user_id)


def list_organisations(actor: User) -> list[Organisation]:
    """Return the organisations by name (facilitators and admins)."""
    require_facilitator(actor)
    return list(db.session.scalars(select(Organisation).order_by(func.lower(Organisation.name))))


def count_members_by_organisation(actor: User) -> dict[int, int]:
    """Return how many people each organisation has, by organisation id."""
    require_facilitator(actor)
    rows = db.session.execute(
        select(User.organisation_id, func.count())
        .where(User.organisation_id.is_not(None), _not_a_pseudonym())
        .group_by(User.organisation_id)
    ).all()
    return {org_id: int(n) for org_id, n in rows}
