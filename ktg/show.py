"""Draw a graph file as a standalone SVG picture, in the style of the KTG paper's Fig. 4.

``ktg show`` must work on any machine a graph file lands on (a laptop, a CI
runner, a notebook), so this is pure Python string building: no graphviz, no
plotting library. The picture follows the paper: the "Label" node on the left,
the networks on a ring, the target node in red, and on each edge the selected
gate, cutoff edges left out.

Layout is deterministic (same graph, same bytes), which keeps pictures diffable
next to the graph files they show. Every element carries stable ``class`` and
``data-*`` attributes so tests and style sheets can find nodes and edges without
depending on coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from ktg.graph import GATES, LABEL_NODE, LOSSES, TARGET_NODE, Edge, Graph, Node

__all__ = ["edge_label", "render_svg", "write_svg"]

Point = tuple[float, float]

NODE_RADIUS = 42.0
# Frozen nodes get a second, outer ring this far out; edges stop at the outer ring.
FROZEN_RING = 5.0
# Centre-to-centre distance from the Label node to the nearest point of the ring.
LABEL_GAP = 210.0
# Distance between the apexes of two curves joining the same pair of nodes.
PARALLEL_SPACING = 46.0
ARROW_SIZE = 10.0
MARGIN = 24.0

SANS = "Helvetica, Arial, sans-serif"
# Edge labels use a monospace font so their width can be computed exactly, which
# the label placement (boxes that must not overlap) relies on.
MONO = "DejaVu Sans Mono, Menlo, Consolas, monospace"
MONO_ADVANCE = 0.6  # glyph advance of the monospace fonts above, in em
SANS_ADVANCE = 0.56  # a generous average for sans-serif text, in em
LABEL_FONT = 11.0
NODE_FONT = 12.0
CAPTION_FONT = 12.0
CAPTION_STEP = CAPTION_FONT + 8  # from one caption line to the next

TARGET_FILL = "#e53935"  # the paper's red target node
TARGET_STROKE = "#b71c1c"
NODE_FILL = "#e3f2fd"
NODE_STROKE = "#1565c0"
FROZEN_FILL = "#cfd8dc"
FROZEN_STROKE = "#546e7a"
LABEL_FILL = "#fff8e1"
LABEL_STROKE = "#8d6e63"
TEXT = "#212121"
GATE_COLOURS = {"through": "#455a64", "linear": "#1e88e5", "correct": "#2e7d32"}
OTHER_GATE_COLOUR = "#9e9e9e"


# -- text ----------------------------------------------------------------------

def _number(value: float) -> str:
    """Shortest readable form of a number: 1.0 -> '1', 0.25 -> '0.25'."""
    return f"{value:g}"


def edge_label(edge: Edge) -> str:
    """The text shown on an edge: 'loss · gate' plus whatever differs from the defaults.

    Defaults (weight 1, temperature 1, whole run) are left out so that the common
    case stays short and the unusual settings stand out.
    """
    text = f"{edge.loss} · {edge.gate}"
    if edge.weight != 1.0:
        text += f" ×{_number(edge.weight)}"
    if edge.temperature != 1.0:
        text += f" T={_number(edge.temperature)}"
    if edge.epochs is not None:
        start, end = edge.epochs
        text += f" [{start},{'∞' if end is None else end})"
    return text


def _shorten(text: str, limit: int) -> str:
    """Cut the middle out of long text, keeping both ends, where values tend to differ."""
    if len(text) <= limit:
        return text
    head = (limit - 1) // 2
    return text[:head] + "…" + text[len(text) - (limit - 1 - head):]


def _frozen_details(node: Node) -> list[str]:
    """What a frozen teacher is: its checkpoint file and/or what it was trained on."""
    lines = []
    if node.checkpoint:
        # The end of the path says most: `ktg train` names every checkpoint node<id>.pt,
        # so the folder just above it is what tells two teachers apart.
        path = node.checkpoint.replace("\\", "/")
        lines.append(path if len(path) <= 26 else "…" + path[-25:])
    if node.pretrain is not None:
        parts = []
        if node.pretrain.dataset is not None:
            parts.append(node.pretrain.dataset)
        if node.pretrain.classes is not None:
            count = len(node.pretrain.classes)
            parts.append(f"{count} class{'es' if count != 1 else ''}")
        if parts:
            lines.append(_shorten(" · ".join(parts), 28))
    return lines


def _meta_items(meta: dict[str, object]) -> list[str]:
    """Scalar meta entries as 'key value'; nested values would not fit a caption line."""
    items = []
    for key, value in meta.items():
        if isinstance(value, bool) or value is None:
            shown = str(value).lower() if value is not None else "null"
        elif isinstance(value, float):
            shown = f"{value:.4g}"
        elif isinstance(value, (int, str)):
            shown = str(value)
        else:
            continue
        items.append(f"{_shorten(str(key), 24)} {_shorten(shown, 40)}")
    return items


def _wrap(items: Sequence[str], width: int, sep: str = "  ·  ") -> list[str]:
    """Join items into lines of at most ``width`` characters (SVG text does not wrap)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + len(sep) + len(item) <= width:
            lines[-1] += sep + item
        else:
            lines.append(item)
    return lines


