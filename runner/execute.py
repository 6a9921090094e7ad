"""Run a planned stage: resolve inputs, record the run, call the stage module, finish the record.

`repro run` calls `execute()` in-process for the local launcher. The accelerate
launcher starts `python -m runner.execute --run-dir DIR [--resume]` in every process; rank 0
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

from registry.db import session_scope
from registry.errors import ReproError, RunFailed
from registry.hashing import dvc_hash
from registry.queries import get_run, latest_succeeded_run
from registry.recipes import Registry
from runner.plan import RunPlan, limit_updates, max_updates, record_distributed, use_ray
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
            tensorboard: bool = False, accelerator=None) -> RunRecord:
    """Run the stage in this process. `max_updates=N` is short for `limit_updates(plan, N)` before the call
    (the limit travels in the plan, as it does to launched processes); `repro run` sets it on the plan."""
    if max_updates is not None:
        limit_updates(resume_record.plan if resume_record is not None else plan, max_updates)
    record = resume_record or start_run(plan, inputs, output_dir)
    if resume_record is not None:
        resume_run(record)
    ctx = stage_context(record, resume=resume_record is not None, accelerator=accelerator, progress=progress,
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
            first = first_state_update(plan.stage)
            hint = f"no resumable state was saved yet (the first is saved after update {first}); start a new run"
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


def find_resumable(recipe: str, stage: str, profile: str, run_id: str | None) -> RunRecord:
    """The run `--resume` continues: the newest interrupted run of this stage, or the run named by id.

    A failed run is resumed only when named: it may have failed on bad input, and continuing it silently
    would hide that. Runs whose process is gone are marked interrupted first (registry.queries.mark_stale_runs)."""
    import socket

    from registry.queries import latest_run_with_status, mark_stale_runs
    from registry.run_status import pid_alive

    with session_scope() as session:
        mark_stale_runs(session, socket.gethostname(), pid_alive)
        if run_id is not None:
            row = get_run(session, run_id)
            if row is None or (row.recipe, row.stage, row.profile) != (recipe, stage, profile):
                raise ReproError(f"no run {run_id!r} of {recipe}:{stage} ({profile}) to resume; see `repro runs`")
            if row.status not in ("interrupted", "failed"):
                raise ReproError(f"run {run_id} is {row.status}; only an interrupted or failed run can resume")
        else:
            row = latest_run_with_status(session, recipe, stage, profile, "interrupted")
            if row is None:
                raise ReproError(f"no interrupted run of {recipe}:{stage} ({profile}) to resume; start one without "
                                 "--resume, or name a failed run with --resume-run RUN_ID")
        found, run_dir = row.id, Path(row.run_dir)
    try:
        record = RunRecord.load(run_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise ReproError(f"run {found} cannot resume: its record {run_dir / 'run.json'} "
                         f"is unreadable ({exc})") from None
    if not record.artifacts.get("state"):
        raise ReproError(f"run {found} saved no resumable state (it stopped before update "
                         f"{first_state_update(stage)}, when the first is saved); start a new run")
    return record


def first_state_update(stage: str) -> int:
    """After which update a stage first saves resumable state (what a resume can start from)."""
    if stage == "rlvr":
        from runner.stages.rlvr import STATE_EVERY
    else:
        from runner.trainer import STATE_EVERY
    return STATE_EVERY


def _raise_interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def stage_context(record: RunRecord, *, resume: bool = False, accelerator: Any = None,
                  progress: Callable | None = None, log_dir: Path | None = None) -> Any:
    """The one place a StageContext is built: for the in-process run and for every launched process. The
    update limit comes from the plan (runner.plan.limit_updates), the same in every process."""
    from runner.stages.kit import StageContext

    return StageContext(plan=record.plan, record=record, resume=resume, accelerator=accelerator, progress=progress,
                        max_updates=max_updates(record.plan), log_dir=log_dir)


def make_accelerator(plan: RunPlan | None = None) -> Any:
    """The Accelerator of a launched process: DDP (gloo on CPU, NCCL on GPUs), or DeepSpeed when the launch
    names a config (the `--deepspeed` CPU runs through REPRO_DEEPSPEED_CONFIG; `accelerate launch
    --use_deepspeed` through accelerate's own environment)."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    class _Accelerator(Accelerator):
        """DeepSpeed must see the optimizer when it wraps the model; the stages prepare the model alone
        (runner.stages.kit.build_trainer) before the Trainer builds the optimizer, so a lone module is
        returned as is under DeepSpeed and the Trainer prepares model + optimizer together."""

        def prepare(self, *args: Any, **kwargs: Any) -> Any:
            if (self.distributed_type == DistributedType.DEEPSPEED and len(args) == 1
                    and isinstance(args[0], torch.nn.Module)):
                return args[0]
            return super().prepare(*args, **kwargs)

    cuda = torch.cuda.is_available()
    plugin = deepspeed_plugin(plan, cuda)
    if plugin is None:
        return _Accelerator(cpu=not cuda)
    kwargs: dict[str, Any] = {}
    if not cuda:
        from accelerate.utils import InitProcessGroupKwargs

        # accelerate's CPU mode (ACCELERATE_USE_CPU, cpu=True) silently drops the DeepSpeed plugin and runs
        # plain DDP; without it and without CUDA it sets up no process group at all unless told the backend.
        # So: not CPU mode, and gloo named, which DeepSpeed's CPU accelerator then initializes.
        os.environ.pop("ACCELERATE_USE_CPU", None)
        kwargs["kwargs_handlers"] = [InitProcessGroupKwargs(backend="gloo")]
    ga = plugin.deepspeed_config.get("gradient_accumulation_steps")
    accelerator = _Accelerator(deepspeed_plugin=plugin, gradient_accumulation_steps=ga if isinstance(ga, int) else 1,
                               **kwargs)
    if accelerator.distributed_type != DistributedType.DEEPSPEED:  # never train DDP while claiming DeepSpeed
        raise RuntimeError(f"asked for DeepSpeed but accelerate set up {accelerator.distributed_type}")
    if plan is not None and plan.stage == "dpo" and plugin.zero_stage == 3:
        # Under ZeRO-3 accelerate tells transformers to load every model partitioned (even with the init flag
        # off). The DPO stage copies its policy into the live reference, and a copy of partitioned weights is
        # empty; so here the models load whole and DeepSpeed partitions the policy when it wraps it (the same
        # numbers, more host memory).
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        plugin.zero3_init_flag = False
    return accelerator


def deepspeed_plugin(plan: RunPlan | None, cuda: bool) -> Any:
    """The DeepSpeed plugin this launch asks for, its "auto" entries filled from the plan; None without one."""
    from runner.launch import deepspeed_config_for

    path = os.environ.get("REPRO_DEEPSPEED_CONFIG") or os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not path and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    from accelerate.utils import DeepSpeedPlugin

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if path:
        return DeepSpeedPlugin(hf_ds_config=deepspeed_config_for(path, plan, world, use_plan_precision=cuda))
    # `accelerate launch --config_file deepspeed_zero3.yaml` or `--zero_stage 3`: accelerate builds the config
    # from its environment; the batch keys it would read from a DataLoader come from the plan instead.
    plugin = DeepSpeedPlugin()
    if plan is not None:
        plugin.deepspeed_config.update(deepspeed_config_for(plugin.deepspeed_config, plan, world,
                                                            use_plan_precision=cuda))
    return plugin


def worker(run_dir: Path, resume: bool = False) -> None:
    """One launched process: train the planned stage; the process of global rank 0 writes the record.

    The launching `repro run` (machine rank 0) created the record and finishes it when every process has
    exited; the other nodes point their processes at a worker copy that is never registered. With `resume`
    (a DDP run continued by runner.launched: `--launcher accelerate`, or the recorded torchrun launch on one
    node) every process loads the one state file the record names: DDP replicates the optimizer, so rank 0's
    saved state is every rank's."""
    record = RunRecord.load(run_dir)
    module = importlib.import_module(STAGE_MODULES[record.plan.stage])
    if record.plan.layout.get("launcher") == "ray" and record.plan.profile == "recorded":
        # The Ray driver is a single process: the learner and engine actors are its distributed part.
        use_ray(record.plan)
        module.run(stage_context(record))
        record.save()
        return
    accelerator = make_accelerator(record.plan)
    ctx = stage_context(record, resume=resume, accelerator=accelerator)
    module.run(ctx)
    # What actually trained, in the record: accelerate falls back quietly (its CPU mode drops DeepSpeed).
    plugin = accelerator.state.deepspeed_plugin
    distributed = {"type": accelerator.distributed_type.value, "processes": accelerator.num_processes,
                   "zero_stage": plugin.zero_stage if plugin is not None else None,
                   "zero3_init": bool(plugin.zero3_init_flag) if plugin is not None else None,
                   "device": str(accelerator.device)}
    import torch

    if torch.cuda.is_available():  # rank 0's peak, for bench/gpu_check.py and the record
        distributed["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
    record_distributed(record.plan, distributed)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record.save()
    accelerator.end_training()  # destroys the process group: no "destroy_process_group() was not called" warning


def main() -> None:
    """Entry point for launched processes (accelerate launch / torchrun ... -m runner.execute --run-dir DIR)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the state the run record names")
    args = parser.parse_args()
    worker(Path(args.run_dir), resume=args.resume)


if __name__ == "__main__":
    main()
