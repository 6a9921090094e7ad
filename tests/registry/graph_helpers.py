"""Runs and lineage edges written through the registry's own writers, for the graph and read tests,
and the in-Python walk that `lineage` used before the walks moved into the database (the reference
the new queries must agree with)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import select

from registry.lineage import LineageNode
from registry.models import LineageEdgeRow, RunRow
from registry.queries import add_edges, add_run

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def record_run(session, run_id: str, recipe: str = "tulu3-8b", stage: str = "sft", *, parents=(), minutes: int = 0,
               status: str = "succeeded", run_dir: str = "/nowhere", **fields) -> None:
    """A run row plus its edges: stage, code pin, and (parent key, relation, hash, path) inputs."""
    fields = {"plan": {"recipe": recipe, "stage": stage}, "deviations": [], "final_metrics": {}, **fields}
    row = RunRow(id=run_id, recipe=recipe, stage=stage, profile="smoke", status=status, run_dir=run_dir,
                 created_at=T0 + timedelta(minutes=minutes), **fields)
    add_run(session, row, [])
    node = f"run:{run_id}"
    edges = [(f"stage:{recipe}:{stage}", node, "executes", None, None), ("code:repro@abc123", node, "code", None, None)]
    edges += [(parent, node, relation, digest, path) for parent, relation, digest, path in parents]
    add_edges(session, edges)


def record_rlvr_pair(session) -> None:
    """Two RLVR runs that share all their parents: init and reference from run dpo-1, reward and value
    model from run rm-1 (the shared-ancestor case the walks must expand once)."""
    for i in (1, 2):
        record_run(session, f"rlvr-{i}", stage="rlvr", minutes=3 + i,
                   parents=[("run:dpo-1", "init", "h3", None), ("run:rm-1", "reward_model", "h4", None),
                            ("run:rm-1", "value_model", "h4", None), ("run:dpo-1", "reference", "h3", None)])


def previous_lineage_tree(session, root: str, downstream: bool = False, max_depth: int = 10_000) -> LineageNode:
    """The walk as it was: every edge loaded into Python, recursive depth-first build."""
    edges = list(session.scalars(select(LineageEdgeRow)))
    index: dict[str, list[LineageEdgeRow]] = {}
    for e in edges:
        index.setdefault(e.parent if downstream else e.child, []).append(e)
    expanded: set[str] = set()

    def build(key, relation, digest, depth, trail) -> LineageNode:
        node = LineageNode(key, relation, digest)
        if key in expanded and index.get(key):
            node.repeated = True
            return node
        expanded.add(key)
        if depth >= max_depth:
            return node
        for e in sorted(index.get(key, []), key=lambda e: (e.relation, e.child if downstream else e.parent)):
            nxt = e.child if downstream else e.parent
            if nxt in trail:
                continue
            node.children.append(build(nxt, e.relation, e.content_hash, depth + 1, trail | {nxt}))
        return node

    return build(root, None, None, 0, frozenset({root}))


def previous_reachable(session, root: str, downstream: bool) -> set[str]:
    index: dict[str, list[str]] = {}
    for e in session.scalars(select(LineageEdgeRow)):
        a, b = (e.parent, e.child) if downstream else (e.child, e.parent)
        index.setdefault(a, []).append(b)
    seen, queue = set(), [root]
    while queue:
        for nxt in index.get(queue.pop(), []):
            if nxt not in seen and nxt != root:
                seen.add(nxt)
                queue.append(nxt)
    return seen
