"""Reads and writes of runs, run metrics, step series and lineage. Every run query lives here
(the lineage graph walks are in registry.lineage and re-exported here)."""

from __future__ import annotations

import math
from typing import Any, Callable

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from registry.errors import ReproError
from registry.lineage import LineageNode, add_edges, lineage_edges, lineage_tree, node_exists, reachable
from registry.models import (
    CheckpointRow,
    LineageEdgeRow,
    PublishedMetricRow,
    RunMetricRow,
    RunRow,
    RunSeriesRow,
    utcnow,
)
from registry.run_status import STALE_AFTER, as_utc, stale_reason

__all__ = ["STALE_AFTER", "LineageNode", "add_edges", "as_utc", "lineage_edges", "lineage_tree", "node_exists",
           "reachable", "stale_reason"]



def add_run(session: Session, run: RunRow, edges: list[tuple[str, str, str, str | None]]) -> None:
    """Insert a run and its lineage edges (parent, child, relation, content_hash); an edge that would
    close a cycle is refused (ReproError) before anything is committed."""
    session.add(run)
    session.flush()
    add_edges(session, [(parent, child, relation, digest, None) for parent, child, relation, digest in edges])


def update_run(session: Session, run_id: str, **values: Any) -> RunRow:
    run = session.get(RunRow, run_id)
    if run is None:
        raise KeyError(run_id)
    for key, value in values.items():
        setattr(run, key, value)
    return run


def add_run_metrics(session: Session, run_id: str, metrics: list[dict[str, Any]]) -> None:
    """Final and eval metrics, one row each. Per-step training values go to replace_run_series."""
    for m in metrics:
        session.add(RunMetricRow(run_id=run_id, name=m["name"], value=float(m["value"]), step=m.get("step"),
                                 kind=m.get("kind", "train"), protocol=m.get("protocol")))


def replace_eval_metrics(session: Session, run_id: str, names: list[str]) -> None:
    session.execute(delete(RunMetricRow).where(RunMetricRow.run_id == run_id, RunMetricRow.kind == "eval",
                                               RunMetricRow.name.in_(names)))


def _encode(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)  # JSON (PostgreSQL's) has no NaN/Infinity


def _decode(value: float | str) -> float:
    return float(value)


