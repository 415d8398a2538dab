"""End-to-end fixtures: a real gunicorn server on a migrated SQLite file, and headless Chromium.

The server runs as it does for `make run` (gunicorn, one worker, threads) with CSRF on. The
database is migrated with `deliberate db upgrade`, seeded with a few lines of model code
(organisations, accounts, rounds) and the invited member comes from `deliberate invite`.

Without /usr/bin/chromium (or without tests/e2e/node_modules for the axe-core checks) these
tests skip with a reason, except on CI (CI=true), where `.ci/run` installs both and a missing
one is a failure.
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
E2E_DIR = Path(__file__).resolve().parent
ARTIFACTS = E2E_DIR / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
AXE_JS = E2E_DIR / "node_modules" / "axe-core" / "axe.min.js"
AXE_MISSING = (
    f"{AXE_JS} is missing: run `npm ci` in tests/e2e (make test does) for the axe-core checks"
)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

ON_CI = os.environ.get("CI", "").lower() == "true"

PASSWORD = "e2e-password-123"
ORG_A = "Harbour Legal Aid"
ORG_B = "Northside Welcome Circle"
QUESTION = "What should our joint campaign ask for?"
SEED_STATEMENTS = [
    "Everyone seeking asylum should get free legal advice.",
    "People waiting for a decision should have the right to work.",
    "Immigration detention should have a 28-day time limit.",
    "Councils need long-term funding to house new refugees.",
    "Our campaign should tell refugees' stories in their own words.",
    "We should work with MPs of every party.",
    "Children should never be held in immigration detention.",
    "Safe routes must be at the heart of our ask.",
]


def _unavailable(reason: str) -> None:
    """Skip, or fail on CI where everything the tests need is installed."""
    if ON_CI:
        pytest.fail(f"{reason} (CI=true: .ci/run should have installed it)")
    pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark everything under tests/e2e as e2e and keep it on one xdist worker.

    A safety net: each module also sets `pytestmark` (markers added here may come after
    `-m "not e2e"` deselection has run).
    """
    for item in items:
        if E2E_DIR in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.xdist_group("e2e"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class LiveServer:
    url: str
    db_file: Path
    env: dict
    round_id: int
    other_round_id: int
    invite_link: str
    invitee_email: str
    users: dict = field(default_factory=dict)  # key -> (email, password)

    def cli(self, *args: str, input: str | None = None) -> str:
        """Run `deliberate ...` against the server's database and return its standard output."""
        return _cli(self.env, *args, input=input)

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Read the server's database directly (the server writes with WAL; readers are safe)."""
        conn = sqlite3.connect(self.db_file, timeout=15)
        try:
            return conn.execute(sql, params).fetchall()
        finally:
            conn.close()


def _deliberate() -> list[str]:
    """The `deliberate` console script of this environment (as `make run` uses it)."""
    script = Path(sys.executable).parent / "deliberate"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "flask", "--app", "wsgi:app"]


def _cli(env: dict, *args: str, input: str | None = None) -> str:
    result = subprocess.run(
        [*_deliberate(), *args],
        cwd=PROJECT_ROOT,
        env=env,
        input=input,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"deliberate {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}\n{result.stderr}"
        )
    return result.stdout


# Organisations, accounts and rounds are made in one subprocess (starting the app for each CLI
# command is slow on a busy machine); it runs apart so that the test process never holds the
# database open while the server runs. The invitation goes through `deliberate invite`.
SEED = """
import json, sys
from deliberate import create_app
from deliberate.extensions import db
from deliberate.models import Organisation, Round, Statement, User
from deliberate.services.passwords import hash_password

spec = json.loads(sys.stdin.read())
app = create_app()
with app.app_context():
    orgs = {name: Organisation(name=name) for name in (spec["org_a"], spec["org_b"])}
    db.session.add_all(orgs.values())
    password_hash = hash_password(spec["password"])
    for email, name, role, org in spec["users"]:
        db.session.add(User(email=email, name=name, role=role, password_hash=password_hash,
                            organisation=orgs[org] if org else None))
    org_b = orgs[spec["org_b"]]
    rounds = [(spec["question"], []), ("Which tactics should Northside use?", [org_b])]
    ids = []
    for question, audience in rounds:
        round_ = Round(question=question, context="Vote on each statement. **Be honest.**",
                       state="open", moderation="pre", allow_member_statements=True)
        round_.organisations = audience
        db.session.add(round_)
        db.session.flush()
        for text in spec["statements"]:
            db.session.add(Statement(round_id=round_.id, text=text,
                                     normalised_text=" ".join(text.lower().split()),
                                     origin="seed", moderation_state="accepted"))
        ids.append(round_.id)
    db.session.commit()
    print(json.dumps(ids))
"""


