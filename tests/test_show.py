"""The SVG picture of a graph: what a reader of `ktg show` output relies on.

The SVG is parsed back with ElementTree and checked through its stable
``class``/``data-*`` attributes, never through coordinates, except where the
geometry itself is the behaviour (distinct curves, labels that do not overlap).
"""

from __future__ import annotations

import itertools
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from ktg.graph import Graph
from ktg.show import edge_label, render_svg, write_svg

SVG = "{http://www.w3.org/2000/svg}"

# The DESIGN.md example: a bidirectional pair (1<->2), two edges 3->1 (cm then
# lkd), a frozen teacher (3, its only incoming edge cutoff) and every optional field.
DESIGN_GRAPH: dict[str, Any] = {
    "format": "ktg-graph/1",
    "nodes": [
        {"id": 1, "model": "resnet32"},
        {"id": 2, "model": "wrn28-2"},
        {"id": 3, "model": "resnet110", "checkpoint": "teachers/r110-cifar100.pt"},
    ],
    "edges": [
        {"source": 0, "target": 1, "loss": "ce", "gate": "through"},
        {"source": 2, "target": 1, "loss": "kl", "gate": "linear", "temperature": 4.0},
        {"source": 0, "target": 2, "loss": "ce", "gate": "correct"},
        {"source": 1, "target": 2, "loss": "kl", "gate": "through", "weight": 0.5},
        {"source": 3, "target": 1, "loss": "cm", "gate": "through", "epochs": [0, 100]},
        {"source": 3, "target": 1, "loss": "lkd", "gate": "through", "epochs": [100, None]},
        {"source": 0, "target": 3, "loss": "ce", "gate": "cutoff"},
    ],
    "meta": {"study": "demo", "trial": 17, "val_acc": 0.7346, "dataset": "cifar100"},
}

MODELS = ["resnet32", "wrn28-2", "resnet110", "mobilenet-0.25", "resnet20",
          "wrn16-1", "resnet56", "mobilenet-1.0", "resnet32", "wrn40-4"]
GATE_CYCLE = ["through", "linear", "correct"]


def fully_connected(count: int) -> dict[str, Any]:
    """Every node taught by the labels and by every other node, gates cycling."""
    ids = range(1, count + 1)
    pairs = [(s, t) for t in ids for s in [0, *ids] if s != t]
    return {
        "format": "ktg-graph/1",
        "nodes": [{"id": i, "model": MODELS[i - 1]} for i in ids],
        "edges": [
            {"source": s, "target": t, "loss": "ce" if s == 0 else "kl",
             "gate": GATE_CYCLE[k % len(GATE_CYCLE)]}
            for k, (s, t) in enumerate(pairs)
        ],
    }


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # raises on malformed XML


def classes(el: ET.Element) -> set[str]:
    return set(el.get("class", "").split())


def groups(root: ET.Element, cls: str) -> list[ET.Element]:
    return [el for el in root.iter(f"{SVG}g") if cls in classes(el)]


def node_groups(root: ET.Element) -> dict[int, ET.Element]:
    return {int(el.get("data-node")): el for el in groups(root, "node")}


def pair(el: ET.Element) -> tuple[int, int]:
    return int(el.get("data-source")), int(el.get("data-target"))


def text_of(el: ET.Element) -> str:
    return "".join(el.itertext())


def body(node: ET.Element) -> ET.Element:
    circles = [c for c in node.iter(f"{SVG}circle") if "node-body" in classes(c)]
    assert len(circles) == 1
    return circles[0]


def is_red(colour: str) -> bool:
    match = re.fullmatch(r"#([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})", colour)
    assert match, colour
    r, g, b = (int(x, 16) for x in match.groups())
    return r >= 0xC0 and g <= 0x60 and b <= 0x60


@pytest.fixture(scope="module")
def design() -> ET.Element:
    return parse(render_svg(Graph.from_dict(DESIGN_GRAPH), title="DESIGN example"))


def test_one_node_element_per_listed_node_plus_label(design: ET.Element) -> None:
    nodes = node_groups(design)
    assert sorted(nodes) == [0, 1, 2, 3]
    assert "label" in classes(nodes[0])
    assert text_of(nodes[0]).strip().endswith("Label")
    assert nodes[2].get("data-model") == "wrn28-2"
    assert "wrn28-2" in text_of(nodes[2])


def test_target_node_is_red(design: ET.Element) -> None:
    nodes = node_groups(design)
    assert "target" in classes(nodes[1])
    assert is_red(body(nodes[1]).get("fill"))
    for other in (0, 2, 3):
        assert "target" not in classes(nodes[other])
        assert not is_red(body(nodes[other]).get("fill"))


def test_frozen_node_is_marked_with_its_checkpoint(design: ET.Element) -> None:
    nodes = node_groups(design)
    frozen = [n for n, el in nodes.items() if "frozen" in classes(el)]
    assert frozen == [3]  # its only incoming edge, 0->3, is cutoff
    caption = [t for t in nodes[3].iter(f"{SVG}text") if "node-caption" in classes(t)]
    assert len(caption) == 1
    assert "frozen" in text_of(caption[0])
    assert "r110-cifar100.pt" in text_of(caption[0])


