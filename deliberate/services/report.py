"""The round report: what unites and what divides, read from the latest analysis snapshot.

`build_report` is a pure view model over the newest snapshot plus names from the database (the
analysis never runs here). Who may read it: facilitators, leadership and admins always; members
only as the round's results setting allows (`can_see_results`).

Privacy: every share goes through `privacy.cell`, so no split of votes among fewer than
MIN_CELL (3) people is shown; a group or organisation with fewer than 3 members shows its size
as "fewer than 3" and no shares. Members never see anyone's individual votes: the only
individual figure in a member's report is their own position (`member_position`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select

from ..extensions import db
from ..models import (
    MAX_ID,
    GroupName,
    Organisation,
    ResultsVisibility,
    Role,
    Round,
    RoundState,
    Statement,
    User,
    Vote,
)
from . import audit
from .authz import require_facilitator, require_round_viewer, require_user
from .errors import NotAllowed, NotFound, ValidationError
from .opinion_map import MapGeometry, group_letter, map_geometry, text_alternative
from .privacy import MIN_CELL, cell, is_small
from .rounds import find_round, is_valid_id
from .snapshots import latest_snapshot
from .statements import visible_statement_filter

SORTS = {
    "consensus": "group-informed consensus",
    "bridging": "bridging",
    "divisiveness": "divisiveness",
    "votes": "votes",
}
GROUP_NAME_MAX = 80
# Pol.is flags statements whose pass rate is above 30% as uncertain.
UNCERTAIN_PASS_RATE = 0.30
# Warnings: fewer participants than this is "few" (Pol.is tops its in-conversation set up to 15).
FEW_PARTICIPANTS = 15
# Mean participant stability (share of resamples keeping a person in their group) below this
# means the groups are not stable.
UNSTABLE_GROUPS = 0.8
# Mean votes per statement below this is "thin data".
THIN_VOTES_PER_STATEMENT = 10
# Members see results after voting on at least min(this, statements they can vote on).
MEMBER_VOTES_NEEDED = 7
NOT_ANALYSED = "The analysis has not run yet"

# ------------------------------------------------------------------------------- view model


@dataclass(frozen=True)
class Shares:
    """Agree / disagree / pass counts among `seen` people; suppressed below MIN_CELL people."""

    agree: int | None
    disagree: int | None
    passes: int | None
    seen: int | None

    @classmethod
    def of(cls, counts: dict | None) -> Shares:
        counts = counts or {}
        seen = int(counts.get("seen") or 0)
        if is_small(seen):
            return cls(None, None, None, None)
        return cls(
            cell(int(counts.get("agree") or 0), seen).value,
            cell(int(counts.get("disagree") or 0), seen).value,
            cell(int(counts.get("pass") or 0), seen).value,
            seen,
        )

    @property
    def suppressed(self) -> bool:
        return self.seen is None

    def _pct(self, n: int | None) -> int | None:
        if n is None or not self.seen:
            return None
        return round(100 * n / self.seen)

    @property
    def agree_pct(self) -> int | None:
        return self._pct(self.agree)

    @property
    def disagree_pct(self) -> int | None:
        return self._pct(self.disagree)

    @property
    def pass_pct(self) -> int | None:
        return self._pct(self.passes)

    @property
    def pass_rate(self) -> float | None:
        return None if self.passes is None or not self.seen else self.passes / self.seen


@dataclass
class GroupRef:
    id: int
    index: int
    letter: str
    label: str
    custom_name: str | None
    size: int
    colour_index: int
    shape: str

    @property
    def small(self) -> bool:
        return is_small(self.size)

    @property
    def size_text(self) -> str:
        return "fewer than 3" if self.small else str(self.size)


@dataclass
class StatementFigures:
    id: int
    text: str
    overall: Shares
    by_group: list[tuple[GroupRef, Shares]]
    votes: int
    gac: float | None
    bridging: float | None
    divisiveness: float | None
    hidden: bool = False


@dataclass
class ConsensusItem:
    statement: StatementFigures
    direction: str  # "agree" or "disagree"
    overall_pct: int | None
    min_group_pct: int | None  # the lowest share (agree or disagree) in any group shown
    gac_interval: tuple[float, float] | None
    bridging_interval: tuple[float, float] | None
    agree_interval: tuple[float, float] | None
    consensus_frequency: float | None
    robust: bool | None  # None: no stability data

    @property
    def in_every_group(self) -> bool:
        """Whether every group shown (3 or more people) has a majority the same way."""
        return self.min_group_pct is None or self.min_group_pct > 50

    @property
    def strength(self) -> str:
        if self.robust is None:
            return "stability not checked"
        return "robust" if self.robust else "tentative"

    @property
    def wording(self) -> str:
        verb = "agreed" if self.direction == "agree" else "disagreed"
        parts = []
        if self.overall_pct is not None:
            parts.append(f"{verb} by {self.overall_pct}% overall")
        else:
            parts.append(f"{verb} overall (fewer than 3 votes to show a share)")
        if self.min_group_pct is not None:
            parts.append(f"by at least {self.min_group_pct}% in every group")
        return ", ".join(parts) + f"; {self.strength}"

    @property
    def in_ten(self) -> str | None:
        """The share as "7 in 10", for people."""
        if self.overall_pct is None:
            return None
        return f"{round(self.overall_pct / 10)} in 10"


@dataclass
class RepresentativeItem:
    statement: StatementFigures
    direction: str
    group_pct: int | None  # share of the group agreeing (or disagreeing)
    others_pct: int | None  # share of everyone else


@dataclass
class GroupSummary:
    group: GroupRef
    representative: list[RepresentativeItem]
    stability: float | None  # share of resamples in which the group re-formed


@dataclass
class OrganisationCoverage:
    id: int | None
    name: str
    members: int  # active members of the organisation (the audience)
    took_part: int | None  # None when fewer than MIN_CELL took part (and at least one did)

    @property
    def took_part_text(self) -> str:
        if self.took_part is None:
            return "fewer than 3"
        return str(self.took_part)


@dataclass
class OneVoiceRow:
    statement: StatementFigures
    per_person_pct: int | None
    one_voice_pct: int | None
    voices: int | None


@dataclass
class Warning:
    title: str
    text: str


@dataclass
class Headline:
    participants: int
    audience: int
    organisations_taking_part: int
    organisations_in_audience: int
    votes: int
    statements: int
    groups: int
    analysed_at: datetime | None


@dataclass
class Report:
    round: Round
    analysed: bool
    message: str | None = None
    headline: Headline | None = None
    groups: list[GroupRef] = field(default_factory=list)
    consensus: list[ConsensusItem] = field(default_factory=list)
    majority_only: list[ConsensusItem] = field(default_factory=list)
    divisive: list[StatementFigures] = field(default_factory=list)
    group_summaries: list[GroupSummary] = field(default_factory=list)
    uncertain: list[StatementFigures] = field(default_factory=list)
    statements: list[StatementFigures] = field(default_factory=list)
    sort: str = "consensus"
    coverage: list[OrganisationCoverage] = field(default_factory=list)
    one_voice: list[OneVoiceRow] = field(default_factory=list)
    one_voice_consensus: list[StatementFigures] = field(default_factory=list)
    one_voice_method: str | None = None
    stability: dict | None = None
    mean_participant_stability: float | None = None
    warnings: list[Warning] = field(default_factory=list)
    hidden_count: int = 0
    hidden_statements: list[Statement] = field(default_factory=list)
    can_edit: bool = False
    is_member_view: bool = False
    map: MapGeometry | None = None
    map_text: list[str] = field(default_factory=list)
    you: MemberPosition | None = None


@dataclass
class MemberPosition:
    on_map: bool
    group: GroupRef | None
    point: tuple[float, float] | None  # in the map's viewBox
    votes: int
    message: str


# ------------------------------------------------------------------------------- authorisation


def _load_round(actor: User | None, round_id: int) -> tuple[User, Round]:
    user = require_user(actor)
    round_ = find_round(round_id)
    require_round_viewer(user, round_)
    return user, round_


def _member_votes(user: User, round_: Round) -> tuple[int, int]:
    """Return (statements the member voted on, statements they can vote on) in the round."""
    voted = db.session.scalar(
        select(func.count())
        .select_from(Vote)
        .where(Vote.round_id == round_.id, Vote.user_id == user.id)
    )
    offered = db.session.scalar(
        select(func.count())
        .select_from(Statement)
        .where(
            visible_statement_filter(round_),
            (Statement.author_id.is_(None)) | (Statement.author_id != user.id),
        )
    )
    return int(voted or 0), int(offered or 0)


def results_refusal(user: User, round_: Round) -> str | None:
    """Return why the user may not see the round's results, or None when they may."""
    if user.can_read_reports:
        return None
    setting = round_.results_visibility
    if setting == ResultsVisibility.AFTER_CLOSE:
        if round_.state in (RoundState.CLOSED, RoundState.PUBLISHED):
            return None
        return "The results of this round are shared with members once the round has closed."
    if setting == ResultsVisibility.AFTER_VOTING:
        voted, offered = _member_votes(user, round_)
        needed = max(1, min(MEMBER_VOTES_NEEDED, offered))
        if voted >= needed:
            return None
        return (
            f"The results of this round are shared with members after they have voted on "
            f"{needed} statement{'s' if needed != 1 else ''}; you have voted on {voted} so far."
        )
    return "The facilitators do not share the results of this round with members."


