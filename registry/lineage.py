"""The lineage graph as recursive queries in the database.

Each walk is one `WITH RECURSIVE` query (SQLAlchemy's `cte(recursive=True)`, which SQLite and
PostgreSQL both run) over the indexed edge columns: child upstream, the unique
(parent, child, relation) index downstream. It returns only the edges of the answer, so a walk
costs the size of the answer, not of the database. The recursion keeps the set of nodes reached
(UNION, not UNION ALL), so it ends on any graph, cycles included; cycles are also refused when an
edge is written (add_edges).

Trees are built from the fetched edges in Python exactly as before the queries moved into the
database: depth-first, children ordered by (relation, node), a node already expanded elsewhere
shown once more as `repeated`, and a node already on the path skipped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Integer, Text, cast, literal, select
from sqlalchemy.orm import Session

from registry.db import LineageEdgeRow
from registry.errors import ReproError

EDGES = LineageEdgeRow.__table__


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


def _sides(downstream: bool):  # noqa: ANN202
    """(near, far): the column a walk arrives on and the one it leaves by."""
    return (EDGES.c.parent, EDGES.c.child) if downstream else (EDGES.c.child, EDGES.c.parent)


def _walk(root: str, downstream: bool, max_depth: int | None):  # noqa: ANN202
    """The recursive CTE of nodes reachable from root (depth < max_depth when given).

    Both terms cast the node to TEXT: PostgreSQL requires the recursive term's type to equal the
    seed's exactly, and a VARCHAR(512) column against a text literal is not that."""
    near, far = _sides(downstream)
    if max_depth is None:
        walk = select(cast(literal(root), Text).label("node")).cte("walk", recursive=True)
        return walk.union(select(cast(far, Text)).join(walk, near == walk.c.node))
    walk = select(cast(literal(root), Text).label("node"),
                  cast(literal(0), Integer).label("depth")).cte("walk", recursive=True)
    # UNION over (node, depth): finite because the depth is bounded.
    return walk.union(select(cast(far, Text), walk.c.depth + 1)
                      .join(walk, near == walk.c.node).where(walk.c.depth + 1 < max_depth))


def lineage_edges(session: Session, root: str, downstream: bool = False, max_depth: int | None = None) -> list[Edge]:
    """Every edge leaving a node within `max_depth - 1` hops of root (all reachable nodes when None),
    in the walk's direction: exactly what the tree of depth `max_depth` is drawn from."""
    if max_depth is not None and max_depth < 1:
        return []
    near, _ = _sides(downstream)
    walk = _walk(root, downstream, max_depth)
    # In the order the edges were written, as before the walk moved into the database: `impacted`
    # lists nodes in that order.
    query = select(EDGES.c.parent, EDGES.c.child, EDGES.c.relation, EDGES.c.content_hash, EDGES.c.note).where(
        near.in_(select(walk.c.node))).order_by(EDGES.c.id)
    return [Edge(*row) for row in session.execute(query)]


def _with_edges(session: Session, keys: list[str], downstream: bool) -> set[str]:
    """Which of `keys` have at least one edge in the walk's direction (one indexed lookup each)."""
    near, _ = _sides(downstream)
    found: set[str] = set()
    for start in range(0, len(keys), 500):
        found.update(session.scalars(select(near).where(near.in_(keys[start:start + 500])).distinct()))
    return found


def lineage_tree(session: Session, root: str, downstream: bool = False, max_depth: int | None = None,
                 edges: list[Edge] | None = None) -> LineageNode:
    """Upstream (what produced root) or downstream (what consumed it) as a tree, unbounded unless
    `max_depth` is given; where it cuts, the node is marked `truncated`. `edges`: this walk's
    lineage_edges when the caller already has them."""
    edges = lineage_edges(session, root, downstream, max_depth) if edges is None else edges
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

    unknown = [n.key for n in cut if n.key not in index]
    more = _with_edges(session, sorted(set(unknown)), downstream) if unknown else set()
    for node in cut:
        node.truncated = node.key in index or node.key in more
    return tree


def reachable(session: Session, root: str, downstream: bool, edges: list[Edge] | None = None) -> list[str]:
    """Every node reachable from root (root excluded), breadth first in edge order, each once."""
    edges = lineage_edges(session, root, downstream) if edges is None else edges
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


def hashed_edges_to_verify(session: Session, root: str, upstream: list[Edge] | None = None) -> list[tuple[str, Edge]]:
    """(subject, edge) for every hashed file behind root: the inputs of everything upstream of it (the
    same walk as `lineage`; pass its edges as `upstream` when at hand) and the checkpoints its
    upstream runs produced. Nothing else is read."""
    edges = list(lineage_edges(session, root, downstream=False) if upstream is None else upstream)
    nodes = {root, *(e.parent for e in edges)}
    runs = sorted(n for n in nodes if n.startswith("run:"))
    for start in range(0, len(runs), 500):
        edges += [Edge(*row) for row in session.execute(
            select(EDGES.c.parent, EDGES.c.child, EDGES.c.relation, EDGES.c.content_hash, EDGES.c.note).where(
                EDGES.c.parent.in_(runs[start:start + 500]), EDGES.c.child.like("checkpoint:%")))]
    out: dict[tuple[str, str, str], tuple[str, Edge]] = {}
    for e in edges:
        if e.content_hash is None:
            continue
        # The hashed file belongs to the checkpoint an edge leads to (a run's output, a converted copy),
        # otherwise to the input it comes from (a dataset file, a parent run's checkpoint).
        subject = e.child if e.child.startswith("checkpoint:") else e.parent
        out.setdefault((e.parent, e.child, e.relation), (subject, e))
    return [out[key] for key in sorted(out)]


def node_exists(session: Session, key: str) -> bool:
    near_parent = select(EDGES.c.id).where(EDGES.c.parent == key).limit(1)
    near_child = select(EDGES.c.id).where(EDGES.c.child == key).limit(1)
    return session.scalar(near_parent) is not None or session.scalar(near_child) is not None


def add_edges(session: Session, edges: list[tuple[str, str, str, str | None, str | None]],
              origin: str = "run") -> None:
    """Record (parent, child, relation, content_hash, file path) edges, skipping ones already there.

    An edge that would close a cycle (its parent is already downstream of its child) is refused
    with ReproError before anything is committed: lineage is a DAG, and every walk relies on it.
    File paths are stored relative to the runs root (see hashing.edge_note)."""
    from registry.hashing import edge_note

    for parent, child, relation, digest, path in edges:
        exists = session.scalar(select(LineageEdgeRow.id).where(
            LineageEdgeRow.parent == parent, LineageEdgeRow.child == child, LineageEdgeRow.relation == relation))
        if exists is not None:
            continue
        if parent == child or parent in _downstream_nodes(session, child):
            raise ReproError(f"lineage edge {parent} -> {child} ({relation}) would close a cycle: {parent} "
                             f"already descends from {child}; nothing was recorded")
        session.add(LineageEdgeRow(parent=parent, child=child, relation=relation, origin=origin,
                                   content_hash=digest, note=edge_note(path) if path else None))
        session.flush()  # the next edge's cycle check must see this one


def _downstream_nodes(session: Session, key: str) -> set[str]:
    if not session.scalar(select(EDGES.c.id).where(EDGES.c.parent == key).limit(1)):
        return set()  # a new node (a run being recorded) has no descendants: no walk needed
    walk = _walk(key, downstream=True, max_depth=None)
    return set(session.scalars(select(walk.c.node)))
