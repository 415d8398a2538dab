"""What `make run` does, on a fresh database: migrate, load the demo, serve; then use it."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    _cli,
    _free_port,
    running_server,
    server_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

DEMO_QUESTION = "What should our joint campaign for refugee welcome ask for?"


def test_make_run_sequence_serves_the_demo(tmp_path, browser, check_a11y, screenshot):
    port = _free_port()
    env = server_env(tmp_path / "demo.db", f"http://127.0.0.1:{port}")
    _cli(env, "db", "upgrade")
    first = _cli(env, "demo", "--if-empty")
    assert "member@demo.deliberate.example" in first and "demo-member-pass" in first
    again = _cli(env, "demo", "--if-empty")
    assert "Database already has data; demo not loaded." in again
    _cli(env, "db", "upgrade")  # a second `make run` upgrades nothing and keeps the data

    with running_server(env, port, tmp_path / "gunicorn.log") as url:
        context = browser.new_context(base_url=url, bypass_csp=True)
        context.set_default_timeout(20_000)
        try:
            page = context.new_page()
            page.goto("/")
            expect(page).to_have_url(re.compile(r"/login"))
            page.get_by_label("Email").fill("member@demo.deliberate.example")
            page.get_by_label("Password").fill("demo-member-pass")
            page.get_by_role("button", name="Log in").click()
            page.get_by_role("link", name=DEMO_QUESTION).click()
            expect(page.get_by_role("heading", level=1, name=DEMO_QUESTION)).to_be_visible()
            # The demo member has not voted yet: 0 of the 40 statements.
            expect(page.locator("#progress-text")).to_contain_text("0 of 40")
            check_a11y(page, "demo vote")
            screenshot(page, "10-demo-vote")
            page.get_by_role("button", name="Agree", exact=True).click()
            expect(page.locator("#progress-text")).to_contain_text("1 of 40")

            staff = browser.new_context(base_url=url, bypass_csp=True)
            staff.set_default_timeout(20_000)
            try:
                facilitator = staff.new_page()
                facilitator.goto("/login")
                facilitator.get_by_label("Email").fill("facilitator@demo.deliberate.example")
                facilitator.get_by_label("Password").fill("demo-facilitator-pass")
                facilitator.get_by_role("button", name="Log in").click()
                expect(facilitator.get_by_role("link", name=DEMO_QUESTION)).to_be_visible()
                facilitator.get_by_role("link", name=DEMO_QUESTION).click()
                facilitator.goto(facilitator.url.rstrip("/") + "/moderation")
                expect(facilitator.locator("#queue-count")).to_contain_text("2 statements waiting")
                check_a11y(facilitator, "demo moderation")
            finally:
                staff.close()
        finally:
            context.close()