def can_see_results(actor: User | None, round_: Round | None) -> bool:
    """Whether the actor may read the round's report now (for showing a link)."""
    if actor is None or round_ is None or not getattr(actor, "is_authenticated", False):
        return False
    try:
        require_round_viewer(actor, round_)
    except (NotAllowed, NotFound):
        return False
    return results_refusal(actor, round_) is None


def require_results_reader(actor: User | None, round_id: int) -> tuple[User, Round]:
    """Return the user and round if the user may read the round's results, else NotAllowed."""
    user, round_ = _load_round(actor, round_id)
    refusal = results_refusal(user, round_)
    if refusal is not None:
        raise NotAllowed(refusal)
    return user, round_


# ------------------------------------------------------------------------------- helpers


def _f(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _interval(value: Any) -> tuple[float, float] | None:
    if (
        isinstance(value, list | tuple)
        and len(value) == 2
        and all(isinstance(v, int | float) for v in value)
    ):
        return (float(value[0]), float(value[1]))
    return None


def _pct(n: float | None, base: float | None) -> int | None:
    if n is None or not base:
        return None
    return round(100 * n / base)


def _group_refs(result: dict, names: dict[int, str]) -> list[GroupRef]:
    from .opinion_map import SHAPES

    refs = []
    groups = sorted(result.get("groups") or [], key=lambda g: g.get("id", 0))
    for i, g in enumerate(groups):
        gid = int(g.get("id", i))
        letter = group_letter(i)
        custom = names.get(gid)
        refs.append(
            GroupRef(
                id=gid,
                index=i,
                letter=letter,
                label=custom or f"Group {letter}",
                custom_name=custom,
                size=int(g.get("n_members") or len(g.get("members") or [])),
                colour_index=i % 6,
                shape=SHAPES[i % len(SHAPES)],
            )
        )
    return refs


def _group_names(round_id: int) -> dict[int, str]:
    return {
        gn.group_id: gn.name
        for gn in db.session.scalars(select(GroupName).where(GroupName.round_id == round_id))
    }


def _figures(
    sid: str, statement: Statement, result: dict, refs: list[GroupRef], groups_by_id: dict
) -> StatementFigures:
    stats = (result.get("statement_stats") or {}).get(sid) or {}
    by_group = []
    for ref in refs:
        g = groups_by_id.get(ref.id) or {}
        counts = (g.get("votes") or {}).get(sid)
        shares = Shares(None, None, None, None) if ref.small else Shares.of(counts)
        by_group.append((ref, shares))
    return StatementFigures(
        id=statement.id,
        text=statement.text,
        overall=Shares.of(stats),
        by_group=by_group,
        votes=int(stats.get("seen") or 0),
        gac=_f((result.get("group_informed_consensus") or {}).get(sid)),
        bridging=_f((result.get("bridging") or {}).get(sid)),
        divisiveness=_f((result.get("divisiveness") or {}).get(sid)),
        hidden=bool(statement.hidden_in_report),
    )


def _sort_key(sort: str):
    def key(f: StatementFigures):
        value = {
            "consensus": f.gac,
            "bridging": f.bridging,
            "divisiveness": f.divisiveness,
            "votes": f.votes,
        }[sort]
        return (value is None, -(value or 0), f.id)

    return key


def _audience(round_: Round) -> tuple[int, list[Organisation]]:
    """Return (active members in the round's audience, the audience's organisations)."""
    if round_.organisations:
        orgs = sorted(round_.organisations, key=lambda o: o.name.casefold())
        members = db.session.scalar(
            select(func.count())
            .select_from(User)
            .where(
                User.active.is_(True),
                User.role == Role.MEMBER.value,
                User.organisation_id.in_([o.id for o in orgs]),
            )
        )
    else:
        orgs = list(db.session.scalars(select(Organisation).order_by(Organisation.name)))
        members = db.session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.active.is_(True), User.role == Role.MEMBER.value)
        )
    return int(members or 0), orgs


