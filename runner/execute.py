"""Run a planned stage: resolve inputs, record the run, call the stage module, finish the record.

`repro run` calls `execute()` in-process for the local launcher. The accelerate
launcher starts `python -m runner.execute --run-dir DIR` in every process; rank 0
owns the record, the others only train.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import traceback
from pathlib import Path
from typing import Any, Callable

from registry.database import session_scope
from registry.errors import ReproError, RunFailed
from registry.hashing import dvc_hash
from registry.queries import get_run, latest_succeeded_run
from registry.recipes import Registry
from runner.plan import RunPlan
from runner.records import RunRecord, finish_run, resume_run, start_run, verify_checkpoint

STAGE_MODULES = {"sft": "runner.stages.sft", "dpo": "runner.stages.dpo", "rm": "runner.stages.rm",
                 "rlvr": "runner.stages.rlvr", "pretrain": "runner.stages.pretrain"}


def resolve_inputs(registry: Registry, plan: RunPlan, overrides: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Each input checkpoint of the stage: a smoke run of the producing stage, or a substitute the user named.

    A published input (e.g. the Llama-3.1 base) has no local copy in the smoke profile: the stage starts
    from a random miniature and records that as a deviation.
    """
    stage = registry.stage(plan.recipe, plan.stage)
    out: dict[str, dict[str, Any]] = {}
    roles = {ref.role: ref.checkpoint for ref in stage.inputs}
    unknown_roles = set(overrides) - set(roles) - {"init"}
    if unknown_roles:
        raise ReproError(f"invalid --input role {sorted(unknown_roles)[0]!r} for {plan.recipe}:{plan.stage} "
                         f"(valid: {', '.join(sorted(roles)) or 'init'})")
    # A substitute stands in for its checkpoint in every role that names it (DPO's init is also its reference).
    substituted = {roles[r]: _substitute(v, roles[r], registry) for r, v in overrides.items() if r in roles}
    for role, checkpoint in roles.items():
        if role == "tokenizer":
            continue
        out[role] = {"checkpoint": checkpoint}
        if checkpoint in substituted:
            out[role].update(substituted[checkpoint])
            continue
        ckpt = registry.model.checkpoints[checkpoint]
        producer = ckpt.produced_by
        if producer is None or plan.profile != "smoke":
            continue
        p_recipe, _, p_stage = producer.partition(":")
        with session_scope() as session:
            run = latest_succeeded_run(session, p_recipe, p_stage, "smoke")
            if run is None:
                raise ReproError(f"input {role} ({checkpoint}) of {plan.recipe}:{plan.stage} does not exist yet; "
                                 f"run `repro run {p_recipe} --stage {p_stage} --profile smoke` first")
            run_id, path = run.id, Path(run.run_dir) / "checkpoint"
        if not (path.parent / "run.json").is_file():
            raise ReproError(f"checkpoint of run {run_id} is missing at {path}; rerun that stage")
        digest = verify_checkpoint(path, f"run {run_id}") or dvc_hash(path)
        out[role].update({"run_id": run_id, "path": str(path), "content_hash": digest})
    for role, value in overrides.items():
        if role not in out:
            out[role] = {"checkpoint": roles.get(role, "substitute"), **_substitute(value, roles.get(role), registry)}
    return out


def _substitute(value: str, checkpoint: str | None, registry: Registry) -> dict[str, Any]:
    """`--input init=PATH|RUN_ID`: start from another checkpoint; lineage marks the substitution.

    A checkpoint that a succeeded run of the recorded producing stage wrote (its run.json beside it, hashes
    matching) is that stage's own output, not a substitute: pipelines pass their inputs this way, and a DVC
    cache restore leaves no database row behind (the run is imported from its run.json)."""
    path = Path(value)
    run_id = None
    if not path.exists():
        with session_scope() as session:
            run = get_run(session, value)
            if run is None:
                raise ReproError(f"--input {value!r} is neither a directory nor a run id")
            run_id, path = run.id, Path(run.run_dir) / "checkpoint"
    if not (path / "config.json").exists():
        raise ReproError(f"--input {path} is not a model directory (no config.json)")
    own = _own_output(path, checkpoint, registry)
    if own is not None:
        return own
    digest = verify_checkpoint(path, f"run {run_id}" if run_id else f"--input {value}") or dvc_hash(path)
    return {"path": str(path.resolve()), "run_id": run_id, "substituted": True, "substitutes": checkpoint,
            "content_hash": digest}


