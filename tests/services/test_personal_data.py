"""Personal data: the download, erasure (and the erase-and-reanalyse test), restores, retention."""

from __future__ import annotations

import io
import json
import random
import zipfile
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, insert, select, text, update

from deliberate.extensions import db as _db
from deliberate.models import (
    ApiToken,
    AuditEvent,
    AuthorDisplay,
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
)
from deliberate.ratelimit import login_account_key
from deliberate.services import accounts, exports, invitations, personal_data, rounds, voting
from deliberate.services.accounts import LoginFailed, WrongPassword
from deliberate.services.errors import Conflict, NotAllowed, NotFound, ValidationError
from deliberate.services.snapshots import refresh_snapshot
from tests.conftest import PASSWORD, only_sqlite
from tests.lock_probe import WriteLockProbe

VICTIM_NAME = "Zelda Quixotic-Marlowe"
VICTIM_EMAIL = "zelda.marlowe@example.org"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def app_config(app_config):
    # A small bootstrap: the tests compare results, they do not need tight intervals.
    app_config["ANALYSIS_PARAMS"] = {"bootstrap_replicates": 8}
    return app_config


def build_round(
    db,
    factory,
    *,
    n_members=36,
    n_statements=12,
    seed=7,
    victim_name=VICTIM_NAME,
    victim_email=VICTIM_EMAIL,
    **round_fields,
):
    """A round with several organisations, three opinion camps and deterministic votes.

    The victim (a member with a distinctive name) votes, changes a vote, and wrote one of the
    statements, which the others vote on.
    """
    orgs = [factory.organisation(f"Org {i} {seed}") for i in range(4)]
    round_ = factory.round(
        statements=[f"Statement {i} of round {seed}" for i in range(n_statements)], **round_fields
    )
    victim = factory.user(Role.MEMBER, organisation=orgs[0], name=victim_name, email=victim_email)
    members = [victim] + [
        factory.user(Role.MEMBER, organisation=orgs[i % 4]) for i in range(1, n_members)
    ]
    authored = Statement(
        round_id=round_.id,
        text="We should meet more often in person",
        normalised_text="we should meet more often in person",
        author_id=victim.id,
        origin="member",
        moderation_state="accepted",
    )
    db.session.add(authored)
    db.session.commit()
    sids = sorted(s.id for s in round_.statements)
    rng = random.Random(seed)
    votes, events, k = [], [], 0
    for i, member in enumerate(members):
        camp = i % 3
        for j, sid in enumerate(sids):
            if member.id == victim.id and sid == authored.id:
                continue
            if rng.random() < 0.15:
                continue
            value = 1 if j % 3 == camp else -1
            if rng.random() < 0.2:
                value = rng.choice([-1, 0, 1])
            k += 1
            at = T0 + timedelta(seconds=k)
            votes.append(
                {
                    "round_id": round_.id,
                    "statement_id": sid,
                    "user_id": member.id,
                    "value": value,
                    "created_at": at,
                    "updated_at": at,
                }
            )
            events.append(
                {
                    "round_id": round_.id,
                    "statement_id": sid,
                    "user_id": member.id,
                    "value": value,
                    "created_at": at,
                }
            )
    # The victim changed their mind once: an extra event, and the vote row follows it.
    first = next(v for v in votes if v["user_id"] == victim.id)
    changed = -first["value"] or 1
    events.append({**first, "value": changed, "previous_value": first["value"]})
    events[-1].pop("updated_at")
    first["value"] = changed
    db.session.execute(insert(Vote), votes)
    db.session.execute(insert(VoteEvent), events)
    db.session.commit()
    return round_, victim, members, authored


