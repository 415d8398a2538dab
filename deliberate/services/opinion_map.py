"""The opinion map: participants as points in the analysis's 2-D projection, drawn on the server.

`map_geometry` turns a snapshot's result into plain geometry (points scaled into a fixed
viewBox, one colour and one marker shape per group, convex-hull outlines, labels at the group
centres, an optional "you are here" marker). `render_svg` and `render_png` draw that same
geometry; `text_alternative` describes it in words for screen readers and print.

The SVG uses presentation attributes only (fill="#E69F00"), never style attributes or scripts,
so the strict Content-Security-Policy allows it inline. Every piece of text is escaped.

Privacy: a point is a position, not a vote, but a group of fewer than MIN_CELL people gets no
member count ("fewer than 3"), as everywhere else in the report.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

from .privacy import is_small

# Okabe-Ito (colour-blind safe); the same as --g0..--g5 in static/css/app.css.
PALETTE = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#0072B2", "#D55E00")
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "star")
OUTLINE = "#1b1b1b"
# Above this many participants the map draws a sample (in proportion to each group's size).
MAX_POINTS = 2000
WIDTH, HEIGHT, MARGIN = 800, 560, 48
POINT_RADIUS = 4.5


@dataclass(frozen=True)
class MapPoint:
    x: float
    y: float
    group_index: int  # index into MapGeometry.groups, -1 when not in a group


@dataclass
class MapGroup:
    id: Any
    label: str  # the facilitator's name, or "Group A"
    letter: str  # "A", "B", ... (used for the default label and the legend)
    colour: str
    shape: str
    size: int
    hull: list[tuple[float, float]]
    label_x: float
    label_y: float
    position: str  # "left of centre", "upper right", ...

    @property
    def size_text(self) -> str:
        if is_small(self.size):
            return "fewer than 3 members"
        return f"{self.size} member" + ("" if self.size == 1 else "s")


@dataclass
class MapGeometry:
    width: int
    height: int
    points: list[MapPoint] = field(default_factory=list)
    groups: list[MapGroup] = field(default_factory=list)
    you: tuple[float, float] | None = None
    you_group_index: int | None = None
    total_participants: int = 0
    sampled: bool = False

    @property
    def empty(self) -> bool:
        return not self.points


def group_letter(index: int) -> str:
    """Return "A".."Z", then "AA", "AB", ... for a group's position in the sorted group ids."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


