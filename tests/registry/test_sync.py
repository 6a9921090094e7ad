"""Syncing recipes.json into the database: idempotent, by content hash, safe under concurrency."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import uuid
from pathlib import Path

from sqlalchemy import func, select

from registry import db
from registry.models import LineageEdgeRow, PublishedMetricRow, RecipeRow, RunMetricRow, RunRow, StageRow
from registry.recipes import canonical_text, load_recipes
from registry.sync import sync

ROOT = Path(__file__).resolve().parents[2]


def _copy_recipes(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "recipes.json"
    shutil.copy(ROOT / "recipes.json", path)
    monkeypatch.setenv("REPRO_RECIPES", str(path))
    return path


def test_sync_is_idempotent_and_complete(db_url):
    reg = load_recipes(ROOT / "recipes.json")
    with db.session_scope(db_url) as s:
        first = sync(s, reg)
    with db.session_scope(db_url) as s:
        assert sync(s, reg) == []
        assert s.scalar(select(func.count()).select_from(RecipeRow)) == len(reg.recipes)
        assert s.scalar(select(func.count()).select_from(StageRow)) == sum(len(r.stages) for r in reg.recipes.values())
        metrics = sum(len(c.metrics) for c in reg.model.checkpoints.values())
        assert s.scalar(select(func.count()).select_from(PublishedMetricRow)) == metrics
    assert "added recipe tulu3-8b" in first and "added stage tulu3-8b:rlvr" in first


def test_editing_one_value_changes_exactly_that(db_url, tmp_path, monkeypatch):
    path = _copy_recipes(tmp_path, monkeypatch)
    with db.session_scope(db_url) as s:
        sync(s, load_recipes(path))
        before = {(r.recipe.name, r.name): r.content_hash for r in s.scalars(select(StageRow))}
    data = json.loads(path.read_text())
    sft = next(st for st in data["recipes"]["tulu3-8b"]["stages"] if st["name"] == "sft")
    sft["hyperparameters"]["learning_rate"]["value"] = 7e-6
    path.write_text(canonical_text(data))
    with db.session_scope(db_url) as s:
        changes = sync(s, load_recipes(path))
        after = {(r.recipe.name, r.name): r.content_hash for r in s.scalars(select(StageRow))}
        row = s.scalar(select(StageRow).join(RecipeRow).where(RecipeRow.name == "tulu3-8b", StageRow.name == "sft"))
        assert row.body["hyperparameters"]["learning_rate"]["value"] == 7e-6
    assert changes == ["updated stage tulu3-8b:sft"]
    assert [k for k in before if before[k] != after[k]] == [("tulu3-8b", "sft")]


def test_sync_builds_recipe_lineage(db_url):
    with db.session_scope(db_url) as s:
        sync(s, load_recipes(ROOT / "recipes.json"))
        parents = set(s.scalars(select(LineageEdgeRow.parent).where(
            LineageEdgeRow.child == "stage:tulu3-70b:rlvr")))
    assert "checkpoint:allenai/Llama-3.1-Tulu-3-8B-RM" in parents


def _worker(url: str, recipes: str, worker: int, runs: int, queue) -> None:
    os.environ["REPRO_DATABASE_URL"] = url
    db._engine_for.cache_clear()
    try:
        reg = load_recipes(recipes)
        for i in range(runs):
            with db.session_scope(url) as s:
                sync(s, reg)
            with db.session_scope(url) as s:
                run_id = f"w{worker}-{i}-{uuid.uuid4().hex[:6]}"
                s.add(RunRow(id=run_id, recipe="tulu3-8b", stage="sft", profile="smoke", status="succeeded",
                             run_dir="/tmp/x", plan={}, deviations=[], final_metrics={}))
                s.flush()
                s.add(RunMetricRow(run_id=run_id, name="loss", value=float(i), step=i))
        queue.put(("ok", worker))
    except Exception as exc:  # reported to the parent, which fails the test
        queue.put(("error", f"{worker}: {type(exc).__name__}: {exc}"))


def test_eight_processes_sync_and_record_at_once(db_url):
    db.get_engine(db_url)  # create the schema first, as `repro db upgrade` would
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    runs_each = 4
    procs = [ctx.Process(target=_worker, args=(db_url, str(ROOT / "recipes.json"), w, runs_each, queue))
             for w in range(8)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert [r for r in results if r[0] != "ok"] == []
    with db.session_scope(db_url) as s:
        assert s.scalar(select(func.count()).select_from(RunRow)) == 8 * runs_each
        assert s.scalar(select(func.count()).select_from(RunMetricRow)) == 8 * runs_each
        assert s.scalar(select(func.count()).select_from(RecipeRow)) == 6
