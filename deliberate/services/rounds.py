"""Rounds: creating and editing them, their life cycle, seed statements and participation.

A round moves draft -> open -> closed -> published, by a facilitator's button or, for
open and close, by its scheduled times (`apply_scheduled_transitions`, run by
`deliberate tick`). `is_accepting_votes` also checks the times itself, so a round whose
close time has passed refuses votes even before the scheduler has run.

Settings that change the meaning of votes are locked once the round has votes (see
`LOCKED_ONCE_VOTED`): the question, the moderation mode and the audience. Changing the
authors' display from anonymous to by-organisation is refused once members have written
statements, because they wrote them under a promise of anonymity.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import selectinload

from ..extensions import db
from ..models import (
    AuthorDisplay,
    ModerationMode,
    Organisation,
    ResultsVisibility,
    Round,
    RoundState,
    Statement,
    StatementOrigin,
    StatementState,
    User,
    Vote,
    is_valid_id,
    utcnow,
)
from . import audit
from .authz import can_view_round, require_facilitator, require_round_viewer, require_user
from .errors import Conflict, NotFound, ValidationError
from .pagination import Page, keyset_page, page_cursor

QUESTION_MIN, QUESTION_MAX = 5, 500
CONTEXT_MAX = 20_000
LENGTH_MIN, LENGTH_MAX = 20, 2000
SEED_MAX_LINES = 1000
# No split of votes is shown for fewer people than this: it would reveal individual votes.
MIN_BREAKDOWN = 3
ROUND_STATEMENTS_PAGE_SIZE = 100  # statements per page of the facilitator's round page

# Settings that cannot change once the round has votes: they change what a vote means.
LOCKED_ONCE_VOTED = ("question", "moderation", "organisation_ids")

SETTINGS = (
    "question",
    "context",
    "allow_member_statements",
    "moderation",
    "statement_max_length",
    "results_visibility",
    "author_display",
    "opens_at",
    "closes_at",
    "organisation_ids",
    "retention_days",
)

SETTING_LABELS = {
    "question": "the question",
    "moderation": "the moderation mode",
    "organisation_ids": "the organisations taking part",
}

# What may happen next in each state (the button transitions).
TRANSITIONS = {
    "open": (RoundState.DRAFT, RoundState.OPEN),
    "close": (RoundState.OPEN, RoundState.CLOSED),
    "publish": (RoundState.CLOSED, RoundState.PUBLISHED),
}


@dataclass
class SeedResult:
    """What happened to each line of a pasted block of seed statements."""

    added: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    too_long: list[str] = field(default_factory=list)
    empty: int = 0


@dataclass
class OrganisationParticipation:
    organisation_id: int | None
    name: str
    members: int  # active accounts of the organisation
    voters: int  # of whom voted at least once in the round
    votes: int
    statements: int  # written by its members


@dataclass
class Participation:
    organisations: list[OrganisationParticipation]
    members: int
    voters: int
    votes: int
    statements: int  # all statements of the round, seeds included
    member_statements: int
    pending: int


@dataclass
class RoundSummary:
    round: Round
    statements: int
    pending: int
    votes: int
    voters: int


@dataclass
class StatementRow:
    """A statement with its vote counts; the split is None below MIN_BREAKDOWN votes."""

    statement: Statement
    votes: int
    agree: int | None
    disagree: int | None
    passes: int | None


@dataclass
class RoundOverview:
    round: Round
    statements: list[StatementRow]
    participation: Participation
    has_votes: bool


# --- reading ---------------------------------------------------------------------------


def find_round(round_id: object) -> Round | None:
    """Return the round with this id, or None (also for ids that cannot exist)."""
    return db.session.get(Round, round_id) if is_valid_id(round_id) else None


def _load(round_id: int) -> Round:
    round_ = find_round(round_id)
    if round_ is None:
        raise NotFound("No such round.")
    return round_


def get_round(actor: User | None, round_id: int) -> Round:
    """Return the round if the actor may see it (otherwise NotFound)."""
    round_ = find_round(round_id)
    require_round_viewer(actor, round_)
    return round_


def list_rounds(actor: User | None) -> list[Round]:
    """Return the rounds the actor may see, newest first."""
    user = require_user(actor)
    rounds = db.session.scalars(select(Round).order_by(Round.created_at.desc(), Round.id.desc()))
    return [r for r in rounds if can_view_round(user, r)]


def has_votes(round_: Round) -> bool:
    """Whether anyone has voted in the round."""
    return db.session.scalar(select(Vote.id).where(Vote.round_id == round_.id).limit(1)) is not None


def is_accepting_votes(round_: Round, now: datetime | None = None) -> bool:
    """Whether the round takes votes and statements now: open, and within its times."""
    now = now or utcnow()
    if round_.state != RoundState.OPEN:
        return False
    if round_.opens_at is not None and now < round_.opens_at:
        return False
    return round_.closes_at is None or now < round_.closes_at


def round_summaries(actor: User | None) -> list[RoundSummary]:
    """Return every round with its statement, pending, vote and voter counts (facilitators)."""
    require_facilitator(actor)
    rounds = list(
        db.session.scalars(select(Round).order_by(Round.created_at.desc(), Round.id.desc()))
    )
    statements = dict(
        db.session.execute(
            select(Statement.round_id, func.count()).group_by(Statement.round_id)
        ).all()
    )
    pending = dict(
        db.session.execute(
            select(Statement.round_id, func.count())
            .where(Statement.moderation_state == StatementState.PENDING.value)
            .group_by(Statement.round_id)
        ).all()
    )
    votes = {
        rid: (n, voters)
        for rid, n, voters in db.session.execute(
            select(Vote.round_id, func.count(), func.count(func.distinct(Vote.user_id))).group_by(
                Vote.round_id
            )
        ).all()
    }
    return [
        RoundSummary(
            round=r,
            statements=statements.get(r.id, 0),
            pending=pending.get(r.id, 0),
            votes=votes.get(r.id, (0, 0))[0],
            voters=votes.get(r.id, (0, 0))[1],
        )
        for r in rounds
    ]


def participation(actor: User | None, round_id: int) -> Participation:
    """Return turnout per organisation and the round's totals (facilitators)."""
    require_facilitator(actor)
    return _participation(_load(round_id))


