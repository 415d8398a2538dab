"""Personal data: a member's download of their data, account erasure, and round retention.

**Download.** `personal_data(actor, user_id)` gathers everything stored about one person (their
account, votes and vote history per round, statements, invitation and reset links, API
tokens, audit events they caused or that are about their account) as plain JSON data.

**Erasure** (`erase_account`) anonymises an account in one transaction: the row stays, so
the person's votes keep counting under the same user id (the analysis is unchanged), but it no
longer holds anything that names them: the name becomes "Erased member", the email a random
address under ``erased.invalid`` (not derived from the old one), the password, last login,
invitation and reset links and API tokens go, and every session ends. Statements they wrote
stay in their round, still pointing at the anonymous row; the organisation link stays (per
organisation results are unchanged). The audit log records "account.erase" with the user id
only, and an erasure ledger outside the database (`ERASURE_LEDGER`) lists the user id and the
account's creation time, so `reapply_erasures` can erase again after a backup taken before the
erasure was restored.

**Retention** (`apply_retention`): a round with `retention_days` has its personal data purged
that many days after it closed: the link between the round's votes, vote history and
statements and real accounts is cut by moving them to per-round pseudonymous participants
(new inactive accounts with no name or email of a person, in the same organisation), the
round's invitations forget the round, and the stored analysis is rewritten under the
pseudonyms (the results are unchanged except for participant ids).

See docs/data-protection.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from flask import current_app
from sqlalchemy import bindparam, delete, func, insert, select, text, update

from ..database import end_read, write_intent
from ..extensions import db
from ..models import (
    ApiToken,
    AuditEvent,
    Invitation,
    RateLimitCounter,
    Role,
    Round,
    RoundState,
    Snapshot,
    Statement,
    User,
    Vote,
    VoteEvent,
    is_valid_id,
    utcnow,
)
from . import audit
from .accounts import WrongPassword
from .authz import require_role, require_user
from .errors import Conflict, NotFound, ValidationError
from .passwords import verify_password

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
ERASED_NAME = "Erased member"
ERASED_DOMAIN = "erased.invalid"
PSEUDONYM_DOMAIN = "pseudonymous.invalid"
ERASE_ACTION = "account.erase"
REAPPLY_ACTION = "account.erase_reapplied"
PURGE_ACTION = "round.retention_purge"
RETENTION_MIN, RETENTION_MAX = 1, 36500
VALUE_LABELS = {1: "agree", 0: "pass", -1: "disagree"}
CHUNK = 500


# ---------------------------------------------------------------------------------------------
# Helpers


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _load_user(user_id: object) -> User:
    user = db.session.get(User, user_id) if is_valid_id(user_id) else None
    if user is None:
        raise NotFound("No such person.")
    return user


def placeholder_email(domain: str = ERASED_DOMAIN, prefix: str = "erased") -> str:
    """Return a unique, undeliverable address that says nothing about anyone."""
    return f"{prefix}-{secrets.token_hex(12)}@{domain}"


def is_erased(user: User) -> bool:
    """Whether the account was erased (or is a retention pseudonym): it names nobody."""
    return user.erased_at is not None


def is_pseudonym(user: User) -> bool:
    """Whether the account is a retention pseudonym (a round's former participant)."""
    return user.erased_at is not None and user.email.endswith("@" + PSEUDONYM_DOMAIN)


def is_anonymised(user: User) -> bool:
    """Whether the row holds nothing of the person: what an erasure leaves behind."""
    return (
        user.erased_at is not None
        and user.name == ERASED_NAME
        and user.email.endswith("@" + ERASED_DOMAIN)
        and user.password_hash is None
        and not user.active
        and user.last_login_at is None
    )


def _chunks(items: list, size: int = CHUNK):
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------------------------------------
# Download


def _authorise_read(actor: User | None, user_id: int) -> None:
    """The person themselves, an admin, or the operator (None) may read someone's data."""
    if actor is None:
        return
    user = require_user(actor)
    if user.id != user_id:
        require_role(user, Role.ADMIN)


def _tokens(user: User) -> list[ApiToken]:
    try:
        from .api_tokens import tokens_of
    except ImportError:  # pragma: no cover - the API token service is always there
        tokens_of = None
    if tokens_of is not None:
        return list(tokens_of(user))
    return list(
        db.session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())
        )
    )


