"""Invitation and password-reset links: single use, expiring, only a hash of the token stored.

A link carries a random token (`secrets.token_urlsafe(32)`); the database keeps its SHA-256
hex digest, so a copy of the database does not hand out working links. The token is shown
once, to whoever issued it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..database import end_read, write_intent
from ..extensions import db
from ..models import Invitation, Organisation, Role, Round, RoundState, User, utcnow
from . import audit
from .accounts import clean_name, normalise_email
from .authz import require_facilitator
from .errors import Conflict, InvalidToken, NotAllowed, NotFound, ValidationError
from .passwords import check_password_rules, hash_password
from .rounds import is_valid_id

INVITE = "invite"
RESET = "reset"
INVALID_LINK = "This link is invalid, used or expired."
MAX_CSV_ROWS = 5000
MAX_REPORTED_ERRORS = 20
MAX_TOKEN_LENGTH = 128
HEADER = ("name", "email", "organisation")

ALREADY_HAS_ACCOUNT = "already has an account"
DEACTIVATED = "account deactivated"
INVITED = "invited"
REINVITED = "invited again"


@dataclass(frozen=True)
class InvitationRow:
    """One person to invite, as read from a CSV line."""

    name: str
    email: str
    organisation: str | None = None
    line: int = 0


@dataclass(frozen=True)
class IssuedInvitation:
    """The outcome for one row: a link to hand over, or why there is none.

    `name` and `organisation` are copied from the account when the link is issued, so that
    showing thousands of results does not reload every account from the database.
    """

    user: User
    email: str
    link: str | None
    status: str = INVITED
    name: str = ""
    organisation: str = ""


# --- tokens --------------------------------------------------------------------------------


def hash_token(token: str) -> str:
    """Return the SHA-256 hex digest under which a token is stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_token() -> tuple[str, str]:
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


def _ttl(purpose: str, ttl_hours: float | None) -> timedelta:
    if ttl_hours is None:
        key = "INVITATION_TTL_HOURS" if purpose == INVITE else "RESET_TTL_HOURS"
        ttl_hours = current_app.config.get(key, 24 * 14 if purpose == INVITE else 24)
    return timedelta(hours=float(ttl_hours))


def _link(base_url: str, purpose: str, token: str) -> str:
    return f"{(base_url or '').rstrip('/')}/{purpose}/{token}"


def _close_open_links(user_id: int, purpose: str, *, except_id: int | None = None) -> None:
    """Mark the user's other unused links of this purpose as used (a newer one replaces them)."""
    query = update(Invitation).where(
        Invitation.user_id == user_id,
        Invitation.purpose == purpose,
        Invitation.used_at.is_(None),
    )
    if except_id is not None:
        query = query.where(Invitation.id != except_id)
    db.session.execute(
        query.values(used_at=utcnow()), execution_options={"synchronize_session": False}
    )


# --- the CSV of people to invite -----------------------------------------------------------