def _participation(round_: Round) -> Participation:
    if round_.organisations:
        orgs = sorted(round_.organisations, key=lambda o: o.name.casefold())
    else:
        orgs = list(db.session.scalars(select(Organisation).order_by(Organisation.name)))
    members = dict(
        db.session.execute(
            select(User.organisation_id, func.count())
            .where(User.active.is_(True))
            .group_by(User.organisation_id)
        ).all()
    )
    vote_rows = db.session.execute(
        select(User.organisation_id, func.count(), func.count(func.distinct(Vote.user_id)))
        .select_from(Vote)
        .join(User, User.id == Vote.user_id)
        .where(Vote.round_id == round_.id)
        .group_by(User.organisation_id)
    ).all()
    votes = {org_id: (n, voters) for org_id, n, voters in vote_rows}
    authored = dict(
        db.session.execute(
            select(User.organisation_id, func.count())
            .select_from(Statement)
            .join(User, User.id == Statement.author_id)
            .where(
                Statement.round_id == round_.id, Statement.origin == StatementOrigin.MEMBER.value
            )
            .group_by(User.organisation_id)
        ).all()
    )
    rows = [
        OrganisationParticipation(
            organisation_id=o.id,
            name=o.name,
            members=members.get(o.id, 0),
            voters=votes.get(o.id, (0, 0))[1],
            votes=votes.get(o.id, (0, 0))[0],
            statements=authored.get(o.id, 0),
        )
        for o in orgs
    ]
    # Voters outside the listed organisations (no organisation, e.g. individual members).
    listed = {o.id for o in orgs}
    others = [org_id for org_id in set(votes) | set(authored) if org_id not in listed]
    if others:
        rows.append(
            OrganisationParticipation(
                organisation_id=None,
                name="No organisation or another organisation",
                members=sum(members.get(i, 0) for i in others if i is None),
                voters=sum(votes.get(i, (0, 0))[1] for i in others),
                votes=sum(votes.get(i, (0, 0))[0] for i in others),
                statements=sum(authored.get(i, 0) for i in others),
            )
        )
    counts = dict(
        db.session.execute(
            select(Statement.moderation_state, func.count())
            .where(Statement.round_id == round_.id)
            .group_by(Statement.moderation_state)
        ).all()
    )
    member_statements = db.session.scalar(
        select(func.count())
        .select_from(Statement)
        .where(Statement.round_id == round_.id, Statement.origin == StatementOrigin.MEMBER.value)
    )
    total_votes, total_voters = db.session.execute(
        select(func.count(), func.count(func.distinct(Vote.user_id))).where(
            Vote.round_id == round_.id
        )
    ).one()
    return Participation(
        organisations=rows,
        members=sum(r.members for r in rows),
        voters=total_voters,
        votes=total_votes,
        statements=sum(counts.values()),
        member_statements=member_statements or 0,
        pending=counts.get(StatementState.PENDING.value, 0),
    )


