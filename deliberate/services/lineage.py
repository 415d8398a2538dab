"""Rounds over time: carrying statements into a new round, and comparing two rounds.

A facilitator starts the next round from an earlier one, carrying chosen statements forward.
Each carried statement is a new row in the new round (its votes start afresh) whose
`carried_from_id` points at the statement it was copied from, so a statement's lineage can be
followed back through any number of rounds.

The comparison reads the two rounds' latest snapshots (never running the analysis) and matches
statements across them by lineage first and, failing that, by their normalised text. It then
compares, per matched statement, the overall agree share, Pol.is's group-informed consensus
(GAC), deliberate's bridging score and each round's group shares. Only the bridging score is
comparable between rounds whose analyses found different numbers of groups (it is the
geometric mean of the per-group agree rates; GAC is their product and shrinks as groups are
added: see `deliberate/analysis/bridging.py`), so the "towards / away from consensus" label
follows the change in bridging.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from ..extensions import db
from ..models import (
    GroupName,
    Round,
    RoundState,
    Snapshot,
    Statement,
    StatementOrigin,
    StatementState,
    User,
    utcnow,
)
from . import audit
from .authz import require_facilitator, require_report_reader
from .errors import NotFound, ValidationError
from .privacy import MIN_CELL, Cell, cell, is_small
from .rounds import _check_times, _clean_settings, _organisations, find_round, is_valid_id
from .snapshots import latest_snapshot
from .statements import normalise_text

# A change in bridging score of at least this much (either way) counts as a move.
CHANGE_THRESHOLD = 0.05
# Statements at or above this bridging score are preselected to carry forward.
HIGH_BRIDGING = 0.6
# Lineage chains longer than this are cut (they would take hundreds of rounds to build).
MAX_LINEAGE = 500

TOWARDS = "towards consensus"
AWAY = "away from consensus"
LITTLE = "little change"
UNKNOWN = "not enough data"
DIRECTIONS = (TOWARDS, AWAY, LITTLE, UNKNOWN)

# Settings copied from the earlier round unless the facilitator overrides them. The opening
# and closing times are not copied: they belong to one round.
COPIED_SETTINGS = (
    "allow_member_statements",
    "moderation",
    "statement_max_length",
    "results_visibility",
    "author_display",
    "organisation_ids",
)
OVERRIDABLE = (*COPIED_SETTINGS, "opens_at", "closes_at")

SORTS = ("change", "towards", "away", "agree", "statement")


# --- results -----------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupShare:
    """One opinion group's agree share on a statement; `members` is None for a small group."""

    group_id: Any
    label: str
    members: int | None
    agree: Cell  # agreeing members out of those in the group who saw the statement


@dataclass
class StatementFigures:
    """A statement's figures in one round's latest snapshot (None: no snapshot or too few)."""

    statement: Statement
    agree: Cell  # agreeing out of everyone who saw the statement
    consensus: float | None  # group-informed consensus (GAC)
    bridging: float | None
    groups: list[GroupShare] = field(default_factory=list)
    analysed: bool = True  # False: the round has no snapshot yet

    @property
    def seen(self) -> int | None:
        return self.agree.base


@dataclass
class MatchedStatement:
    """A statement present in both rounds, with how its figures moved from A to B."""

    a: StatementFigures
    b: StatementFigures
    matched_by: str  # "lineage" or "text"
    agree_delta: float | None
    consensus_delta: float | None
    bridging_delta: float | None
    direction: str

    @property
    def change(self) -> float:
        """The size of the move in bridging score (-1 when it cannot be told)."""
        return abs(self.bridging_delta) if self.bridging_delta is not None else -1.0


@dataclass
class Comparison:
    """Two rounds compared statement by statement (B against A: deltas are B minus A)."""

    round_a: Round
    round_b: Round
    snapshot_a: Snapshot | None
    snapshot_b: Snapshot | None
    matched: list[MatchedStatement]
    only_a: list[StatementFigures]
    only_b: list[StatementFigures]
    threshold: float = CHANGE_THRESHOLD

    @property
    def has_figures(self) -> bool:
        return self.snapshot_a is not None and self.snapshot_b is not None

    @property
    def message(self) -> str | None:
        """Why the figures are missing, in plain words; None when both rounds have them."""
        missing = [
            r
            for r, s in ((self.round_a, self.snapshot_a), (self.round_b, self.snapshot_b))
            if s is None
        ]
        if not missing:
            return None
        names = " and ".join(f"“{r.question}”" for r in missing)
        verb = "has" if len(missing) == 1 else "have"
        return (
            f"{names} {verb} no analysis yet (nobody has voted, or the analysis has not run "
            "since the first votes), so there are no figures to compare. The statements are "
            "matched below; the figures appear once both rounds have been analysed."
        )

    @property
    def counts(self) -> dict[str, int]:
        """How many matched statements moved each way."""
        out = dict.fromkeys(DIRECTIONS, 0)
        for m in self.matched:
            out[m.direction] += 1
        return out


