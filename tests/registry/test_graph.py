"""The recognition network: what is drawn for a small world, and that the SVG is well formed."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import date

import pytest

from registry.graph import HUB_PREFIX, network, to_dot, to_svg
from registry.resolver import Recogniser, default_recogniser

from .worlds import recogniser


def parse_svg(text: str) -> ET.Element:
    """Parse SVG that our own code just made (trusted input, so no defusedxml needed)."""
    return ET.fromstring(text)  # noqa: S314 - our own output, not untrusted data


SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def small() -> Recogniser:
    return recogniser()


def test_network_nodes_clusters_edges(small: Recogniser) -> None:
    net = network(small, date(2013, 6, 1))
    bloc = next(c for c in net.clusters if c.union == "BLOC")
    assert "HR" not in bloc.members  # joins 2013-07-01
    assert "GB" in bloc.members
    assert bloc.programme == "BLOC-AEO"
    edges = {e.arrangement: e for e in net.edges}
    # US-BLOC: the US recognises the BLOC from 2012-07-01, the BLOC the US from 2013-01-31.
    assert edges["US-BLOC"].both_ways
    assert (edges["BLOC-JP"].source, edges["BLOC-JP"].target) in {("BLOC", "JP"), ("JP", "BLOC")}
    assert "SG-TH" not in edges  # never dated, never applies
    assert "CN-AU" not in edges  # effective 2023-12-14
    later = network(small, date(2026, 1, 1))
    hub = HUB_PREFIX + "PA"  # effective 2018-07-21
    assert hub not in {n.id for n in net.nodes}
    assert {e.source for e in later.edges if e.target == hub} == {"CL", "CO", "MX", "PE"}
    assert all(e.both_ways for e in later.edges if e.target == hub)


def test_one_way_edge(small: Recogniser) -> None:
    net = network(small, date(2012, 8, 1))
    edge = next(e for e in net.edges if e.arrangement == "US-BLOC")
    assert not edge.both_ways
    assert (edge.source, edge.target) == ("BLOC", "US")  # the US recognises BLOC AEOs
    svg = parse_svg(to_svg(net))
    path = next(p for p in svg.iter(f"{SVG}path") if p.get("data-arrangement") == "US-BLOC")
    assert path.get("marker-end")
    assert not path.get("marker-start")
    both = next(p for p in svg.iter(f"{SVG}path") if p.get("data-arrangement") == "BLOC-JP")
    assert both.get("marker-end")
    assert both.get("marker-start")


def test_svg_is_well_formed_and_complete(small: Recogniser) -> None:
    net = network(small, date(2026, 1, 1))
    root = parse_svg(to_svg(net))
    assert root.tag == f"{SVG}svg"
    drawn_nodes = {
        t.get("data-id") for t in root.iter(f"{SVG}text") if "node" in (t.get("class") or "")
    }
    assert {n.id for n in net.nodes} <= drawn_nodes
    drawn_edges = {
        (p.get("data-source"), p.get("data-target"), p.get("data-arrangement"))
        for p in root.iter(f"{SVG}path")
        if p.get("class") == "edge"
    }
    assert drawn_edges == {(e.source, e.target, e.arrangement) for e in net.edges}
    assert to_svg(net) == to_svg(network(small, date(2026, 1, 1)))  # deterministic


def test_focus(small: Recogniser) -> None:
    net = network(small, date(2026, 1, 1), focus="JP")
    assert {e.arrangement for e in net.edges} == {"BLOC-JP", "JP-NZ", "GB-JP"}
    parse_svg(to_svg(net))
    fr = network(small, date(2026, 1, 1), focus="FR")  # FR acts as BLOC
    assert "BLOC-JP" in {e.arrangement for e in fr.edges}
    assert "JP-NZ" not in {e.arrangement for e in fr.edges}


def test_dot(small: Recogniser) -> None:
    text = to_dot(network(small, date(2026, 1, 1)))
    assert text.startswith("digraph recognition {")
    assert 'subgraph "cluster_BLOC"' in text
    assert '"JP" -> "NZ" [label="JP-NZ", dir=both];' in text


def test_real_network_renders() -> None:
    real = default_recogniser()
    root = parse_svg(to_svg(network(real, date(2026, 1, 1))))
    assert sum(1 for p in root.iter(f"{SVG}path") if p.get("class") == "edge") > 100
    parse_svg(to_svg(network(real, date(2026, 1, 1), focus="CN")))