def personal_data(actor: User | None, user_id: int) -> dict[str, Any]:
    """Return everything stored about a person, as JSON data (themselves, admins, operator)."""
    if not is_valid_id(user_id):
        raise NotFound("No such person.")
    _authorise_read(actor, user_id)
    user = _load_user(user_id)
    organisation = user.organisation
    rounds: dict[int, dict[str, Any]] = {}

    def round_entry(round_id: int) -> dict[str, Any]:
        return rounds.setdefault(round_id, {"votes": [], "vote_history": [], "statements": []})

    texts: dict[int, str] = {}

    def statement_texts(ids: set[int]) -> None:
        missing = sorted(ids - texts.keys())
        for chunk in _chunks(missing):
            texts.update(
                db.session.execute(
                    select(Statement.id, Statement.text).where(Statement.id.in_(chunk))
                ).all()
            )

    votes = db.session.execute(
        select(Vote.round_id, Vote.statement_id, Vote.value, Vote.created_at, Vote.updated_at)
        .where(Vote.user_id == user.id)
        .order_by(Vote.round_id, Vote.id)
    ).all()
    events = db.session.execute(
        select(
            VoteEvent.round_id,
            VoteEvent.statement_id,
            VoteEvent.value,
            VoteEvent.previous_value,
            VoteEvent.created_at,
        )
        .where(VoteEvent.user_id == user.id)
        .order_by(VoteEvent.round_id, VoteEvent.id)
    ).all()
    statement_texts({v.statement_id for v in votes} | {e.statement_id for e in events})
    for v in votes:
        round_entry(v.round_id)["votes"].append(
            {
                "statement_id": v.statement_id,
                "statement": texts.get(v.statement_id),
                "value": v.value,
                "meaning": VALUE_LABELS.get(v.value),
                "first_voted_at": _iso(v.created_at),
                "last_changed_at": _iso(v.updated_at),
            }
        )
    for e in events:
        round_entry(e.round_id)["vote_history"].append(
            {
                "statement_id": e.statement_id,
                "value": e.value,
                "meaning": VALUE_LABELS.get(e.value),
                "previous_value": e.previous_value,
                "at": _iso(e.created_at),
            }
        )
    for s in db.session.scalars(
        select(Statement).where(Statement.author_id == user.id).order_by(Statement.id)
    ):
        round_entry(s.round_id)["statements"].append(
            {
                "id": s.id,
                "text": s.text,
                "origin": s.origin,
                "moderation_state": s.moderation_state,
                "moderation_reason": s.moderation_reason,
                "moderated_at": _iso(s.moderated_at),
                "written_at": _iso(s.created_at),
                "corrections": [
                    {"before": r.previous_text, "after": r.new_text, "at": _iso(r.created_at)}
                    for r in s.revisions
                ],
            }
        )
    questions = {}
    for chunk in _chunks(sorted(rounds)):
        questions.update(
            db.session.execute(select(Round.id, Round.question).where(Round.id.in_(chunk))).all()
        )
    links = db.session.scalars(
        select(Invitation).where(Invitation.user_id == user.id).order_by(Invitation.id)
    )
    events_by = db.session.scalars(
        select(AuditEvent).where(AuditEvent.actor_id == user.id).order_by(AuditEvent.id)
    )
    events_about = db.session.scalars(
        select(AuditEvent)
        .where(AuditEvent.target_type == "user", AuditEvent.target_id == user.id)
        .order_by(AuditEvent.id)
    )

    def event(e: AuditEvent) -> dict[str, Any]:
        return {
            "id": e.id,
            "action": e.action,
            "round_id": e.round_id,
            "target_type": e.target_type,
            "target_id": e.target_id,
            "details": e.details or {},
            "at": _iso(e.created_at),
        }

    return {
        "format": "deliberate personal data",
        "version": FORMAT_VERSION,
        "generated_at": _iso(utcnow()),
        "account": {
            "id": user.id,
            "email": user.email,
            "name": user.name,
            "role": user.role,
            "organisation": (
                {"id": organisation.id, "name": organisation.name} if organisation else None
            ),
            "active": bool(user.active),
            "has_password": user.password_hash is not None,
            "created_at": _iso(user.created_at),
            "last_login_at": _iso(user.last_login_at),
            "erased_at": _iso(user.erased_at),
        },
        "rounds": [
            {"id": rid, "question": questions.get(rid), **rounds[rid]} for rid in sorted(rounds)
        ],
        "invitation_and_reset_links": [
            {
                "purpose": link.purpose,
                "round_id": link.round_id,
                "created_at": _iso(link.created_at),
                "expires_at": _iso(link.expires_at),
                "used_at": _iso(link.used_at),
            }
            for link in links
        ],
        "api_tokens": [
            {
                "name": t.name,
                "prefix": t.prefix,
                "created_at": _iso(t.created_at),
                "expires_at": _iso(t.expires_at),
                "last_used_at": _iso(t.last_used_at),
                "revoked_at": _iso(t.revoked_at),
            }
            for t in _tokens(user)
        ],
        "audit_events_by_you": [event(e) for e in events_by],
        "audit_events_about_your_account": [event(e) for e in events_about],
        "notes": [
            "Votes are -1 (disagree), 0 (pass) or 1 (agree); vote_history lists every vote "
            "as cast, changes included.",
            "The analysis of a round (opinion groups) refers to you by your account id only.",
            "Invitation, reset and API token secrets are never stored, only their hashes, "
            "so they are not included.",
        ],
    }


