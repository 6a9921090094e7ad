"""Reads and writes of runs, run metrics and lineage. Every run query lives here."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from registry.db import CheckpointRow, LineageEdgeRow, PublishedMetricRow, RunMetricRow, RunRow, utcnow

# A run whose heartbeat is older than this, on a process that is gone, is reported interrupted.
STALE_AFTER = timedelta(minutes=10)


def add_run(session: Session, run: RunRow, edges: list[tuple[str, str, str, str | None]]) -> None:
    """Insert a run and its lineage edges (parent, child, relation, content_hash)."""
    session.add(run)
    session.flush()
    for parent, child, relation, digest in edges:
        session.add(LineageEdgeRow(parent=parent, child=child, relation=relation, origin="run", content_hash=digest))


def update_run(session: Session, run_id: str, **values: Any) -> RunRow:
    run = session.get(RunRow, run_id)
    if run is None:
        raise KeyError(run_id)
    for key, value in values.items():
        setattr(run, key, value)
    return run


def add_run_metrics(session: Session, run_id: str, metrics: list[dict[str, Any]]) -> None:
    for m in metrics:
        session.add(RunMetricRow(run_id=run_id, name=m["name"], value=float(m["value"]), step=m.get("step"),
                                 kind=m.get("kind", "train"), protocol=m.get("protocol")))


def replace_eval_metrics(session: Session, run_id: str, names: list[str]) -> None:
    session.execute(delete(RunMetricRow).where(RunMetricRow.run_id == run_id, RunMetricRow.kind == "eval",
                                               RunMetricRow.name.in_(names)))


def register_run_checkpoint(session: Session, run_id: str, name: str, path: str, kind: str, digest: str,
                            quantization: str | None = None, body: dict[str, Any] | None = None) -> None:
    row = session.scalar(select(CheckpointRow).where(CheckpointRow.name == name))
    if row is None:
        row = CheckpointRow(name=name, kind=kind, published=False)
        session.add(row)
    row.run_id, row.path, row.content_hash, row.quantization = run_id, path, digest, quantization
    row.body = body or {}


def get_run(session: Session, run_id: str) -> RunRow | None:
    run = session.get(RunRow, run_id)
    if run is None:  # allow unique prefixes, like git
        matches = list(session.scalars(select(RunRow).where(RunRow.id.like(f"{run_id}%")).limit(2)))
        run = matches[0] if len(matches) == 1 else None
    return run


def list_runs(session: Session, recipe: str | None = None, stage: str | None = None, limit: int = 100) -> list[RunRow]:
    query = select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(limit)
    if recipe:
        query = query.where(RunRow.recipe == recipe)
    if stage:
        query = query.where(RunRow.stage == stage)
    return list(session.scalars(query))


def latest_succeeded_run(session: Session, recipe: str, stage: str, profile: str) -> RunRow | None:
    return session.scalar(select(RunRow).where(RunRow.recipe == recipe, RunRow.stage == stage,
                                               RunRow.profile == profile, RunRow.status == "succeeded")
                          .order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(1))


def run_metrics(session: Session, run_id: str, kind: str | None = None) -> list[RunMetricRow]:
    query = select(RunMetricRow).where(RunMetricRow.run_id == run_id).order_by(RunMetricRow.id)
    if kind:
        query = query.where(RunMetricRow.kind == kind)
    return list(session.scalars(query))


def published_metrics(session: Session, checkpoint: str) -> list[PublishedMetricRow]:
    row = session.scalar(select(CheckpointRow).where(CheckpointRow.name == checkpoint))
    if row is None:
        return []
    return list(session.scalars(select(PublishedMetricRow).where(PublishedMetricRow.checkpoint_id == row.id)))


def mark_stale_runs(session: Session, hostname: str, pid_alive) -> list[str]:  # noqa: ANN001
    """Runs left 'running' by a process that died are marked interrupted, never left running forever:
    on this host, when their pid is gone; elsewhere, when their heartbeat is older than STALE_AFTER."""
    marked = []
    now = utcnow()
    for run in session.scalars(select(RunRow).where(RunRow.status == "running")):
        beat = run.heartbeat_at or run.created_at
        if beat.tzinfo is None:
            beat = beat.replace(tzinfo=timezone.utc)
        if run.hostname == hostname and run.pid is not None and not pid_alive(run.pid):
            reason = "process ended without finishing (killed or crashed)"
        elif now - beat > STALE_AFTER:
            reason = f"no heartbeat since {beat.isoformat(timespec='seconds')}"
        else:
            continue
        run.status, run.finished_at, run.error = "interrupted", now, run.error or reason
        marked.append(run.id)
    return marked


# ---------------------------------------------------------------- lineage


@dataclass
class LineageNode:
    key: str
    relation: str | None = None
    content_hash: str | None = None
    children: list["LineageNode"] = field(default_factory=list)
    repeated: bool = False  # already expanded elsewhere in the tree

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"node": self.key}
        if self.repeated:
            out["repeated"] = True
        if self.relation:
            out["relation"] = self.relation
        if self.content_hash:
            out["content_hash"] = self.content_hash
        if self.children:
            out["children"] = [c.to_json() for c in self.children]
        return out


def node_exists(session: Session, key: str) -> bool:
    return session.scalar(select(LineageEdgeRow.id).where(
        or_(LineageEdgeRow.parent == key, LineageEdgeRow.child == key)).limit(1)) is not None


def lineage_tree(session: Session, root: str, downstream: bool = False, max_depth: int = 12) -> LineageNode:
    """Upstream (what produced root) or downstream (what consumed it) as a tree; shared nodes repeat."""
    edges = list(session.scalars(select(LineageEdgeRow)))
    index: dict[str, list[LineageEdgeRow]] = {}
    for e in edges:
        index.setdefault(e.parent if downstream else e.child, []).append(e)

    expanded: set[str] = set()

    def build(key: str, relation: str | None, digest: str | None, depth: int, trail: frozenset[str]) -> LineageNode:
        node = LineageNode(key, relation, digest)
        if key in expanded and index.get(key):
            node.repeated = True  # a shared ancestor (e.g. the SFT stage under init and reference) shown once
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


def reachable(session: Session, root: str, downstream: bool) -> list[str]:
    edges = list(session.scalars(select(LineageEdgeRow)))
    index: dict[str, list[str]] = {}
    for e in edges:
        a, b = (e.parent, e.child) if downstream else (e.child, e.parent)
        index.setdefault(a, []).append(b)
    seen, queue = [], deque([root])
    while queue:
        key = queue.popleft()
        for nxt in index.get(key, []):
            if nxt not in seen and nxt != root:
                seen.append(nxt)
                queue.append(nxt)
    return seen


def run_input_hashes(session: Session, run_id: str) -> list[LineageEdgeRow]:
    return list(session.scalars(select(LineageEdgeRow).where(
        or_(LineageEdgeRow.child == f"run:{run_id}", LineageEdgeRow.parent == f"run:{run_id}"),
        LineageEdgeRow.content_hash.is_not(None))))


def as_utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat(timespec="seconds")
