"""The small-cell rule."""

from deliberate.services.privacy import MIN_CELL, cell, is_small


def test_breakdowns_below_three_are_suppressed():
    assert MIN_CELL == 3
    assert is_small(0) and is_small(2) and not is_small(3)
    assert cell(1, 2).suppressed and cell(1, 2).share is None
    shown = cell(2, 3)
    assert not shown.suppressed and shown.value == 2 and abs(shown.share - 2 / 3) < 1e-12
