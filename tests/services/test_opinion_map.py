"""The opinion map: geometry, text alternative, SVG and PNG (pure: no app needed)."""

from __future__ import annotations

import io
import random
import xml.etree.ElementTree as ET

import pytest
from PIL import Image

from deliberate.services.opinion_map import (
    MAX_POINTS,
    SHAPES,
    map_geometry,
    render_png,
    render_svg,
    text_alternative,
)

SVG = "{http://www.w3.org/2000/svg}"


def make_result(sizes=(23, 15, 9), seed=1, spread=0.6) -> dict:
    """A snapshot-shaped result with well-separated groups around fixed centres."""
    rng = random.Random(seed)
    centres = [(-3.0, 0.0), (0.0, 3.0), (3.0, -1.0), (0.0, -3.0), (2.0, 2.5), (-2.5, 2.5)]
    projections, groups, pid = {}, [], 1
    for gi, size in enumerate(sizes):
        cx, cy = centres[gi % len(centres)]
        members = []
        for _ in range(size):
            projections[str(pid)] = [cx + rng.gauss(0, spread), cy + rng.gauss(0, spread)]
            members.append(pid)
            pid += 1
        groups.append({"id": gi, "members": members, "n_members": size, "center": [cx, cy]})
    return {
        "participants": pid - 1,
        "in_conversation": list(range(1, pid)),
        "projections": projections,
        "groups": groups,
    }


def test_geometry_fits_the_viewbox_and_every_group_has_a_label_and_shape():
    geometry = map_geometry(make_result())
    assert len(geometry.points) == 47 and not geometry.sampled
    for p in geometry.points:
        assert 0 <= p.x <= geometry.width and 0 <= p.y <= geometry.height
        assert 0 <= p.group_index < 3
    assert [g.label for g in geometry.groups] == ["Group A", "Group B", "Group C"]
    assert len({g.shape for g in geometry.groups}) == 3
    assert all(g.shape in SHAPES for g in geometry.groups)
    assert len({g.colour for g in geometry.groups}) == 3
    for g in geometry.groups:
        assert 3 <= len(g.hull) <= g.size
        assert 0 <= g.label_x <= geometry.width and 0 <= g.label_y <= geometry.height
        for x, y in g.hull:
            assert 0 <= x <= geometry.width and 0 <= y <= geometry.height
    # Positions in words follow the projection (y up): A left, B above, C right.
    assert [g.position for g in geometry.groups][:2] == ["left of centre", "above centre"]
    assert "right" in geometry.groups[2].position


def test_hull_contains_every_member():
    geometry = map_geometry(make_result(sizes=(40,)))
    hull = geometry.groups[0].hull

    def inside(x, y):
        # Counter-clockwise in maths orientation = every cross product has the same sign.
        signs = set()
        for (x1, y1), (x2, y2) in zip(hull, hull[1:] + hull[:1], strict=True):
            c = (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1)
            if abs(c) > 1e-6:
                signs.add(c > 0)
        return len(signs) <= 1

    assert all(inside(p.x, p.y) for p in geometry.points)


def test_text_alternative_lists_every_group_and_you():
    result = make_result(sizes=(23, 15, 2))
    geometry = map_geometry(result, you=30, labels={1: "Local welcome"})
    lines = text_alternative(geometry)
    assert lines[0].startswith("40 participants")
    assert lines[1].startswith("Group A, 23 members, ") and "left" in lines[1]
    assert lines[2].startswith("Local welcome, 15 members, ") and "circles" in lines[1]
    assert lines[3].startswith("Group C, fewer than 3 members, ")  # small cell: no count
    assert lines[-1] == "You are in Local welcome."
    assert geometry.you is not None and geometry.you_group_index == 1


def test_large_maps_draw_a_proportional_sample_and_say_so():
    result = make_result(sizes=(3000, 1500, 500), spread=0.9)
    geometry = map_geometry(result, you=4000)
    assert geometry.sampled and geometry.total_participants == 5000
    assert MAX_POINTS - 5 <= len(geometry.points) <= MAX_POINTS + 5
    per_group = [sum(p.group_index == i for p in geometry.points) for i in range(3)]
    assert per_group == [1200, 600, 200]  # each group keeps its share
    assert [g.size for g in geometry.groups] == [3000, 1500, 500]  # sizes count everyone
    assert "sample of" in text_alternative(geometry)[0]
    assert geometry.you is not None  # you are marked even when your own point was not drawn
    assert len(render_svg(geometry, title="t", description="d")) < 400_000


def test_empty_result_gives_an_empty_map():
    geometry = map_geometry({})
    assert geometry.empty
    assert "empty" in text_alternative(geometry)[0]
    ET.fromstring(render_svg(geometry, title="Map", description="Nobody yet"))
    assert render_png(geometry, width=300)[:8] == b"\x89PNG\r\n\x1a\n"


def test_svg_parses_is_accessible_and_escapes_text():
    geometry = map_geometry(make_result(), you=3, labels={0: "<b>&", 2: "say \"hi\" 'now'"})
    svg = render_svg(
        geometry,
        title="Opinion map: <script>alert(1)</script>",
        description=" ".join(text_alternative(geometry)),
    )
    root = ET.fromstring(svg)  # well-formed XML
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    title, desc = root.find(f"{SVG}title"), root.find(f"{SVG}desc")
    assert root.get("aria-labelledby") == f"{title.get('id')} {desc.get('id')}"
    assert title.text == "Opinion map: <script>alert(1)</script>"
    assert "Group A" not in desc.text and "<b>&, 23 members" in desc.text
    texts = ["".join(t.itertext()) for t in root.iter(f"{SVG}text")]
    assert "<b>& (23 members)" in texts
    assert "You are here" in texts
    assert "<b>&amp;" not in svg.replace("&lt;b&gt;&amp;", "")  # only the escaped form
    assert "<b>" not in svg and "<script" not in svg
    assert "style=" not in svg and "onload" not in svg and "javascript:" not in svg
    # One marker shape per group: circles for A, squares (polygons) for B, triangles for C.
    assert len(root.findall(f".//{SVG}circle")) >= 23


def test_png_is_a_valid_image_of_the_requested_size():
    geometry = map_geometry(make_result(), you=3, labels={0: "<b>&"})
    data = render_png(geometry, width=1200)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    assert image.size == (1200, round(geometry.height * 1200 / geometry.width))
    # Not blank: the groups' colours are drawn.
    colours = {c for _n, c in image.convert("RGB").getcolors(1_000_000)}
    assert (0xE6, 0x9F, 0x00) in colours and (0x56, 0xB4, 0xE9) in colours
    small = Image.open(io.BytesIO(render_png(geometry, width=400)))
    assert small.size[0] == 400


@pytest.mark.parametrize("k", [1, 2, 6, 7])
def test_any_number_of_groups_gets_labels_and_shapes(k):
    geometry = map_geometry(make_result(sizes=(5,) * k))
    assert len(geometry.groups) == k
    assert all(g.label and g.shape for g in geometry.groups)
    assert len(text_alternative(geometry)) == 1 + k
    ET.fromstring(render_svg(geometry, title="t", description="d"))