def all_text(db) -> str:
    """Every text and JSON value of every table, as one string."""
    chunks = []
    db.session.commit()  # end the session's transaction (SQLite: it holds the write lock)
    with db.engine.connect() as conn:
        for table in db.metadata.sorted_tables:
            for row in conn.execute(table.select()):
                for value in row:
                    if isinstance(value, str):
                        chunks.append(value)
                    elif isinstance(value, dict | list):
                        chunks.append(json.dumps(value, ensure_ascii=False))
    return "\n".join(chunks)


def export_files(round_id: int) -> dict[str, str]:
    """Every export of the round: the CSV zip with identities, and the JSON (its time removed)."""
    data = b"".join(exports.export_zip(None, round_id, identities=True))
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        files = {name: archive.read(name).decode("utf-8") for name in archive.namelist()}
    snapshot = exports.export_json(None, round_id)
    snapshot.pop("exported_at")
    files["snapshot.json"] = json.dumps(snapshot, ensure_ascii=False, sort_keys=True)
    return files


def without_analysis_times(files: dict[str, str]) -> dict[str, str]:
    """The exports minus when the analysis ran (each re-analysis is a new snapshot)."""
    out = dict(files)
    out["summary.csv"] = "\n".join(
        line for line in files["summary.csv"].splitlines() if not line.startswith("analysis,")
    )
    snapshot = json.loads(files["snapshot.json"])
    for key in ("id", "created_at"):
        snapshot["snapshot"].pop(key)
    out["snapshot.json"] = json.dumps(snapshot, ensure_ascii=False, sort_keys=True)
    return out


def participants_csv(round_id: int) -> str:
    return b"".join(exports.export_csv(None, round_id, "participants.csv", identities=True)).decode(
        "utf-8"
    )


# --- download ------------------------------------------------------------------------------


def test_download_holds_the_persons_data_and_nobody_elses(db, factory):
    round_, victim, members, authored = build_round(db, factory, n_members=6)
    rejected = Statement(
        round_id=round_.id,
        text="A statement that was turned down",
        normalised_text="a statement that was turned down",
        author_id=victim.id,
        origin="member",
        moderation_state="rejected",
        moderation_reason="Off topic for this round",
    )
    db.session.add(rejected)
    db.session.add(
        Invitation(
            user_id=victim.id,
            token_hash="a" * 64,
            purpose="invite",
            round_id=round_.id,
            created_at=T0,
            expires_at=T0 + timedelta(days=14),
            used_at=T0 + timedelta(days=1),
        )
    )
    db.session.add(
        ApiToken(user_id=victim.id, name="Phone", token_hash="b" * 64, prefix="dlb_abcd")
    )
    db.session.commit()

    data = personal_data.personal_data(victim, victim.id)
    json.loads(personal_data.personal_data_json(data))  # valid JSON

    assert data["account"]["email"] == VICTIM_EMAIL
    assert data["account"]["name"] == VICTIM_NAME
    assert data["account"]["organisation"]["name"] == victim.organisation.name
    [entry] = data["rounds"]
    assert entry["id"] == round_.id and entry["question"] == round_.question
    stored = db.session.scalars(select(Vote).where(Vote.user_id == victim.id)).all()
    assert {(v["statement_id"], v["value"]) for v in entry["votes"]} == {
        (v.statement_id, v.value) for v in stored
    }
    assert all(v["statement"] for v in entry["votes"])
    n_events = db.session.scalar(
        select(func.count()).select_from(VoteEvent).where(VoteEvent.user_id == victim.id)
    )
    assert len(entry["vote_history"]) == n_events == len(stored) + 1
    assert any(e["previous_value"] is not None for e in entry["vote_history"])
    by_text = {s["text"]: s for s in entry["statements"]}
    assert by_text["A statement that was turned down"]["moderation_reason"] == (
        "Off topic for this round"
    )
    assert authored.text in by_text
    [link] = data["invitation_and_reset_links"]
    assert link["purpose"] == "invite" and link["used_at"]
    [token] = data["api_tokens"]
    assert token == {**token, "name": "Phone", "prefix": "dlb_abcd"}
    body = personal_data.personal_data_json(data).decode("utf-8")
    assert "a" * 64 not in body and "b" * 64 not in body  # no token hashes
    others = {m.email for m in members[1:]}
    assert not any(email in body for email in others)


