"""The recognition network on a date, as DOT text or as SVG drawn by our own code.

Invariants:

- :func:`network` is the one place that decides what is drawn: administrations as nodes,
  unions as clusters of their members *on that date*, arrangements in force on that date as
  edges labelled with their id (see :meth:`Recogniser.in_force`). A bilateral arrangement is an
  edge between its parties; a plurilateral or bloc-to-bloc one is a hub (a small diamond named
  by its id) with a spoke to each party, so an 11-party arrangement is 11 lines, not 55.
- Arrows point from the issuer to the recogniser (``R<-I`` in the dataset: I's AEOs are
  recognised by R). An edge in force both ways has a head at each end.
- Output is deterministic: every collection is sorted, the layout uses no randomness, and
  numbers are rounded, so the same dataset and date always give the same bytes.
- No external binary and no dependency: the layout is a ring (a chord diagram) ordered so that
  connected items sit near each other; union clusters are boxes on the ring holding a grid of
  their members; with a focus, the focus sits in the centre and its counterparts around it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from xml.sax.saxutils import escape, quoteattr

from registry.errors import QuestionError
from registry.resolver import InForce, Recogniser

HUB_PREFIX = "hub:"


@dataclass(frozen=True, slots=True)
class Node:
    id: str  # an administration or union code, or HUB_PREFIX + arrangement id
    label: str
    kind: str  # "administration", "union" or "hub"
    cluster: str | None = None  # the union whose cluster holds it


@dataclass(frozen=True, slots=True)
class Edge:
    """``source`` -> ``target``: target recognises source's AEOs; ``both_ways``: and back."""

    source: str
    target: str
    arrangement: str
    both_ways: bool
    label: str


@dataclass(frozen=True, slots=True)
class Cluster:
    union: str
    programme: str | None  # None before the union's programme exists
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Network:
    at: date
    dataset: str
    focus: str | None
    nodes: tuple[Node, ...]
    clusters: tuple[Cluster, ...]
    edges: tuple[Edge, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "at": self.at.isoformat(),
            "dataset": self.dataset,
            "focus": self.focus,
            "nodes": [{"id": n.id, "label": n.label, "kind": n.kind, "cluster": n.cluster}
                      for n in self.nodes],
            "clusters": [{"union": c.union, "programme": c.programme, "members": list(c.members)}
                         for c in self.clusters],
            "edges": [{"source": e.source, "target": e.target, "arrangement": e.arrangement,
                       "both_ways": e.both_ways, "label": e.label} for e in self.edges],
        }


def network(recogniser: Recogniser, at: date, *, focus: str | None = None,
            strict: bool = False) -> Network:
    """The recognition network on ``at`` (around ``focus`` when given)."""
    dataset = recogniser.dataset
    in_force = recogniser.in_force(at, strict=strict)
    clusters = {
        u.code: Cluster(u.code, u.programme.id if recogniser.union_programme_exists(u.code, at)
                        else None, recogniser.members_on(u.code, at))
        for u in dataset.unions
    }
    edges: list[Edge] = []
    hubs: list[Node] = []
    for item in in_force:
        edges.extend(_edges_of(item))
        if item.arrangement.kind.value != "bilateral":
            hubs.append(Node(HUB_PREFIX + item.arrangement.id, item.arrangement.id, "hub"))
    if focus is not None:
        if not recogniser.is_known_code(focus):
            raise QuestionError(f"unknown focus code {focus!r}")
        near = set(recogniser.acting_parties(focus, at))
        kept_hubs = {e.target for e in edges if e.target.startswith(HUB_PREFIX)
                     and e.source in near} | {e.source for e in edges
                                              if e.source.startswith(HUB_PREFIX)
                                              and e.target in near}
        near |= kept_hubs
        edges = [e for e in edges if e.source in near or e.target in near]
        hubs = [h for h in hubs if h.id in kept_hubs]
        shown = {focus} | {e.source for e in edges} | {e.target for e in edges}
        keep = {c for c in clusters if c in shown or shown & set(clusters[c].members)}
        clusters = {c: clusters[c] for c in sorted(keep)}
    else:
        clusters = {c: v for c, v in sorted(clusters.items()) if v.members or any(
            c in (e.source, e.target) for e in edges)}
    member_of = {m: c for c, cluster in clusters.items() for m in cluster.members}
    codes = {e.source for e in edges} | {e.target for e in edges} | set(member_of) | set(
        clusters)
    if focus is not None:
        codes.add(focus)
    nodes = [
        Node(code, code, "union" if code in clusters else "administration",
             code if code in clusters else member_of.get(code))
        for code in sorted(c for c in codes if not c.startswith(HUB_PREFIX))
    ]
    nodes.extend(sorted(hubs, key=lambda h: h.id))
    return Network(at, recogniser.version, focus, tuple(nodes), tuple(clusters.values()),
                   tuple(sorted(edges, key=lambda e: (e.arrangement, e.source, e.target))))