def _attr(value: object) -> str:
    """A quoted, escaped attribute value (user text can hold quotes, <, &)."""
    return quoteattr(str(value))


def _text_width(text: str, size: float, advance: float) -> float:
    return len(text) * size * advance


# -- geometry ------------------------------------------------------------------

@dataclass(frozen=True)
class _Box:
    x0: float
    y0: float
    x1: float
    y1: float

    @classmethod
    def around(cls, centre: Point, width: float, height: float) -> _Box:
        x, y = centre
        return cls(x - width / 2, y - height / 2, x + width / 2, y + height / 2)

    def overlap(self, other: _Box) -> float:
        """Area shared with ``other`` (0 when apart)."""
        w = min(self.x1, other.x1) - max(self.x0, other.x0)
        h = min(self.y1, other.y1) - max(self.y0, other.y0)
        return w * h if w > 0 and h > 0 else 0.0

    def union(self, other: _Box) -> _Box:
        return _Box(min(self.x0, other.x0), min(self.y0, other.y0),
                    max(self.x1, other.x1), max(self.y1, other.y1))


def _ring_radius(count: int) -> float:
    """Radius of the ring of networks: wide enough that neighbours leave room for labels."""
    if count <= 1:
        return 0.0
    if count == 2:
        return 120.0
    if count == 3:
        return 165.0
    return max(210.0, count * 215.0 / (2 * math.pi))


def _layout(graph: Graph) -> dict[int, Point]:
    """Node centres: Label on the left, the networks on a ring, node 1 first.

    The ring is rotated half a step so that no node sits on the side facing the
    Label node, where it would stand in the way of the Label's edges to the
    nodes behind it; going clockwise from that gap, node 1 comes first.
    """
    ids = sorted(graph.node_ids, key=lambda i: (i != TARGET_NODE, i))
    radius = _ring_radius(len(ids))
    pos: dict[int, Point] = {}
    for k, node_id in enumerate(ids):
        angle = math.pi + 2 * math.pi * (k + 0.5) / len(ids)
        pos[node_id] = (radius * math.cos(angle), radius * math.sin(angle))
    pos[LABEL_NODE] = (-(radius + LABEL_GAP), 0.0)
    return pos


def _bezier(p0: Point, c: Point, p2: Point, t: float) -> Point:
    u = 1 - t
    return (u * u * p0[0] + 2 * u * t * c[0] + t * t * p2[0],
            u * u * p0[1] + 2 * u * t * c[1] + t * t * p2[1])


def _toward(centre: Point, point: Point, distance: float) -> Point:
    """The point ``distance`` from ``centre`` in the direction of ``point``."""
    dx, dy = point[0] - centre[0], point[1] - centre[1]
    length = math.hypot(dx, dy) or 1.0
    return centre[0] + dx / length * distance, centre[1] + dy / length * distance


@dataclass(frozen=True)
class _Route:
    edge: Edge
    start: Point
    control: Point
    end: Point

    def at(self, t: float) -> Point:
        return _bezier(self.start, self.control, self.end, t)

    def path(self) -> str:
        """The curve as SVG path data, written as the equal cubic Bézier.

        A quadratic ``Q`` would be the same curve, but some renderers (cairosvg
        2.x) orient ``marker-end`` wrongly on leftward ``Q`` segments and hide the
        arrowhead inside the target node; ``C`` is drawn correctly everywhere.
        """
        (x0, y0), (cx, cy), (x1, y1) = self.start, self.control, self.end
        c1 = (x0 + 2 / 3 * (cx - x0), y0 + 2 / 3 * (cy - y0))
        c2 = (x1 + 2 / 3 * (cx - x1), y1 + 2 / 3 * (cy - y1))
        return (f"M{x0:.1f},{y0:.1f} C{c1[0]:.1f},{c1[1]:.1f} "
                f"{c2[0]:.1f},{c2[1]:.1f} {x1:.1f},{y1:.1f}")