def step_series(steps: list[dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} from per-step records ({"step": 3, "loss": 1.2, ...}), numbers only."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for index, record in enumerate(steps):
        for name, value in record.items():
            if name == "step" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            xs, ys = out.setdefault(name, ([], []))
            xs.append(record.get("step", index))
            ys.append(float(value))
    return out


def replace_run_series(session: Session, run_id: str, series: dict[str, tuple[list[int], list[float]]],
                       kind: str = "train") -> None:
    """One row per (run, metric) holding the whole series; a second call (a resumed run finishing)
    replaces the first rather than duplicating it."""
    session.execute(delete(RunSeriesRow).where(RunSeriesRow.run_id == run_id, RunSeriesRow.kind == kind))
    for name, (xs, ys) in series.items():
        session.add(RunSeriesRow(run_id=run_id, name=name, kind=kind, points=len(xs), steps=list(xs),
                                 values=[_encode(float(v)) for v in ys]))


def run_series(session: Session, run_id: str, names: list[str] | None = None,
               kind: str = "train") -> dict[str, tuple[list[int], list[float]]]:
    """{metric: (steps, values)} of one run, read from its series rows (one row per metric)."""
    query = select(RunSeriesRow).where(RunSeriesRow.run_id == run_id, RunSeriesRow.kind == kind)
    if names:
        query = query.where(RunSeriesRow.name.in_(names))
    return {row.name: (list(row.steps), [_decode(v) for v in row.values])
            for row in session.scalars(query.order_by(RunSeriesRow.name))}


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


def run_id_for(session: Session, run_id: str) -> str | None:
    """get_run's answer as an id only, in Core (no ORM objects: cheaper in a cold read command)."""
    ids = RunRow.__table__.c.id
    if session.execute(select(ids).where(ids == run_id)).scalar() is not None:
        return run_id
    matches = list(session.execute(select(ids).where(ids.like(f"{run_id}%")).limit(2)).scalars())
    return matches[0] if len(matches) == 1 else None


def list_runs(session: Session, recipe: str | None = None, stage: str | None = None, limit: int = 100,
              offset: int = 0, after: str | None = None) -> list[RunRow]:
    """One page of runs, newest first, read along the (created_at, id) index (or (recipe, created_at,
    id) with a recipe). `after` is a cursor: the id of the last run of the previous page; unlike an
    offset it stays correct while new runs arrive."""
    if limit < 1 or offset < 0:
        raise ReproError(f"--limit must be ≥ 1 and --offset ≥ 0 (got limit {limit}, offset {offset})")
    query = select(RunRow).order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(limit).offset(offset)
    if recipe:
        query = query.where(RunRow.recipe == recipe)
    if stage:
        query = query.where(RunRow.stage == stage)
    if after is not None:
        last = session.get(RunRow, after)
        if last is None:
            raise ReproError(f"unknown run {after!r} for --after: pass the id of the last run of the previous "
                             "page (see `repro runs --json`)")
        # "created_at <= t" first: a range both planners read along the index (an OR alone is not).
        query = query.where(RunRow.created_at <= last.created_at,
                            or_(RunRow.created_at < last.created_at, RunRow.id < last.id))
    return list(session.scalars(query))


def latest_succeeded_run(session: Session, recipe: str, stage: str, profile: str) -> RunRow | None:
    return latest_run_with_status(session, recipe, stage, profile, "succeeded")


def latest_run_with_status(session: Session, recipe: str, stage: str, profile: str, status: str) -> RunRow | None:
    return session.scalar(select(RunRow).where(RunRow.recipe == recipe, RunRow.stage == stage,
                                               RunRow.profile == profile, RunRow.status == status)
                          .order_by(RunRow.created_at.desc(), RunRow.id.desc()).limit(1))


def run_metrics(session: Session, run_id: str, kind: str | None = None) -> list[RunMetricRow]:
    # In the order the rows were written (position numbers them within their run).
    query = select(RunMetricRow).where(RunMetricRow.run_id == run_id).order_by(RunMetricRow.position)
    if kind:
        query = query.where(RunMetricRow.kind == kind)
    return list(session.scalars(query))


def published_metrics(session: Session, checkpoint: str) -> list[PublishedMetricRow]:
    row = session.scalar(select(CheckpointRow).where(CheckpointRow.name == checkpoint))
    if row is None:
        return []
    return list(session.scalars(select(PublishedMetricRow).where(PublishedMetricRow.checkpoint_id == row.id)))


def mark_stale_runs(session: Session, hostname: str, pid_alive: Callable[[int], bool]) -> list[str]:
    """Record runs left 'running' by a process that died as interrupted (a write: only `repro run`,
    `repro eval` and `repro db gc` call it; read commands report staleness with stale_reason)."""
    marked = []
    now = utcnow()
    for run in session.scalars(select(RunRow).where(RunRow.status == "running")):  # ix_runs_status
        reason = stale_reason(run, hostname, pid_alive, now)
        if reason is None:
            continue
        run.status, run.finished_at, run.error = "interrupted", now, run.error or reason
        marked.append(run.id)
    return marked


def run_input_hashes(session: Session, run_id: str) -> list[LineageEdgeRow]:
    return list(session.scalars(select(LineageEdgeRow).where(
        or_(LineageEdgeRow.child == f"run:{run_id}", LineageEdgeRow.parent == f"run:{run_id}"),
        LineageEdgeRow.content_hash.is_not(None))))


# ---------------------------------------------------------------- checkpoints by name (evaluation targets)


def checkpoint_by_name(session: Session, name: str) -> CheckpointRow | None:
    return session.scalar(select(CheckpointRow).where(CheckpointRow.name == name))
