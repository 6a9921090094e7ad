"""Lineage trees from a walk's edges, in pure Python (no SQLAlchemy: the cold read path uses it too).

Trees are built exactly as before the walks moved into the database: depth-first, children ordered
by (relation, node), a node already expanded elsewhere shown once more as `repeated`, a node already
on the path skipped, and, with a depth limit, a node at the cut marked `truncated` when it has
further edges.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, NamedTuple


class Edge(NamedTuple):
    parent: str
    child: str
    relation: str
    content_hash: str | None
    note: str | None


@dataclass
class LineageNode:
    key: str
    relation: str | None = None
    content_hash: str | None = None
    children: list["LineageNode"] = field(default_factory=list)
    repeated: bool = False  # already expanded elsewhere in the tree
    truncated: bool = False  # the depth limit stopped here; the node has further edges

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.key}
        if self.repeated:
            out["repeated"] = True
        if self.truncated:
            out["truncated"] = True
        if self.relation:
            out["relation"] = self.relation
        if self.content_hash:
            out["content_hash"] = self.content_hash
        if self.children:
            out["children"] = [c.to_json() for c in self.children]
        return out

    def cut_nodes(self) -> list[str]:
        """Keys where the depth limit cut the tree, in tree order, each once."""
        seen: dict[str, None] = {}
        stack = [self]
        while stack:
            node = stack.pop()
            if node.truncated:
                seen.setdefault(node.key)
            stack.extend(reversed(node.children))
        return list(seen)


def build_tree(edges: list[Edge], root: str, downstream: bool = False, max_depth: int | None = None,
               with_edges: Callable[[list[str]], set[str]] | None = None) -> LineageNode:
    """The tree of one walk. `edges`: every edge leaving a node within max_depth - 1 hops of root (all
    reachable ones without a limit), in the order written. `with_edges(keys)`: which of the cut nodes
    the walk did not fetch still have edges (asked only when the limit cut somewhere)."""
    index: dict[str, list[Edge]] = {}
    for e in edges:
        index.setdefault(e.parent if downstream else e.child, []).append(e)
    for out in index.values():
        out.sort(key=lambda e: (e.relation, e.child if downstream else e.parent))

    expanded: set[str] = set()
    cut: list[LineageNode] = []

    def open_node(node: LineageNode, depth: int) -> list[Edge] | None:
        """The edges to follow from node, or None when it is shown without children."""
        out = index.get(node.key)
        if node.key in expanded and out:
            node.repeated = True  # a shared ancestor (e.g. the SFT stage under init and reference) shown once
            return None
        if max_depth is not None and depth >= max_depth:
            cut.append(node)
            return None
        expanded.add(node.key)
        return out or []

    # Depth-first without recursion: an unbounded walk may be deeper than Python's stack.
    tree = LineageNode(root)
    trail = {root}
    first = open_node(tree, 0)
    stack = [(tree, iter(first), 0)] if first is not None else []
    while stack:
        node, pending, depth = stack[-1]
        e = next(pending, None)
        if e is None:
            stack.pop()
            trail.discard(node.key)
            continue
        nxt = e.child if downstream else e.parent
        if nxt in trail:
            continue  # a cycle recorded before cycles were refused: do not go round it
        child = LineageNode(nxt, e.relation, e.content_hash)
        node.children.append(child)
        follow = open_node(child, depth + 1)
        if follow is not None:
            trail.add(nxt)
            stack.append((child, iter(follow), depth + 1))

    unknown = sorted({n.key for n in cut if n.key not in index})
    more = with_edges(unknown) if unknown and with_edges else set()
    for node in cut:
        node.truncated = node.key in index or node.key in more
    return tree


def reach(edges: Iterable[Edge], root: str, downstream: bool) -> list[str]:
    """Every node reachable from root (root excluded), breadth first in edge order, each once."""
    index: dict[str, list[str]] = {}
    for e in edges:
        a, b = (e.parent, e.child) if downstream else (e.child, e.parent)
        index.setdefault(a, []).append(b)
    seen: set[str] = {root}
    order: list[str] = []
    queue = deque([root])
    while queue:
        for nxt in index.get(queue.popleft(), []):
            if nxt not in seen:
                seen.add(nxt)
                order.append(nxt)
                queue.append(nxt)
    return order


def verify_subjects(edges: Iterable[Edge]) -> list[tuple[str, Edge]]:
    """(subject, edge) for each distinct hashed edge, in a stable order."""
    out: dict[tuple[str, str, str], tuple[str, Edge]] = {}
    for e in edges:
        if e.content_hash is None:
            continue
        # The hashed file belongs to the checkpoint an edge leads to (a run's output, a converted copy),
        # otherwise to the input it comes from (a dataset file, a parent run's checkpoint).
        subject = e.child if e.child.startswith("checkpoint:") else e.parent
        out.setdefault((e.parent, e.child, e.relation), (subject, e))
    return [out[key] for key in sorted(out)]