def test_download_is_for_the_person_an_admin_or_the_operator(db, factory):
    member = factory.user(Role.MEMBER)
    other = factory.user(Role.MEMBER)
    facilitator = factory.user(Role.FACILITATOR)
    admin = factory.user(Role.ADMIN)
    with pytest.raises(NotAllowed):
        personal_data.personal_data(other, member.id)
    with pytest.raises(NotAllowed):
        personal_data.personal_data(facilitator, member.id)
    assert personal_data.personal_data(admin, member.id)["account"]["id"] == member.id
    assert personal_data.personal_data(None, member.id)["account"]["id"] == member.id
    with pytest.raises(NotFound):
        personal_data.personal_data(None, 987654)


def test_staff_download_lists_their_audit_events(db, factory):
    facilitator = factory.user(Role.FACILITATOR)
    round_ = rounds.create_round(facilitator, question="What should we do next?")
    data = personal_data.personal_data(facilitator, facilitator.id)
    assert [e["action"] for e in data["audit_events_by_you"]] == ["round.create"]
    assert data["audit_events_by_you"][0]["round_id"] == round_.id


# --- erasure -------------------------------------------------------------------------------


def test_erasing_needs_the_right_password_and_changes_nothing_otherwise(db, factory):
    member = factory.user(Role.MEMBER, name=VICTIM_NAME, email=VICTIM_EMAIL)
    with pytest.raises(WrongPassword):
        personal_data.erase_account(member, member.id, password="not my password")
    with pytest.raises(WrongPassword):
        personal_data.erase_account(member, member.id)
    db.session.expire_all()
    assert db.session.get(User, member.id).email == VICTIM_EMAIL
    assert db.session.scalar(select(func.count()).select_from(AuditEvent)) == 0


@only_sqlite
@pytest.mark.parametrize("password", [PASSWORD, "not my password"])
def test_erasing_checks_the_password_without_holding_the_write_lock(
    db, factory, monkeypatch, password
):
    """The password check costs tens of milliseconds (scrypt): SQLite's write lock, which
    every vote needs, must not be held meanwhile (the erasure is a POST)."""
    from deliberate.database import write_intent

    member = factory.user(Role.MEMBER, name=VICTIM_NAME, email=VICTIM_EMAIL)
    member_id = member.id
    db.session.commit()  # ends the transaction that wrote it (the test's writes as a POST's)
    probe = WriteLockProbe(db.engine.url.database, personal_data.verify_password)
    monkeypatch.setattr(personal_data, "verify_password", probe)
    with write_intent(True):  # as in a POST request
        if password == PASSWORD:
            personal_data.erase_account(member, member_id, password=password)
        else:
            with pytest.raises(WrongPassword):
                personal_data.erase_account(member, member_id, password=password)
    assert probe.free == [True]
    db.session.expire_all()
    erased = db.session.get(User, member_id)
    assert (erased.erased_at is not None) == (password == PASSWORD)
    assert (erased.email == VICTIM_EMAIL) == (password != PASSWORD)


