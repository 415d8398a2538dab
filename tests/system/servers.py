"""Real processes for the system tests: gunicorn (deliberate.serving) and `deliberate worker`.

Each process runs in its own session (process group), so that a crash is simulated the way
an operator would see one: `kill -9` of the gunicorn master together with its workers, or of
the worker supervisor with its children. `ProcessGroup.kill` does exactly that;
`ProcessGroup.close` (call it in a finally block) leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from http.cookies import SimpleCookie
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECRET_KEY = "system-test-secret-key-0123456789abcdef"
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)"')


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment of a production server or worker on `database_url`.

    Production configuration (the secret key given), cookies allowed over plain HTTP on the
    loopback interface, rate limits off (these tests are about durability), the analysis left
    to a separate `deliberate worker`, a short debounce and a short lease so that a killed
    worker's round is taken over within seconds.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DELIBERATE_") and not k.startswith("FLASK_")
    }
    env.update(
        DELIBERATE_ENV="production",
        DELIBERATE_SECRET_KEY=SECRET_KEY,
        DELIBERATE_DATABASE_URL=database_url,
        DELIBERATE_SECURE_COOKIES="0",
        DELIBERATE_RATELIMIT_ENABLED="0",
        DELIBERATE_ANALYSIS_WORKER="off",
        DELIBERATE_ANALYSIS_DEBOUNCE="0.2",
        DELIBERATE_ANALYSIS_LEASE="2",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class ProcessGroup:
    """One command in its own process group, its output appended to a log file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> ProcessGroup:
        assert self.process is None or self.process.poll() is not None, f"{self.name} runs"
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
            self.process = subprocess.Popen(  # noqa: S603
                self.argv,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _signal_group(self, signum: int) -> None:
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def kill(self) -> None:
        """kill -9 the whole group (a crash), and reap the leader."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)
        self._wait_group_gone()

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the group and wait; kill -9 if it does not stop in time. The exit status."""
        if self.process is None:
            return None
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal_group(signal.SIGKILL)
            self.process.wait(10)
        self._signal_group(signal.SIGKILL)  # any child left over
        self._wait_group_gone()
        return self.process.returncode

    def close(self) -> None:
        """Leave nothing running (for finally blocks)."""
        if self.process is not None:
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(10)
            self._wait_group_gone()

    def _wait_group_gone(self, timeout: float = 10.0) -> None:
        """Wait until no process of the group is left running."""
        deadline = time.monotonic() + timeout
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.02)

    def group_alive(self) -> bool:
        """Whether a process of the group still runs (zombies awaiting their reaper do not)."""
        if self.process is None:
            return False
        return bool(living_members(self.process.pid))

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def living_members(pgid: int) -> list[int]:
    """The pids of the processes in group `pgid` that are not zombies."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel about the group as a whole
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def gunicorn_server(port: int, env: dict[str, str], log_path: Path, **options: str) -> ProcessGroup:
    """gunicorn with the production settings (deliberate.serving) on 127.0.0.1:port."""
    argv = [
        str(BIN / "gunicorn"),
        "-c",
        "python:deliberate.serving",
        "--bind",
        f"127.0.0.1:{port}",
    ]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", value]
    return ProcessGroup("gunicorn", [*argv, "wsgi:app"], env, log_path)


def worker_process(env: dict[str, str], log_path: Path, *args: str) -> ProcessGroup:
    """`deliberate worker` (with any extra arguments)."""
    return ProcessGroup("worker", [str(BIN / "deliberate"), "worker", *args], env, log_path)


def wait_until_serving(server: ProcessGroup, port: int, timeout: float = 60.0) -> None:
    """Wait for /healthz to answer 200; fail with the server's log if it does not."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.running:
            raise AssertionError(f"the server exited:\n{server.log_tail()}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.05)
    raise AssertionError(f"the server did not answer within {timeout} s:\n{server.log_tail()}")


def wait_for(predicate, timeout: float = 30.0, step: float = 0.1):
    """Poll `predicate` until it returns something true or the time is up; return its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


class HttpMember:
    """A member's browser, reduced to what the tests need: cookies, CSRF, no redirects."""

    def __init__(self, port: int, email: str, password: str, timeout: float = 10.0):
        self.port = port
        self.email = email
        self.password = password
        self.timeout = timeout
        self.cookies: dict[str, str] = {}
        self.csrf: str | None = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> tuple[int, str]:
        """Send one request on a new connection; return (status, body). Raises OSError."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        try:
            sent = dict(headers or {})
            if self.cookies:
                sent["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            conn.request(method, path, body=body, headers=sent)
            response = conn.getresponse()
            text = response.read().decode("utf-8", "replace")
            for header in response.msg.get_all("Set-Cookie") or []:
                cookie = SimpleCookie()
                cookie.load(header)
                for name, morsel in cookie.items():
                    if morsel["max-age"] == "0" or morsel.value == "":
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
            return response.status, text
        finally:
            conn.close()

    def _csrf_from(self, page: str) -> str:
        match = CSRF_META.search(page)
        assert match, "no csrf-token meta in the page"
        return match.group(1)

    def login(self) -> None:
        status, page = self.request("GET", "/login")
        if status in (302, 303):
            return  # the session is still logged in (a restarted server keeps sessions)
        assert status == 200, status
        form = urllib.parse.urlencode(
            {"email": self.email, "password": self.password, "csrf_token": self._csrf_from(page)}
        )
        status, text = self.request(
            "POST",
            "/login",
            form.encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status in (302, 303), (status, text[:300])
        self.csrf = None

    def open_round(self, round_id: int) -> None:
        """Fetch the round page and keep its CSRF token."""
        status, page = self.request("GET", f"/rounds/{round_id}")
        assert status == 200, (status, page[:300])
        self.csrf = self._csrf_from(page)

    def vote(self, round_id: int, statement_id: int, value: int) -> int:
        """POST the JSON vote; return the status (OSError when the answer never came)."""
        body = json.dumps({"statement_id": statement_id, "value": value}).encode()
        status, _ = self.request(
            "POST",
            f"/api/rounds/{round_id}/votes",
            body,
            {"Content-Type": "application/json", "X-CSRFToken": self.csrf or ""},
        )
        return status

    def post_statement(self, round_id: int, text: str) -> int:
        """Submit the statement form; return the status (303 = accepted)."""
        form = urllib.parse.urlencode({"text": text, "csrf_token": self.csrf or ""})
        status, _ = self.request(
            "POST",
            f"/rounds/{round_id}/statements",
            form.encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        return status
