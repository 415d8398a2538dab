"""Leadership downloads the board paper (PDF) and the Pol.is CSV in a real Chromium.

The server runs on its own fresh database with the demo coalition loaded (as `make run` does)
and one analysis snapshot computed with `deliberate snapshot`. Page 1 of the downloaded PDF is
rendered to PNG with poppler's `pdftoppm` (Debian poppler-utils) and kept, with the PDF, the
CSV and screenshots, in tests/e2e/artifacts/.
"""

from __future__ import annotations

import csv
import shutil
import sqlite3
import subprocess

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import (
    ARTIFACTS,
    _cli,
    _free_port,
    _unavailable,
    log_in,
    running_server,
    server_env,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

DEMO_QUESTION = "What should our joint campaign for refugee welcome ask for?"
LEADERSHIP = ("leadership@demo.deliberate.example", "demo-leadership-pass")


def _pdftoppm() -> str:
    path = shutil.which("pdftoppm")
    if path is None:
        _unavailable("pdftoppm is missing: install Debian's poppler-utils to render the PDF")
    return path


def _non_white_share(png) -> float:
    from PIL import Image

    with Image.open(png) as image:
        grey = image.convert("L")
        histogram = grey.histogram()
    return sum(histogram[:240]) / max(1, sum(histogram))


def test_leadership_downloads_the_board_paper_and_csv(tmp_path, browser, check_a11y, screenshot):
    pdftoppm = _pdftoppm()
    ARTIFACTS.mkdir(exist_ok=True)
    port = _free_port()
    db_file = tmp_path / "exports.db"
    env = server_env(db_file, f"http://127.0.0.1:{port}")
    _cli(env, "db", "upgrade")
    _cli(env, "demo", "--if-empty")
    with sqlite3.connect(db_file) as conn:
        (round_id,) = conn.execute(
            "SELECT id FROM rounds WHERE question = ? AND state = 'open'", (DEMO_QUESTION,)
        ).fetchone()
    _cli(env, "snapshot", str(round_id))

    with running_server(env, port, tmp_path / "gunicorn.log") as url:
        context = browser.new_context(base_url=url, bypass_csp=True, accept_downloads=True)
        context.set_default_timeout(30_000)
        try:
            page = context.new_page()
            log_in(page, *LEADERSHIP)
            page.goto(f"/rounds/{round_id}/report")
            expect(page.get_by_role("heading", level=1)).to_contain_text(DEMO_QUESTION)

            page.goto(f"/rounds/{round_id}/exports")
            expect(page.get_by_role("heading", level=1)).to_contain_text("Downloads")
            # leadership may download, but never the identities
            expect(page.get_by_role("button", name="Download with identities (zip)")).to_have_count(
                0
            )
            check_a11y(page, "exports")
            screenshot(page, "40-exports-page")

            with page.expect_download() as pdf_info:
                page.get_by_role("link", name="Board paper (PDF)", exact=True).click()
            pdf_download = pdf_info.value
            assert pdf_download.suggested_filename == f"round-{round_id}-board-paper.pdf"
            pdf_path = ARTIFACTS / "41-board-paper.pdf"
            pdf_download.save_as(pdf_path)
            data = pdf_path.read_bytes()
            assert data.startswith(b"%PDF") and len(data) > 10_000

            with page.expect_download() as csv_info:
                page.get_by_role("link", name="votes.csv", exact=True).click()
            csv_download = csv_info.value
            assert csv_download.suggested_filename == f"round-{round_id}-votes.csv"
            csv_path = ARTIFACTS / "42-votes.csv"
            csv_download.save_as(csv_path)
            with open(csv_path, newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
            assert rows[0] == ["timestamp", "datetime", "comment-id", "voter-id", "vote"]
            assert len(rows) > 1000
            assert {row[4] for row in rows[1:]} <= {"1", "0", "-1"}

            page.goto(f"/rounds/{round_id}/board-paper")
            expect(page.get_by_role("heading", name="Executive summary")).to_be_visible()
            check_a11y(page, "board paper")
            screenshot(page, "43-board-paper-page")
        finally:
            context.close()

    prefix = ARTIFACTS / "44-board-paper-page1"
    subprocess.run(
        [
            pdftoppm,
            "-png",
            "-r",
            "80",
            "-f",
            "1",
            "-l",
            "1",
            "-singlefile",
            str(pdf_path),
            str(prefix),
        ],
        check=True,
        timeout=60,
    )
    png = prefix.with_suffix(".png")
    content = png.read_bytes()
    assert content[:8] == b"\x89PNG\r\n\x1a\n" and len(content) > 5_000
    assert _non_white_share(png) > 0.01  # text was drawn, not a blank page