def personal_data_json(data: dict[str, Any]) -> bytes:
    """Return the personal data as UTF-8 JSON, indented for people to read."""
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Erasure


def _count_active_admins() -> int:
    return db.session.scalar(
        select(func.count()).select_from(User).where(User.role == Role.ADMIN.value, User.active)
    )


def _anonymise(user: User, now: datetime) -> None:
    """Overwrite everything that names the person, in the current transaction."""
    old_email = user.email
    user.name = ERASED_NAME
    user.email = placeholder_email()
    user.password_hash = None
    user.active = False
    user.last_login_at = None
    user.auth_version = (user.auth_version or 1) + 1
    user.erased_at = user.erased_at or now
    db.session.execute(delete(Invitation).where(Invitation.user_id == user.id))
    db.session.execute(delete(ApiToken).where(ApiToken.user_id == user.id))
    # The audit log keeps what they did, but not the names they gave their API tokens.
    for event in db.session.scalars(
        select(AuditEvent).where(
            AuditEvent.actor_id == user.id, AuditEvent.action.startswith("api_token.")
        )
    ):
        if isinstance(event.details, dict) and "name" in event.details:
            event.details = {k: v for k, v in event.details.items() if k != "name"}
    if old_email and "@" in old_email:
        # Rate-limit counters keyed on the address typed at login: the login limit counts under
        # a hash of it (deliberate.ratelimit.login_account_key), other stores under the address.
        address = old_email.strip().lower()
        digest = hashlib.sha256(address.encode("utf-8", "replace")).hexdigest()[:32]
        db.session.execute(
            delete(RateLimitCounter).where(
                RateLimitCounter.key.contains(address, autoescape=True)
                | RateLimitCounter.key.contains(digest, autoescape=True)
            )
        )
    db.session.flush()


def ledger_path() -> Path:
    """Where erasures are listed outside the database (ERASURE_LEDGER, else instance/)."""
    configured = current_app.config.get("ERASURE_LEDGER")
    if configured:
        return Path(configured)
    return Path(current_app.instance_path) / "erasures.jsonl"


def _append_ledger(user_id: int, created_at: datetime | None, erased_at: datetime) -> None:
    """Add one line to the erasure ledger (after the commit; a failure is logged, not raised)."""
    line = json.dumps(
        {"user_id": user_id, "created_at": _iso(created_at), "erased_at": _iso(erased_at)}
    )
    path = ledger_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (line + "\n").encode("ascii"))
        finally:
            os.close(fd)
    except OSError:
        log.exception(
            "could not write the erasure of user %s to the ledger %s; the audit log has it",
            user_id,
            path,
        )


def erase_account(
    actor: User | None, user_id: int, *, password: str | None = None, now: datetime | None = None
) -> User:
    """Anonymise an account: the person themselves (with their password), an admin, or the
    operator (None). Votes keep counting; nothing links them to the person any more."""
    if actor is not None:
        # The password check (scrypt: tens of milliseconds of CPU) runs while nothing is held:
        # on SQLite the write lock, which every vote needs, is taken below for the
        # anonymisation only (the view begins as a read; see accounts.authenticate).
        with write_intent(False):
            user = require_user(actor)
            if user.id == user_id:
                if not verify_password(user.password_hash, password or ""):
                    raise WrongPassword("Your password is not right.")
                by = "self"
            else:
                require_role(user, Role.ADMIN)
                by = "admin"
        end_read(db.session())
    else:
        by = "operator"
    with write_intent(True):
        return _erase(actor, user_id, by, now)