def test_erasure_anonymises_the_account_and_ends_its_access(app, db, factory):
    org = factory.organisation()
    member = factory.user(Role.MEMBER, organisation=org, name=VICTIM_NAME, email=VICTIM_EMAIL)
    round_ = factory.round(statements=["First statement here"])
    voting.cast_vote(member, round_.statements[0].id, 1)
    reset = invitations.issue_password_reset(None, member.id, "http://localhost")
    db.session.add(ApiToken(user_id=member.id, name="Laptop", token_hash="c" * 64, prefix="p"))
    with app.test_request_context("/login", method="POST", data={"email": VICTIM_EMAIL.upper()}):
        login_key = login_account_key()
    db.session.add(
        RateLimitCounter(key=f"LIMITER/{login_key}/auth.login", count=3, expires_at=1e12)
    )
    db.session.add(
        RateLimitCounter(key=f"LIMITER/login:{VICTIM_EMAIL}/x", count=3, expires_at=1e12)
    )
    db.session.commit()
    version = member.auth_version

    erased = personal_data.erase_account(member, member.id, password=PASSWORD)

    db.session.expire_all()
    user = db.session.get(User, erased.id)
    assert user.name == personal_data.ERASED_NAME
    assert user.email.endswith("@erased.invalid") and "zelda" not in user.email
    assert user.password_hash is None and not user.active and user.last_login_at is None
    assert user.auth_version == version + 1 and user.erased_at is not None
    assert user.organisation_id == org.id  # per-organisation results are unchanged
    assert personal_data.is_anonymised(user)
    for model in (Invitation, ApiToken):
        n = db.session.scalar(
            select(func.count()).select_from(model).where(model.user_id == user.id)
        )
        assert n == 0, model
    assert db.session.scalar(select(func.count()).select_from(RateLimitCounter)) == 0
    # The vote stays, under the same (now anonymous) account.
    assert db.session.scalar(select(Vote.user_id)) == user.id
    [event] = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "account.erase"))
    assert (event.actor_id, event.target_type, event.target_id) == (user.id, "user", user.id)
    assert event.details == {"by": "self"}
    with pytest.raises(LoginFailed):
        accounts.authenticate(VICTIM_EMAIL, PASSWORD)
    from deliberate.services.errors import InvalidToken

    with pytest.raises(InvalidToken):
        invitations.find_invitation(reset.rsplit("/", 1)[1], invitations.RESET)
    with pytest.raises(Conflict, match="already erased"):
        personal_data.erase_account(None, user.id)


def test_two_erasures_get_different_placeholders(db, factory):
    a, b = factory.user(Role.MEMBER), factory.user(Role.MEMBER)
    personal_data.erase_account(None, a.id)
    personal_data.erase_account(None, b.id)
    assert a.email != b.email and a.name == b.name == personal_data.ERASED_NAME


def test_admins_erase_others_facilitators_may_not_and_the_last_admin_stays(db, factory):
    member = factory.user(Role.MEMBER)
    facilitator = factory.user(Role.FACILITATOR)
    admin = factory.user(Role.ADMIN)
    with pytest.raises(NotAllowed):
        personal_data.erase_account(facilitator, member.id)
    with pytest.raises(NotFound):
        personal_data.erase_account(admin, 987654)
    personal_data.erase_account(admin, member.id)
    [event] = db.session.scalars(select(AuditEvent).where(AuditEvent.action == "account.erase"))
    assert (event.actor_id, event.target_id, event.details) == (
        admin.id,
        member.id,
        {"by": "admin"},
    )
    with pytest.raises(Conflict, match="last admin"):
        personal_data.erase_account(admin, admin.id, password=PASSWORD)
    second = factory.user(Role.ADMIN)
    personal_data.erase_account(second, admin.id)
    assert db.session.get(User, admin.id).erased_at is not None


def test_the_old_email_address_gets_a_new_account(db, factory):
    member = factory.user(Role.MEMBER, name=VICTIM_NAME, email=VICTIM_EMAIL)
    personal_data.erase_account(None, member.id)
    [issued] = invitations.invite_members(
        None,
        [invitations.InvitationRow(name=VICTIM_NAME, email=VICTIM_EMAIL)],
        base_url="http://localhost",
    )
    assert issued.link and issued.user.id != member.id
    assert db.session.get(User, member.id).name == personal_data.ERASED_NAME


