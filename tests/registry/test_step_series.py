"""Per-step training values live in run_series (one row per run and metric); migration 0003 moves a
database's old per-value rows there, losing nothing, and its downgrade puts them back."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone

from sqlalchemy import JSON, DateTime, Float, Integer, String, column, insert, select, table, text

from registry import db
from registry.db import session_scope
from registry.models import SCHEMA_REVISION, RunMetricRow, RunRow, RunSeriesRow
from registry.queries import replace_run_series, run_metrics, run_series, step_series
from tests.registry.graph_helpers import record_run

OLD_REVISION = "0002_run_metric_lookup"
# run_metrics as it was at OLD_REVISION (0005 changed the model's table: rows name their run by runs.seq).
OLD_METRICS = table("run_metrics", column("id", Integer), column("run_id", String), column("name", String),
                    column("value", Float), column("step", Integer), column("kind", String),
                    column("protocol", JSON), column("created_at", DateTime(timezone=True)))


def _alembic(engine, action: str, revision: str) -> None:
    from alembic import command

    db.run_migrations(engine, getattr(command, action), revision)


def _old_style_rows() -> list[dict]:
    """What finish_run wrote before: one row per logged value per step, plus final/eval rows."""
    when = datetime(2026, 11, 2, tzinfo=timezone.utc)
    rows = []
    for run_id, steps in (("run-a", 6), ("run-b", 4)):
        for step in range(steps):
            rows.append({"run_id": run_id, "name": "loss", "value": 2.0 - step / 10, "step": step, "kind": "train"})
            rows.append({"run_id": run_id, "name": "lr", "value": 1e-5 * step, "step": step, "kind": "train"})
        rows.append({"run_id": run_id, "name": "train_loss_last", "value": 1.5, "step": None, "kind": "final"})
    rows.append({"run_id": "run-a", "name": "loss", "value": 1.4, "step": 5, "kind": "train"})  # a step logged twice
    # JSON has no inf
    rows.append({"run_id": "run-b", "name": "grad_norm", "value": float("inf"), "step": 3, "kind": "train"})
    rows.append({"run_id": "run-b", "name": "ifeval", "value": 0.41, "step": None, "kind": "eval",
                 "protocol": {"harness": "repro"}})
    rows.append({"run_id": "run-b", "name": "loss", "value": 9.0, "step": 2, "kind": "train",
                 "protocol": {"note": "not a plain point"}})
    return [{"protocol": None, "created_at": when, **r} for r in rows]


def _points(rows) -> dict:
    out: dict = {}
    for r in rows:
        out.setdefault((r["run_id"], r["name"]), []).append((r["step"], r["value"]))
    return out


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


def test_upgrade_moves_old_rows_into_series_and_downgrade_restores_them(db_url, cli):
    engine = db.get_engine(db_url)
    with session_scope(db_url) as s:
        record_run(s, "run-a")
        record_run(s, "run-b", minutes=1)
    _alembic(engine, "downgrade", OLD_REVISION)
    old = _old_style_rows()
    with engine.begin() as conn:
        conn.execute(insert(OLD_METRICS), old)
    db._engine_for.cache_clear()

    code, out, err = cli("db", "upgrade")
    assert code == 0, err
    assert f"{OLD_REVISION} -> {SCHEMA_REVISION}" in out
    db._engine_for.cache_clear()
    plain = [r for r in old if r["kind"] == "train" and r["step"] is not None and r["protocol"] is None]
    kept = [r for r in old if r not in plain]
    with session_scope(db_url) as s:
        series = {(row.run_id, row.name): row for row in s.scalars(select(RunSeriesRow))}
        assert set(series) == set(_points(plain))
        for key, points in _points(plain).items():
            got = run_series(s, key[0], [key[1]])[key[1]]
            assert got[0] == [p[0] for p in points] and series[key].points == len(points)
            assert all(_same(a, b) for a, b in zip(got[1], [p[1] for p in points]))
        rows = list(s.scalars(select(RunMetricRow)))
        expected = sorted((r["run_id"], r["name"], r["kind"]) for r in kept)
        assert sorted((r.run_id, r.name, r.kind) for r in rows) == expected
        assert [r.name for r in run_metrics(s, "run-b", kind="eval")] == ["ifeval"]
        assert sum(r.points for r in series.values()) + len(rows) == len(old)

    _alembic(db.get_engine(db_url), "downgrade", OLD_REVISION)
    with engine.connect() as conn:
        back = [dict(r._mapping) for r in conn.execute(select(OLD_METRICS).order_by(text("id")))]
    assert len(back) == len(old)
    restored = _points([r for r in back if r["kind"] == "train" and r["step"] is not None and r["protocol"] is None])
    for key, points in _points(plain).items():
        assert [p[0] for p in restored[key]] == [p[0] for p in points]
        assert all(_same(a, b) for a, b in zip([p[1] for p in restored[key]], [p[1] for p in points]))


def test_series_rows_replace_rather_than_duplicate(db_url):
    steps = [{"step": 1, "loss": 2.5, "lr": 0.0}, {"step": 2, "loss": 2.25, "lr": 1e-5, "note": "text"},
             {"step": 3, "loss": float("inf"), "ok": True}]
    with session_scope(db_url) as s:
        record_run(s, "run-a")
        replace_run_series(s, "run-a", step_series(steps[:2]))
        replace_run_series(s, "run-a", step_series(steps))  # a resumed run finishing again
    with session_scope(db_url) as s:
        got = run_series(s, "run-a")
        assert set(got) == {"loss", "lr"}  # numbers only: no text, no booleans
        assert got["loss"] == ([1, 2, 3], [2.5, 2.25, float("inf")]) and got["lr"] == ([1, 2], [0.0, 1e-5])
        assert len(list(s.scalars(select(RunSeriesRow)))) == 2
        s.delete(s.get(RunRow, "run-a"))
    with session_scope(db_url) as s:
        assert run_series(s, "run-a") == {}


def test_upgrade_moves_plans_into_shared_documents_and_back(db_url, cli):
    from registry.models import RunDocumentRow

    engine = db.get_engine(db_url)
    shared = {"recipe": "tulu3-8b", "stage": "sft", "hyperparameters": {"learning_rate": 5e-6}}
    with session_scope(db_url) as s:
        for i in range(3):
            record_run(s, f"run-{i}", minutes=i)
    _alembic(engine, "downgrade", OLD_REVISION)
    with engine.begin() as conn:  # old-style rows: the plan and deviations inline in each run
        for i in range(3):
            conn.execute(text("UPDATE runs SET plan = :p, deviations = :d WHERE id = :id"),
                         {"p": json.dumps(shared if i < 2 else {"other": i}),
                          "d": json.dumps([{"key": "epochs", "recorded": 2, "used": 1}] if i else []),
                          "id": f"run-{i}"})
    db._engine_for.cache_clear()
    code, _, err = cli("db", "upgrade")
    assert code == 0, err
    db._engine_for.cache_clear()
    with session_scope(db_url) as s:
        runs = {r.id: r for r in s.scalars(select(RunRow))}
        assert runs["run-0"].plan == runs["run-1"].plan == shared and runs["run-2"].plan == {"other": 2}
        assert runs["run-0"].deviations == [] and runs["run-2"].deviations[0]["key"] == "epochs"
        assert len(list(s.scalars(select(RunDocumentRow)))) == 4  # 2 plans + 2 deviation lists for 3 runs
    with session_scope(db_url) as s:
        detached = s.get(RunRow, "run-1")
    assert detached.plan == shared  # loaded with the run: readable after the session closed
    _alembic(db.get_engine(db_url), "downgrade", OLD_REVISION)
    with engine.connect() as conn:
        back = {r.id: r for r in conn.execute(text("SELECT id, plan, deviations FROM runs"))}
    def parsed(value):
        return json.loads(value) if isinstance(value, str) else value

    assert parsed(back["run-0"].plan) == shared and parsed(back["run-2"].plan) == {"other": 2}
    assert parsed(back["run-1"].deviations)[0]["used"] == 1


def test_after_an_upgrade_the_cold_read_path_answers(db_url, cli):
    from registry import light_db
    from registry.recipes import load_recipes

    code, _, err = cli("lineage", "tulu3-8b:sft", "--json")  # creates and syncs the database
    assert code == 0, err
    _alembic(db.get_engine(db_url), "downgrade", OLD_REVISION)
    db._engine_for.cache_clear()
    assert light_db.lineage_walk(load_recipes(), "tulu3-8b:sft", False, False) is None  # an older schema
    code, _, err = cli("db", "upgrade")
    assert code == 0, err
    node, edges, _ = light_db.lineage_walk(load_recipes(), "tulu3-8b:sft", False, False)
    assert node == "stage:tulu3-8b:sft" and any(e.relation == "code" for e in edges)