def _erase(actor: User | None, user_id: int, by: str, now: datetime | None) -> User:
    target = _load_user(user_id)
    if target.erased_at is not None:
        raise Conflict("This account is already erased.")
    if target.role == Role.ADMIN and target.active and _count_active_admins() <= 1:
        raise Conflict(
            "This is the last admin account: make someone else an admin before erasing it."
        )
    now = now or utcnow()
    created_at = target.created_at
    _anonymise(target, now)
    audit.record(actor, ERASE_ACTION, target_type="user", target_id=target.id, by=by)
    db.session.commit()
    _append_ledger(target.id, created_at, now)
    return target


def _read_ledger(path: Path) -> list[dict]:
    entries = []
    if not path.exists():
        return entries
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                entry["user_id"] = int(entry["user_id"])
            except (ValueError, KeyError, TypeError):
                log.warning("erasure ledger %s line %d is not readable; skipped", path, number)
                continue
            entries.append(entry)
    return entries


def reapply_erasures(*, ledger: Path | str | None = None, now: datetime | None = None) -> list[int]:
    """Anonymise again every erased account whose row holds personal data (after a restore).

    Erasures are found in the audit log ("account.erase") and in the erasure ledger; a ledger
    entry applies only when the account's creation time matches (the same account, not a row
    of another database). Returns the ids of the accounts anonymised again.
    """
    now = now or utcnow()
    wanted: dict[int, str] = {}
    for (target_id,) in db.session.execute(
        select(AuditEvent.target_id).where(
            AuditEvent.action == ERASE_ACTION, AuditEvent.target_type == "user"
        )
    ):
        if target_id is not None:
            wanted[int(target_id)] = "audit log"
    path = Path(ledger) if ledger is not None else ledger_path()
    for entry in _read_ledger(path):
        user = db.session.get(User, entry["user_id"]) if is_valid_id(entry["user_id"]) else None
        if user is None or entry["user_id"] in wanted:
            continue
        if entry.get("created_at") != _iso(user.created_at):
            log.warning(
                "erasure ledger: user %s was created at %s, not %s; not the same account, skipped",
                user.id,
                _iso(user.created_at),
                entry.get("created_at"),
            )
            continue
        wanted[user.id] = "ledger"
    redone: list[int] = []
    for user_id in sorted(wanted):
        user = db.session.get(User, user_id) if is_valid_id(user_id) else None
        if user is None or is_anonymised(user):
            continue
        _anonymise(user, now)
        audit.record(
            None, REAPPLY_ACTION, target_type="user", target_id=user.id, source=wanted[user_id]
        )
        redone.append(user_id)
    db.session.commit()
    return redone


# ---------------------------------------------------------------------------------------------
# Retention


def clean_retention_days(value: object) -> int | None:
    """Return a valid retention period in days (or None: keep), else raise ValidationError."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("The retention period must be a whole number of days, or empty.")
    if not RETENTION_MIN <= value <= RETENTION_MAX:
        raise ValidationError(
            f"The retention period must be between {RETENTION_MIN} and {RETENTION_MAX:,} days "
            "(or empty to keep the personal data)."
        )
    return value


def purge_due_at(round_: Round) -> datetime | None:
    """When the round's personal data is due to be purged (None: never, or not closed yet)."""
    if round_.retention_days is None or round_.closes_at is None:
        return None
    return round_.closes_at + timedelta(days=round_.retention_days)


def rounds_due_for_purge(now: datetime | None = None) -> list[int]:
    """Return the ids of closed rounds whose retention period has passed and are not purged."""
    now = now or utcnow()
    rounds = db.session.scalars(
        select(Round)
        .where(
            Round.retention_days.is_not(None),
            Round.personal_data_purged_at.is_(None),
            Round.closes_at.is_not(None),
            Round.state.in_([RoundState.CLOSED.value, RoundState.PUBLISHED.value]),
        )
        .order_by(Round.id)
    ).all()
    return [r.id for r in rounds if purge_due_at(r) <= now]


