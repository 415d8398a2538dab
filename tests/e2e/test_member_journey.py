"""The member journey in a real browser: invitation, voting by mouse and keyboard, changing a
vote, writing a statement; a facilitator accepts it; another member is offered it, its author
is not. axe-core checks the login, vote and moderation pages."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.conftest import PASSWORD, QUESTION, SEED_STATEMENTS, log_in

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("e2e")]

NEW_STATEMENT = "Our joint campaign should ask for a national refugee welcome week."
VALUES = {"Agree": 1, "Disagree": -1, "Pass": 0}


def current_statement(page) -> str:
    return page.locator("#current-statement-text").inner_text().strip()


def voted_count(page) -> int:
    return int(page.locator("[data-progress-voted]").inner_text())


def vote(page, how: str, label: str) -> str:
    """Vote on the statement shown, by mouse ('click') or shortcut ('key'); return its text."""
    text = current_statement(page)
    before = voted_count(page)
    if how == "click":
        page.get_by_role("button", name=label, exact=True).click()
    else:
        page.locator("body").press(label[0].lower())
    # No page reload: the progress text and the statement change in place.
    expect(page.locator("[data-progress-voted]")).to_have_text(str(before + 1))
    return text


def vote_through(page, *, looking_for: str, limit: int) -> bool:
    """Pass on statements until `looking_for` is offered or none are left; report if it was."""
    for _ in range(limit):
        if page.locator("#all-voted").is_visible():
            return False
        if current_statement(page) == looking_for:
            return True
        vote(page, "click", "Pass")
    return (
        current_statement(page) == looking_for if page.locator("#vote-area").is_visible() else False
    )


def user_id(live_server, email: str) -> int:
    return live_server.query("SELECT id FROM users WHERE email = ?", (email,))[0][0]


def test_member_journey(live_server, new_context, check_a11y, screenshot):
    round_url = f"/rounds/{live_server.round_id}"

    # --- The login page is accessible (anonymous visitor).
    visitor = new_context().new_page()
    visitor.goto("/login")
    expect(visitor.get_by_role("heading", name="Log in")).to_be_visible()
    check_a11y(visitor, "login")
    screenshot(visitor, "01-login")

    # --- A member opens the invitation link and sets a password.
    member = new_context().new_page()
    member.goto(live_server.invite_link)
    expect(member.get_by_role("heading", level=1)).to_be_visible()
    expect(member.get_by_label("Your name")).to_have_value("Riya Invited")
    member.get_by_label("New password", exact=True).fill(PASSWORD)
    member.get_by_label("New password again").fill(PASSWORD)
    member.get_by_role("button", name="Set password and continue").click()

    # --- They land on the round (the invitation was for it) and see it.
    expect(member).to_have_url(re.compile(rf"{round_url}$"))
    expect(member.get_by_role("heading", level=1, name=QUESTION)).to_be_visible()
    expect(member.get_by_text("Your password is set")).to_be_visible()
    total = len(SEED_STATEMENTS)
    expect(member.locator("#progress-text")).to_contain_text(f"0 of {total}")
    check_a11y(member, "vote")
    screenshot(member, "02-vote")

    # --- Five votes: two by mouse, three by keyboard shortcut.
    ballots: list[tuple[str, int]] = []
    for how, label in [
        ("click", "Agree"),
        ("click", "Disagree"),
        ("key", "Agree"),
        ("key", "Pass"),
        ("key", "Disagree"),
    ]:
        text = vote(member, how, label)
        ballots.append((text, VALUES[label]))
        # The live region announces the next statement, which is now on screen.
        expect(member.locator("#vote-announcer")).to_contain_text(current_statement(member))
    assert len({text for text, _ in ballots}) == 5, "a statement was offered twice"
    expect(member.locator("#progress-text")).to_contain_text(f"5 of {total}")
    assert member.url.endswith(round_url)  # no reload, no navigation

    invitee = user_id(live_server, live_server.invitee_email)
    stored = dict(
        live_server.query(
            "SELECT s.text, v.value FROM votes v JOIN statements s ON s.id = v.statement_id "
            "WHERE v.user_id = ?",
            (invitee,),
        )
    )
    assert stored == dict(ballots)

    # --- "Your votes": change the first vote from Agree to Disagree.
    member.get_by_role("link", name="Your votes").click()
    expect(member.get_by_role("heading", level=1, name="Your votes")).to_be_visible()
    changed_text = ballots[0][0]
    item = member.locator("li", has_text=changed_text)
    expect(item).to_contain_text("Your vote: Agree")
    item.get_by_role("button", name=re.compile(r"^Disagree")).click()
    expect(member.get_by_text("Vote changed.")).to_be_visible()
    expect(member.locator("li", has_text=changed_text)).to_contain_text("Your vote: Disagree")
    screenshot(member, "03-your-votes")
    value, events = live_server.query(
        "SELECT v.value, (SELECT COUNT(*) FROM vote_events e WHERE e.statement_id = v.statement_id "
        "AND e.user_id = v.user_id) FROM votes v JOIN statements s ON s.id = v.statement_id "
        "WHERE v.user_id = ? AND s.text = ?",
        (invitee, changed_text),
    )[0]
    assert (value, events) == (-1, 2)
    history = live_server.query(
        "SELECT e.value, e.previous_value FROM vote_events e JOIN statements s "
        "ON s.id = e.statement_id WHERE e.user_id = ? AND s.text = ? ORDER BY e.id",
        (invitee, changed_text),
    )
    assert history == [(1, None), (-1, 1)]

    # --- Write a statement: the round is pre-moderated, so it waits.
    member.goto(round_url)
    member.get_by_label("Your statement").fill(NEW_STATEMENT)
    member.get_by_role("button", name="Add my statement").click()
    expect(member.get_by_text(re.compile("waits for moderation"))).to_be_visible()
    assert live_server.query(
        "SELECT moderation_state, author_id FROM statements WHERE text = ?", (NEW_STATEMENT,)
    ) == [("pending", invitee)]

    # --- A facilitator accepts it in the moderation queue.
    facilitator = new_context().new_page()
    log_in(facilitator, *live_server.users["facilitator"])
    facilitator.goto(f"/facilitate/rounds/{live_server.round_id}/moderation")
    expect(facilitator.get_by_role("heading", level=1, name="Moderation queue")).to_be_visible()
    card = facilitator.locator("article", has_text=NEW_STATEMENT)
    expect(card).to_be_visible()
    check_a11y(facilitator, "moderation")
    screenshot(facilitator, "04-moderation")
    card.get_by_role("button", name=re.compile(r"^Accept")).click()
    expect(facilitator.get_by_text("Statement accepted")).to_be_visible()
    assert live_server.query(
        "SELECT moderation_state FROM statements WHERE text = ?", (NEW_STATEMENT,)
    ) == [("accepted",)]

    # --- A second member is offered it (voting through the others until it appears).
    second = new_context().new_page()
    log_in(second, *live_server.users["second"])
    second.goto(round_url)
    expect(second.locator("#progress-text")).to_contain_text(f"0 of {total + 1}")
    assert vote_through(second, looking_for=NEW_STATEMENT, limit=total + 2), (
        "the accepted statement was never offered to the second member"
    )
    screenshot(second, "05-second-member")

    # --- Its author is never offered it: they vote through to the end without seeing it.
    member.goto(round_url)
    expect(member.locator("#progress-text")).to_contain_text(f"5 of {total}")
    assert not vote_through(member, looking_for=NEW_STATEMENT, limit=total + 2)
    expect(member.locator("#all-voted")).to_be_visible()
    expect(member.locator("#all-voted")).to_contain_text("You have voted on every statement")
    expect(member.locator("#progress-text")).to_contain_text(f"{total} of {total}")
    screenshot(member, "06-all-voted")
    assert not live_server.query(
        "SELECT 1 FROM votes v JOIN statements s ON s.id = v.statement_id "
        "WHERE v.user_id = ? AND s.text = ?",
        (invitee, NEW_STATEMENT),
    )


def test_vote_page_by_keyboard_alone(live_server, new_context):
    page = new_context().new_page()
    log_in(page, *live_server.users["keyboard"])
    page.goto(f"/rounds/{live_server.round_id}")
    expect(page.locator("#vote-area")).to_be_visible()

    # Tab through the page from the top until the Agree button has focus.
    page.locator("body").focus()
    focused = []
    for _ in range(60):
        page.keyboard.press("Tab")
        name = page.evaluate(
            "() => document.activeElement && document.activeElement.textContent.trim()"
        )
        focused.append(name)
        if name == "Agree":
            break
    else:
        pytest.fail(f"Tab never reached the Agree button; focus went through {focused}")

    def focus_is_visible() -> bool:
        return page.evaluate(
            """() => {
                const el = document.activeElement;
                const style = getComputedStyle(el);
                const outline = style.outlineStyle !== 'none' && parseFloat(style.outlineWidth) > 0;
                return el.matches(':focus-visible') && (outline || style.boxShadow !== 'none');
            }"""
        )

    assert focus_is_visible(), "the Agree button has focus but no visible focus indicator"
    for label in ("Disagree", "Pass"):
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.activeElement.textContent.trim()") == label
        assert focus_is_visible(), f"the {label} button has no visible focus indicator"

    # The live region exists before any vote, and announces the next statement after one.
    announcer = page.locator("#vote-announcer")
    expect(announcer).to_have_attribute("aria-live", "polite")
    first = page.locator("#current-statement-text").inner_text().strip()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Shift+Tab")  # back to Agree
    assert page.evaluate("() => document.activeElement.textContent.trim()") == "Agree"
    page.keyboard.press("Enter")
    expect(page.locator("[data-progress-voted]")).to_have_text("1")
    second = page.locator("#current-statement-text").inner_text().strip()
    assert second != first
    expect(announcer).to_contain_text(second)
    # Focus stays on a vote button, so the next vote is one key press away.
    assert page.evaluate("() => document.activeElement.textContent.trim()") in {
        "Agree",
        "Disagree",
        "Pass",
    }
    page.keyboard.press("Space")
    expect(page.locator("[data-progress-voted]")).to_have_text("2")


def test_member_of_another_organisation_cannot_vote_in_the_round(live_server, new_context):
    page = new_context().new_page()
    log_in(page, *live_server.users["second"])
    response = page.goto(f"/rounds/{live_server.other_round_id}")
    assert response is not None and response.status == 404
    expect(page.get_by_role("button", name="Agree", exact=True)).to_have_count(0)
