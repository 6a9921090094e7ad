"""Runs that start other processes: the recorded launcher on every node, and the CPU multi-process runs.

Machine rank 0 owns the record: it registers the run (database row, run.json, lineage), starts the launcher,
and finishes the record when every process has exited; inside the launch, the process of global rank 0
writes the steps, the checkpoint and its card (runner/execute.worker). Every other node runs the same
`repro run` with its own --machine-rank: it points its processes at a node-local copy of the plan that is
never registered, so one run has one record however many nodes train it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from registry.errors import ReproError, RunFailed
from runner.launch import (
    Nodes,
    check_nodes,
    gpus_per_node,
    launch_commands,
    plan_machines,
    resolve_executables,
    run_commands,
    shell,
    source_env,
)
from runner.plan import RunPlan, record_launch, runs_root, spread_over_processes, use_deepspeed, use_ray
from runner.records import RunRecord, finish_run, new_run_id, resume_run, start_run

# Why a launched DeepSpeed run cannot continue: the reason and the way out, in the one line `repro run` prints.
DEEPSPEED_NO_RESUME = ("--resume cannot continue a DeepSpeed ZeRO run: each rank holds only its partition of the "
                       "optimizer state, and DeepSpeed's own checkpoint format is pickled (torch.save/torch.load), "
                       "which this tool never loads; start a new run (without --resume)")


def gpu_blocker(plan: RunPlan, nodes: Nodes, have: int) -> str | None:
    """The GPU shortfall of this node, or None: each of the plan's nodes needs its share of the GPUs."""
    machines = nodes.num_machines if nodes.num_machines > 1 else (plan_machines(plan) or 1)
    need = gpus_per_node(plan, machines)
    if have >= need:
        return None
    return (f"{need} GPUs (found {have})" if machines == 1 else
            f"{need} GPUs on each of {machines} nodes (found {have} here)")


def recorded_blockers(plan: RunPlan, nodes: Nodes | None = None) -> list[str]:
    """What this machine lacks to run the recorded profile (checked before anything is loaded).

    Every node runs the same command, so each needs its own share of the GPUs (gpu_blocker)."""
    missing = []
    try:
        import torch

        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        have = 0
        missing.append("torch is not installed (pip install 'repro[train]')")
    short = gpu_blocker(plan, nodes or Nodes(), have)
    if plan.extra.get("device") == "cpu":
        short = None  # --device cpu: CPU processes stand in for the GPUs (a recorded deviation)
    if short:
        missing.append(short)
    # Data from a mirror or files need no Hub; the models are checked where they are resolved (check_models).
    hub_data = [d for d in plan.datasets if not d.get("path") and not d.get("mirror") and not d.get("internal")]
    if os.environ.get("HF_HUB_OFFLINE") == "1" and hub_data:
        missing.append("the Hugging Face Hub (HF_HUB_OFFLINE=1) to load the recorded model and data")
    return missing


def recorded_resume_blocker(plan: RunPlan, nodes: Nodes) -> str | None:
    """Why the recorded launcher cannot continue this plan's interrupted run, or None: it can on one node
    without DeepSpeed (torchrun: DDP replicates the optimizer, so rank 0's state file is every rank's)."""
    launcher = plan.layout.get("launcher")
    # Only the accelerate launch applies a DeepSpeed config (runner.launch.accelerate_launch); torchrun trains DDP.
    if launcher not in ("torchrun", "nanotron", "ray") and (plan.layout.get("deepspeed_config")
                                                            or plan.layout.get("zero_stage")):
        return f"{plan.recipe}:{plan.stage} runs under DeepSpeed on its recorded launcher: {DEEPSPEED_NO_RESUME}"
    if launcher == "ray":
        return ("--resume of a recorded Ray launch is not supported (an RLVR run with --ray resumes in process, "
                "with the smoke profile or --device cpu); start a new run")
    if max(nodes.num_machines, plan_machines(plan) or 1) > 1:
        return ("--resume continues a recorded launch on one node only: over several nodes, the processes of the "
                "other nodes train from a node-local copy of the plan, which holds no state; start a new run")
    return None


def run_recorded(plan: RunPlan, inputs: dict[str, Any], nodes: Nodes, output_dir: Path | None,
                 resume_record: RunRecord | None = None) -> RunRecord | None:
    """Start the recorded launcher on this node and wait for it; the record on rank 0, None on the others.

    With `resume_record` (one node, no DeepSpeed: recorded_resume_blocker) the interrupted run goes on in its
    own record and every process starts from the state file it names (`runner.execute --resume`)."""
    check_nodes(plan, nodes)
    if resume_record is not None:
        blocker = recorded_resume_blocker(plan, nodes)
        if blocker:
            raise ReproError(blocker)
    if plan.layout.get("launcher") == "ray":
        use_ray(plan, f"{nodes.main_process_ip}:{nodes.main_process_port}" if nodes.num_machines > 1 else None)
    if resume_record is not None:
        record = resume_record
        resume_run(record)
    elif nodes.is_head:
        record = start_run(plan, inputs, output_dir)
    else:
        record = worker_copy(plan, inputs, nodes)
    commands = [resolve_executables(c) for c in launch_commands(plan, record.run_dir, nodes,
                                                                  resume=resume_record is not None)]
    # The launch as it actually runs, in the record (and, through finish_run, in the database row's plan).
    record_launch(record.plan, {"commands": [shell(c) for c in commands], "num_machines": nodes.num_machines,
                                "machine_rank": nodes.machine_rank, "main_process_ip": nodes.main_process_ip,
                                "main_process_port": nodes.main_process_port, "launcher": "recorded"})
    record.save()
    log = record.run_dir / "launch.log"
    code = run_commands(commands, log, source_env())
    if not nodes.is_head:
        if code != 0:
            raise RunFailed(f"node {nodes.machine_rank}: the launch exited with {code}; see {log}")
        return None
    return _finish(RunRecord.load(record.run_dir), code, log)