def _edges_of(item: InForce) -> list[Edge]:
    a = item.arrangement
    pairs = {(d.recogniser, d.issuer) for d in item.directions}
    if a.kind.value == "bilateral":
        x, y = a.parties
        if (x, y) in pairs and (y, x) in pairs:
            return [Edge(x, y, a.id, True, a.id)]
        recogniser, issuer = next(iter(pairs))
        return [Edge(issuer, recogniser, a.id, False, a.id)]
    hub = HUB_PREFIX + a.id
    result: list[Edge] = []
    for party in a.parties:
        recognises = any(r == party for r, _ in pairs)
        recognised = any(i == party for _, i in pairs)
        side = a.side_of(party)
        label = "" if side is None else "AB"[side]
        if recognises and recognised:
            result.append(Edge(party, hub, a.id, True, label))
        elif recognised:
            result.append(Edge(party, hub, a.id, False, label))
        elif recognises:
            result.append(Edge(hub, party, a.id, False, label))
    return result


# --- DOT ------------------------------------------------------------------------------------


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(net: Network) -> str:
    """Graphviz DOT text of ``net`` (made by our code; Graphviz is not needed to produce it)."""
    title = f"Recognition network on {net.at.isoformat()}" + (
        f" around {net.focus}" if net.focus else "") + f" (dataset {net.dataset[:12]})"
    lines = [
        "digraph recognition {",
        f"  graph [label={_q(title)}, labelloc=t, fontsize=16, overlap=false, splines=true];",
        '  node [shape=circle, fontsize=10, width=0.4, fixedsize=true];',
        "  edge [fontsize=8, arrowsize=0.6];",
    ]
    for cluster in net.clusters:
        label = cluster.union + (f" ({cluster.programme})" if cluster.programme else "")
        lines.append(f"  subgraph {_q('cluster_' + cluster.union)} {{")
        lines.append(f"    label={_q(label)}; style=rounded;")
        lines.append(f"    {_q(cluster.union)} [shape=box, style=bold, width=0.6];")
        lines.extend(f"    {_q(member)};" for member in cluster.members)
        lines.append("  }")
    for node in net.nodes:
        if node.kind == "hub":
            lines.append(f"  {_q(node.id)} [shape=diamond, label={_q(node.label)}, "
                         "fixedsize=false, fontsize=8];")
        elif node.cluster is None:
            lines.append(f"  {_q(node.id)};")
    for edge in net.edges:
        attrs = [f"label={_q(edge.label)}"] if edge.label else []
        if edge.both_ways:
            attrs.append("dir=both")
        lines.append(f"  {_q(edge.source)} -> {_q(edge.target)} [{', '.join(attrs)}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


# --- SVG ------------------------------------------------------------------------------------

_NODE_R = 15.0
_CELL_W, _CELL_H, _HEADER = 30.0, 20.0, 22.0


@dataclass(slots=True)
class _Item:
    """Something placed on the ring: a lone node or a cluster box."""

    key: str
    width: float
    height: float
    x: float = 0.0
    y: float = 0.0


@dataclass(frozen=True, slots=True)
class _Anchor:
    x: float
    y: float
    half_w: float
    half_h: float
    round: bool


def _cluster_size(cluster: Cluster) -> tuple[int, float, float]:
    count = max(1, len(cluster.members))
    cols = max(2, math.ceil(math.sqrt(count * 1.6)))
    rows = math.ceil(count / cols)
    title = 8.0 * len(cluster.union + (cluster.programme or "")) + 30
    return cols, max(cols * _CELL_W + 10, title), rows * _CELL_H + _HEADER + 8


def _ring_order(items: list[str], weight: dict[tuple[str, str], int]) -> list[str]:
    """Ring order: the best-connected items ("hubs") spread around the ring, each followed and
    preceded by the items mostly tied to it, so that chords between hubs cross the interior
    (spreading their labels) and a hub's own partners sit next to it."""
    degree = dict.fromkeys(items, 0)
    for (a, b), w in weight.items():
        if a in degree and b in degree:
            degree[a] += w
    ranked = sorted(items, key=lambda i: (-degree[i], i))
    hubs = [i for i in ranked[: max(1, len(items) // 4)] if degree[i] > 2] or ranked[:1]
    groups: dict[str, list[str]] = {h: [] for h in hubs}
    loose: list[str] = []
    for item in ranked:
        if item in groups:
            continue
        ties = [(weight.get((item, h), 0), -degree[h], h) for h in hubs]
        best = max(ties)
        if best[0] > 0:
            groups[best[2]].append(item)
        else:
            loose.append(item)
    # Hubs at evenly spaced slots; each hub's items in the free slots nearest to it; the rest
    # (tied to no hub) fill the remaining slots, connected ones kept together greedily.
    count = len(items)
    slots: list[str | None] = [None] * count
    for n, hub in enumerate(sorted(hubs)):
        slots[n * count // len(hubs)] = hub
    for hub in sorted(hubs):
        centre = slots.index(hub)
        for leaf in groups[hub]:
            free = min((s for s in range(count) if slots[s] is None),
                       key=lambda s: (min(abs(s - centre), count - abs(s - centre)), s))
            slots[free] = leaf
    chain: list[str] = []
    while loose:
        recent = chain[-3:]
        nxt = min(loose, key=lambda i: (-sum(weight.get((i, r), 0) for r in recent), i))
        chain.append(nxt)
        loose.remove(nxt)
    filler = iter(chain)
    return [slot if slot is not None else next(filler) for slot in slots]


def to_svg(net: Network) -> str:
    """A standalone SVG drawing of ``net``; well-formed XML, deterministic."""
    clusters = {c.union: c for c in net.clusters}
    home: dict[str, str] = {}  # node id -> ring item key
    for node in net.nodes:
        if node.kind == "hub":
            continue
        home[node.id] = node.cluster or node.id
    items: dict[str, _Item] = {}
    for key in sorted(set(home.values())):
        if key in clusters:
            _, w, h = _cluster_size(clusters[key])
            items[key] = _Item(key, w, h)
        else:
            items[key] = _Item(key, 2 * _NODE_R, 2 * _NODE_R)

    def item_of(node_id: str) -> str | None:
        return home.get(node_id)

    weight: dict[tuple[str, str], int] = {}
    hub_members: dict[str, list[str]] = {}
    for edge in net.edges:
        if edge.target.startswith(HUB_PREFIX) or edge.source.startswith(HUB_PREFIX):
            hub, party = ((edge.target, edge.source) if edge.target.startswith(HUB_PREFIX)
                          else (edge.source, edge.target))
            hub_members.setdefault(hub, []).append(party)
            continue
        a, b = item_of(edge.source), item_of(edge.target)
        if a and b and a != b:
            weight[(a, b)] = weight.get((a, b), 0) + 1
            weight[(b, a)] = weight.get((b, a), 0) + 1
    for parties in hub_members.values():
        keys = sorted({k for p in parties if (k := item_of(p))})
        for a in keys:
            for b in keys:
                if a != b:
                    weight[(a, b)] = weight.get((a, b), 0) + 1

    centre_key = item_of(net.focus) if net.focus else None
    ring = [k for k in items if k != centre_key]
    order = _ring_order(ring, weight) if ring else []
    gap = 14.0
    extent = {k: max(items[k].width, items[k].height) * 1.1 + gap for k in order}
    circumference = sum(extent.values())
    radius = max(circumference / (2 * math.pi), 320.0)
    if centre_key is not None:
        radius = max(radius, math.hypot(items[centre_key].width, items[centre_key].height) + 90)
    margin = max([math.hypot(i.width, i.height) / 2 for i in items.values()] + [40.0]) + 40
    size = 2 * (radius + margin)
    cx = cy = size / 2
    top = 80.0
    cy += top
    angle = -math.pi / 2
    for key in order:
        share = extent[key] / circumference * 2 * math.pi if circumference else 0.0
        angle += share / 2
        items[key].x = cx + radius * math.cos(angle)
        items[key].y = cy + radius * math.sin(angle)
        angle += share / 2
    if centre_key is not None:
        items[centre_key].x, items[centre_key].y = cx, cy

    anchors: dict[str, _Anchor] = {}
    for key, item in items.items():
        if key in clusters:
            cluster = clusters[key]
            cols, w, h = _cluster_size(cluster)
            left, upper = item.x - w / 2, item.y - h / 2
            anchors[key] = _Anchor(item.x, upper + _HEADER / 2, w / 2, _HEADER / 2, False)
            grid_w = cols * _CELL_W
            for n, member in enumerate(cluster.members):
                col, row = n % cols, n // cols
                anchors[member] = _Anchor(
                    left + (w - grid_w) / 2 + col * _CELL_W + _CELL_W / 2,
                    upper + _HEADER + 4 + row * _CELL_H + _CELL_H / 2,
                    _CELL_W / 2 - 2, _CELL_H / 2 - 2, False)
        else:
            anchors[key] = _Anchor(item.x, item.y, _NODE_R, _NODE_R, True)
    for hub, parties in sorted(hub_members.items()):
        points = [anchors[p] for p in parties if p in anchors]
        hx = sum(p.x for p in points) / len(points) if points else cx
        hy = sum(p.y for p in points) / len(points) if points else cy
        # Pull the hub towards the centre so its spokes do not run along the rim.
        hx, hy = cx + (hx - cx) * 0.55, cy + (hy - cy) * 0.55
        anchors[hub] = _Anchor(hx, hy, 9.0, 9.0, False)

    height = size + top
    out = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_n(size)}" height="{_n(height)}" '
        f'viewBox="0 0 {_n(size)} {_n(height)}" font-family="Helvetica, Arial, sans-serif">',
        "<defs>",
        # Two markers rather than SVG 2's auto-start-reverse, which SVG 1.1 renderers lack.
        '<marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M0,0 L10,5 L0,10 z" fill="#2b5d8a"/></marker>',
        '<marker id="tail" viewBox="0 0 10 10" refX="0" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto"><path d="M10,0 L0,5 L10,10 z" fill="#2b5d8a"/></marker>',
        "</defs>",
        f'<rect x="0" y="0" width="{_n(size)}" height="{_n(height)}" fill="#ffffff"/>',
    ]
    title = f"Recognition network on {net.at.isoformat()}" + (
        f" around {net.focus}" if net.focus else "")
    out.append(f'<text x="20" y="32" font-size="22" font-weight="bold">{escape(title)}</text>')
    out.append(f'<text x="20" y="52" font-size="12" fill="#555">dataset {net.dataset[:16]}'
               f" - {sum(1 for n in net.nodes if n.kind != 'hub')} administrations and unions, "
               f"{len({e.arrangement for e in net.edges})} arrangements in force.</text>")
    out.append('<text x="20" y="68" font-size="12" fill="#555">Arrow A &#8594; B: B recognises '
               "A's AEOs; two heads: both ways; diamond: plurilateral or bloc-to-bloc "
               "arrangement (A/B: its sides).</text>")

    out.append('<g id="edges" fill="none">')
    labels: list[str] = []
    for edge in net.edges:
        if edge.source not in anchors or edge.target not in anchors:
            continue
        pa, pb = anchors[edge.source], anchors[edge.target]
        hubbed = edge.source.startswith(HUB_PREFIX) or edge.target.startswith(HUB_PREFIX)
        if hubbed or net.focus:
            qx, qy = (pa.x + pb.x) / 2, (pa.y + pb.y) / 2
        else:  # a chord pulled towards the centre, so parallel chords fan out
            qx = cx + ((pa.x + pb.x) / 2 - cx) * 0.5
            qy = cy + ((pa.y + pb.y) / 2 - cy) * 0.5
        x0, y0 = _clip(pa, qx, qy)
        x1, y1 = _clip(pb, qx, qy)
        colour = "#8a6d2b" if hubbed else "#2b5d8a"
        markers = ' marker-end="url(#head)"'
        if edge.both_ways:
            markers += ' marker-start="url(#tail)"'
        out.append(f'<path class="edge" data-arrangement={quoteattr(edge.arrangement)} '
                   f'data-source={quoteattr(edge.source)} data-target={quoteattr(edge.target)} '
                   f'd="M{_n(x0)},{_n(y0)} Q{_n(qx)},{_n(qy)} {_n(x1)},{_n(y1)}" '
                   f'stroke="{colour}" stroke-width="1" stroke-opacity="0.75"{markers}/>')
        if edge.label and not hubbed:
            mx, my = 0.25 * x0 + 0.5 * qx + 0.25 * x1, 0.25 * y0 + 0.5 * qy + 0.25 * y1
            labels.append(_label(mx, my, edge.label, 8))
        elif edge.label:
            mx, my = 0.7 * x0 + 0.3 * x1, 0.7 * y0 + 0.3 * y1
            labels.append(_label(mx, my, edge.label, 7))
    out.append("</g>")

    out.append('<g id="nodes">')
    for key, item in sorted(items.items()):
        if key in clusters:
            cluster = clusters[key]
            _, w, h = _cluster_size(cluster)
            head = cluster.union + (f" ({cluster.programme})" if cluster.programme else "")
            out.append(f'<g class="cluster" data-union={quoteattr(key)}>')
            out.append(f'<rect x="{_n(item.x - w / 2)}" y="{_n(item.y - h / 2)}" '
                       f'width="{_n(w)}" height="{_n(h)}" rx="6" fill="#eef3f8" '
                       'stroke="#2b5d8a" stroke-width="1.5"/>')
            out.append(f'<text class="node" data-id={quoteattr(key)} x="{_n(item.x)}" '
                       f'y="{_n(item.y - h / 2 + 15)}" font-size="12" font-weight="bold" '
                       f'text-anchor="middle">{escape(head)}</text>')
            for member in cluster.members:
                m = anchors[member]
                fill = "#ffe9a8" if member == net.focus else "#ffffff"
                out.append(f'<rect x="{_n(m.x - m.half_w)}" y="{_n(m.y - m.half_h)}" '
                           f'width="{_n(2 * m.half_w)}" height="{_n(2 * m.half_h)}" rx="3" '
                           f'fill="{fill}" stroke="#9ab"/>')
                out.append(f'<text class="node" data-id={quoteattr(member)} x="{_n(m.x)}" '
                           f'y="{_n(m.y + 4)}" font-size="10" text-anchor="middle">'
                           f"{escape(member)}</text>")
            out.append("</g>")
        else:
            fill = "#ffe9a8" if key == net.focus else "#ffffff"
            out.append(f'<circle cx="{_n(item.x)}" cy="{_n(item.y)}" r="{_n(_NODE_R)}" '
                       f'fill="{fill}" stroke="#2b5d8a" stroke-width="1.5"/>')
            out.append(f'<text class="node" data-id={quoteattr(key)} x="{_n(item.x)}" '
                       f'y="{_n(item.y + 4)}" font-size="11" text-anchor="middle">'
                       f"{escape(key)}</text>")
    for node in net.nodes:
        if node.kind != "hub" or node.id not in anchors:
            continue
        spot = anchors[node.id]
        out.append(f'<path d="M{_n(spot.x)},{_n(spot.y - 9)} L{_n(spot.x + 9)},{_n(spot.y)} '
                   f'L{_n(spot.x)},{_n(spot.y + 9)} L{_n(spot.x - 9)},{_n(spot.y)} z" '
                   'fill="#f6e3b4" stroke="#8a6d2b"/>')
        out.append(_label(spot.x, spot.y - 13, node.label, 10, cls="node hub",
                          data_id=node.id))
    out.append("</g>")
    out.append('<g id="labels">')
    out.extend(labels)
    out.append("</g>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _label(x: float, y: float, text: str, size: int, *, cls: str = "label",
           data_id: str | None = None) -> str:
    data = f" data-id={quoteattr(data_id)}" if data_id else ""
    return (f'<text class="{cls}"{data} x="{_n(x)}" y="{_n(y + size / 3)}" font-size="{size}" '
            'text-anchor="middle" fill="#333" stroke="#ffffff" stroke-width="2.5" '
            f'paint-order="stroke">{escape(text)}</text>')


def _clip(anchor: _Anchor, towards_x: float, towards_y: float) -> tuple[float, float]:
    """The point where the line from the anchor's centre towards a point leaves its shape."""
    dx, dy = towards_x - anchor.x, towards_y - anchor.y
    length = math.hypot(dx, dy)
    if length == 0:
        return anchor.x, anchor.y
    if anchor.round:
        t = anchor.half_w / length
    else:
        tx = anchor.half_w / abs(dx) if dx else math.inf
        ty = anchor.half_h / abs(dy) if dy else math.inf
        t = min(tx, ty)
    t = min(t, 1.0)
    return anchor.x + dx * t, anchor.y + dy * t


def _n(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text