def test_one_edge_element_per_non_cutoff_edge(design: ET.Element) -> None:
    edges = groups(design, "edge")
    drawn = [(e["source"], e["target"], e["loss"]) for e in DESIGN_GRAPH["edges"]
             if e["gate"] != "cutoff"]
    assert sorted((*pair(el), el.get("data-loss")) for el in edges) == sorted(drawn)
    assert (0, 3) not in {pair(el) for el in edges}
    for el in edges:
        assert f"gate-{el.get('data-gate')}" in classes(el)
        (path,) = el.iter(f"{SVG}path")
        assert path.get("marker-end", "").startswith("url(#arrow-")


def test_edge_labels_show_loss_gate_and_non_default_settings(design: ET.Element) -> None:
    labels = {(*pair(el), el.get("data-loss")): text_of(el) for el in groups(design, "edge-label")}
    assert labels == {
        (0, 1, "ce"): "ce · through",
        (2, 1, "kl"): "kl · linear T=4",
        (0, 2, "ce"): "ce · correct",
        (1, 2, "kl"): "kl · through ×0.5",
        (3, 1, "cm"): "cm · through [0,100)",
        (3, 1, "lkd"): "lkd · through [100,∞)",
    }


def test_edges_joining_the_same_nodes_are_distinct_curves(design: ET.Element) -> None:
    paths = {(*pair(el), el.get("data-loss")): next(el.iter(f"{SVG}path")).get("d")
             for el in groups(design, "edge")}
    assert paths[(1, 2, "kl")] != paths[(2, 1, "kl")]  # both directions
    assert paths[(3, 1, "cm")] != paths[(3, 1, "lkd")]  # two losses, same direction
    assert len(set(paths.values())) == len(paths)


def test_title_meta_caption_and_legend(design: ET.Element) -> None:
    assert design.find(f"{SVG}title").text == "DESIGN example"
    texts = {cls: text_of(el) for el in design.iter(f"{SVG}text")
             for cls in classes(el) & {"title", "caption"}}
    assert texts["title"] == "DESIGN example"
    assert "val_acc 0.7346" in texts["caption"]
    assert "dataset cifar100" in texts["caption"]
    legend = {g.get("class").split()[-1] for g in groups(design, "legend-item")}
    assert legend == {"gate-through", "gate-linear", "gate-correct"}


def test_user_text_is_escaped() -> None:
    nasty = "<b>&amp; \"quoted\" 'single' </svg>"
    data = {
        **DESIGN_GRAPH,
        "nodes": [{**n, "checkpoint": f"runs/{nasty}/node3.pt"} if n["id"] == 3 else n
                  for n in DESIGN_GRAPH["nodes"]],
        "meta": {"note": nasty, nasty: 1},
    }
    svg = render_svg(Graph.from_dict(data), title=nasty)
    root = parse(svg)
    assert root.find(f"{SVG}title").text == nasty
    caption = " ".join(text_of(el) for el in root.iter(f"{SVG}text") if "caption" in classes(el))
    assert f"note {nasty}" in caption
    assert "<b>" not in svg


def test_same_graph_same_picture_whatever_the_edge_order() -> None:
    data = fully_connected(4)
    shuffled = {**data, "edges": list(reversed(data["edges"]))}
    assert render_svg(Graph.from_dict(data)) == render_svg(Graph.from_dict(shuffled))


@pytest.mark.parametrize("count", range(1, 11))
def test_any_size_from_one_to_ten_nodes(count: int) -> None:
    root = parse(render_svg(Graph.from_dict(fully_connected(count))))
    assert sorted(node_groups(root)) == list(range(count + 1))
    assert len(groups(root, "edge")) == count * count  # labels + the other count-1 nodes
    # Every node lies inside the picture.
    _, _, width, height = (float(v) for v in root.get("viewBox").split())
    (dx, dy), = (tuple(map(float, re.findall(r"-?[\d.]+", g.get("transform"))))
                 for g in groups(root, "graph"))
    for node in node_groups(root).values():
        circle = body(node)
        x, y, r = (float(circle.get(k)) for k in ("cx", "cy", "r"))
        assert 0 <= x + dx - r and x + dx + r <= width
        assert 0 <= y + dy - r and y + dy + r <= height


def _boxes(root: ET.Element) -> list[tuple[float, float, float, float]]:
    out = []
    for el in groups(root, "edge-label"):
        (rect,) = el.iter(f"{SVG}rect")
        x, y, w, h = (float(rect.get(k)) for k in ("x", "y", "width", "height"))
        out.append((x, y, x + w, y + h))
    return out


def test_labels_of_a_fully_connected_graph_do_not_overlap() -> None:
    root = parse(render_svg(Graph.from_dict(fully_connected(4))))
    boxes = _boxes(root)
    assert len(boxes) == 16
    for a, b in itertools.combinations(boxes, 2):
        apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        assert apart, (a, b)
    for node in node_groups(root).values():
        circle = body(node)
        cx, cy, r = (float(circle.get(k)) for k in ("cx", "cy", "r"))
        for x0, y0, x1, y1 in boxes:
            nearest = (min(max(cx, x0), x1), min(max(cy, y0), y1))
            assert (nearest[0] - cx) ** 2 + (nearest[1] - cy) ** 2 >= r * r


def test_edge_label_text() -> None:
    graph = Graph.from_dict(DESIGN_GRAPH)
    assert [edge_label(e) for e in graph.edges][:2] == ["ce · through", "kl · linear T=4"]


def test_write_svg_creates_the_file(tmp_path: Path) -> None:
    out = tmp_path / "pictures" / "g.svg"
    write_svg(Graph.from_dict(DESIGN_GRAPH), out)
    root = parse(out.read_text(encoding="utf-8"))
    assert sorted(node_groups(root)) == [0, 1, 2, 3]