def test_erasure_drops_api_token_names_from_the_audit_log(db, factory):
    from deliberate.services import api_tokens

    member = factory.user(Role.MEMBER, name=VICTIM_NAME, email=VICTIM_EMAIL)
    api_tokens.create_token(member, f"{VICTIM_NAME}'s laptop")
    assert VICTIM_NAME in all_text(db)
    personal_data.erase_account(member, member.id, password=PASSWORD)
    assert VICTIM_NAME not in all_text(db)
    assert db.session.scalar(
        select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "api_token.create")
    )


@pytest.mark.xdist_group("personal-data-analysis")
def test_erase_and_reanalyse_leaves_the_analysis_unchanged(db, factory):
    """The issue's test: an erasure changes the analysis only in the link to the person."""
    round_, victim, members, authored = build_round(
        db, factory, author_display=AuthorDisplay.ORGANISATION.value
    )
    db.session.add(
        Invitation(
            user_id=victim.id,
            token_hash="d" * 64,
            round_id=round_.id,
            created_at=T0,
            expires_at=T0 + timedelta(days=1),
        )
    )
    db.session.add(ApiToken(user_id=victim.id, name="Tablet", token_hash="e" * 64, prefix="q"))
    db.session.commit()
    label_before = voting.author_label(authored)
    before = refresh_snapshot(round_.id, force=True)
    result_before, priorities_before = before.result, before.priorities
    assert len(result_before["groups"]) >= 2  # enough people for opinion groups
    assert str(victim.id) in result_before["projections"]
    exports_before = export_files(round_.id)
    assert VICTIM_EMAIL in all_text(db) and VICTIM_NAME in all_text(db)
    assert VICTIM_EMAIL in exports_before["participants.csv"]

    personal_data.erase_account(victim, victim.id, password=PASSWORD)
    after = refresh_snapshot(round_.id, force=True)

    assert after.id != before.id
    assert after.result == result_before  # groups, projections, consensus, repness, bridging...
    assert after.priorities == priorities_before
    for key in ("groups", "projections", "consensus", "bridging", "priorities", "stability"):
        assert after.result[key] == result_before[key], key
    # The votes still count under the same id; the statement stays, shown as before.
    assert str(victim.id) in after.result["projections"]
    db.session.expire_all()
    assert db.session.get(Statement, authored.id).author_id == victim.id
    assert voting.author_label(db.session.get(Statement, authored.id)) == label_before
    # The person is gone from the whole database and from every export.
    everything = all_text(db)
    assert VICTIM_EMAIL not in everything and VICTIM_NAME not in everything
    assert "zelda" not in everything.lower()
    exported = export_files(round_.id)
    assert not any(VICTIM_EMAIL in t or VICTIM_NAME in t for t in exported.values())
    assert personal_data.ERASED_NAME in exported["participants.csv"]
    # Only participants.csv names people: every other file is unchanged.
    assert sorted(exported) == sorted(exports_before)
    same_before, same_after = (
        without_analysis_times(exports_before),
        without_analysis_times(exported),
    )
    for name in exported:
        if name != "participants.csv":
            assert same_after[name] == same_before[name], name


# --- restores ------------------------------------------------------------------------------


def _restore_row(db, user_id: int, *, email: str, name: str) -> None:
    """Put a person's row back as a backup taken before the erasure would have it."""
    db.session.execute(
        update(User)
        .where(User.id == user_id)
        .values(
            email=email,
            name=name,
            password_hash="scrypt:restored",
            active=True,
            erased_at=None,
            auth_version=1,
        )
    )
    db.session.commit()
    db.session.expire_all()