@pytest.fixture(scope="session")
def live_server(tmp_path_factory) -> Iterator[LiveServer]:
    """Start gunicorn on a free port against a freshly migrated and seeded SQLite file."""
    tmp = tmp_path_factory.mktemp("e2e")
    db_file = tmp / "e2e.db"
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = server_env(db_file, url)

    _cli(env, "db", "upgrade")
    users = {
        "facilitator": ("fran.facilitator@e2e.example", "Fran Facilitator", "facilitator", None),
        "second": ("omar.second@e2e.example", "Omar Second", "member", ORG_A),
        "keyboard": ("kim.keyboard@e2e.example", "Kim Keyboard", "member", ORG_A),
        "other_org": ("bo.other@e2e.example", "Bo Other", "member", ORG_B),
    }
    spec = {
        "org_a": ORG_A,
        "org_b": ORG_B,
        "password": PASSWORD,
        "users": list(users.values()),
        "question": QUESTION,
        "statements": SEED_STATEMENTS,
    }
    result = subprocess.run(
        [sys.executable, "-c", SEED],
        cwd=PROJECT_ROOT,
        env=env,
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if result.returncode != 0:
        raise RuntimeError(f"seeding failed:\n{result.stdout}\n{result.stderr}")
    round_id, other_round_id = json.loads(result.stdout.strip().splitlines()[-1])

    invitee_email = "riya.invited@e2e.example"
    invites = tmp / "invites.csv"
    invites.write_text(f"name,email,organisation\nRiya Invited,{invitee_email},{ORG_A}\n")
    links = list(
        csv.DictReader(io.StringIO(_cli(env, "invite", str(invites), "--round", str(round_id))))
    )
    assert len(links) == 1 and links[0]["link"].startswith(f"{url}/invite/"), links

    with running_server(env, port, tmp / "gunicorn.log"):
        yield LiveServer(
            url=url,
            db_file=db_file,
            env=env,
            round_id=round_id,
            other_round_id=other_round_id,
            invite_link=links[0]["link"],
            invitee_email=invitee_email,
            users={key: (email, PASSWORD) for key, (email, *_rest) in users.items()},
        )


@contextmanager
def running_server(env: dict, port: int, log_path: Path) -> Iterator[str]:
    """Run gunicorn as `make run` does (one worker, threads) until the block ends."""
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "1",
                "--threads",
                "4",
                "--access-logfile",
                "-",
                "wsgi:app",
            ],
            cwd=PROJECT_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                if server.poll() is not None:
                    raise RuntimeError(f"gunicorn exited: {log_path.read_text()}")
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:  # noqa: S310
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"gunicorn did not start: {log_path.read_text()}")
                time.sleep(0.2)
            yield url
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        if "Traceback" in log_path.read_text():
            print(log_path.read_text()[-5000:])


def server_env(db_file: Path, url: str) -> dict:
    """The environment of the server and of the CLI commands run against its database."""
    env = {
        **os.environ,
        "DELIBERATE_ENV": "development",
        "DELIBERATE_DATABASE_URL": f"sqlite:///{db_file}",
        "DELIBERATE_SECRET_KEY": "e2e-secret-key-not-for-production",
        "DELIBERATE_ANALYSIS_WORKER": "off",
        "DELIBERATE_RATELIMIT_ENABLED": "0",
        "DELIBERATE_BASE_URL": url,
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FLASK_APP", None)
    return env


@pytest.fixture(scope="session")
def browser():
    """A headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing: install Debian's chromium to run the browser tests")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright Python package is not installed (pip install -e '.[test]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def new_context(browser, live_server):
    """Open fresh browser contexts (separate cookie jars) that close after the test."""
    contexts = []

    def _new():
        context = browser.new_context(
            base_url=live_server.url, bypass_csp=True, viewport={"width": 1024, "height": 900}
        )
        context.set_default_timeout(20_000)
        contexts.append(context)
        return context

    yield _new
    for context in contexts:
        context.close()


@pytest.fixture(scope="session")
def axe_source() -> str | None:
    """The axe-core script, or None (with the reason recorded) when it is not installed."""
    if not AXE_JS.exists():
        return None
    return AXE_JS.read_text(encoding="utf-8")


@pytest.fixture
def check_a11y(axe_source):
    """Run axe-core on a page; fail on serious or critical violations, with details."""

    def _check(page, name: str) -> list[dict]:
        if axe_source is None:
            if ON_CI:
                pytest.fail(f"{AXE_MISSING} (CI=true: .ci/run should have installed it)")
            # The journey itself still runs; test_axe_core_is_installed reports the skip.
            warnings.warn(
                f"{AXE_MISSING}; accessibility check of the {name} page skipped", stacklevel=2
            )
            return []
        if not page.evaluate("() => typeof window.axe !== 'undefined'"):
            page.evaluate(axe_source)
        results = page.evaluate(
            "async () => await axe.run(document, {resultTypes: ['violations']})"
        )
        bad = [v for v in results["violations"] if v.get("impact") in ("serious", "critical")]
        if bad:
            lines = [f"axe-core found serious/critical violations on the {name} page ({page.url}):"]
            for violation in bad:
                lines.append(
                    f"- [{violation['impact']}] {violation['id']}: {violation['help']} "
                    f"({violation['helpUrl']})"
                )
                for node in violation["nodes"][:5]:
                    lines.append(f"    {node['target']}: {node.get('failureSummary', '')[:300]}")
            pytest.fail("\n".join(lines))
        return results["violations"]

    return _check


@pytest.fixture
def screenshot():
    """Save a full-page screenshot under tests/e2e/artifacts/ and check it is a real PNG."""
    ARTIFACTS.mkdir(exist_ok=True)

    def _shot(page, name: str) -> Path:
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        data = path.read_bytes()
        assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n", path
        return path

    return _shot


def log_in(page, email: str, password: str) -> None:
    """Log in through the login form."""
    page.goto("/login")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state()
    assert "/login" not in page.url, f"login failed for {email}: {page.url}"