def _control(a: Point, b: Point, apex_offset: float) -> Point:
    """Control point of a quadratic curve a->b whose middle lies ``apex_offset`` to the side.

    The middle of a quadratic Bézier is halfway between the chord's midpoint and
    the control point, hence the factor 2.
    """
    dx, dy = b[0] - a[0], b[1] - a[1]
    length = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / length, dx / length
    return ((a[0] + b[0]) / 2 + 2 * apex_offset * nx, (a[1] + b[1]) / 2 + 2 * apex_offset * ny)


def _radius(graph: Graph, node_id: int) -> float:
    """How far from a node's centre its drawing reaches (edges stop there)."""
    if node_id != LABEL_NODE and graph.is_frozen(node_id):
        return NODE_RADIUS + FROZEN_RING
    return NODE_RADIUS


def _edge_groups(graph: Graph) -> dict[tuple[int, int], list[Edge]]:
    """The drawn edges by the pair of nodes they join (lower id first), in a fixed order."""
    groups: dict[tuple[int, int], list[Edge]] = {}
    loss_rank = {loss: i for i, loss in enumerate(LOSSES)}
    drawn = sorted((e for e in graph.edges if e.gate != "cutoff"),
                   key=lambda e: (e.source, e.target, loss_rank.get(e.loss, len(LOSSES))))
    for e in drawn:
        groups.setdefault((min(e.source, e.target), max(e.source, e.target)), []).append(e)
    return groups


def _spread(edges: list[Edge]) -> list[float]:
    """Each edge's apex offset from its fan's middle line."""
    return [(j - (len(edges) - 1) / 2) * PARALLEL_SPACING for j in range(len(edges))]


class _FanPlanner:
    """Chooses how far each fan of curves bends (its base apex offset).

    Crossing a third node is ruled out, running alongside curves already drawn
    (where two lines would merge into one) costs, and so does bending at all.
    """

    SAMPLES = tuple(i / 20 for i in range(1, 20))  # where along a curve it is checked
    CELL = 8.0  # grid cell size of the curves already drawn
    CANDIDATES = (0.0, *(s * k * 20.0 for k in range(1, 9) for s in (1, -1)))  # base offsets tried, in order

    def __init__(self, graph: Graph, pos: dict[int, Point], groups: dict[tuple[int, int], list[Edge]]) -> None:
        self.graph, self.pos, self.groups = graph, pos, groups
        self.occupied: set[tuple[int, int]] = set()  # grid cells that drawn curves pass through

    def fan_points(self, pair: tuple[int, int], base: float) -> list[tuple[float, Point]]:
        a, b = self.pos[pair[0]], self.pos[pair[1]]
        return [(t, _bezier(a, _control(a, b, base + offset), b, t))
                for offset in _spread(self.groups[pair]) for t in self.SAMPLES]

    def clearance(self, pair: tuple[int, int], base: float) -> float:
        others = [(self.pos[n], _radius(self.graph, n) + 12) for n in self.pos if n not in pair]
        return min((math.hypot(x - ox, y - oy) - keep
                    for _, (x, y) in self.fan_points(pair, base) for (ox, oy), keep in others),
                   default=math.inf)

    def crowding(self, pair: tuple[int, int], base: float) -> int:
        # Ends are left out: every curve into a node converges there anyway.
        return sum((round(x / self.CELL), round(y / self.CELL)) in self.occupied
                   for t, (x, y) in self.fan_points(pair, base) if 0.15 < t < 0.85)

    def cost(self, pair: tuple[int, int], base: float) -> float:
        blocked = max(0.0, -self.clearance(pair, base))
        return 1e4 * blocked + abs(base) + 4 * self.crowding(pair, base)

    def bases(self) -> dict[tuple[int, int], float]:
        """Every fan's base offset; fans that can stay straight are laid first, so the others
        bend around them."""
        order = sorted(self.groups, key=lambda pair: (self.clearance(pair, 0.0) < 0, pair))
        bases: dict[tuple[int, int], float] = {}
        for pair in order:
            bases[pair] = min(self.CANDIDATES, key=lambda base, pair=pair: self.cost(pair, base))
            for _, (x, y) in self.fan_points(pair, bases[pair]):
                cx, cy = round(x / self.CELL), round(y / self.CELL)
                self.occupied.update((cx + i, cy + j) for i in (-1, 0, 1) for j in (-1, 0, 1))
        return bases


