"""The account commands of the `deliberate` command line."""

from __future__ import annotations

import csv
import io

from sqlalchemy import select

from deliberate.models import AuditEvent, Invitation, Organisation, User
from deliberate.services import accounts, invitations
from deliberate.services.passwords import verify_password

NEW_PASSWORD = "operator passphrase"


def test_create_organisation(app, db):
    runner = app.test_cli_runner()
    result = runner.invoke(args=["create-organisation", "  Welcome North "])
    assert result.exit_code == 0, result.output
    assert "Welcome North" in result.output
    assert db.session.scalar(select(Organisation.name)) == "Welcome North"
    again = runner.invoke(args=["create-organisation", "welcome north"])
    assert again.exit_code == 1
    assert "already exists" in again.output


def test_create_user_with_password_option(app, db, factory):
    factory.organisation("North")
    result = app.test_cli_runner().invoke(
        args=[
            "create-user",
            "--email",
            "Ops@Example.org",
            "--name",
            "Ops",
            "--role",
            "admin",
            "--organisation",
            "North",
            "--password",
            NEW_PASSWORD,
        ]
    )
    assert result.exit_code == 0, result.output
    user = db.session.scalar(select(User))
    assert (user.email, user.role, user.organisation.name) == ("ops@example.org", "admin", "North")
    assert accounts.authenticate("ops@example.org", NEW_PASSWORD) == user


def test_create_user_prompts_for_the_password_twice(app, db):
    result = app.test_cli_runner().invoke(
        args=["create-user", "--email", "a@example.org", "--name", "A"],
        input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n",
    )
    assert result.exit_code == 0, result.output
    assert "Repeat for confirmation" in result.output
    assert NEW_PASSWORD not in result.output
    user = db.session.scalar(select(User))
    assert user.role == "member" and verify_password(user.password_hash, NEW_PASSWORD)


def test_create_user_errors_are_clear(app, db, factory):
    factory.user(email="taken@example.org")
    runner = app.test_cli_runner()
    bad_email = runner.invoke(
        args=["create-user", "--email", "nope", "--name", "A", "--password", NEW_PASSWORD]
    )
    assert bad_email.exit_code == 2 and "not a valid email address" in bad_email.output
    short = runner.invoke(
        args=["create-user", "--email", "a@example.org", "--name", "A", "--password", "short"]
    )
    assert short.exit_code == 2 and "at least 10 characters" in short.output
    taken = runner.invoke(
        args=[
            "create-user",
            "--email",
            "TAKEN@example.org",
            "--name",
            "A",
            "--password",
            NEW_PASSWORD,
        ]
    )
    assert taken.exit_code == 1 and "already an account" in taken.output
    no_org = runner.invoke(
        args=[
            "create-user",
            "--email",
            "b@example.org",
            "--name",
            "B",
            "--organisation",
            "Nowhere",
            "--password",
            NEW_PASSWORD,
        ]
    )
    assert no_org.exit_code == 1 and "No organisation called" in no_org.output
    bad_role = runner.invoke(
        args=[
            "create-user",
            "--email",
            "c@example.org",
            "--name",
            "C",
            "--role",
            "owner",
            "--password",
            NEW_PASSWORD,
        ]
    )
    assert bad_role.exit_code == 2
    assert db.session.scalars(select(User.email)).all() == ["taken@example.org"]


def test_set_role(app, db, factory):
    user = factory.user(email="m@example.org")
    runner = app.test_cli_runner()
    result = runner.invoke(args=["set-role", "M@example.org", "facilitator"])
    assert result.exit_code == 0, result.output
    db.session.expire_all()
    assert db.session.get(User, user.id).role == "facilitator"
    assert db.session.scalar(select(AuditEvent.action)) == "user.set_role"
    missing = runner.invoke(args=["set-role", "who@example.org", "admin"])
    assert missing.exit_code == 1 and "No account with the email address" in missing.output


def test_invite_writes_one_link_per_row(app, db, factory, tmp_path):
    round_ = factory.round()
    factory.user(email="old@example.org")
    source = tmp_path / "people.csv"
    source.write_text(
        "\ufeffname,email,organisation\nAmy,amy@example.org,North\nOld,old@example.org,North\n",
        encoding="utf-8",
    )
    result = app.test_cli_runner().invoke(
        args=["invite", str(source), "--round", str(round_.id), "--base-url", "https://d.example"]
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.stdout)))
    assert rows[0] == ["name", "email", "organisation", "link"]
    assert rows[1][:3] == ["Amy", "amy@example.org", "North"]
    assert rows[1][3].startswith("https://d.example/invite/")
    assert rows[2][1] == "old@example.org" and rows[2][3] == ""
    assert "already has an account" in result.stderr
    invitation = db.session.scalar(select(Invitation))
    assert invitation.round_id == round_.id


def test_invite_to_a_file(app, db, tmp_path):
    source = tmp_path / "people.csv"
    source.write_text("name,email,organisation\nAmy,amy@example.org,\n", encoding="utf-8")
    out = tmp_path / "links.csv"
    result = app.test_cli_runner().invoke(args=["invite", str(source), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(out.open(encoding="utf-8")))
    assert rows[1][3].startswith(app.config["BASE_URL"].rstrip("/") + "/invite/")
    assert out.stat().st_mode & 0o077 == 0
    assert "/invite/" not in result.stdout


def test_invite_reports_bad_rows_and_writes_nothing(app, db, tmp_path):
    source = tmp_path / "people.csv"
    source.write_text("name,email,organisation\nAmy,amy@example.org,\nBob,bad,\n", encoding="utf-8")
    result = app.test_cli_runner().invoke(args=["invite", str(source)])
    assert result.exit_code == 2
    assert "Line 3:" in result.output
    assert db.session.scalars(select(User)).all() == []
    missing = app.test_cli_runner().invoke(args=["invite", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2


def test_invite_unknown_round_is_an_error(app, db, tmp_path):
    source = tmp_path / "people.csv"
    source.write_text("name,email,organisation\nAmy,amy@example.org,\n", encoding="utf-8")
    result = app.test_cli_runner().invoke(args=["invite", str(source), "--round", "99"])
    assert result.exit_code == 1 and "No such round" in result.output
    assert db.session.scalars(select(User)).all() == []


def test_reset_link(app, db, factory):
    user = factory.user(email="m@example.org")
    result = app.test_cli_runner().invoke(
        args=["reset-link", "m@example.org", "--base-url", "https://d.example/"]
    )
    assert result.exit_code == 0, result.output
    link = next(line for line in result.output.splitlines() if "/reset/" in line)
    assert link.startswith("https://d.example/reset/")
    invitations.reset_password(link.rsplit("/", 1)[1], NEW_PASSWORD)
    assert accounts.authenticate("m@example.org", NEW_PASSWORD).id == user.id
    missing = app.test_cli_runner().invoke(args=["reset-link", "who@example.org"])
    assert missing.exit_code == 1 and "No account" in missing.output