# A statement divides the groups when their agree shares are at least this far apart.
DIVISIVE_MIN_SPREAD = 0.3


def splits_groups(figures: StatementFigures) -> bool:
    """Whether the groups shown (3 or more people each) differ by DIVISIVE_MIN_SPREAD or more
    in the share agreeing: the analysis ranks every statement; the report lists real splits."""
    shares = [s.agree / s.seen for _ref, s in figures.by_group if not s.suppressed and s.seen]
    return len(shares) >= 2 and max(shares) - min(shares) >= DIVISIVE_MIN_SPREAD


def _consensus_item(
    figures: StatementFigures, direction: str, stability: dict | None
) -> ConsensusItem:
    sid = str(figures.id)
    overall_n = figures.overall.agree if direction == "agree" else figures.overall.disagree
    overall_pct = figures.overall._pct(overall_n)
    group_pcts = []
    for _ref, shares in figures.by_group:
        if shares.suppressed:
            continue
        n = shares.agree if direction == "agree" else shares.disagree
        group_pcts.append(shares._pct(n))
    group_pcts = [p for p in group_pcts if p is not None]
    st = ((stability or {}).get("statements") or {}).get(sid) or {}
    agree_iv = _interval(st.get("agree_share"))
    robust = None
    if agree_iv is not None:
        # Robust: in every resample's 90% interval the share agreeing stays on the side of
        # one half that the consensus claims (above it for agreement, below for disagreement).
        robust = agree_iv[0] > 0.5 if direction == "agree" else agree_iv[1] < 0.5
    return ConsensusItem(
        statement=figures,
        direction=direction,
        overall_pct=overall_pct,
        min_group_pct=min(group_pcts) if group_pcts else None,
        gac_interval=_interval(st.get("gac")),
        bridging_interval=_interval(st.get("bridging")),
        agree_interval=agree_iv,
        consensus_frequency=_f(st.get("consensus_frequency")),
        robust=robust,
    )