def parse_invitation_csv(text: str) -> list[InvitationRow]:
    """Read a CSV with the header name,email,organisation; refuse it whole if any row is bad."""
    if not isinstance(text, str):
        raise ValidationError("The CSV must be text.")
    text = text.lstrip("\ufeff")
    if not text.strip():
        raise ValidationError(
            "The CSV is empty: give a header line name,email,organisation and one line per person."
        )
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except csv.Error as error:
        raise ValidationError(f"Line 1: the CSV cannot be read ({error}).") from None
    columns = [cell.strip().lower() for cell in header]
    missing = [name for name in HEADER if name not in columns]
    if missing:
        raise ValidationError(
            f"Line 1 must be the header name,email,organisation (missing: {', '.join(missing)})."
        )
    index = {name: columns.index(name) for name in HEADER}

    rows: list[InvitationRow] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    try:
        for cells in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in cells):
                continue
            if len(rows) + len(errors) >= MAX_CSV_ROWS:
                raise ValidationError(
                    f"The CSV has more than {MAX_CSV_ROWS:,} people: split it into smaller files."
                )

            def cell(name: str, cells=cells) -> str:
                i = index[name]
                return cells[i].strip() if i < len(cells) else ""

            try:
                name = clean_name(cell("name"))
                email = normalise_email(cell("email"))
                org_raw = cell("organisation")
                organisation = clean_name(org_raw, "organisation name") if org_raw else None
            except ValidationError as error:
                errors.append(f"Line {line}: {error.message}")
                continue
            if email in seen:
                errors.append(f"Line {line}: {email} is already on line {seen[email]}.")
                continue
            seen[email] = line
            rows.append(InvitationRow(name=name, email=email, organisation=organisation, line=line))
    except csv.Error as error:
        errors.append(f"Line {reader.line_num}: the CSV cannot be read ({error}).")
    if errors:
        shown = errors[:MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        if more:
            shown.append(f"… and {more} more.")
        raise ValidationError("Nothing was imported. " + " ".join(shown))
    if not rows:
        raise ValidationError("The CSV has a header but nobody to invite.")
    return rows


def _csv_cell(value: str | None) -> str:
    """Guard a cell against spreadsheet formula injection."""
    text = value or ""
    if text[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + text
    return text


def links_csv(issued: Iterable[IssuedInvitation]) -> str:
    """Return the CSV name,email,organisation,link of issued invitations (link empty if none)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["name", "email", "organisation", "link"])
    for item in issued:
        writer.writerow(
            [
                _csv_cell(item.name),
                _csv_cell(item.email),
                _csv_cell(item.organisation),
                item.link or "",
            ]
        )
    return out.getvalue()


# --- issuing and using links ---------------------------------------------------------------


def invitable_rounds(actor: User) -> list[Round]:
    """Return the rounds an invitation may lead to: drafts and open ones, newest first."""
    require_facilitator(actor)
    return list(
        db.session.scalars(
            select(Round)
            .where(Round.state.in_([RoundState.DRAFT.value, RoundState.OPEN.value]))
            .order_by(Round.id.desc())
        )
    )


def _chunks(items: Sequence, size: int = 500):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def invite_members(
    actor: User | None,
    rows: Sequence[InvitationRow],
    *,
    round_id: int | None = None,
    base_url: str,
    ttl_hours: float | None = None,
) -> list[IssuedInvitation]:
    """Create missing organisations and accounts and issue one invitation link per person."""
    if actor is not None:
        require_facilitator(actor)
    if not rows:
        raise ValidationError("Nobody to invite.")
    if len(rows) > MAX_CSV_ROWS:
        raise ValidationError(f"Invite at most {MAX_CSV_ROWS:,} people at once.")
    if round_id is not None and (
        not is_valid_id(round_id) or db.session.get(Round, round_id) is None
    ):
        raise NotFound("No such round.")
    # Validate every row before writing anything.
    clean_rows: list[InvitationRow] = []
    seen: set[str] = set()
    for row in rows:
        email = normalise_email(row.email)
        if email in seen:
            raise ValidationError(f"{email} is listed twice.")
        seen.add(email)
        organisation = (
            clean_name(row.organisation, "organisation name") if row.organisation else None
        )
        clean_rows.append(
            InvitationRow(
                name=clean_name(row.name), email=email, organisation=organisation, line=row.line
            )
        )

    try:
        results = _write_invitations(actor, clean_rows, round_id, base_url, ttl_hours)
        db.session.commit()
    except IntegrityError:
        # Someone created the same account or organisation at the same moment.
        db.session.rollback()
        raise Conflict(
            "Some of these accounts or organisations were created by someone else at the same "
            "time. Nothing was saved; please try again."
        ) from None
    return results


def _write_invitations(
    actor: User | None,
    clean_rows: list[InvitationRow],
    round_id: int | None,
    base_url: str,
    ttl_hours: float | None,
) -> list[IssuedInvitation]:
    """Create the missing organisations and accounts and the links (the caller commits)."""
    existing: dict[str, User] = {}
    for chunk in _chunks([r.email for r in clean_rows]):
        query = select(User).where(User.email.in_(chunk))
        for user in db.session.scalars(query):
            existing[user.email] = user
    organisations = {org.name.lower(): org for org in db.session.scalars(select(Organisation))}
    created_organisations = 0
    for row in clean_rows:
        if row.organisation and row.organisation.lower() not in organisations:
            org = Organisation(name=row.organisation)
            db.session.add(org)
            organisations[row.organisation.lower()] = org
            created_organisations += 1
    db.session.flush()

    new_users: list[User] = []
    for row in clean_rows:
        if row.email not in existing:
            org = organisations[row.organisation.lower()] if row.organisation else None
            user = User(email=row.email, name=row.name, role=Role.MEMBER.value, organisation=org)
            db.session.add(user)
            new_users.append(user)
            existing[row.email] = user
    db.session.flush()
    new_ids = {u.id for u in new_users}

    now = utcnow()
    expires_at = now + _ttl(INVITE, ttl_hours)
    org_names = {org.id: org.name for org in organisations.values()}
    counts = {INVITED: 0, REINVITED: 0, ALREADY_HAS_ACCOUNT: 0, DEACTIVATED: 0}
    statuses: list[tuple[User, str]] = []
    for row in clean_rows:
        user = existing[row.email]
        if user.id not in new_ids and user.password_hash is not None:
            status = ALREADY_HAS_ACCOUNT
        elif not user.active:
            status = DEACTIVATED
        else:
            status = INVITED if user.id in new_ids else REINVITED
        counts[status] += 1
        statuses.append((user, status))

    # A new link replaces any earlier unused one (before the new links exist).
    reinvited = [user.id for user, status in statuses if status == REINVITED]
    for chunk in _chunks(reinvited):
        db.session.execute(
            update(Invitation)
            .where(
                Invitation.user_id.in_(chunk),
                Invitation.purpose == INVITE,
                Invitation.used_at.is_(None),
            )
            .values(used_at=now),
            execution_options={"synchronize_session": False},
        )

    results: list[IssuedInvitation] = []
    new_links: list[dict] = []
    for user, status in statuses:
        link = None
        if status in (INVITED, REINVITED):
            token, token_hash = _new_token()
            link = _link(base_url, INVITE, token)
            new_links.append(
                {
                    "user_id": user.id,
                    "token_hash": token_hash,
                    "purpose": INVITE,
                    "round_id": round_id,
                    "created_by_id": actor.id if actor else None,
                    "created_at": now,
                    "expires_at": expires_at,
                }
            )
        results.append(
            IssuedInvitation(
                user=user,
                email=user.email,
                link=link,
                status=status,
                name=user.name,
                organisation=org_names.get(user.organisation_id, ""),
            )
        )
    if new_links:
        db.session.execute(insert(Invitation), new_links)
    audit.record(
        actor,
        "invitation.create",
        round_id=round_id,
        invited=counts[INVITED],
        invited_again=counts[REINVITED],
        already_registered=counts[ALREADY_HAS_ACCOUNT],
        deactivated=counts[DEACTIVATED],
        organisations_created=created_organisations,
    )
    return results


def find_invitation(token: str, purpose: str) -> Invitation:
    """Return the unused, unexpired link for this token, or raise InvalidToken."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken(INVALID_LINK)
    invitation = db.session.scalar(
        select(Invitation).where(
            Invitation.token_hash == hash_token(token), Invitation.purpose == purpose
        )
    )
    if (
        invitation is None
        or invitation.used_at is not None
        or invitation.expires_at <= utcnow()
        or not invitation.user.active
    ):
        raise InvalidToken(INVALID_LINK)
    return invitation


def _claim(invitation: Invitation) -> None:
    """Mark the link used, atomically: of two concurrent requests only one wins."""
    result = db.session.execute(
        update(Invitation)
        .where(Invitation.id == invitation.id, Invitation.used_at.is_(None))
        .values(used_at=utcnow()),
        execution_options={"synchronize_session": False},
    )
    if result.rowcount != 1:
        db.session.rollback()
        raise InvalidToken(INVALID_LINK)


def accept_invitation(token: str, password: str, name: str | None = None) -> User:
    """Set the invited person's first password (and name) and use up the link."""
    # Read and hash (scrypt: tens of milliseconds) while nothing is held; then a short write.
    with write_intent(False):
        invitation = find_invitation(token, INVITE)
        user = invitation.user
        check_password_rules(password, email=user.email, name=name or user.name)
        clean = clean_name(name) if name is not None and name.strip() else None
        hashed = hash_password(password)
    end_read(db.session())
    with write_intent(True):
        _claim(invitation)
        db.session.refresh(user, ["password_hash"])  # as committed now, under the write
        if user.password_hash is not None:
            db.session.rollback()
            raise InvalidToken(INVALID_LINK)
        user.password_hash = hashed
        if clean:
            user.name = clean
        _close_open_links(user.id, INVITE, except_id=invitation.id)
        db.session.commit()
    return user


def issue_password_reset(
    actor: User | None, user_id: int, base_url: str, *, ttl_hours: float | None = None
) -> str:
    """Issue a password-reset link for a person (facilitators, not for admins, and admins)."""
    if actor is not None:
        require_facilitator(actor)
    user = db.session.get(User, user_id) if is_valid_id(user_id) else None
    if user is None:
        raise NotFound("No such person.")
    if actor is not None and user.role == Role.ADMIN and actor.role != Role.ADMIN:
        raise NotAllowed("Only an admin can reset an admin's password.")
    if user.erased_at is not None:
        raise Conflict("This account was erased: invite the person again to make a new one.")
    if not user.active:
        raise Conflict("This account is deactivated: reactivate it first.")
    _close_open_links(user.id, RESET)
    token, token_hash = _new_token()
    now = utcnow()
    db.session.add(
        Invitation(
            user_id=user.id,
            token_hash=token_hash,
            purpose=RESET,
            created_by_id=actor.id if actor else None,
            created_at=now,
            expires_at=now + _ttl(RESET, ttl_hours),
        )
    )
    audit.record(actor, "user.password_reset_link", target_type="user", target_id=user.id)
    db.session.commit()
    return _link(base_url, RESET, token)


def reset_password(token: str, new_password: str) -> User:
    """Set a new password through a reset link; every existing session of the person ends."""
    # Read and hash (scrypt: tens of milliseconds) while nothing is held; then a short write.
    with write_intent(False):
        invitation = find_invitation(token, RESET)
        user = invitation.user
        check_password_rules(new_password, email=user.email, name=user.name)
        hashed = hash_password(new_password)
    end_read(db.session())
    with write_intent(True):
        _claim(invitation)
        user.password_hash = hashed
        user.auth_version = User.auth_version + 1  # in SQL: a concurrent change counts too
        _close_open_links(user.id, RESET, except_id=invitation.id)
        db.session.commit()
    return user


def count_open_invitations(user_ids: Iterable[int]) -> dict[int, int]:
    """Return, per user id, how many unused unexpired invitation links they have."""
    ids = list(user_ids)
    counts: dict[int, int] = {}
    for chunk in _chunks(ids):
        rows = db.session.execute(
            select(Invitation.user_id, func.count())
            .where(
                Invitation.user_id.in_(chunk),
                Invitation.purpose == INVITE,
                Invitation.used_at.is_(None),
                Invitation.expires_at > utcnow(),
            )
            .group_by(Invitation.user_id)
        ).all()
        counts.update(dict(rows))
    return counts
