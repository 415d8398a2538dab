"""Readers for Pol.is export and math-fixture folders: layouts, signs and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

from deliberate.polis_io import PolisFormatError, read_polis_folder

from .helpers import FIXTURES, OPENDATA, require

COMMENTS = (
    "timestamp,datetime,comment-id,author-id,agrees,disagrees,moderated,comment-body\n"
    "1,x,0,5,1,0,1,Hello\n2,x,1,5,0,1,-1,Bye\n"
)
VOTES = "timestamp,datetime,comment-id,voter-id,vote\n10,x,0,1,1\n20,x,1,1,-1\n30,x,0,1,0\n"


def _export(tmp_path, comments=COMMENTS, votes=VOTES):
    (tmp_path / "comments.csv").write_text(comments)
    if votes is not None:
        (tmp_path / "votes.csv").write_text(votes)
    return tmp_path


def test_export_layout(tmp_path):
    conv = read_polis_folder(_export(tmp_path))
    assert conv.layout == "export"
    assert [s.id for s in conv.statements] == [0, 1]
    assert conv.rejected == {1} and conv.accepted == {0}
    assert conv.value.tolist() == [1, -1, 0]  # full history kept; latest wins in Votes
    assert conv.created.tolist() == [10, 20, 30]


@pytest.mark.parametrize(
    "votes,message",
    [
        (None, "missing file"),
        ("timestamp,comment-id,vote\n1,0,1\n", "missing column(s) voter-id"),
        ("comment-id,voter-id,vote\n0,1,2\n", "unknown sign"),
        ("comment-id,voter-id,vote\n0,1,agree\n", "unknown sign"),
        ("comment-id,voter-id,vote\n0,abc,1\n", "voter-id must be an integer"),
        ("comment-id,voter-id,vote\n", "empty conversation"),
        ("", "empty file"),
    ],
)
def test_export_errors(tmp_path, votes, message):
    with pytest.raises(PolisFormatError) as err:
        read_polis_folder(_export(tmp_path, votes=votes))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_not_a_polis_folder(tmp_path):
    with pytest.raises(PolisFormatError, match="neither a Pol.is export"):
        read_polis_folder(tmp_path)
    with pytest.raises(PolisFormatError, match="not a folder"):
        read_polis_folder(tmp_path / "nope")


def test_fixture_layout_and_errors(tmp_path):
    src = require(FIXTURES / "below-100-ptpts")
    conv = read_polis_folder(src)
    assert conv.layout == "fixture" and conv.value.size == 504
    for f in ("votes.json", "comments.json", "conversation.json"):
        shutil.copy(src / f, tmp_path / f)
    votes = json.loads((tmp_path / "votes.json").read_text())
    votes[0]["vote"] = 3
    (tmp_path / "votes.json").write_text(json.dumps(votes))
    with pytest.raises(PolisFormatError, match="unknown sign"):
        read_polis_folder(tmp_path)
    votes[0]["vote"] = 1
    votes[0]["pid"] = "x1"
    (tmp_path / "votes.json").write_text(json.dumps(votes))
    with pytest.raises(PolisFormatError, match="must be an integer"):
        read_polis_folder(tmp_path)
    (tmp_path / "votes.json").write_text("[]")
    with pytest.raises(PolisFormatError, match="empty conversation"):
        read_polis_folder(tmp_path)
    (tmp_path / "comments.json").unlink()
    with pytest.raises(PolisFormatError, match="missing file"):
        read_polis_folder(tmp_path)


def test_both_fixture_field_spellings():
    a = read_polis_folder(require(FIXTURES / "below-100-ptpts"))  # pid/tid/mod
    b = read_polis_folder(require(FIXTURES / "25ptpt-3gp-no-strict-with-meta"))  # participant_id
    assert a.rejected == {11, 33}
    assert b.meta == {0, 1, 2, 3}


def test_real_export_groups():
    conv = read_polis_folder(require(OPENDATA / "london.youth.policing"))  # has an xid column
    assert conv.polis_groups is not None
    assert {g for g in conv.polis_groups.values() if g is not None} == {0, 1, 2}