def _route_edges(graph: Graph, pos: dict[int, Point]) -> list[_Route]:
    """One curve per drawn edge, with edges between the same two nodes fanned apart.

    All edges joining a pair (both directions, several losses) share one frame,
    oriented from the lower to the higher id, so s->t and t->s get opposite sides
    and never coincide. Each fan then takes the bend that is cheapest (see
    :class:`_FanPlanner`).
    """
    groups = _edge_groups(graph)
    bases = _FanPlanner(graph, pos, groups).bases()
    routes: list[_Route] = []
    for pair, edges in sorted(groups.items()):
        a, b = pos[pair[0]], pos[pair[1]]
        for e, offset in zip(edges, _spread(edges), strict=True):
            c = _control(a, b, bases[pair] + offset)
            start = _toward(pos[e.source], c, _radius(graph, e.source))
            end = _toward(pos[e.target], c, _radius(graph, e.target) + 1.5)
            routes.append(_Route(e, start, c, end))
    return routes


def _place_labels(routes: Sequence[_Route], obstacles: Iterable[_Box]) -> list[_Box]:
    """A box on each curve for its label, clear of nodes and of the labels placed before.

    Greedy and deterministic. Candidates slide along the curve and step to either
    side of it; each costs its overlap with nodes and earlier labels (heavily),
    the other curves it would cover (a label over a crossing line is hard to
    read), and its distance from the middle of its own curve (to keep it
    recognisably on that curve). The cheapest wins; ties go to the earlier one.
    """
    taken = list(obstacles)
    ts = [0.5, 0.42, 0.58, 0.34, 0.66, 0.27, 0.73, 0.2, 0.8]
    shifts = [0.0, 8.0, -8.0, 16.0, -16.0]
    samples = [[r.at(i / 40) for i in range(41)] for r in routes]
    placed = []
    for k, route in enumerate(routes):
        width = _text_width(edge_label(route.edge), LABEL_FONT, MONO_ADVANCE) + 6
        height = LABEL_FONT + 4
        others = [p for j, points in enumerate(samples) if j != k for p in points]
        best: tuple[float, _Box] | None = None
        for shift in shifts:
            for t in ts:
                x, y = route.at(t)
                box = _Box.around((x, y + shift), width, height)
                cost = 10 * sum(box.overlap(other) for other in taken)
                cost += 25 * sum(box.x0 <= px <= box.x1 and box.y0 <= py <= box.y1
                                 for px, py in others)
                cost += 60 * abs(t - 0.5) + abs(shift)
                if best is None or cost < best[0]:
                    best = (cost, box)
        assert best is not None
        placed.append(best[1])
        taken.append(best[1])
    return placed


# -- drawing -------------------------------------------------------------------

def _gate_colour(gate: str) -> str:
    return GATE_COLOURS.get(gate, OTHER_GATE_COLOUR)


def _markers(gates: Iterable[str]) -> list[str]:
    """One arrowhead per gate colour: SVG 1.1 markers cannot take the path's colour."""
    out = []
    for gate in gates:
        out.append(
            f'<marker id="arrow-{gate}" viewBox="0 0 10 10" refX="10" refY="5" '
            f'markerWidth="{ARROW_SIZE:g}" markerHeight="{ARROW_SIZE:g}" '
            f'markerUnits="userSpaceOnUse" orient="auto">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{_gate_colour(gate)}"/></marker>'
        )
    return out


def _caption_box(centre: Point, lines: Sequence[str], above: bool) -> tuple[_Box, float]:
    """Box of a frozen node's caption, and the baseline of its first line."""
    size = CAPTION_FONT - 1
    height = len(lines) * (size + 3)
    width = max(_text_width(line, size, SANS_ADVANCE) for line in lines) + 4
    gap = NODE_RADIUS + FROZEN_RING + 5
    top = centre[1] - gap - height if above else centre[1] + gap
    box = _Box(centre[0] - width / 2, top, centre[0] + width / 2, top + height)
    return box, top + size


