"""Runs that start other processes: the recorded launcher on every node, and the CPU multi-process runs.

Machine rank 0 owns the record: it registers the run (database row, run.json, lineage), starts the launcher,
and finishes the record when every process has exited; inside the launch, the process of global rank 0
writes the steps, the checkpoint and its card (runner/execute.worker). Every other node runs the same
`repro run` with its own --machine-rank: it points its processes at a node-local copy of the plan that is
never registered, so one run has one record however many nodes train it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
from runner.plan import RunPlan, runs_root
from runner.records import RunRecord, finish_run, new_run_id, start_run


def gpu_blocker(plan: RunPlan, nodes: Nodes, have: int) -> str | None:
    """The GPU shortfall of this node, or None: each of the plan's nodes needs its share of the GPUs."""
    machines = nodes.num_machines if nodes.num_machines > 1 else (plan_machines(plan) or 1)
    need = gpus_per_node(plan, machines)
    if have >= need:
        return None
    return (f"{need} GPUs (found {have})" if machines == 1 else
            f"{need} GPUs on each of {machines} nodes (found {have} here)")


def apply_layout(plan: RunPlan, registry: Any, gpus: int, nodes: int | None) -> None:
    """`repro run --gpus N [--nodes M]`: the planner's layout for N GPUs, each change a recorded deviation.

    The planner keeps the effective batch (processes × per-device × accumulation) and the other invariants;
    a layout that cannot keep them is refused, naming what breaks."""
    from runner.planner import plan_layout

    result = plan_layout(registry, plan.recipe, plan.stage, gpus, nodes=nodes).to_dict()
    if not result["feasible"]:
        raise ReproError(f"no layout on {gpus} GPUs keeps {plan.recipe}:{plan.stage}'s invariants "
                         f"({', '.join(result['broken'])}); see `repro plan {plan.recipe} --stage {plan.stage} "
                         f"--gpus {gpus}`")
    layout = result["layout"]
    reason = f"--gpus {gpus}" + (f" --nodes {nodes}" if nodes else "") + ": the planner's layout (same effective batch)"
    for change in result["changes"]:
        key, planned = change["key"], change["planned"]
        if key in plan.hyperparameters or key in ("num_processes", "num_machines"):
            plan.hyperparameters[key] = planned
        else:
            plan.layout[key] = planned
        plan.deviate(key, change["recorded"], planned, reason)
    if plan.layout.get("gpus") != gpus:
        plan.deviate("gpus", plan.layout.get("gpus"), gpus, reason)
    plan.layout.update(gpus=gpus, nodes=layout["num_machines"])
    plan.hyperparameters.setdefault("num_processes", layout["num_processes"])
    plan.hyperparameters["num_machines"] = layout["num_machines"]
    for key in ("zero_stage", "deepspeed_config"):
        if layout.get(key) is not None and layout[key] != plan.layout.get(key):
            plan.deviate(key, plan.layout.get(key), layout[key], reason)
            plan.layout[key] = layout[key]
    plan.layout["offload"] = bool(layout.get("offload_optimizer") or layout.get("offload_params"))
    plan.extra["planned_layout"] = {"gpus": gpus, "nodes": layout["num_machines"], "feasible": True}


def run_recorded(plan: RunPlan, inputs: dict[str, Any], nodes: Nodes, output_dir: Path | None) -> RunRecord | None:
    """Start the recorded launcher on this node and wait for it; the record on rank 0, None on the others."""
    check_nodes(plan, nodes)
    if plan.layout.get("launcher") == "ray":
        plan.extra["use_ray"] = True
        if nodes.num_machines > 1:
            plan.extra["ray_address"] = f"{nodes.main_process_ip}:{nodes.main_process_port}"
    if nodes.is_head:
        record = start_run(plan, inputs, output_dir)
    else:
        record = worker_copy(plan, inputs, nodes)
    commands = [resolve_executables(c) for c in launch_commands(plan, record.run_dir, nodes)]
    # The launch as it actually runs, in the record (and, through finish_run, in the database row's plan).
    record.plan.extra["launch"] = {"commands": [shell(c) for c in commands], "num_machines": nodes.num_machines,
                                   "machine_rank": nodes.machine_rank, "main_process_ip": nodes.main_process_ip,
                                   "main_process_port": nodes.main_process_port}
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
    are spread over the N processes, so N must divide them."""
    from runner.launch import cpu_launch, resolve_deepspeed_config

    before = int(plan.hp("num_processes", 1) or 1)
    ga = int(plan.hp("gradient_accumulation_steps", 1))
    micro = before * ga
    if micro % num_processes:
        raise ReproError(f"{micro} micro-batches per update ({before} processes × gradient_accumulation_steps {ga}) "
                         f"do not divide over {num_processes} processes; the effective batch would change")
    plan.deviate("num_processes", plan.recorded.get("num_processes"), num_processes,
                 "--launcher accelerate on CPU (gloo)")
    plan.hyperparameters["gradient_accumulation_steps"] = micro // num_processes
    plan.hyperparameters["num_processes"] = num_processes
    if plan.hyperparameters.get("num_machines") not in (None, 1):  # a recorded multi-node layout, on one machine
        plan.deviate("num_machines", plan.recorded.get("num_machines"), 1, "--launcher accelerate on one CPU machine")
        plan.hyperparameters["num_machines"] = 1
    plan.deviate("gradient_accumulation_steps", plan.recorded.get("gradient_accumulation_steps"),
                 micro // num_processes, f"effective batch kept across {num_processes} processes")
    if deepspeed:
        resolve_deepspeed_config(deepspeed)  # a bad name is bad input: refuse before any record exists
        plan.extra["deepspeed"] = deepspeed
    record = start_run(plan, inputs, output_dir)
    argv, env = cpu_launch(num_processes, record.run_dir, deepspeed)
    record.plan.extra["launch"] = {"commands": [shell(argv)], "num_machines": 1, "machine_rank": 0}
    record.save()
    code = run_commands([argv], record.run_dir / "launch.log", env)
    return _finish(RunRecord.load(record.run_dir), code, record.run_dir / "launch.log")


def _finish(record: RunRecord, code: int, log: Path) -> RunRecord:
    if code != 0:
        finish_run(record, "failed", f"launched processes exited with {code}; see {log}")
        raise RunFailed(f"run {record.run_id} failed (exit {code}); see {log}")
    finish_run(record, "succeeded")
    return record