def test_reapply_erasures_after_a_restore(db, factory):
    member = factory.user(Role.MEMBER, name=VICTIM_NAME, email=VICTIM_EMAIL)
    other = factory.user(Role.MEMBER)
    personal_data.erase_account(None, member.id)
    assert personal_data.reapply_erasures() == []  # nothing to do yet

    # A backup restored: the row is back, the audit log kept the erasure.
    _restore_row(db, member.id, email=VICTIM_EMAIL, name=VICTIM_NAME)
    assert personal_data.reapply_erasures() == [member.id]
    user = db.session.get(User, member.id)
    assert personal_data.is_anonymised(user) and VICTIM_NAME not in all_text(db)
    assert db.session.get(User, other.id).name != personal_data.ERASED_NAME
    assert personal_data.reapply_erasures() == []  # idempotent
    assert db.session.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.action == "account.erase_reapplied", AuditEvent.target_id == member.id)
    )


def test_reapply_erasures_from_the_ledger_when_the_audit_log_was_restored_too(app, db, factory):
    member = factory.user(Role.MEMBER, name=VICTIM_NAME, email=VICTIM_EMAIL)
    personal_data.erase_account(None, member.id)
    ledger = personal_data.ledger_path()
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert [e["user_id"] for e in entries] == [member.id]
    assert VICTIM_EMAIL not in ledger.read_text()

    # A full restore from before the erasure: the audit event is gone too.
    db.session.execute(text("DELETE FROM audit_events"))
    db.session.commit()
    _restore_row(db, member.id, email=VICTIM_EMAIL, name=VICTIM_NAME)
    assert personal_data.reapply_erasures() == [member.id]
    assert personal_data.is_anonymised(db.session.get(User, member.id))


def test_a_ledger_entry_for_another_account_is_not_applied(db, factory, tmp_path):
    member = factory.user(Role.MEMBER)
    ledger = tmp_path / "other-erasures.jsonl"
    ledger.write_text(
        json.dumps({"user_id": member.id, "created_at": "2001-01-01T00:00:00+00:00"})
        + "\nnot json\n"
    )
    assert personal_data.reapply_erasures(ledger=ledger) == []
    assert db.session.get(User, member.id).erased_at is None


# --- retention -----------------------------------------------------------------------------


def test_retention_setting_is_validated_and_audited(db, factory):
    facilitator = factory.user(Role.FACILITATOR)
    round_ = rounds.create_round(facilitator, question="Keep or delete?", retention_days=30)
    assert round_.retention_days == 30
    for bad in (0, 36501, -5, 1.5, "30", True):
        with pytest.raises(ValidationError):
            rounds.update_round(facilitator, round_.id, retention_days=bad)
    rounds.update_round(facilitator, round_.id, retention_days=None)
    assert round_.retention_days is None
    event = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "round.update").order_by(AuditEvent.id)
    ).all()[-1]
    assert event.details["changed"]["retention_days"] == {"from": 30, "to": None}
    # A published round may still change its retention period, and nothing else.
    published = factory.round(state=RoundState.PUBLISHED)
    rounds.update_round(facilitator, published.id, retention_days=365)
    assert published.retention_days == 365
    with pytest.raises(Conflict):
        rounds.update_round(facilitator, published.id, context="new context")


def _export_json(round_id: int) -> dict:
    data = exports.export_json(None, round_id)
    data.pop("exported_at")
    return data


def _participant_ids(db, round_id: int) -> set[int]:
    ids = set(db.session.scalars(select(Vote.user_id).where(Vote.round_id == round_id)))
    ids |= set(db.session.scalars(select(VoteEvent.user_id).where(VoteEvent.round_id == round_id)))
    ids |= set(
        db.session.scalars(
            select(Statement.author_id).where(
                Statement.round_id == round_id, Statement.author_id.is_not(None)
            )
        )
    )
    return ids


