"""The axe-core check itself: it must be able to fail, or a passing page proves nothing."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import AXE_JS, AXE_MISSING, ON_CI

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

BAD_PAGE = """<!doctype html><html><head><title>bad</title></head><body>
<main><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw="><input type="text">
<p style="color:#bbb;background:#fff">low contrast text</p></main></body></html>"""


def test_axe_core_is_installed():
    """Make a missing axe-core visible as a skip (the journeys then only warn)."""
    if not AXE_JS.exists():
        if ON_CI:
            pytest.fail(AXE_MISSING)
        pytest.skip(AXE_MISSING)
    assert "axe" in AXE_JS.read_text(encoding="utf-8")[:2000]


def test_axe_check_reports_serious_violations(browser, check_a11y):
    if not AXE_JS.exists():
        pytest.skip(AXE_MISSING)
    context = browser.new_context(bypass_csp=True)
    try:
        page = context.new_page()
        page.set_content(BAD_PAGE)
        with pytest.raises(pytest.fail.Exception) as failure:
            check_a11y(page, "deliberately bad")
        message = str(failure.value)
        assert "image-alt" in message and "label" in message and "html-has-lang" in message
    finally:
        context.close()