def _statement_rows(round_: Round, statements: list[Statement]) -> list[StatementRow]:
    """The rows of `statements` (of `round_`) with their vote counts; the split is shown from
    MIN_BREAKDOWN votes."""
    if not statements:
        return []
    tallies = {
        sid: (n, agree, disagree, passes)
        for sid, n, agree, disagree, passes in db.session.execute(
            select(
                Vote.statement_id,
                func.count(),
                func.sum((Vote.value == 1).cast(db.Integer)),
                func.sum((Vote.value == -1).cast(db.Integer)),
                func.sum((Vote.value == 0).cast(db.Integer)),
            )
            .where(Vote.round_id == round_.id, Vote.statement_id.in_([s.id for s in statements]))
            .group_by(Vote.statement_id)
        ).all()
    }
    rows = []
    for s in statements:
        n, agree, disagree, passes = tallies.get(s.id, (0, 0, 0, 0))
        if n < MIN_BREAKDOWN:
            rows.append(StatementRow(s, n, None, None, None))
        else:
            rows.append(StatementRow(s, n, agree or 0, disagree or 0, passes or 0))
    return rows


def round_overview_page(
    actor: User | None,
    round_id: int,
    *,
    limit: int = ROUND_STATEMENTS_PAGE_SIZE,
    after_id: int | None = None,
    before_id: int | None = None,
) -> tuple[RoundOverview, Page[StatementRow]]:
    """Return (overview, page): a round with its participation and one page of its statements
    by number, each with its vote counts (the split from MIN_BREAKDOWN votes; facilitators)."""
    from .statements import statement_cursor  # statements imports this module

    require_facilitator(actor)
    round_ = _load(round_id)
    cursor, direction = page_cursor(after_id, before_id)
    page = keyset_page(
        select(Statement)
        .where(Statement.round_id == round_.id)
        .options(selectinload(Statement.revisions)),
        (Statement.id,),
        limit=limit,
        cursor=cursor,
        cursor_key=statement_cursor(round_.id, cursor),
        direction=direction,
    )
    rows = _statement_rows(round_, page.items)
    overview = RoundOverview(
        round=round_,
        statements=rows,
        participation=_participation(round_),
        has_votes=has_votes(round_),
    )
    return overview, Page(rows, after=page.after, before=page.before)


# --- validation ------------------------------------------------------------------------


def _choice(name: str, value, enum_cls, label: str) -> str:
    allowed = [e.value for e in enum_cls]
    if value is None or str(value) not in allowed:
        raise ValidationError(f"{label} must be one of: {', '.join(allowed)}.")
    return str(value)