# ------------------------------------------------------------------------------- public


def build_report(
    actor: User | None, round_id: int, *, sort: str = "consensus", with_map: bool = True
) -> Report:
    """Build the report of a round from its latest snapshot (members: as the round allows)."""
    if sort not in SORTS:
        raise ValidationError(f"Unknown sort {str(sort)[:40]!r}: choose one of {', '.join(SORTS)}.")
    user, round_ = require_results_reader(actor, round_id)
    report = Report(
        round=round_,
        analysed=False,
        sort=sort,
        can_edit=user.is_facilitator,
        is_member_view=not user.can_read_reports,
    )
    snapshot = latest_snapshot(round_.id)
    if snapshot is None or not snapshot.result:
        report.message = NOT_ANALYSED
        return report
    result = snapshot.result
    report.analysed = True
    names = _group_names(round_.id)
    refs = _group_refs(result, names)
    report.groups = refs
    groups_by_id = {int(g.get("id", i)): g for i, g in enumerate(result.get("groups") or [])}
    statements = {
        s.id: s
        for s in db.session.scalars(select(Statement).where(Statement.round_id == round_.id))
    }
    stats = result.get("statement_stats") or {}

    figures: dict[int, StatementFigures] = {}
    for sid, st in stats.items():
        try:
            key = int(sid)
        except (TypeError, ValueError):
            continue
        statement = statements.get(key)
        if statement is None or st.get("moderated_out"):
            continue
        figures[key] = _figures(sid, statement, result, refs, groups_by_id)
    hidden = sorted((s for s in statements.values() if s.hidden_in_report), key=lambda s: s.id)
    report.hidden_count = len(hidden)
    report.hidden_statements = hidden if report.can_edit else []
    shown = {k: f for k, f in figures.items() if not f.hidden}

    def pick(ids) -> list[StatementFigures]:
        out = []
        for sid in ids or []:
            try:
                f = shown.get(int(sid))
            except (TypeError, ValueError):
                f = None
            if f is not None:
                out.append(f)
        return out

    stability = result.get("stability")
    consensus = result.get("consensus") or {}
    candidates = [
        _consensus_item(f, direction, stability)
        for direction in ("agree", "disagree")
        for f in pick(consensus.get(direction))
    ]
    # Pol.is's consensus lists ask only for a significant majority overall; the report's
    # "what unites" asks for a majority in the same direction in every group shown as well.
    # The rest are listed apart, as agreed overall but not in every group.
    report.consensus = [c for c in candidates if c.in_every_group]
    report.majority_only = [c for c in candidates if not c.in_every_group]
    report.divisive = [f for f in pick(result.get("divisive")) if splits_groups(f)]

    for ref in refs:
        g = groups_by_id.get(ref.id) or {}
        reps = []
        if not ref.small:
            for entry in g.get("representative") or []:
                f = pick([entry.get("statement")])
                if not f:
                    continue
                f = f[0]
                direction = entry.get("direction") or "agree"
                shares = next((s for r, s in f.by_group if r.id == ref.id), None)
                group_n = None
                if shares is not None and not shares.suppressed:
                    group_n = shares.agree if direction == "agree" else shares.disagree
                others = _others_share(f, ref, direction, stats.get(str(f.id)) or {}, g)
                reps.append(
                    RepresentativeItem(
                        statement=f,
                        direction=direction,
                        group_pct=shares._pct(group_n) if shares is not None else None,
                        others_pct=others,
                    )
                )
        group_stab = ((stability or {}).get("groups") or {}).get(str(ref.id))
        report.group_summaries.append(GroupSummary(ref, reps, _f(group_stab)))

    report.uncertain = [
        f
        for f in sorted(shown.values(), key=lambda f: (-(f.overall.pass_rate or 0), f.id))
        if f.overall.pass_rate is not None and f.overall.pass_rate > UNCERTAIN_PASS_RATE
    ]
    report.statements = sorted(shown.values(), key=_sort_key(sort))

    # --- headline and coverage
    audience, orgs = _audience(round_)
    org_data = result.get("organisations") or {}
    per_org = org_data.get("organisations") or {}
    took_part = {str(k): int((v or {}).get("members") or 0) for k, v in per_org.items()}
    report.coverage = [
        OrganisationCoverage(
            id=o.id,
            name=o.name,
            members=_org_members(o.id),
            took_part=(
                None if 0 < took_part.get(str(o.id), 0) < MIN_CELL else took_part.get(str(o.id), 0)
            ),
        )
        for o in orgs
    ]
    participants = int(result.get("participants") or 0)
    report.headline = Headline(
        participants=participants,
        audience=audience,
        organisations_taking_part=sum(1 for o in orgs if took_part.get(str(o.id), 0) > 0),
        organisations_in_audience=len(orgs),
        votes=int(result.get("n_votes") or snapshot.n_votes or 0),
        statements=len(shown),
        groups=len(refs),
        analysed_at=snapshot.created_at,
    )

    # --- one organisation, one voice
    if org_data:
        report.one_voice_method = org_data.get("method")
        one_voice = org_data.get("one_voice") or {}
        for f in report.statements:
            ov = one_voice.get(str(f.id)) or {}
            voices = int(ov.get("voices") or 0)
            small = is_small(voices)
            report.one_voice.append(
                OneVoiceRow(
                    statement=f,
                    per_person_pct=f.overall.agree_pct,
                    one_voice_pct=None if small else _pct(_f(ov.get("agree")), voices),
                    voices=None if small else voices,
                )
            )
        report.one_voice_consensus = pick((org_data.get("consensus") or {}).get("agree"))

    # --- method, stability and warnings
    report.stability = stability
    participants_stab = list(((stability or {}).get("participants") or {}).values())
    if participants_stab:
        report.mean_participant_stability = sum(participants_stab) / len(participants_stab)
    report.warnings = _warnings(report, participants, len(figures))

    if with_map:
        you = user.id if report.is_member_view else None
        report.map = map_geometry(result, you=you, labels={r.id: r.label for r in refs})
        report.map_text = text_alternative(report.map)
        if report.is_member_view:
            report.you = _position(user, result, refs, report.map)
    return report


