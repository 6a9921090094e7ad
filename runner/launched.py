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
from typing import Any

from registry.errors import RunFailed
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
from runner.records import RunRecord, finish_run, new_run_id, start_run


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


def run_recorded(plan: RunPlan, inputs: dict[str, Any], nodes: Nodes, output_dir: Path | None) -> RunRecord | None:
    """Start the recorded launcher on this node and wait for it; the record on rank 0, None on the others."""
    check_nodes(plan, nodes)
    if plan.layout.get("launcher") == "ray":
        use_ray(plan, f"{nodes.main_process_ip}:{nodes.main_process_port}" if nodes.num_machines > 1 else None)
    if nodes.is_head:
        record = start_run(plan, inputs, output_dir)
    else:
        record = worker_copy(plan, inputs, nodes)
    commands = [resolve_executables(c) for c in launch_commands(plan, record.run_dir, nodes)]
    # The launch as it actually runs, in the record (and, through finish_run, in the database row's plan).
    record_launch(record.plan, {"commands": [shell(c) for c in commands], "num_machines": nodes.num_machines,
                                "machine_rank": nodes.machine_rank, "main_process_ip": nodes.main_process_ip,
                                "main_process_port": nodes.main_process_port})
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
                     output_dir: Path | None) -> RunRecord:
    """`--launcher accelerate` on CPU: N real processes on gloo (DDP, or DeepSpeed with --deepspeed).

    The effective batch stays the plan's: the micro-batches one update sums over (processes × accumulation)
    are spread over the N processes, so N must divide them (runner.plan.spread_over_processes)."""
    from runner.launch import cpu_launch, resolve_deepspeed_config

    spread_over_processes(plan, num_processes)
    if deepspeed:
        resolve_deepspeed_config(deepspeed)  # a bad name is bad input: refuse before any record exists
        use_deepspeed(plan, deepspeed)
    record = start_run(plan, inputs, output_dir)
    argv, env = cpu_launch(num_processes, record.run_dir, deepspeed)
    record_launch(record.plan, {"commands": [shell(argv)], "num_machines": 1, "machine_rank": 0})
    record.save()
    code = run_commands([argv], record.run_dir / "launch.log", env)
    return _finish(RunRecord.load(record.run_dir), code, record.run_dir / "launch.log")


def _finish(record: RunRecord, code: int, log: Path) -> RunRecord:
    if code != 0:
        finish_run(record, "failed", f"launched processes exited with {code}; see {log}")
        raise RunFailed(f"run {record.run_id} failed (exit {code}); see {log}")
    finish_run(record, "succeeded")
    return record