# Where the analysis keeps participant ids (see deliberate.analysis.pipeline).
def _map_id(mapping: dict, pid: Any) -> Any:
    if isinstance(pid, int) and not isinstance(pid, bool):
        return mapping.get(pid, pid)
    if isinstance(pid, str) and pid.lstrip("-").isdigit():
        return str(mapping.get(int(pid), int(pid)))
    return pid


def _map_list(mapping: dict, ids: Any) -> Any:
    return [_map_id(mapping, p) for p in ids] if isinstance(ids, list) else ids


def _map_keys(mapping: dict, by_id: Any) -> Any:
    if not isinstance(by_id, dict):
        return by_id
    return {_map_id(mapping, k): v for k, v in by_id.items()}


def map_result_participants(result: dict, mapping: dict[int, int]) -> dict:
    """Return an analysis result with participant ids replaced through `mapping`."""
    out = dict(result or {})
    out["in_conversation"] = _map_list(mapping, out.get("in_conversation"))
    for key in ("user_vote_counts", "projections"):
        if key in out:
            out[key] = _map_keys(mapping, out[key])
    if isinstance(out.get("groups"), list):
        out["groups"] = [
            {**g, "members": _map_list(mapping, g.get("members"))} if isinstance(g, dict) else g
            for g in out["groups"]
        ]
    stability = out.get("stability")
    if isinstance(stability, dict) and "participants" in stability:
        out["stability"] = {
            **stability,
            "participants": _map_keys(mapping, stability["participants"]),
        }
    return out


def map_state_participants(state: dict, mapping: dict[int, int]) -> dict:
    """Return an analysis engine state with participant ids replaced through `mapping`."""
    out = dict(state or {})
    if "in_conv" in out:
        out["in_conv"] = _map_list(mapping, out["in_conv"])
    base = out.get("base_clusters")
    if isinstance(base, dict) and isinstance(base.get("members"), list):
        out["base_clusters"] = {
            **base,
            "members": [_map_list(mapping, m) for m in base["members"]],
        }
    if isinstance(out.get("groups"), list):
        out["groups"] = [
            {**g, "members": _map_list(mapping, g.get("members"))} if isinstance(g, dict) else g
            for g in out["groups"]
        ]
    return out


def _round_participants(round_id: int) -> list[tuple[int, int | None]]:
    """The round's voters and authors: (user id, organisation id), by user id."""
    ids: set[int] = set()
    for model, column in (
        (Vote, Vote.user_id),
        (VoteEvent, VoteEvent.user_id),
        (Statement, Statement.author_id),
    ):
        ids.update(
            uid
            for (uid,) in db.session.execute(
                select(column).where(model.round_id == round_id, column.is_not(None)).distinct()
            )
        )
    organisations: dict[int, int | None] = {}
    for chunk in _chunks(sorted(ids)):
        organisations.update(
            db.session.execute(
                select(User.id, User.organisation_id).where(User.id.in_(chunk))
            ).all()
        )
    return [(uid, organisations.get(uid)) for uid in sorted(ids)]


def _make_pseudonyms(round_id: int, participants: list[tuple[int, int | None]], now: datetime):
    """Create one inactive pseudonymous account per participant; return {old id: new id}.

    New ids are handed out in the order of the old ones, so the participants' order (and so
    anything that depends on it) is unchanged.
    """
    if not participants:
        return {}
    rows = [
        {
            "email": placeholder_email(PSEUDONYM_DOMAIN, "participant"),
            "name": f"Former participant of round {round_id}",
            "role": Role.MEMBER.value,
            "organisation_id": None,
            "password_hash": None,
            "active": False,
            "auth_version": 1,
            "created_at": now,
            "erased_at": now,
        }
        for _ in participants
    ]
    new_ids: list[int] = []
    for chunk in _chunks(rows):
        new_ids.extend(
            db.session.scalars(
                insert(User).returning(User.id, sort_by_parameter_order=True), chunk
            ).all()
        )
    new_ids.sort()
    mapping = {old: new for (old, _org), new in zip(participants, new_ids, strict=True)}
    with_org = [{"uid": mapping[old], "org": org} for old, org in participants if org is not None]
    if with_org:
        db.session.execute(
            update(User.__table__)
            .where(User.__table__.c.id == bindparam("uid"))
            .values(organisation_id=bindparam("org")),
            with_org,
        )
    return mapping