@pytest.mark.xdist_group("personal-data-analysis")
def test_retention_purges_after_the_period_keeping_the_analysis(db, factory):
    closes = T0 + timedelta(days=10)
    round_, victim, members, authored = build_round(
        db, factory, state=RoundState.CLOSED, closes_at=closes, retention_days=30
    )
    kept, _, kept_members, _ = build_round(
        db,
        factory,
        seed=8,
        n_members=6,
        victim_name="Another Person",
        victim_email="another.person@example.org",
        state=RoundState.CLOSED,
        closes_at=closes,
    )
    db.session.add(
        Invitation(
            user_id=victim.id,
            token_hash="f" * 64,
            round_id=round_.id,
            created_at=T0,
            expires_at=T0 + timedelta(days=1),
        )
    )
    db.session.commit()
    refresh_snapshot(round_.id, force=True)
    before = refresh_snapshot(round_.id, force=True)
    result_before = before.result
    real_ids = _participant_ids(db, round_.id)
    assert victim.id in real_ids and len(real_ids) == len(members)
    exported_before = _export_json(round_.id)

    # Not yet: the period has not passed.
    assert personal_data.apply_retention(now=closes + timedelta(days=29)) == []
    assert _participant_ids(db, round_.id) == real_ids

    assert personal_data.apply_retention(now=closes + timedelta(days=30)) == [round_.id]
    db.session.expire_all()
    purged = db.session.get(Round, round_.id)
    assert purged.personal_data_purged_at is not None
    pseudonyms = _participant_ids(db, round_.id)
    assert not pseudonyms & real_ids and len(pseudonyms) == len(real_ids)
    placeholders = db.session.scalars(select(User).where(User.id.in_(pseudonyms))).all()
    assert all(personal_data.is_pseudonym(u) and not u.active for u in placeholders)
    assert all(u.password_hash is None for u in placeholders)
    # Same organisations in the same order: per-organisation results are unchanged.
    old = db.session.execute(
        select(User.id, User.organisation_id).where(User.id.in_(real_ids)).order_by(User.id)
    ).all()
    new = db.session.execute(
        select(User.id, User.organisation_id).where(User.id.in_(pseudonyms)).order_by(User.id)
    ).all()
    mapping = {o.id: n.id for o, n in zip(old, new, strict=True)}
    assert [o.organisation_id for o in old] == [n.organisation_id for n in new]
    # The person's own data no longer mentions the round; their account is untouched.
    data = personal_data.personal_data(None, victim.id)
    assert data["rounds"] == [] and data["account"]["email"] == VICTIM_EMAIL
    assert db.session.get(Statement, authored.id).author_id == mapping[victim.id]
    assert (
        db.session.scalar(select(Invitation.round_id).where(Invitation.user_id == victim.id))
        is None
    )
    # The stored analysis: one snapshot, results unchanged except for participant ids.
    snapshots = db.session.scalars(select(Snapshot).where(Snapshot.round_id == round_.id)).all()
    assert len(snapshots) == 1
    assert snapshots[0].result == personal_data.map_result_participants(result_before, mapping)
    assert not {str(i) for i in real_ids} & set(snapshots[0].result["projections"])
    assert _export_json(round_.id) == exported_before  # participants are numbered anyway
    # A fresh analysis over the pseudonyms agrees (so no participant-keyed field was missed).
    again = refresh_snapshot(round_.id, force=True)
    assert again.result == snapshots[0].result
    # The other round (no retention) is untouched; the purge is logged and runs once.
    assert _participant_ids(db, kept.id) == {m.id for m in kept_members}
    [event] = db.session.scalars(
        select(AuditEvent).where(AuditEvent.action == "round.retention_purge")
    )
    assert event.round_id == round_.id and event.details["participants"] == len(real_ids)
    assert personal_data.apply_retention(now=closes + timedelta(days=400)) == []
    assert _participant_ids(db, round_.id) == pseudonyms