def _clean_settings(settings: dict) -> dict:
    """Validate and normalise round settings; raise ValidationError on the first problem."""
    clean: dict = {}
    if "question" in settings:
        question = " ".join(str(settings["question"] or "").split())
        if len(question) < QUESTION_MIN:
            raise ValidationError(f"The question must be at least {QUESTION_MIN} characters.")
        if len(question) > QUESTION_MAX:
            raise ValidationError(
                f"The question can be at most {QUESTION_MAX} characters "
                f"(yours has {len(question)})."
            )
        clean["question"] = question
    if "context" in settings:
        context = str(settings["context"] or "").replace("\r\n", "\n").strip()
        if len(context) > CONTEXT_MAX:
            raise ValidationError(
                f"The context can be at most {CONTEXT_MAX:,} characters "
                f"(yours has {len(context):,})."
            )
        clean["context"] = context
    if "allow_member_statements" in settings:
        value = settings["allow_member_statements"]
        if not isinstance(value, bool):
            raise ValidationError("Whether members may write statements must be yes or no.")
        clean["allow_member_statements"] = value
    if "moderation" in settings:
        clean["moderation"] = _choice(
            "moderation", settings["moderation"], ModerationMode, "Moderation"
        )
    if "results_visibility" in settings:
        clean["results_visibility"] = _choice(
            "results_visibility",
            settings["results_visibility"],
            ResultsVisibility,
            "When members see results",
        )
    if "author_display" in settings:
        clean["author_display"] = _choice(
            "author_display", settings["author_display"], AuthorDisplay, "Author display"
        )
    if "statement_max_length" in settings:
        value = settings["statement_max_length"]
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError("The statement length limit must be a whole number.")
        if not LENGTH_MIN <= value <= LENGTH_MAX:
            raise ValidationError(
                f"The statement length limit must be between {LENGTH_MIN} and {LENGTH_MAX}."
            )
        clean["statement_max_length"] = value
    for name, label in (("opens_at", "The opening time"), ("closes_at", "The closing time")):
        if name in settings:
            value = settings[name]
            if value is not None:
                if not isinstance(value, datetime):
                    raise ValidationError(f"{label} must be a date and time.")
                if value.tzinfo is None or value.utcoffset() is None:
                    raise ValidationError(f"{label} must include a time zone.")
            clean[name] = value
    if "organisation_ids" in settings:
        raw = settings["organisation_ids"] or ()
        try:
            ids = sorted({int(i) for i in raw})
        except (TypeError, ValueError):
            raise ValidationError("Unknown organisation.") from None
        if not all(is_valid_id(i) for i in ids):
            raise ValidationError("Unknown organisation.")
        if ids:
            found = set(db.session.scalars(select(Organisation.id).where(Organisation.id.in_(ids))))
            if found != set(ids):
                raise ValidationError("Unknown organisation.")
        clean["organisation_ids"] = ids
    if "retention_days" in settings:
        from .personal_data import clean_retention_days

        clean["retention_days"] = clean_retention_days(settings["retention_days"])
    unknown = set(settings) - set(SETTINGS)
    if unknown:
        raise ValidationError(f"Unknown setting: {', '.join(sorted(unknown))}.")
    return clean


def _check_times(opens_at: datetime | None, closes_at: datetime | None) -> None:
    if opens_at is not None and closes_at is not None and closes_at <= opens_at:
        raise ValidationError("The closing time must be after the opening time.")


def _organisations(ids: Iterable[int]) -> list[Organisation]:
    ids = list(ids)
    if not ids:
        return []
    return list(
        db.session.scalars(
            select(Organisation).where(Organisation.id.in_(ids)).order_by(Organisation.name)
        )
    )


# --- writing ---------------------------------------------------------------------------


def create_round(
    actor: User | None,
    *,
    question: str,
    context: str = "",
    allow_member_statements: bool = True,
    moderation: str = "pre",
    statement_max_length: int = 280,
    results_visibility: str = "after_voting",
    author_display: str = "anonymous",
    opens_at: datetime | None = None,
    closes_at: datetime | None = None,
    organisation_ids: Iterable[int] = (),
    retention_days: int | None = None,
) -> Round:
    """Create a draft round (facilitators)."""
    user = require_facilitator(actor)
    clean = _clean_settings(
        {
            "question": question,
            "context": context,
            "allow_member_statements": allow_member_statements,
            "moderation": moderation,
            "statement_max_length": statement_max_length,
            "results_visibility": results_visibility,
            "author_display": author_display,
            "opens_at": opens_at,
            "closes_at": closes_at,
            "organisation_ids": list(organisation_ids or ()),
            "retention_days": retention_days,
        }
    )
    _check_times(clean["opens_at"], clean["closes_at"])
    org_ids = clean.pop("organisation_ids")
    round_ = Round(state=RoundState.DRAFT.value, created_by_id=user.id, **clean)
    round_.organisations = _organisations(org_ids)
    db.session.add(round_)
    db.session.flush()
    audit.record(
        user,
        "round.create",
        round_id=round_.id,
        target_type="round",
        target_id=round_.id,
        question=round_.question,
        settings={k: _audit_value(v) for k, v in clean.items() if k not in ("question", "context")},
        organisation_ids=org_ids,
    )
    db.session.commit()
    return round_


