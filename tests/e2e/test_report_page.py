"""The report page in a real browser: leadership opens it on the demo coalition; the opinion map
has its text alternative; axe-core finds no serious or critical violations; a screenshot is kept.

The server runs as `make run` does, on a fresh database with the demo loaded and its round
analysed by `deliberate snapshot` (the web app never runs the analysis itself).
"""

from __future__ import annotations

import re
import sqlite3

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import _cli, _free_port, log_in, running_server, server_env

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

DEMO_QUESTION = "What should our joint campaign for refugee welcome ask for?"


def test_leadership_reads_the_report(tmp_path, browser, check_a11y, screenshot):
    port = _free_port()
    db_file = tmp_path / "report.db"
    env = server_env(db_file, f"http://127.0.0.1:{port}")
    _cli(env, "db", "upgrade")
    _cli(env, "demo", "--if-empty")
    conn = sqlite3.connect(db_file)
    try:
        query = "SELECT id FROM rounds WHERE question = ?"
        round_id = conn.execute(query, (DEMO_QUESTION,)).fetchone()[0]
    finally:
        conn.close()
    assert "groups" in _cli(env, "snapshot", str(round_id))
    conn = sqlite3.connect(db_file)
    try:
        # A simulated member who voted on many statements (the round shows results after voting).
        voter_email = conn.execute(
            "SELECT u.email FROM users u JOIN votes v ON v.user_id = u.id"
            " WHERE u.role = 'member' AND v.round_id = ? GROUP BY u.id"
            " HAVING count(*) >= 20 ORDER BY u.id LIMIT 1",
            (round_id,),
        ).fetchone()[0]
    finally:
        conn.close()

    with running_server(env, port, tmp_path / "gunicorn.log") as url:
        context = browser.new_context(
            base_url=url, bypass_csp=True, viewport={"width": 1024, "height": 900}
        )
        context.set_default_timeout(20_000)
        try:
            page = context.new_page()
            log_in(page, "leadership@demo.deliberate.example", "demo-leadership-pass")
            page.goto(f"/rounds/{round_id}")
            page.get_by_role("link", name="Results", exact=True).click()
            expect(page).to_have_url(re.compile(rf"/rounds/{round_id}/report$"))
            expect(page.get_by_role("heading", level=1)).to_contain_text(DEMO_QUESTION)
            expect(page.get_by_role("heading", name="What unites the coalition")).to_be_visible()

            # The map: an accessible image with a title, and its text alternative on the page.
            chart = page.get_by_role("img", name=re.compile("^Opinion map"))
            expect(chart).to_be_visible()
            alternative = page.locator("#map-text-alternative li")
            expect(alternative.first).to_contain_text("participants placed by how they voted")
            expect(alternative.nth(1)).to_contain_text(re.compile(r"Group A, \d+ members, "))
            groups = page.locator("#groups article").count()
            assert groups >= 2 and alternative.count() == 1 + groups

            # Sorting works by plain links.
            page.get_by_role("link", name="Votes", exact=True).click()
            expect(page).to_have_url(re.compile(r"sort=votes"))
            expect(page.locator(".sort-links [aria-current]")).to_have_text("Votes")

            check_a11y(page, "report")
            path = screenshot(page, "20-report")
            assert path.stat().st_size > 10_000

            # The map downloads are real images.
            svg = context.request.get(f"{url}/rounds/{round_id}/report/map.svg")
            assert svg.ok and svg.headers["content-type"].startswith("image/svg+xml")
            png = context.request.get(f"{url}/rounds/{round_id}/report/map.png")
            assert png.ok and png.body()[:8] == b"\x89PNG\r\n\x1a\n"
        finally:
            context.close()

        # A member who voted sees where they stand, on an accessible page too.
        context = browser.new_context(
            base_url=url, bypass_csp=True, viewport={"width": 390, "height": 844}
        )
        context.set_default_timeout(20_000)
        try:
            page = context.new_page()
            log_in(page, voter_email, "demo-member-pass")
            page.goto(f"/rounds/{round_id}")
            page.get_by_role("link", name="Results", exact=True).click()
            expect(page.get_by_role("heading", name="Where you stand")).to_be_visible()
            expect(page.locator("#you")).to_contain_text("You are in ")
            expect(page.locator("#map-text-alternative")).to_contain_text("You are in ")
            expect(page.get_by_role("heading", name="Coverage by organisation")).to_have_count(0)
            check_a11y(page, "member results")
            screenshot(page, "21-member-results-phone")
        finally:
            context.close()