@dataclass
class CarryOption:
    """An accepted statement of the earlier round, offered to carry forward."""

    statement: Statement
    agree: Cell
    consensus: float | None
    bridging: float | None
    preselected: bool


@dataclass
class CarryForwardPlan:
    """What the 'start the next round' form offers."""

    round: Round
    snapshot: Snapshot | None
    options: list[CarryOption]
    high_bridging: float = HIGH_BRIDGING


# --- lineage -------------------------------------------------------------------------------


def statement_lineage(statement: Statement) -> list[Statement]:
    """Return the statement and the statements it was carried from, newest first."""
    chain = [statement]
    seen = {statement.id}
    current = statement
    while current.carried_from_id is not None and len(chain) < MAX_LINEAGE:
        parent = db.session.get(Statement, current.carried_from_id)
        if parent is None or parent.id in seen:  # deleted, or a (corrupt) cycle
            break
        chain.append(parent)
        seen.add(parent.id)
        current = parent
    return chain


def _load_round(round_id: object) -> Round:
    round_ = find_round(round_id)
    if round_ is None:
        raise NotFound("No such round.")
    return round_


def _accepted(round_: Round) -> list[Statement]:
    return list(
        db.session.scalars(
            select(Statement)
            .where(
                Statement.round_id == round_.id,
                Statement.moderation_state == StatementState.ACCEPTED.value,
            )
            .order_by(Statement.id)
        )
    )


# --- reading snapshot figures ----------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _count(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0


def group_label(group_id: Any, names: dict[int, str]) -> str:
    """Return the facilitator's name for a group, or 'Group A', 'Group B', ... as Pol.is does."""
    if isinstance(group_id, int) and group_id in names:
        return names[group_id]
    if isinstance(group_id, int) and 0 <= group_id < 26:
        return f"Group {chr(ord('A') + group_id)}"
    return f"Group {group_id}"


def _group_names(round_id: int) -> dict[int, str]:
    return dict(
        db.session.execute(
            select(GroupName.group_id, GroupName.name).where(GroupName.round_id == round_id)
        ).all()
    )


def _figures(statement: Statement, result: dict | None, names: dict[int, str]) -> StatementFigures:
    """Read one statement's figures out of a snapshot result, suppressing small cells."""
    if not result:
        return StatementFigures(statement, Cell(None), None, None, [], analysed=False)
    key = str(statement.id)
    stats = (result.get("statement_stats") or {}).get(key) or {}
    seen = _count(stats.get("seen"))
    agree = cell(_count(stats.get("agree")), seen)
    small = is_small(seen)
    consensus = None if small else _number((result.get("group_informed_consensus") or {}).get(key))
    bridging = None if small else _number((result.get("bridging") or {}).get(key))
    groups = []
    for group in result.get("groups") or []:
        if not isinstance(group, dict):
            continue
        size = _count(group.get("n_members"))
        votes = (group.get("votes") or {}).get(key) or {}
        group_seen = _count(votes.get("seen"))
        groups.append(
            GroupShare(
                group_id=group.get("id"),
                label=group_label(group.get("id"), names),
                members=None if is_small(size) else size,
                agree=cell(_count(votes.get("agree")), group_seen),
            )
        )
    return StatementFigures(statement, agree, consensus, bridging, groups)