# The rows a purge moves to the pseudonyms: (table, column), constants (never user input).
_MOVED = (("votes", "user_id"), ("vote_events", "user_id"), ("statements", "author_id"))


def _move_to_pseudonyms(round_id: int, mapping: dict[int, int]) -> None:
    """Point the round's votes, vote history and statements at the pseudonyms.

    Through a temporary mapping table: one pass over the round's rows with a primary-key lookup
    each, however many participants (vote_events has no (round, user) index to go per user).
    """
    create = "CREATE TEMP TABLE deliberate_purge_map (old_id INTEGER PRIMARY KEY, new_id INTEGER)"
    if db.engine.dialect.name == "postgresql":
        create += " ON COMMIT DROP"
    db.session.execute(text(create))
    pairs = [{"old": old, "new": new} for old, new in mapping.items()]
    for chunk in _chunks(pairs, 5000):
        db.session.execute(
            text("INSERT INTO deliberate_purge_map (old_id, new_id) VALUES (:old, :new)"), chunk
        )
    postgres = db.engine.dialect.name == "postgresql"
    if postgres:
        db.session.execute(text("ANALYZE deliberate_purge_map"))
    for table, column in _MOVED:
        if postgres:  # a join: one hash join instead of a sub-query per row
            sql = (
                f"UPDATE {table} SET {column} = m.new_id FROM deliberate_purge_map m"  # noqa: S608
                f" WHERE {table}.round_id = :round_id AND {table}.{column} = m.old_id"
            )
        else:
            sql = (
                f"UPDATE {table} SET {column} = (SELECT m.new_id FROM deliberate_purge_map m"  # noqa: S608
                f" WHERE m.old_id = {table}.{column}) WHERE round_id = :round_id"
                f" AND {column} IN (SELECT old_id FROM deliberate_purge_map)"
            )
        db.session.execute(text(sql), {"round_id": round_id})
    db.session.execute(text("DROP TABLE deliberate_purge_map"))


def _purge_round(round_id: int, now: datetime) -> bool:
    """Cut the link between one round and real people, in one transaction."""
    try:
        query = (
            select(Round)
            .where(Round.id == round_id)
            .execution_options(populate_existing=True)  # the locked row, not a cached copy
        )
        if db.engine.dialect.name == "postgresql":
            # As snapshots._store: serialises with it, not with votes (FOR KEY SHARE).
            query = query.with_for_update(key_share=True)
        round_ = db.session.scalar(query)
        if round_ is None or round_.personal_data_purged_at is not None:
            db.session.rollback()
            return False
        participants = _round_participants(round_id)
        mapping = _make_pseudonyms(round_id, participants, now)
        if mapping:
            _move_to_pseudonyms(round_id, mapping)
        db.session.execute(
            update(Invitation)
            .where(Invitation.round_id == round_id)
            .values(round_id=None)
            .execution_options(synchronize_session=False)
        )
        latest = db.session.scalar(
            select(Snapshot)
            .where(Snapshot.round_id == round_id)
            .order_by(Snapshot.id.desc())
            .limit(1)
        )
        if latest is not None:
            db.session.execute(
                delete(Snapshot).where(Snapshot.round_id == round_id, Snapshot.id != latest.id)
            )
            latest.result = map_result_participants(latest.result, mapping)
            latest.state = map_state_participants(latest.state, mapping)
        round_.personal_data_purged_at = now
        audit.record(
            None,
            PURGE_ACTION,
            round_id=round_id,
            target_type="round",
            target_id=round_id,
            participants=len(mapping),
            retention_days=round_.retention_days,
        )
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return True


def apply_retention(now: datetime | None = None) -> list[int]:
    """Purge the personal data of every round whose retention period has passed.

    Idempotent: a purged round is never purged again. One transaction per round; a round
    that fails is logged and left for the next run. Returns the ids of the rounds purged.
    """
    now = now or utcnow()
    purged: list[int] = []
    for round_id in rounds_due_for_purge(now):
        try:
            if _purge_round(round_id, now):
                purged.append(round_id)
        except Exception:
            log.exception("purging the personal data of round %s failed; will retry", round_id)
    if purged:
        log.info("retention: purged the personal data of rounds %s", purged)
    return purged