def _org_members(org_id: int) -> int:
    return int(
        db.session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.organisation_id == org_id, User.active.is_(True))
        )
        or 0
    )


def _others_share(
    f: StatementFigures, ref: GroupRef, direction: str, stats: dict, group: dict
) -> int | None:
    """Share of everyone outside the group who agreed (or disagreed), when enough people."""
    counts = (group.get("votes") or {}).get(str(f.id)) or {}
    seen = int(stats.get("seen") or 0) - int(counts.get("seen") or 0)
    key = "agree" if direction == "agree" else "disagree"
    n = int(stats.get(key) or 0) - int(counts.get(key) or 0)
    if is_small(seen):
        return None
    return _pct(cell(n, seen).value, seen)


def _warnings(report: Report, participants: int, n_statements: int) -> list[Warning]:
    warnings = []
    if participants < FEW_PARTICIPANTS:
        warnings.append(
            Warning(
                "Few participants",
                f"Only {participants} people have voted. With fewer than {FEW_PARTICIPANTS}, "
                "groups and consensus can change a lot as more people vote.",
            )
        )
    mps = report.mean_participant_stability
    if mps is not None and mps < UNSTABLE_GROUPS:
        warnings.append(
            Warning(
                "Groups are not stable",
                f"When the analysis is repeated on resampled votes, people stay in the same "
                f"group only {round(mps * 100)}% of the time on average (below "
                f"{round(UNSTABLE_GROUPS * 100)}%). Treat the groups as rough.",
            )
        )
    votes = report.headline.votes if report.headline else 0
    if n_statements and votes / n_statements < THIN_VOTES_PER_STATEMENT:
        warnings.append(
            Warning(
                "Thin data",
                f"On average each statement has {votes / n_statements:.1f} votes (fewer than "
                f"{THIN_VOTES_PER_STATEMENT}). Shares are uncertain.",
            )
        )
    return warnings