def test_retention_skips_open_rounds_and_rounds_without_a_period(db, factory):
    past = T0
    open_round = factory.round(state=RoundState.OPEN, closes_at=past, retention_days=1)
    no_period = factory.round(state=RoundState.CLOSED, closes_at=past)
    not_closed = factory.round(state=RoundState.CLOSED, retention_days=1)
    now = T0 + timedelta(days=1000)
    assert personal_data.rounds_due_for_purge(now) == []
    assert personal_data.apply_retention(now=now) == []
    for r in (open_round, no_period, not_closed):
        assert db.session.get(Round, r.id).personal_data_purged_at is None
    empty = factory.round(state=RoundState.PUBLISHED, closes_at=past, retention_days=1)
    assert personal_data.apply_retention(now=now) == [empty.id]
    with pytest.raises(Conflict, match="already deleted"):
        rounds.update_round(factory.user(Role.FACILITATOR), empty.id, retention_days=5)


# --- the command line ----------------------------------------------------------------------


def test_cli_commands(app, db, factory, tmp_path):
    member = factory.user(Role.MEMBER, name=VICTIM_NAME, email=VICTIM_EMAIL)
    runner = app.test_cli_runner()
    out = tmp_path / "data.json"
    result = runner.invoke(args=["export-personal-data", VICTIM_EMAIL.upper(), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["account"]["name"] == VICTIM_NAME
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    result = runner.invoke(args=["export-personal-data", "nobody@example.org", "--out", "-"])
    assert result.exit_code == 1 and "No account" in result.output

    result = runner.invoke(args=["erase-account", VICTIM_EMAIL], input="n\n")
    assert result.exit_code == 1 and db.session.get(User, member.id).erased_at is None
    result = runner.invoke(args=["erase-account", VICTIM_EMAIL, "--yes"])
    assert result.exit_code == 0, result.output
    db.session.expire_all()
    assert db.session.get(User, member.id).erased_at is not None
    event = db.session.scalar(select(AuditEvent).where(AuditEvent.action == "account.erase"))
    assert event.actor_id is None and event.details == {"by": "operator"}

    _restore_row(db, member.id, email=VICTIM_EMAIL, name=VICTIM_NAME)
    result = runner.invoke(args=["reapply-erasures"])
    assert result.exit_code == 0 and str(member.id) in result.output
    result = runner.invoke(args=["reapply-erasures"])
    assert "nothing to do" in result.output

    factory.round(state=RoundState.CLOSED, closes_at=T0, retention_days=1)
    result = runner.invoke(args=["apply-retention"])
    assert result.exit_code == 0 and "Purged" in result.output
    result = runner.invoke(args=["apply-retention"])
    assert "No round is due" in result.output
    assert _db.session.scalar(select(func.count()).select_from(Round)) == 1


def test_an_erased_account_cannot_be_reactivated_or_reset(db, factory):
    admin = factory.user(Role.ADMIN)
    factory.user(Role.ADMIN)
    member = factory.user(Role.MEMBER, name=VICTIM_NAME, email=VICTIM_EMAIL)
    personal_data.erase_account(member, member.id, password=PASSWORD)
    with pytest.raises(Conflict, match="erased"):
        accounts.set_active(admin, member.id, True)
    with pytest.raises(Conflict, match="erased"):
        invitations.issue_password_reset(admin, member.id, "http://localhost")
    db.session.expire_all()
    assert not db.session.get(User, member.id).active


def test_people_lists_leave_out_retention_pseudonyms(db, factory):
    facilitator = factory.user(Role.FACILITATOR)
    closes = T0 + timedelta(days=10)
    round_, _, members, _ = build_round(
        db, factory, state=RoundState.CLOSED, closes_at=closes, retention_days=1
    )
    listed_before = {u.id for u in accounts.people_page(facilitator).items}
    counts_before = accounts.count_members_by_organisation(facilitator)
    assert personal_data.apply_retention(now=closes + timedelta(days=2)) == [round_.id]
    assert {u.id for u in accounts.people_page(facilitator).items} == listed_before
    assert accounts.count_members_by_organisation(facilitator) == counts_before
    total = db.session.scalar(select(func.count()).select_from(User))
    assert total == len(listed_before) + len(members)  # the pseudonyms exist, unlisted