def _audit_value(value):
    return value.isoformat() if isinstance(value, datetime) else value


def _current(round_: Round, name: str):
    if name == "organisation_ids":
        return sorted(o.id for o in round_.organisations)
    return getattr(round_, name)


def update_round(actor: User | None, round_id: int, **settings) -> Round:
    """Change a round's settings; refuse changes to vote-defining settings once votes exist."""
    user = require_facilitator(actor)
    round_ = _load(round_id)
    clean = _clean_settings(settings)
    changed = {k: v for k, v in clean.items() if _current(round_, k) != v}
    # The retention period may still change once the round is published (until the purge).
    if round_.state == RoundState.PUBLISHED and set(changed) - {"retention_days"}:
        raise Conflict("This round is published; its settings can no longer change.")
    if not changed:
        return round_
    if "retention_days" in changed and round_.personal_data_purged_at is not None:
        raise Conflict("This round's personal data was already deleted; nothing left to keep.")
    _check_times(
        changed.get("opens_at", round_.opens_at), changed.get("closes_at", round_.closes_at)
    )
    locked = [k for k in LOCKED_ONCE_VOTED if k in changed]
    if locked and has_votes(round_):
        names = " and ".join(SETTING_LABELS[k] for k in locked)
        raise Conflict(
            f"Members have already voted in this round, so {names} can no longer change: "
            "it would change what their votes mean. Start a new round instead."
        )
    if (
        changed.get("author_display") == AuthorDisplay.ORGANISATION.value
        and db.session.scalar(
            select(Statement.id)
            .where(
                Statement.round_id == round_.id, Statement.origin == StatementOrigin.MEMBER.value
            )
            .limit(1)
        )
        is not None
    ):
        raise Conflict(
            "Members have written statements believing their authors are anonymous, so authors "
            "can no longer be shown by organisation in this round."
        )
    details = {
        k: {"from": _audit_value(_current(round_, k)), "to": _audit_value(v)}
        for k, v in changed.items()
        if k != "context"
    }
    if "context" in changed:
        details["context"] = "changed"
    for name, value in changed.items():
        if name == "organisation_ids":
            round_.organisations = _organisations(value)
        else:
            setattr(round_, name, value)
    audit.record(
        user,
        "round.update",
        round_id=round_.id,
        target_type="round",
        target_id=round_.id,
        changed=details,
    )
    db.session.commit()
    return round_