def _draw_node(graph: Graph, node: Node, centre: Point, caption: tuple[list[str], float] | None) -> str:
    x, y = centre
    node_id = node.id
    frozen = graph.is_frozen(node_id)
    kind = "target" if node_id == TARGET_NODE else "frozen" if frozen else "trained"
    if kind == "target":
        fill, stroke, ink = TARGET_FILL, TARGET_STROKE, "#ffffff"
    elif kind == "frozen":
        fill, stroke, ink = FROZEN_FILL, FROZEN_STROKE, TEXT
    else:
        fill, stroke, ink = NODE_FILL, NODE_STROKE, TEXT
    tooltip = f"node {node_id} · {node.model} ({kind})"
    parts = [
        f'<g class="node {kind}" data-node="{node_id}" data-model={_attr(node.model)}>',
        f"<title>{escape(tooltip)}</title>",
    ]
    if frozen:
        # A double, dashed outline: "this network is not trained here".
        parts.append(
            f'<circle class="node-ring" cx="{x:.1f}" cy="{y:.1f}" r="{NODE_RADIUS + FROZEN_RING:g}" '
            f'fill="none" stroke="{stroke}" stroke-width="1.5" stroke-dasharray="5 3"/>'
        )
    dash = ' stroke-dasharray="5 3"' if frozen else ""
    parts.append(
        f'<circle class="node-body" cx="{x:.1f}" cy="{y:.1f}" r="{NODE_RADIUS:g}" '
        f'fill="{fill}" stroke="{stroke}" stroke-width="2"{dash}/>'
    )
    parts.append(
        f'<text class="node-id" x="{x:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
        f'font-size="{NODE_FONT + 4:g}" font-weight="bold" fill="{ink}">{node_id}</text>'
    )
    # The model name goes on its own line, in a smaller font if it is wider than the
    # circle (e.g. mobilenet-0.25); textLength is not honoured by every renderer.
    room = 2 * NODE_RADIUS - 10
    size = min(NODE_FONT, room / max(1, len(node.model)) / SANS_ADVANCE)
    parts.append(
        f'<text class="node-model" x="{x:.1f}" y="{y + 15:.1f}" text-anchor="middle" '
        f'font-size="{size:.1f}" fill="{ink}">{escape(node.model)}</text>'
    )
    if caption is not None:
        lines, baseline = caption
        size = CAPTION_FONT - 1
        spans = []
        for i, line in enumerate(lines):
            style = ' font-style="italic" font-weight="bold"' if i == 0 else ""
            spans.append(f'<tspan x="{x:.1f}" y="{baseline + i * (size + 3):.1f}"{style}>'
                         f"{escape(line)}</tspan>")
        parts.append(f'<text class="node-caption" text-anchor="middle" font-size="{size:g}" '
                     f'fill="{FROZEN_STROKE}">{"".join(spans)}</text>')
    parts.append("</g>")
    return "".join(parts)


def _draw_label_node(centre: Point) -> str:
    x, y = centre
    return (
        f'<g class="node label" data-node="{LABEL_NODE}"><title>node 0 · labels</title>'
        f'<circle class="node-body" cx="{x:.1f}" cy="{y:.1f}" r="{NODE_RADIUS:g}" '
        f'fill="{LABEL_FILL}" stroke="{LABEL_STROKE}" stroke-width="2"/>'
        f'<text class="node-id" x="{x:.1f}" y="{y + 5:.1f}" text-anchor="middle" '
        f'font-size="{NODE_FONT + 3:g}" font-weight="bold" fill="{TEXT}">Label</text></g>'
    )


def _edge_attrs(edge: Edge) -> str:
    return (f'data-source="{edge.source}" data-target="{edge.target}" '
            f"data-loss={_attr(edge.loss)} data-gate={_attr(edge.gate)}")


def _draw_edge(route: _Route) -> str:
    e = route.edge
    colour = _gate_colour(e.gate)
    title = f"{e.source} → {e.target}: {edge_label(e)}"
    return (
        f'<g class="edge gate-{escape(e.gate)} loss-{escape(e.loss)}" {_edge_attrs(e)}>'
        f"<title>{escape(title)}</title>"
        f'<path class="edge-path" d="{route.path()}" fill="none" stroke="{colour}" '
        f'stroke-width="1.8" marker-end="url(#arrow-{escape(e.gate)})"/></g>'
    )