def worker_copy(plan: RunPlan, inputs: dict[str, Any], nodes: Nodes) -> RunRecord:
    """A node-local run.json for the processes of machine rank > 0; no database row, no lineage.

    Its own directory even when --output-dir is given: that path may be shared with rank 0's."""
    run_id = f"{new_run_id(plan.recipe, plan.stage)}-node{nodes.machine_rank}"
    run_dir = runs_root() / ".nodes" / run_id
    run_dir.mkdir(parents=True)
    record = RunRecord(run_id=run_id, run_dir=run_dir, plan=plan, inputs=inputs)
    record.save()
    return record


def run_multiprocess(plan: RunPlan, inputs: dict[str, Any], num_processes: int, deepspeed: str | None,
                     output_dir: Path | None, resume_record: RunRecord | None = None) -> RunRecord:
    """`--launcher accelerate` on CPU: N real processes on gloo (DDP, or DeepSpeed with --deepspeed).

    The effective batch stays the plan's: the micro-batches one update sums over (processes × accumulation)
    are spread over the N processes, so N must divide them (runner.plan.spread_over_processes).

    With `resume_record` (checked by `check_launched_resume`) the interrupted run goes on in its own record
    and run directory: its plan already holds the spread layout, so it is not spread again, and every
    process starts from the state file the record names (`runner.execute --resume`)."""
    from runner.launch import cpu_launch, resolve_deepspeed_config

    if resume_record is not None:
        record = resume_record
        resume_run(record)
    else:
        spread_over_processes(plan, num_processes)
        if deepspeed:
            resolve_deepspeed_config(deepspeed)  # a bad name is bad input: refuse before any record exists
            use_deepspeed(plan, deepspeed)
        record = start_run(plan, inputs, output_dir)
    argv, env = cpu_launch(num_processes, record.run_dir, deepspeed, resume=resume_record is not None)
    record_launch(record.plan, {"commands": [shell(argv)], "num_machines": 1, "machine_rank": 0,
                                "launcher": "accelerate"})
    record.save()
    code = run_commands([argv], record.run_dir / "launch.log", env)
    return _finish(RunRecord.load(record.run_dir), code, record.run_dir / "launch.log", resume_hint)


def launched_with(record: RunRecord) -> str:
    """How the run was started: "in-process" (no launch in its record), "accelerate" (`--launcher
    accelerate`, CPU processes) or "recorded" (the recorded launcher). Records from before the launch said
    which are told apart by the CPU launch's command."""
    launch = record.plan.extra.get("launch")
    if not launch:
        return "in-process"
    if launch.get("launcher"):
        return launch["launcher"]
    return "accelerate" if "accelerate.commands.launch" in " ".join(launch.get("commands") or []) else "recorded"


def check_launched_resume(record: RunRecord, mode: str, num_processes: int | None) -> int | None:
    """How the interrupted run `record` may continue when this command runs as `mode` (launched_with's
    names), before anything is written: the process count to launch (None: in this process), or a one-line
    ReproError.

    A DeepSpeed run never continues (DEEPSPEED_NO_RESUME). A launched run continues on the processes it ran
    on, by the launcher it ran under: its plan spread the micro-batches over them, and another count would
    change the batch each process sums."""
    if record.plan.extra.get("deepspeed"):
        raise ReproError(f"run {record.run_id}: {DEEPSPEED_NO_RESUME}")
    was = launched_with(record)
    recorded = None if was == "in-process" else int(record.plan.hp("num_processes", 1) or 1)
    if was != mode:
        alone = "without --launcher accelerate" + (", with --device cpu" if record.plan.extra.get("device") == "cpu"
                                                    else "")
        how = {"in-process": alone,
               "accelerate": f"with --launcher accelerate --num-processes {recorded}",
               "recorded": "with the recorded launcher (--profile recorded, --launcher local)"}[was]
        ran = "ran in one process" if recorded is None else f"was launched on {recorded} processes"
        raise ReproError(f"run {record.run_id} {ran}; resume it {how}")
    if mode != "accelerate":
        return None
    if num_processes is not None and num_processes != recorded:
        raise ReproError(f"run {record.run_id} was launched on {recorded} processes and this command says "
                         f"--num-processes {num_processes}; a resume continues on the recorded {recorded} "
                         "(give that, or leave --num-processes out)")
    return recorded


def resume_hint(record: RunRecord) -> str:
    """How a failed `--launcher accelerate` run that saved state continues ("" when it cannot)."""
    saved = record.artifacts.get("state")
    if not saved or record.plan.extra.get("deepspeed"):
        return ""
    plan = record.plan
    device = " --device cpu" if plan.extra.get("device") == "cpu" else ""
    return (f"; it can continue from update {saved.get('step')} with `repro run {plan.recipe} --stage {plan.stage} "
            f"--profile {plan.profile}{device} --launcher accelerate --resume-run {record.run_id}`")


def _finish(record: RunRecord, code: int, log: Path, hint: Callable[[RunRecord], str] | None = None) -> RunRecord:
    if code != 0:
        hint = hint(record) if hint is not None else ""
        finish_run(record, "failed", f"launched processes exited with {code}; see {log}{hint}")
        raise RunFailed(f"run {record.run_id} failed (exit {code}); see {log}{hint}")
    finish_run(record, "succeeded")
    return record