def _position(
    user: User, result: dict, refs: list[GroupRef], geometry: MapGeometry | None
) -> MemberPosition:
    votes = int((result.get("user_vote_counts") or {}).get(str(user.id)) or 0)
    group = None
    for ref, g in zip(
        refs, sorted(result.get("groups") or [], key=lambda g: g.get("id", 0)), strict=False
    ):
        if user.id in (g.get("members") or []) or str(user.id) in map(str, g.get("members") or []):
            group = ref
            break
    on_map = geometry is not None and geometry.you is not None
    if group is not None:
        message = f"You are in {group.label}: people in it tend to vote like you."
    elif on_map:
        message = "You are on the map, but not in any group yet."
    elif votes:
        message = (
            "You are not on the map yet: the analysis places people once they have voted on "
            "enough statements, and it may not have run since your latest votes."
        )
    else:
        message = "You are not on the map yet: vote on some statements first."
    return MemberPosition(
        on_map=on_map,
        group=group,
        point=geometry.you if geometry is not None else None,
        votes=votes,
        message=message,
    )


def member_position(actor: User | None, round_id: int) -> MemberPosition:
    """Return the actor's own group and point on the map (never anyone else's votes)."""
    user, round_ = require_results_reader(actor, round_id)
    snapshot = latest_snapshot(round_.id)
    if snapshot is None or not snapshot.result:
        return MemberPosition(False, None, None, 0, NOT_ANALYSED + ".")
    result = snapshot.result
    refs = _group_refs(result, _group_names(round_.id))
    geometry = map_geometry(result, you=user.id, labels={r.id: r.label for r in refs})
    return _position(user, result, refs, geometry)