def _delta(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    # Rounded so that a move of exactly the threshold is not lost to floating point.
    return round(b - a, 6)


def classify(bridging_delta: float | None, threshold: float = CHANGE_THRESHOLD) -> str:
    """Name the direction of a move in bridging score: towards, away from, or little change."""
    if bridging_delta is None:
        return UNKNOWN
    if bridging_delta >= threshold:
        return TOWARDS
    if bridging_delta <= -threshold:
        return AWAY
    return LITTLE


# --- carrying forward -----------------------------------------------------------------------


def carry_forward_options(actor: User | None, round_id: int) -> CarryForwardPlan:
    """Return a round's accepted statements with their latest figures to choose from."""
    require_facilitator(actor)
    round_ = _load_round(round_id)
    snapshot = latest_snapshot(round_.id)
    result = snapshot.result if snapshot is not None else None
    names = _group_names(round_.id)
    options = []
    for statement in _accepted(round_):
        figures = _figures(statement, result, names)
        options.append(
            CarryOption(
                statement=statement,
                agree=figures.agree,
                consensus=figures.consensus,
                bridging=figures.bridging,
                preselected=figures.bridging is not None and figures.bridging >= HIGH_BRIDGING,
            )
        )
    return CarryForwardPlan(round=round_, snapshot=snapshot, options=options)


def _statement_ids(values: Iterable[object]) -> list[int]:
    ids: list[int] = []
    for value in values:
        if not is_valid_id(value):
            raise ValidationError("Unknown statement.")
        if value not in ids:
            ids.append(value)
    return ids


def carry_forward(
    actor: User | None,
    from_round_id: int,
    statement_ids: Iterable[int],
    *,
    question: str,
    context: str = "",
    **settings: Any,
) -> Round:
    """Create a draft round continuing an earlier one with the chosen statements carried."""
    user = require_facilitator(actor)
    source = _load_round(from_round_id)
    unknown = set(settings) - set(OVERRIDABLE)
    if unknown:
        raise ValidationError(f"Unknown setting: {', '.join(sorted(unknown))}.")
    ids = _statement_ids(statement_ids if statement_ids is not None else ())

    # Validate everything before writing anything (the same checks as create_round).
    inherited: dict[str, Any] = {
        name: getattr(source, name) for name in COPIED_SETTINGS if name != "organisation_ids"
    }
    inherited["organisation_ids"] = sorted(o.id for o in source.organisations)
    inherited.update({"opens_at": None, "closes_at": None})
    inherited.update(settings)
    clean = _clean_settings({"question": question, "context": context, **inherited})
    _check_times(clean["opens_at"], clean["closes_at"])

    by_id = {s.id: s for s in _accepted(source)}
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise ValidationError(
            "Only accepted statements of this round can be carried forward "
            f"(not statement {', '.join(str(i) for i in missing[:5])})."
        )
    chosen = [by_id[i] for i in ids]
    too_long = [s for s in chosen if len(s.text) > clean["statement_max_length"]]
    if too_long:
        raise ValidationError(
            f"{len(too_long)} of the chosen statements are longer than the new round's limit "
            f"of {clean['statement_max_length']} characters; raise the limit or leave them out."
        )

    org_ids = clean.pop("organisation_ids")
    now = utcnow()
    try:
        round_ = Round(
            state=RoundState.DRAFT.value,
            created_by_id=user.id,
            previous_round_id=source.id,
            **clean,
        )
        round_.organisations = _organisations(org_ids)
        db.session.add(round_)
        db.session.flush()
        for original in chosen:
            db.session.add(
                Statement(
                    round_id=round_.id,
                    text=original.text,
                    normalised_text=original.normalised_text or normalise_text(original.text),
                    # Carried by the facilitator; the author is found through the lineage.
                    author_id=None,
                    origin=StatementOrigin.CARRIED.value,
                    moderation_state=StatementState.ACCEPTED.value,
                    moderated_by_id=user.id,
                    moderated_at=now,
                    is_meta=original.is_meta,
                    carried_from_id=original.id,
                )
            )
        audit.record(
            user,
            "round.carry_forward",
            round_id=round_.id,
            target_type="round",
            target_id=round_.id,
            from_round_id=source.id,
            question=round_.question,
            carried=len(chosen),
            offered=len(by_id),
            statement_ids=[s.id for s in chosen],
        )
        db.session.commit()
    except Exception:
        db.session.rollback()
        raise
    return round_


# --- comparing -------------------------------------------------------------------------------


def _compared_statements(round_: Round) -> list[Statement]:
    """The statements a comparison covers: accepted, not meta, not hidden from the report."""
    return [s for s in _accepted(round_) if not s.is_meta and not s.hidden_in_report]


def _match(
    statements_a: list[Statement], statements_b: list[Statement]
) -> tuple[list[tuple[Statement, Statement, str]], list[Statement], list[Statement]]:
    """Pair statements of A and B: by lineage (shared ancestry) first, then by normalised text."""
    # Each id on an A statement's lineage (itself included) points back at that A statement.
    a_by_lineage: dict[int, Statement] = {}
    for statement in statements_a:
        for ancestor in statement_lineage(statement):
            a_by_lineage.setdefault(ancestor.id, statement)
    pairs: list[tuple[Statement, Statement, str]] = []
    used_a: set[int] = set()
    unmatched_b: list[Statement] = []
    for statement in statements_b:
        partner = None
        # Nearest ancestor first: B carried from A, A carried from B, or a common ancestor.
        for ancestor in statement_lineage(statement):
            candidate = a_by_lineage.get(ancestor.id)
            if candidate is not None and candidate.id not in used_a:
                partner = candidate
                break
        if partner is None:
            unmatched_b.append(statement)
        else:
            used_a.add(partner.id)
            pairs.append((partner, statement, "lineage"))
    a_by_text: dict[str, Statement] = {}
    for statement in statements_a:
        if statement.id not in used_a:
            a_by_text.setdefault(normalise_text(statement.text), statement)
    only_b = []
    for statement in unmatched_b:
        partner = a_by_text.pop(normalise_text(statement.text), None)
        if partner is None:
            only_b.append(statement)
        else:
            used_a.add(partner.id)
            pairs.append((partner, statement, "text"))
    only_a = [s for s in statements_a if s.id not in used_a]
    return pairs, only_a, only_b


def compare_rounds(actor: User | None, round_a_id: int, round_b_id: int) -> Comparison:
    """Compare two rounds statement by statement from their latest snapshots (report readers)."""
    require_report_reader(actor)
    round_a = _load_round(round_a_id)
    round_b = _load_round(round_b_id)
    if round_a.id == round_b.id:
        raise ValidationError("Choose two different rounds to compare.")
    snapshot_a = latest_snapshot(round_a.id)
    snapshot_b = latest_snapshot(round_b.id)
    result_a = snapshot_a.result if snapshot_a is not None else None
    result_b = snapshot_b.result if snapshot_b is not None else None
    names_a, names_b = _group_names(round_a.id), _group_names(round_b.id)

    pairs, only_a, only_b = _match(_compared_statements(round_a), _compared_statements(round_b))
    matched = []
    for statement_a, statement_b, how in pairs:
        fa = _figures(statement_a, result_a, names_a)
        fb = _figures(statement_b, result_b, names_b)
        bridging_delta = _delta(fa.bridging, fb.bridging)
        matched.append(
            MatchedStatement(
                a=fa,
                b=fb,
                matched_by=how,
                agree_delta=_delta(fa.agree.share, fb.agree.share),
                consensus_delta=_delta(fa.consensus, fb.consensus),
                bridging_delta=bridging_delta,
                direction=classify(bridging_delta),
            )
        )
    comparison = Comparison(
        round_a=round_a,
        round_b=round_b,
        snapshot_a=snapshot_a,
        snapshot_b=snapshot_b,
        matched=sort_matches(matched, "change"),
        only_a=[_figures(s, result_a, names_a) for s in only_a],
        only_b=[_figures(s, result_b, names_b) for s in only_b],
    )
    return comparison


def sort_matches(matches: list[MatchedStatement], key: str) -> list[MatchedStatement]:
    """Order matched statements: 'change' (largest move first), 'towards', 'away', 'agree',
    'statement' (alphabetical); statements without figures always last."""

    def text(m: MatchedStatement) -> str:
        return normalise_text(m.b.statement.text)

    def with_none_last(value: float | None, descending: bool = True) -> tuple:
        if value is None:
            return (1, 0.0)
        return (0, -value if descending else value)

    if key == "towards":
        return sorted(matches, key=lambda m: (with_none_last(m.bridging_delta), text(m)))
    if key == "away":
        return sorted(matches, key=lambda m: (with_none_last(m.bridging_delta, False), text(m)))
    if key == "agree":
        return sorted(
            matches,
            key=lambda m: (
                with_none_last(abs(m.agree_delta) if m.agree_delta is not None else None),
                text(m),
            ),
        )
    if key == "statement":
        return sorted(matches, key=text)
    return sorted(
        matches,
        key=lambda m: (
            with_none_last(abs(m.bridging_delta) if m.bridging_delta is not None else None),
            text(m),
        ),
    )


def comparable_rounds(actor: User | None) -> list[Round]:
    """Return the rounds that may be compared, newest first (report readers)."""
    require_report_reader(actor)
    return list(
        db.session.scalars(select(Round).order_by(Round.created_at.desc(), Round.id.desc()))
    )


__all__ = [
    "AWAY",
    "CHANGE_THRESHOLD",
    "HIGH_BRIDGING",
    "LITTLE",
    "MIN_CELL",
    "TOWARDS",
    "UNKNOWN",
    "CarryForwardPlan",
    "CarryOption",
    "Comparison",
    "GroupShare",
    "MatchedStatement",
    "StatementFigures",
    "carry_forward",
    "carry_forward_options",
    "classify",
    "comparable_rounds",
    "compare_rounds",
    "group_label",
    "sort_matches",
    "statement_lineage",
]