def _transition(actor: User | None, round_id: int, action: str, now: datetime | None) -> Round:
    user = require_facilitator(actor)
    round_ = _load(round_id)
    now = now or utcnow()
    source, target = TRANSITIONS[action]
    if round_.state != source:
        raise Conflict(
            f"This round is {round_.state}; only a {source.value} round can be {_past(action)}."
        )
    values: dict = {"state": target.value}
    if action == "open":
        if round_.closes_at is not None and round_.closes_at <= now:
            raise Conflict("The closing time of this round has passed; change it before opening.")
        if round_.opens_at is None or round_.opens_at > now:
            values["opens_at"] = now
    elif action == "close" and (round_.closes_at is None or round_.closes_at > now):
        values["closes_at"] = now
    # A conditional update: of two facilitators pressing the same button, one wins.
    result = db.session.execute(
        update(Round)
        .where(Round.id == round_.id, Round.state == source.value)
        .values(**values, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        raise Conflict("This round changed state meanwhile; reload the page.")
    audit.record(
        user,
        f"round.{action}",
        round_id=round_.id,
        target_type="round",
        target_id=round_.id,
        **{"from": source.value, "to": target.value},
    )
    db.session.commit()
    db.session.refresh(round_)
    return round_


def _past(action: str) -> str:
    return {"open": "opened", "close": "closed", "publish": "published"}[action]


def open_round(actor: User | None, round_id: int, *, now: datetime | None = None) -> Round:
    """Open a draft round for voting (facilitators)."""
    return _transition(actor, round_id, "open", now)


def close_round(actor: User | None, round_id: int, *, now: datetime | None = None) -> Round:
    """Close an open round: no more votes or statements (facilitators)."""
    return _transition(actor, round_id, "close", now)


def publish_round(actor: User | None, round_id: int, *, now: datetime | None = None) -> Round:
    """Publish a closed round's results (facilitators)."""
    return _transition(actor, round_id, "publish", now)


def apply_scheduled_transitions(now: datetime | None = None) -> list[Round]:
    """Open draft rounds whose opening time has come and close open rounds whose time is up."""
    now = now or utcnow()
    changed: list[Round] = []
    due_open = db.session.scalars(
        select(Round).where(
            Round.state == RoundState.DRAFT.value,
            Round.opens_at.is_not(None),
            Round.opens_at <= now,
        )
    ).all()
    due_close = db.session.scalars(
        select(Round).where(
            Round.state == RoundState.OPEN.value,
            Round.closes_at.is_not(None),
            Round.closes_at <= now,
        )
    ).all()
    for round_, source, target, action in [
        *((r, RoundState.DRAFT, RoundState.OPEN, "open") for r in due_open),
        *((r, RoundState.OPEN, RoundState.CLOSED, "close") for r in due_close),
    ]:
        if action == "open" and round_.closes_at is not None and round_.closes_at <= now:
            continue  # its whole window passed while it was a draft: leave it to a person
        result = db.session.execute(
            update(Round)
            .where(Round.id == round_.id, Round.state == source.value)
            .values(state=target.value, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            audit.record(
                None,
                f"round.{action}",
                round_id=round_.id,
                target_type="round",
                target_id=round_.id,
                scheduled=True,
                **{"from": source.value, "to": target.value},
            )
            changed.append(round_)
    db.session.commit()
    for round_ in changed:
        db.session.refresh(round_)
    return changed


# --- seed statements -------------------------------------------------------------------

_BULLET = re.compile(r"^(?:[-*\u2022]\s+)")


def add_seed_statements(actor: User | None, round_id: int, text_block: str) -> SeedResult:
    """Add seed statements, one per line, accepted at once; skip and report duplicates."""
    from .statements import clean_text, normalise_text

    user = require_facilitator(actor)
    round_ = _load(round_id)
    if round_.state not in (RoundState.DRAFT, RoundState.OPEN):
        raise Conflict(f"This round is {round_.state}; statements can no longer be added.")
    lines = str(text_block or "").splitlines()
    if len(lines) > SEED_MAX_LINES:
        raise ValidationError(f"Paste at most {SEED_MAX_LINES} statements at once.")
    result = SeedResult()
    existing = set(
        db.session.scalars(select(Statement.normalised_text).where(Statement.round_id == round_.id))
    )
    new: list[Statement] = []
    for line in lines:
        text = clean_text(_BULLET.sub("", line.strip()))
        if not text:
            result.empty += 1
            continue
        if len(text) > round_.statement_max_length:
            result.too_long.append(text)
            continue
        key = normalise_text(text)
        if key in existing:
            result.duplicates.append(text)
            continue
        existing.add(key)
        new.append(
            Statement(
                round_id=round_.id,
                text=text,
                normalised_text=key,
                origin=StatementOrigin.SEED.value,
                moderation_state=StatementState.ACCEPTED.value,
                moderated_by_id=user.id,
                moderated_at=utcnow(),
            )
        )
        result.added.append(text)
    if not new and not result.duplicates and not result.too_long:
        raise ValidationError("Paste at least one statement, one per line.")
    if new:
        db.session.add_all(new)
        try:
            db.session.flush()
        except IntegrityError:
            # A member wrote one of these statements between our check and our insert.
            db.session.rollback()
            raise Conflict(
                "Someone added one of these statements meanwhile; nothing was added. Try again."
            ) from None
        audit.record(
            user,
            "statement.seed",
            round_id=round_.id,
            target_type="round",
            target_id=round_.id,
            added=len(new),
            statement_ids=[s.id for s in new],
            duplicates=len(result.duplicates),
            too_long=len(result.too_long),
        )
        db.session.commit()
    return result