def _own_output(path: Path, checkpoint: str | None, registry: Registry) -> dict[str, Any] | None:
    record_file = path.parent / "run.json"
    ckpt = registry.model.checkpoints.get(checkpoint) if checkpoint else None
    if ckpt is None or ckpt.produced_by is None or not record_file.exists():
        return None
    record = json.loads(record_file.read_text())
    if record.get("status") != "succeeded" or f"{record.get('recipe')}:{record.get('stage')}" != ckpt.produced_by:
        return None
    digest = verify_checkpoint(path, f"run {record.get('run_id')}")
    if digest is None:
        return None
    from runner.records import import_run

    import_run(path.parent)
    return {"path": str(path.resolve()), "run_id": record["run_id"], "content_hash": digest}


def preflight(plan: RunPlan) -> None:
    """Load and check every dataset before anything is written: bad data is bad input (exit 2), named by its
    row. The same loader the stages read through (runner/data/hub.py)."""
    from runner.data import hub

    hub.preflight(plan)


def execute(plan: RunPlan, inputs: dict[str, Any], *, resume_record: RunRecord | None = None,
            output_dir: Path | None = None, progress: Callable | None = None, max_updates: int | None = None,
            tensorboard: bool = False, accelerator=None) -> RunRecord:  # noqa: ANN001
    from runner.stagekit import StageContext

    record = resume_record or start_run(plan, inputs, output_dir)
    if resume_record is not None:
        resume_run(record)
    ctx = StageContext(plan=record.plan, record=record, resume=resume_record is not None, accelerator=accelerator,
                       progress=progress, max_updates=max_updates,
                       log_dir=record.run_dir / "tensorboard" if tensorboard else None)
    module = importlib.import_module(STAGE_MODULES[plan.stage])
    previous = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        module.run(ctx)
    except KeyboardInterrupt:
        if record.artifacts.get("state"):
            step = record.artifacts["state"].get("step")
            hint = (f"resume from update {step} with `repro run {plan.recipe} --stage {plan.stage} --profile "
                    f"{plan.profile} --resume`")
        else:  # promising --resume here would send the user to a refusal
            hint = (f"no resumable state was saved yet (the first is saved after update {first_state_update(plan.stage)}"
                    "); start a new run")
        finish_run(record, "interrupted", f"interrupted (SIGINT/SIGTERM); {hint}")
        raise RunFailed(f"run {record.run_id} interrupted; {hint}") from None
    except ReproError as exc:
        finish_run(record, "failed", str(exc))
        raise
    except Exception as exc:  # a crash: recorded, then reported as exit 1
        finish_run(record, "failed", f"{type(exc).__name__}: {exc}")
        if os.environ.get("REPRO_DEBUG") == "1":
            traceback.print_exc()
        raise RunFailed(f"run {record.run_id} failed: {type(exc).__name__}: {exc} (details in "
                        f"{record.run_dir / 'run.json'})") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    finish_run(record, "succeeded")
    return record


def first_state_update(stage: str) -> int:
    """After which update a stage first saves resumable state (what a resume can start from)."""
    if stage == "rlvr":
        from runner.stages.rlvr import STATE_EVERY
    else:
        from runner.trainer import STATE_EVERY
    return STATE_EVERY


def _raise_interrupt(_signum, _frame) -> None:  # noqa: ANN001
    raise KeyboardInterrupt


def main() -> None:
    """Entry point for launched processes (accelerate launch ... -m runner.execute --run-dir DIR)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    args = parser.parse_args()
    from runner.launch import worker_main

    worker_main(Path(args.run_dir))


if __name__ == "__main__":
    main()