def _draw_edge_label(route: _Route, box: _Box) -> str:
    e = route.edge
    x = (box.x0 + box.x1) / 2
    baseline = box.y1 - 4
    return (
        f'<g class="edge-label" {_edge_attrs(e)}>'
        f'<rect x="{box.x0:.1f}" y="{box.y0:.1f}" width="{box.x1 - box.x0:.1f}" '
        f'height="{box.y1 - box.y0:.1f}" rx="3" fill="#ffffff" fill-opacity="0.88" '
        f'stroke="{_gate_colour(e.gate)}" stroke-width="0.6"/>'
        f'<text x="{x:.1f}" y="{baseline:.1f}" text-anchor="middle" font-family="{MONO}" '
        f'font-size="{LABEL_FONT:g}" fill="{_gate_colour(e.gate)}">{escape(edge_label(e))}</text></g>'
    )


def _frozen_captions(graph: Graph, pos: dict[int, Point]) -> tuple[dict[int, tuple[list[str], float]], list[_Box]]:
    """Each frozen node's caption (lines, first baseline) and the boxes they take.

    Captions go on the outer side of the ring, so they stay clear of edges.
    """
    captions: dict[int, tuple[list[str], float]] = {}
    boxes = []
    for node in graph.nodes:
        if graph.is_frozen(node.id):
            lines = ["frozen", *_frozen_details(node)]
            box, baseline = _caption_box(pos[node.id], lines, above=pos[node.id][1] < -1)
            captions[node.id] = (lines, baseline)
            boxes.append(box)
    return captions, boxes


def _drawing_bounds(boxes: Sequence[_Box], routes: Sequence[_Route]) -> _Box:
    """The box around every node, caption and label, and the curves' bulges."""
    bounds = boxes[0]
    for box in boxes:
        bounds = bounds.union(box)
    for route in routes:
        for t in (0.25, 0.5, 0.75):
            x, y = route.at(t)
            bounds = bounds.union(_Box(x, y, x, y))
    return bounds


@dataclass(frozen=True)
class _Page:
    """Where things go on the page: the drawing, shifted by (dx, dy), with the title
    above it and the meta caption lines and the legend below it."""

    width: float
    height: float
    dx: float
    dy: float
    first_baseline: float   # of the meta caption lines
    legend_baseline: float

    @classmethod
    def around(cls, bounds: _Box, *, title: str | None, caption_lines: Sequence[str],
               legend_items: Sequence[str]) -> _Page:
        legend_width = sum(_text_width(item, CAPTION_FONT, SANS_ADVANCE) + 46 for item in legend_items)
        header = CAPTION_FONT * 2 + 14 if title else 0.0
        first_baseline = MARGIN + header + (bounds.y1 - bounds.y0) + 16 + CAPTION_FONT
        legend_baseline = first_baseline + len(caption_lines) * CAPTION_STEP
        text_widths = [legend_width, *(_text_width(line, CAPTION_FONT, SANS_ADVANCE)
                                       for line in caption_lines)]
        if title:
            text_widths.append(_text_width(title, CAPTION_FONT + 4, SANS_ADVANCE))
        width = max(bounds.x1 - bounds.x0, *text_widths) + 2 * MARGIN
        return cls(width, legend_baseline + MARGIN, MARGIN - bounds.x0, MARGIN + header - bounds.y0,
                   first_baseline, legend_baseline)


def _document_head(graph: Graph, page: _Page, title: str | None, n_edges: int, gates: Sequence[str]) -> list[str]:
    doc_title = title or (f"ktg graph: {len(graph.nodes)} node{'s' * (len(graph.nodes) != 1)}, "
                          f"{n_edges} edge{'s' * (n_edges != 1)}")
    head = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" class="ktg-graph" width="{page.width:.0f}" '
        f'height="{page.height:.0f}" viewBox="0 0 {page.width:.0f} {page.height:.0f}" font-family="{SANS}">',
        f"<title>{escape(doc_title)}</title>",
        f"<defs>{''.join(_markers(gates))}</defs>",
        '<rect class="background" x="0" y="0" width="100%" height="100%" fill="#ffffff"/>',
    ]
    if title:
        head.append(f'<text class="title" x="{MARGIN:g}" y="{MARGIN + CAPTION_FONT + 4:g}" '
                    f'font-size="{CAPTION_FONT + 4:g}" font-weight="bold" fill="{TEXT}">'
                    f"{escape(title)}</text>")
    return head