def _convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Return the convex hull (Andrew's monotone chain), counter-clockwise, no repeats."""
    pts = sorted(set(points))
    if len(pts) <= 2:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _position_words(dx: float, dy: float, span: float) -> str:
    """Describe an offset from the map's centre (dy positive = up) in words."""
    if span <= 0 or math.hypot(dx, dy) < 0.15 * span:
        return "near the centre"
    horizontal = "left" if dx < 0 else "right"
    vertical = "upper" if dy > 0 else "lower"
    if abs(dx) >= 2 * abs(dy):
        return f"{horizontal} of centre"
    if abs(dy) >= 2 * abs(dx):
        return "above centre" if dy > 0 else "below centre"
    return f"{vertical} {horizontal}"


def _sample(ids: list, n: int) -> list:
    """Take n evenly spaced ids (deterministic; keeps the spread of an ordered list)."""
    if n >= len(ids):
        return ids
    if n <= 0:
        return []
    step = len(ids) / n
    return [ids[int(i * step)] for i in range(n)]


def map_geometry(
    result: dict | None,
    *,
    you: Any = None,
    labels: dict | None = None,
    max_points: int = MAX_POINTS,
) -> MapGeometry:
    """Lay out a snapshot result's participants, groups and "you are here" in a viewBox.

    `you` is a participant id (user id) to mark; `labels` maps group id -> display name.
    """
    geometry = MapGeometry(width=WIDTH, height=HEIGHT)
    result = result or {}
    projections = result.get("projections") or {}
    groups = sorted(result.get("groups") or [], key=lambda g: g.get("id", 0))
    labels = {str(k): v for k, v in (labels or {}).items()}

    group_of: dict[str, int] = {}
    for gi, g in enumerate(groups):
        for p in g.get("members") or []:
            group_of[str(p)] = gi
    in_conv = [str(p) for p in result.get("in_conversation") or []]
    drawn = [p for p in in_conv if p in projections] or [p for p in group_of if p in projections]
    if not drawn:
        return geometry
    raw = {p: projections[p] for p in drawn}
    xs = [v[0] for v in raw.values()]
    ys = [v[1] for v in raw.values()]
    you_key = str(you) if you is not None else None
    if you_key is not None and you_key in projections:
        xs.append(projections[you_key][0])
        ys.append(projections[you_key][1])
    min_x, max_x, min_y, max_y = min(xs), max(xs), min(ys), max(ys)
    span = max(max_x - min_x, max_y - min_y) or 1.0
    scale = min((WIDTH - 2 * MARGIN) / span, (HEIGHT - 2 * MARGIN) / span)
    # Centre the cloud in the viewBox; SVG's y axis points down, the projection's up.
    off_x = WIDTH / 2 - scale * (min_x + max_x) / 2
    off_y = HEIGHT / 2 + scale * (min_y + max_y) / 2

    def to_view(x: float, y: float) -> tuple[float, float]:
        return (round(off_x + scale * x, 1), round(off_y - scale * y, 1))

    centre_x = sum(v[0] for v in raw.values()) / len(raw)
    centre_y = sum(v[1] for v in raw.values()) / len(raw)

    geometry.total_participants = len(drawn)
    chosen = drawn
    if len(drawn) > max_points:
        # Density-preserving: every group (and the ungrouped) keeps its share of the points.
        geometry.sampled = True
        buckets: dict[int, list[str]] = {}
        for p in drawn:
            buckets.setdefault(group_of.get(p, -1), []).append(p)
        chosen = []
        for members in buckets.values():
            members.sort(key=lambda p: (raw[p][0], raw[p][1]))
            chosen.extend(_sample(members, max(1, round(max_points * len(members) / len(drawn)))))
    for p in chosen:
        x, y = to_view(*raw[p])
        geometry.points.append(MapPoint(x, y, group_of.get(p, -1)))

    for gi, g in enumerate(groups):
        members = [str(p) for p in g.get("members") or [] if str(p) in raw]
        view_pts = [to_view(*raw[p]) for p in members]
        centre = g.get("center")
        if centre and len(centre) == 2 and all(isinstance(c, int | float) for c in centre):
            gx, gy = centre
        elif members:
            gx = sum(raw[p][0] for p in members) / len(members)
            gy = sum(raw[p][1] for p in members) / len(members)
        else:
            gx, gy = centre_x, centre_y
        lx, ly = to_view(gx, gy)
        letter = group_letter(gi)
        geometry.groups.append(
            MapGroup(
                id=g.get("id"),
                label=labels.get(str(g.get("id"))) or f"Group {letter}",
                letter=letter,
                colour=PALETTE[gi % len(PALETTE)],
                shape=SHAPES[gi % len(SHAPES)],
                size=int(g.get("n_members") or len(g.get("members") or [])),
                hull=_convex_hull(view_pts),
                label_x=min(max(lx, MARGIN), WIDTH - MARGIN),
                label_y=min(max(ly, MARGIN / 2), HEIGHT - MARGIN / 2),
                position=_position_words(gx - centre_x, gy - centre_y, span),
            )
        )
    if you_key is not None and you_key in projections:
        geometry.you = to_view(*projections[you_key])
        gi = group_of.get(you_key)
        geometry.you_group_index = gi
    return geometry


# ------------------------------------------------------------------------------- text


def text_alternative(geometry: MapGeometry) -> list[str]:
    """Describe the map in sentences: each group's size and where it sits."""
    if geometry.empty:
        return ["The map is empty: nobody has voted enough to be placed on it yet."]
    lines = []
    n = geometry.total_participants
    intro = (
        f"{n} participant{'s' if n != 1 else ''} placed by how they voted; people who vote "
        "alike are close together."
    )
    if geometry.sampled:
        intro += (
            f" To keep the image small it shows a sample of {len(geometry.points)} of them, "
            "in proportion to each group's size; the outlines and sizes count everyone."
        )
    lines.append(intro)
    for g in geometry.groups:
        lines.append(f"{g.label}, {g.size_text}, {g.position} (shown as {g.shape}s).")
    if not geometry.groups:
        lines.append("No separate opinion groups were found.")
    if geometry.you is not None:
        if geometry.you_group_index is not None:
            lines.append(f"You are in {geometry.groups[geometry.you_group_index].label}.")
        else:
            lines.append("You are on the map but not in a group yet.")
    return lines


# ------------------------------------------------------------------------------- SVG


def _fmt(v: float) -> str:
    return f"{v:.1f}".rstrip("0").rstrip(".")


def _polygon_points(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in points)


def _shape_vertices(shape: str, x: float, y: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        return [(x, y - r * 1.2), (x + r * 1.1, y + r * 0.8), (x - r * 1.1, y + r * 0.8)]
    if shape == "diamond":
        return [(x, y - r * 1.3), (x + r * 1.3, y), (x, y + r * 1.3), (x - r * 1.3, y)]
    if shape == "cross":
        a, b = r * 0.45, r * 1.2
        return [
            (x - a, y - b), (x + a, y - b), (x + a, y - a), (x + b, y - a), (x + b, y + a),
            (x + a, y + a), (x + a, y + b), (x - a, y + b), (x - a, y + a), (x - b, y + a),
            (x - b, y - a), (x - a, y - a),
        ]  # fmt: skip
    if shape == "star":
        out = []
        for i in range(10):
            rr = r * 1.4 if i % 2 == 0 else r * 0.6
            angle = -math.pi / 2 + i * math.pi / 5
            out.append((x + rr * math.cos(angle), y + rr * math.sin(angle)))
        return out
    # square
    return [(x - r, y - r), (x + r, y - r), (x + r, y + r), (x - r, y + r)]


def _svg_marker(shape: str, x: float, y: float, r: float, fill: str) -> str:
    if shape == "circle":
        return f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="{_fmt(r)}" fill="{fill}"/>'
    return f'<polygon points="{_polygon_points(_shape_vertices(shape, x, y, r))}" fill="{fill}"/>'


def _label_box_width(text: str, font_size: float) -> float:
    return max(len(text), 1) * font_size * 0.6 + 12


def render_svg(
    geometry: MapGeometry, *, title: str, description: str, id_prefix: str = "opinion-map"
) -> str:
    """Draw the map as a standalone, accessible SVG document (no scripts, no style attributes)."""
    tid, did = f"{id_prefix}-title", f"{id_prefix}-desc"
    w, h = geometry.width, geometry.height
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="100%" '
        f'role="img" aria-labelledby="{tid} {did}" class="opinion-map">',
        f'<title id="{tid}">{escape(title)}</title>',
        f'<desc id="{did}">{escape(description)}</desc>',
        f'<rect x="0" y="0" width="{w}" height="{h}" fill="#ffffff" stroke="#c9c9c9"/>',
        f'<line x1="{w / 2}" y1="8" x2="{w / 2}" y2="{h - 8}" stroke="#e4e4e4"/>',
        f'<line x1="8" y1="{h / 2}" x2="{w - 8}" y2="{h / 2}" stroke="#e4e4e4"/>',
    ]
    for g in geometry.groups:
        if len(g.hull) >= 3:
            out.append(
                f'<polygon points="{_polygon_points(g.hull)}" fill="{g.colour}" '
                f'fill-opacity="0.12" stroke="{g.colour}" stroke-width="2" '
                'stroke-linejoin="round"/>'
            )
    by_group: dict[int, list[MapPoint]] = {}
    for p in geometry.points:
        by_group.setdefault(p.group_index, []).append(p)
    for gi, points in sorted(by_group.items()):
        if gi < 0:
            out.append('<g stroke="#4a4a4a" stroke-width="0.8" fill-opacity="0.6">')
            out.extend(
                _svg_marker("circle", p.x, p.y, POINT_RADIUS * 0.8, "#bdbdbd") for p in points
            )
        else:
            g = geometry.groups[gi]
            out.append(f'<g stroke="{OUTLINE}" stroke-width="0.8">')
            out.extend(_svg_marker(g.shape, p.x, p.y, POINT_RADIUS, g.colour) for p in points)
        out.append("</g>")
    if geometry.you is not None:
        x, y = geometry.you
        out.append(
            f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="11" fill="none" stroke="#000000" '
            'stroke-width="3"/>'
            f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="3" fill="#000000"/>'
            f'<text x="{_fmt(x + 15)}" y="{_fmt(y - 12)}" font-family="sans-serif" '
            'font-size="15" font-weight="700" fill="#000000" stroke="#ffffff" '
            'stroke-width="4" paint-order="stroke">You are here</text>'
        )
    for g in geometry.groups:
        text = f"{g.label} ({g.size_text})"
        bw = _label_box_width(text, 14)
        x = min(max(g.label_x, bw / 2 + 4), geometry.width - bw / 2 - 4)
        out.append(
            f'<g><rect x="{_fmt(x - bw / 2)}" y="{_fmt(g.label_y - 13)}" width="{_fmt(bw)}" '
            f'height="22" rx="4" fill="#ffffff" fill-opacity="0.9" stroke="{g.colour}" '
            'stroke-width="2"/>'
            f'<text x="{_fmt(x)}" y="{_fmt(g.label_y + 3)}" text-anchor="middle" '
            f'font-family="sans-serif" font-size="14" fill="#1b1b1b">{escape(text)}</text></g>'
        )
    if geometry.empty:
        out.append(
            f'<text x="{w / 2}" y="{h / 2}" text-anchor="middle" font-family="sans-serif" '
            'font-size="18" fill="#4a4a4a">Nobody is on the map yet</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


# ------------------------------------------------------------------------------- PNG


def _hex(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))  # type: ignore[return-value]


def render_png(geometry: MapGeometry, *, width: int = 1200) -> bytes:
    """Draw the same map as a PNG image `width` pixels wide (Pillow)."""
    from PIL import Image, ImageDraw, ImageFont

    width = max(200, min(int(width), 4000))
    s = width / geometry.width
    height = round(geometry.height * s)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image, "RGBA")
    draw.rectangle([0, 0, width - 1, height - 1], outline=(201, 201, 201))
    draw.line([(width / 2, 8 * s), (width / 2, height - 8 * s)], fill=(228, 228, 228))
    draw.line([(8 * s, height / 2), (width - 8 * s, height / 2)], fill=(228, 228, 228))

    def font(size: float):
        try:
            return ImageFont.load_default(size=max(8, round(size)))
        except TypeError:  # Pillow < 10.1
            return ImageFont.load_default()

    for g in geometry.groups:
        if len(g.hull) >= 3:
            rgb = _hex(g.colour)
            draw.polygon(
                [(x * s, y * s) for x, y in g.hull],
                fill=(*rgb, 31),
                outline=rgb,
                width=max(1, round(2 * s)),
            )
    r = POINT_RADIUS * s
    for p in geometry.points:
        x, y = p.x * s, p.y * s
        if p.group_index < 0:
            draw.ellipse(
                [x - r * 0.8, y - r * 0.8, x + r * 0.8, y + r * 0.8],
                fill=(189, 189, 189),
                outline=(74, 74, 74),
            )
            continue
        g = geometry.groups[p.group_index]
        rgb = _hex(g.colour)
        if g.shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=rgb, outline=(27, 27, 27))
        else:
            draw.polygon(_shape_vertices(g.shape, x, y, r), fill=rgb, outline=(27, 27, 27))
    if geometry.you is not None:
        x, y = geometry.you[0] * s, geometry.you[1] * s
        rr = 11 * s
        draw.ellipse(
            [x - rr, y - rr, x + rr, y + rr], outline=(0, 0, 0), width=max(2, round(3 * s))
        )
        draw.ellipse([x - 3 * s, y - 3 * s, x + 3 * s, y + 3 * s], fill=(0, 0, 0))
        draw.text(
            (x + 15 * s, y - 26 * s),
            "You are here",
            fill=(0, 0, 0),
            font=font(15 * s),
            stroke_width=max(1, round(2 * s)),
            stroke_fill=(255, 255, 255),
        )
    label_font = font(14 * s)
    for g in geometry.groups:
        text = f"{g.label} ({g.size_text})"
        left, top, right, bottom = draw.textbbox((0, 0), text, font=label_font)
        bw, bh = right - left + 12 * s, bottom - top + 8 * s
        x = min(max(g.label_x * s, bw / 2 + 4), width - bw / 2 - 4)
        y = g.label_y * s
        draw.rounded_rectangle(
            [x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2],
            radius=4 * s,
            fill=(255, 255, 255, 230),
            outline=_hex(g.colour),
            width=max(1, round(2 * s)),
        )
        draw.text((x, y), text, fill=(27, 27, 27), font=label_font, anchor="mm")
    if geometry.empty:
        draw.text(
            (width / 2, height / 2),
            "Nobody is on the map yet",
            fill=(74, 74, 74),
            font=font(18 * s),
            anchor="mm",
        )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
