"""CLI commands: rounds (create, open, close) and the scheduler tick.

Commands act as a facilitator or admin account (`--by EMAIL`; by default the oldest active
admin), so the audit log records who did what, as it does for the web pages.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from ..extensions import db
from ..models import Role, User
from ..services import rounds as rounds_service
from ..services.errors import DomainError

BY_OPTION = click.option(
    "--by",
    "by_email",
    metavar="EMAIL",
    default=None,
    help="Act as this facilitator or admin (default: the oldest active admin).",
)


def _acting_user(email: str | None) -> User:
    if email:
        user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
        if user is None:
            raise click.ClickException(f"No account with the email {email}.")
        if not user.is_facilitator or not user.is_active:
            raise click.ClickException(f"{email} is not an active facilitator or admin.")
        return user
    user = db.session.scalar(
        select(User)
        .where(User.role == Role.ADMIN.value, User.active.is_(True))
        .order_by(User.id)
        .limit(1)
    )
    if user is None:
        raise click.ClickException(
            "There is no active admin to act as; pass --by EMAIL of a facilitator."
        )
    return user


def _parse_time(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter("use ISO 8601, e.g. 2026-12-01T09:00", param_hint=name) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def _run(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except DomainError as error:
        db.session.rollback()
        raise click.ClickException(error.message) from None


@click.command("create-round")
@with_appcontext
@click.option("--question", required=True, help="The round's question (5 to 500 characters).")
@click.option("--context", default="", help="Context shown to members (Markdown).")
@click.option(
    "--context-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Read the context from this Markdown file.",
)
@click.option(
    "--seed-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Seed statements, one per line (UTF-8).",
)
@click.option("--moderation", type=click.Choice(["pre", "post"]), default="pre", show_default=True)
@click.option("--max-length", type=int, default=280, show_default=True)
@click.option("--no-member-statements", is_flag=True, help="Members may only vote.")
@click.option(
    "--results",
    type=click.Choice(["after_voting", "after_close", "never"]),
    default="after_voting",
    show_default=True,
)
@click.option(
    "--authors",
    type=click.Choice(["anonymous", "organisation"]),
    default="anonymous",
    show_default=True,
)
@click.option("--opens-at", help="Opening time, ISO 8601; UTC unless it has an offset.")
@click.option("--closes-at", help="Closing time, ISO 8601; UTC unless it has an offset.")
@click.option("--open", "open_now", is_flag=True, help="Open the round at once.")
@BY_OPTION
def create_round_command(
    question,
    context,
    context_file,
    seed_file,
    moderation,
    max_length,
    no_member_statements,
    results,
    authors,
    opens_at,
    closes_at,
    open_now,
    by_email,
) -> None:
    """Create a round, optionally with seed statements, and optionally open it."""
    user = _acting_user(by_email)
    if context_file is not None:
        context = context_file.read_text(encoding="utf-8")
    seeds = seed_file.read_text(encoding="utf-8") if seed_file is not None else None
    round_ = _run(
        rounds_service.create_round,
        user,
        question=question,
        context=context,
        allow_member_statements=not no_member_statements,
        moderation=moderation,
        statement_max_length=max_length,
        results_visibility=results,
        author_display=authors,
        opens_at=_parse_time(opens_at, "--opens-at"),
        closes_at=_parse_time(closes_at, "--closes-at"),
    )
    click.echo(f"Created round {round_.id}: {round_.question}")
    if seeds is not None and seeds.strip():
        result = _run(rounds_service.add_seed_statements, user, round_.id, seeds)
        click.echo(f"Added {len(result.added)} seed statements.")
        for text in result.duplicates:
            click.echo(f"  skipped (duplicate): {text}")
        for text in result.too_long:
            click.echo(f"  skipped (longer than {max_length} characters): {text}")
    if open_now:
        _run(rounds_service.open_round, user, round_.id)
        click.echo(f"Round {round_.id} is open.")


@click.command("open-round")
@with_appcontext
@click.argument("round_id", type=int)
@BY_OPTION
def open_round_command(round_id: int, by_email: str | None) -> None:
    """Open a draft round."""
    round_ = _run(rounds_service.open_round, _acting_user(by_email), round_id)
    click.echo(f"Round {round_.id} is open.")


@click.command("close-round")
@with_appcontext
@click.argument("round_id", type=int)
@BY_OPTION
def close_round_command(round_id: int, by_email: str | None) -> None:
    """Close an open round."""
    round_ = _run(rounds_service.close_round, _acting_user(by_email), round_id)
    click.echo(f"Round {round_.id} is closed.")


@click.command("tick")
@with_appcontext
@click.option(
    "--every",
    type=click.IntRange(min=1),
    default=None,
    metavar="SECONDS",
    help="Keep running, checking every SECONDS (otherwise check once and exit).",
)
def tick_command(every: int | None) -> None:
    """Open and close rounds whose scheduled times have come (run from cron, or with --every)."""
    while True:
        for round_ in rounds_service.apply_scheduled_transitions():
            click.echo(f"Round {round_.id} is now {round_.state}: {round_.question}")
        if every is None:
            return
        db.session.remove()
        time.sleep(every)


commands: list[click.Command] = [
    create_round_command,
    open_round_command,
    close_round_command,
    tick_command,
]


@click.command("check-integrity")
@click.option("--round", "round_id", type=int, default=None, help="Only this round.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@with_appcontext
def check_integrity_command(round_id: int | None, as_json: bool) -> None:
    """Check votes, vote history and statements; exit 1 when anything is inconsistent."""
    import json

    from ..services.integrity import check_integrity

    report = check_integrity(round_id)
    click.echo(json.dumps(report.as_dict(), indent=2) if as_json else report.summary())
    if not report.ok:
        raise SystemExit(1)


commands.append(check_integrity_command)
