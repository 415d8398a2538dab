"""Integrity checks over the stored votes, their history and the statements.

Run after a load test, after a crash and restart, or by an operator (`deliberate
check-integrity`). Read-only; every problem found is reported, none is repaired.

What must hold:
- each vote's round is its statement's round (and so for every vote event);
- each (statement, member) has at most one vote (the unique constraint, checked anyway);
- the history explains the current vote: the events of a (statement, member), in id order,
  start with previous_value NULL, each next previous_value is the value before, no event
  repeats the value it replaces, and the last event's value is the vote's value;
- every vote has history and every history has a vote;
- per statement, the number of votes equals the number of members in its history.
"""

# Raw SQL here only ever interpolates parameter placeholders, never values.
# ruff: noqa: S608

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import text

from ..extensions import db

# At most this many problems of each kind are kept in the report (all are counted).
MAX_EXAMPLES = 20


@dataclass
class IntegrityReport:
    """What the check looked at and what it found."""

    votes: int = 0
    vote_events: int = 0
    statements: int = 0
    problems: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, example: str) -> None:
        self.problems[kind] += 1
        shown = self.examples.setdefault(kind, [])
        if len(shown) < MAX_EXAMPLES:
            shown.append(example)

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "votes": self.votes,
            "vote_events": self.vote_events,
            "statements": self.statements,
            "problems": dict(self.problems),
            "examples": self.examples,
        }

    def summary(self) -> str:
        head = f"{self.votes} votes, {self.vote_events} vote events, {self.statements} statements"
        if self.ok:
            return f"integrity OK: {head}"
        lines = [f"integrity FAILED: {head}"]
        for kind, count in sorted(self.problems.items()):
            lines.append(f"  {kind}: {count} (e.g. {'; '.join(self.examples[kind][:3])})")
        return "\n".join(lines)


def check_integrity(round_id: int | None = None) -> IntegrityReport:
    """Check the votes, vote history and statements of one round (or of all rounds)."""
    report = IntegrityReport()
    where = "" if round_id is None else " WHERE round_id = :round_id"
    params = {} if round_id is None else {"round_id": round_id}
    conn = db.session.connection()

    report.statements = conn.execute(
        text(f"SELECT COUNT(*) FROM statements{where}"), params
    ).scalar_one()
    report.votes = conn.execute(text(f"SELECT COUNT(*) FROM votes{where}"), params).scalar_one()
    report.vote_events = conn.execute(
        text(f"SELECT COUNT(*) FROM vote_events{where}"), params
    ).scalar_one()

    for table in ("votes", "vote_events"):
        scope = "" if round_id is None else " AND v.round_id = :round_id"
        rows = conn.execute(
            text(
                f"SELECT v.id, v.round_id, s.round_id FROM {table} v "
                f"JOIN statements s ON s.id = v.statement_id WHERE v.round_id <> s.round_id{scope}"
            ),
            params,
        )
        for row_id, own, statements_round in rows:
            report.add(
                f"{table} in the wrong round",
                f"{table} {row_id}: round {own}, statement's round {statements_round}",
            )

    duplicates = conn.execute(
        text(
            f"SELECT statement_id, user_id, COUNT(*) FROM votes{where} "
            "GROUP BY statement_id, user_id HAVING COUNT(*) > 1"
        ),
        params,
    )
    for statement_id, user_id, count in duplicates:
        report.add("duplicate votes", f"statement {statement_id} member {user_id}: {count} rows")

    current = {
        (statement_id, user_id): value
        for statement_id, user_id, value in conn.execute(
            text(f"SELECT statement_id, user_id, value FROM votes{where}"), params
        )
    }
    members_in_history: Counter = Counter()
    seen: set[tuple[int, int]] = set()
    key = None
    last_value = None
    broken = False

    def finish(key, last_value, broken) -> None:
        if key is None:
            return
        members_in_history[key[0]] += 1
        seen.add(key)
        if key not in current:
            report.add("history without a vote", f"statement {key[0]} member {key[1]}")
        elif not broken and current[key] != last_value:
            report.add(
                "vote differs from its last event",
                f"statement {key[0]} member {key[1]}: vote {current[key]}, event {last_value}",
            )

    events = conn.execute(
        text(
            f"SELECT id, statement_id, user_id, value, previous_value FROM vote_events{where} "
            "ORDER BY statement_id, user_id, id"
        ),
        params,
    )
    for event_id, statement_id, user_id, value, previous in events:
        if (statement_id, user_id) != key:
            finish(key, last_value, broken)
            key, last_value, broken = (statement_id, user_id), None, False
        if previous != last_value:
            report.add(
                "history chain broken",
                f"event {event_id}: previous_value {previous}, value before {last_value}",
            )
            broken = True
        elif value == previous:
            report.add("event repeats the value", f"event {event_id}: {value} -> {value}")
        last_value = value
    finish(key, last_value, broken)

    for statement_id, count in Counter(statement_id for statement_id, _ in current).items():
        in_history = members_in_history.get(statement_id, 0)
        if count != in_history:
            report.add(
                "statement vote count differs from its history",
                f"statement {statement_id}: {count} votes, {in_history} members in history",
            )
    for statement_id in members_in_history.keys() - {s for s, _ in current}:
        report.add(
            "statement vote count differs from its history",
            f"statement {statement_id}: 0 votes, {members_in_history[statement_id]} in history",
        )
    missing = [k for k in current if k not in seen]
    for statement_id, user_id in missing:
        report.add("vote without history", f"statement {statement_id} member {user_id}")
    return report