def _draw_graph(graph: Graph, page: _Page, pos: dict[int, Point], routes: Sequence[_Route],
                label_boxes: Sequence[_Box], captions: dict[int, tuple[list[str], float]]) -> list[str]:
    """Edges, then nodes over them, then the edge labels over both."""
    nodes = [_draw_label_node(pos[LABEL_NODE])]
    for node in sorted(graph.nodes, key=lambda n: n.id):
        nodes.append(_draw_node(graph, node, pos[node.id], captions.get(node.id)))
    return [
        f'<g class="graph" transform="translate({page.dx:.1f},{page.dy:.1f})">',
        '<g class="edges">' + "".join(_draw_edge(r) for r in routes) + "</g>",
        '<g class="nodes">' + "".join(nodes) + "</g>",
        '<g class="edge-labels">'
        + "".join(_draw_edge_label(r, b) for r, b in zip(routes, label_boxes, strict=True))
        + "</g>",
        "</g>",
    ]


def _draw_legend(legend_items: Sequence[str], gates: Sequence[str], baseline: float) -> list[str]:
    """One coloured arrow per gate drawn, then the note on cutoff edges."""
    y = baseline
    out = ['<g class="legend">']
    x = MARGIN
    for item in legend_items:
        if item in gates:
            colour = _gate_colour(item)
            out.append(f'<g class="legend-item gate-{escape(item)}">'
                       f'<path d="M{x:.1f},{y - 4:.1f} L{x + 28:.1f},{y - 4:.1f}" stroke="{colour}" '
                       f'stroke-width="1.8" marker-end="url(#arrow-{escape(item)})"/>'
                       f'<text x="{x + 34:.1f}" y="{y:.1f}" font-size="{CAPTION_FONT:g}" '
                       f'fill="{colour}">{escape(item)}</text></g>')
            x += _text_width(item, CAPTION_FONT, SANS_ADVANCE) + 46
        else:
            out.append(f'<text class="legend-note" x="{x:.1f}" y="{y:.1f}" font-size="{CAPTION_FONT:g}" '
                       f'fill="{OTHER_GATE_COLOUR}">{escape(item)}</text>')
    out.append("</g>")
    return out


def render_svg(graph: Graph, *, title: str | None = None) -> str:
    """The graph as a standalone SVG document (a string, UTF-8 when written).

    Node 0 ("Label") sits on the left and the listed networks on a ring; node 1,
    the target, is red; frozen teachers are grey with a dashed double outline and
    a caption. Every non-cutoff edge is an arrow labelled 'loss · gate' and
    coloured by gate; cutoff edges are not drawn, as in the paper's Fig. 4.
    ``title`` is shown on top; scalar ``meta`` entries (accuracy, dataset, ...)
    form a caption line below.
    """
    pos = _layout(graph)
    routes = _route_edges(graph, pos)
    captions, caption_boxes = _frozen_captions(graph, pos)
    obstacles = [_Box.around(pos[n], 2 * _radius(graph, n) + 4, 2 * _radius(graph, n) + 4)
                 for n in pos] + caption_boxes
    label_boxes = _place_labels(routes, obstacles)
    bounds = _drawing_bounds([*obstacles, *label_boxes], routes)

    gates = [g for g in GATES if any(r.edge.gate == g for r in routes)]
    legend_items = [*gates, "cutoff: not drawn"]
    caption_lines = _wrap(_meta_items(graph.meta), 90)
    page = _Page.around(bounds, title=title, caption_lines=caption_lines, legend_items=legend_items)

    out = _document_head(graph, page, title, len(routes), gates)
    out += _draw_graph(graph, page, pos, routes, label_boxes, captions)
    for i, line in enumerate(caption_lines):
        out.append(f'<text class="caption" x="{MARGIN:g}" y="{page.first_baseline + i * CAPTION_STEP:.1f}" '
                   f'font-size="{CAPTION_FONT:g}" fill="{TEXT}">{escape(line)}</text>')
    out += _draw_legend(legend_items, gates, page.legend_baseline)
    out.append("</svg>")
    return "\n".join(out) + "\n"


def write_svg(graph: Graph, path: str | Path, *, title: str | None = None) -> None:
    """Write :func:`render_svg`'s picture to ``path`` (UTF-8), creating parent folders."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_svg(graph, title=title), encoding="utf-8")