def map_for(actor: User | None, round_id: int) -> tuple[Round, MapGeometry]:
    """Return the round and its opinion map geometry (members: with "you are here")."""
    user, round_ = require_results_reader(actor, round_id)
    snapshot = latest_snapshot(round_.id)
    result = snapshot.result if snapshot is not None else {}
    refs = _group_refs(result or {}, _group_names(round_.id))
    you = None if user.can_read_reports else user.id
    return round_, map_geometry(result, you=you, labels={r.id: r.label for r in refs})


def set_group_name(actor: User | None, round_id: int, group_id: int, name: str) -> GroupName | None:
    """Name an opinion group of the round (an empty name goes back to "Group A"); audit-logged."""
    user = require_facilitator(actor)
    round_ = find_round(round_id)
    if round_ is None:
        raise NotFound("No such round.")
    if type(group_id) is not int or not 0 <= group_id <= MAX_ID:
        raise NotFound("No such group.")
    clean = " ".join(str(name or "").split())
    if len(clean) > GROUP_NAME_MAX:
        raise ValidationError(f"A group name can be at most {GROUP_NAME_MAX} characters.")
    snapshot = latest_snapshot(round_.id)
    known = (
        {int(g.get("id")) for g in ((snapshot.result or {}).get("groups") or [])}
        if snapshot
        else set()
    )
    existing = db.session.scalar(
        select(GroupName).where(GroupName.round_id == round_.id, GroupName.group_id == group_id)
    )
    if group_id not in known and existing is None:
        raise NotFound("No such group in the latest analysis of this round.")
    previous = existing.name if existing is not None else None
    if clean:
        if existing is None:
            existing = GroupName(round_id=round_.id, group_id=group_id, name=clean)
            db.session.add(existing)
        existing.name = clean
        existing.updated_by_id = user.id
    elif existing is not None:
        db.session.delete(existing)
        existing = None
    audit.record(
        user,
        "report.group_name",
        round_id=round_.id,
        target_type="group",
        target_id=group_id,
        previous=previous,
        name=clean or None,
    )
    db.session.commit()
    return existing


def set_statement_hidden(
    actor: User | None, statement_id: int, hidden: bool, *, round_id: int | None = None
) -> Statement:
    """Hide a statement from the report (or show it again); audit-logged. Votes still count."""
    user = require_facilitator(actor)
    statement = db.session.get(Statement, statement_id) if is_valid_id(statement_id) else None
    if statement is None or (round_id is not None and statement.round_id != round_id):
        raise NotFound("No such statement.")
    hidden = bool(hidden)
    if statement.hidden_in_report != hidden:
        statement.hidden_in_report = hidden
        audit.record(
            user,
            "report.hide_statement" if hidden else "report.show_statement",
            round_id=statement.round_id,
            target_type="statement",
            target_id=statement.id,
        )
    db.session.commit()
    return statement
