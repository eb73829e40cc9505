"""graph.Dag against networkx on random DAGs: same order, reach and subgraphs."""

from __future__ import annotations

import random

import networkx as nx
import pytest

from orchestrator.plan.graph import Dag


@pytest.mark.parametrize("seed", range(20))
def test_dag_walks_like_networkx(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    ours, theirs = Dag(), nx.DiGraph()
    ids = [f"n{i}" for i in rng.sample(range(100), n)]
    for seq, node in enumerate(ids):
        ours.add_node(node, seq=seq)
        theirs.add_node(node, seq=seq)
    for i, v in enumerate(ids):
        for u in rng.sample(ids[:i], min(i, rng.randint(0, 3))):
            ours.add_edge(u, v)
            theirs.add_edge(u, v)
    key = theirs.nodes
    assert ours.topological() == list(nx.lexicographical_topological_sort(
        theirs, key=lambda x: key[x]["seq"]))
    assert sorted(ours.edges) == sorted(theirs.edges)
    for node in ids:
        assert ours.ancestors(node) == nx.ancestors(theirs, node)
        assert ours.descendants(node) == nx.descendants(theirs, node)
        assert list(ours.predecessors(node)) == list(theirs.predecessors(node))
    keep = set(rng.sample(ids, rng.randint(0, n)))
    sub = ours.subgraph(keep)
    assert set(sub) == keep and sorted(sub.edges) == sorted(theirs.subgraph(keep).edges)
    assert sub.nodes(data=True) == [(k, {"seq": ids.index(k)}) for k in ids if k in keep]


def test_a_duplicate_edge_is_one_edge() -> None:
    d = Dag()
    d.add_edge("a", "b")
    d.add_edge("a", "b")
    assert d.edges == [("a", "b")] and list(d.predecessors("b")) == ["a"]
