"""`repro plan RECIPE --stage S --gpus N`: a layout that keeps the recorded batch semantics.

Light on purpose (no torch): runner.layouts is arithmetic over recipes.json. runner.cli registers
`plan_cmd` on the main app with `register(app)`; this module parses the flags and prints the answer.
"""

from __future__ import annotations

from typing import Any, Optional

import typer

from registry.cli import console, emit_json, fmt, registry

_LAYOUT_KEYS = ("num_processes", "num_machines", "per_device_batch_size", "gradient_accumulation_steps",
                "effective_batch_size", "sequences_per_step", "zero_stage", "offload_optimizer", "offload_params",
                "gradient_checkpointing", "deepspeed_config", "actor_gpus", "actor_gpus_per_node", "vllm_engines",
                "vllm_tensor_parallel_size", "local_rollout_batch_size", "local_mini_batch_size", "rollout_batch",
                "est_memory_gb", "vllm_memory_gb")


def plan_cmd(recipe: str,
             stage: str = typer.Option(..., "--stage", "-s", help="pretrain, sft, dpo, rm or rlvr"),
             gpus: int = typer.Option(..., "--gpus", help="GPUs in total"),
             gpu_memory: float = typer.Option(80.0, "--gpu-memory", help="memory per GPU in GB"),
             nodes: Optional[int] = typer.Option(None, "--nodes", help="nodes (default: 8 GPUs per node)"),
             as_json: bool = typer.Option(False, "--json", help="Print one JSON document on stdout.")):
    """A hardware layout for N GPUs that keeps the recorded batch semantics, or why none exists.

    Example: repro plan tulu3-8b --stage sft --gpus 8
    """
    from runner.layouts import plan_layout

    result = plan_layout(registry(), recipe, stage, gpus, gpu_memory_gb=gpu_memory, nodes=nodes)
    doc = result.to_dict()
    if as_json:
        emit_json(doc)
    else:
        _print(doc)
    if not doc["feasible"]:
        raise typer.Exit(1)  # asked for a layout that keeps the invariants, and none does: a failure


def _print(doc: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    lay = doc["layout"]
    state = "the recorded layout" if doc["recorded"] else ("keeps every invariant" if doc["feasible"]
                                                          else "breaks " + ", ".join(doc["broken"]))
    out.print(f"[bold]{doc['recipe']}:{doc['stage']}[/bold] on {doc['gpus']} GPUs × {doc['gpu_memory_gb']:g} GB "
              f"({doc['nodes']} nodes): {state}")
    table = Table(title="layout", title_justify="left")
    table.add_column("key")
    table.add_column("value")
    table.add_column("recorded (where different)")
    changed = {c["key"]: c["recorded"] for c in doc["changes"]}
    for key in _LAYOUT_KEYS:
        if lay.get(key) is not None:
            label = f"{key} ({lay['unit']})" if key == "effective_batch_size" else key
            table.add_row(label, fmt(lay[key]), fmt(changed[key]) if key in changed else "")
    out.print(table)
    checks = Table(title="invariants", title_justify="left")
    for col in ("invariant", "recorded", "planned", "kept", "note"):
        checks.add_column(col, overflow="fold")
    for inv in doc["invariants"]:
        mark = "[green]yes[/green]" if inv["kept"] else "[red]NO[/red]"
        checks.add_row(inv["name"], fmt(inv["recorded"]), fmt(inv["planned"]), mark, inv["note"])
    out.print(checks)
    memory = doc["memory"]
    parts = ", ".join(f"{k} {v:g}" for k, v in memory["parts"].items() if v)
    out.print(f"memory per GPU (GB): {parts}; {memory.get('verdict', '')}")
    if "vllm" in memory:
        v = memory["vllm"]
        out.print(f"vLLM GPU (TP {v['tensor_parallel_size']}): weights {v['weights_gb']:g} GB, KV cache "
                  f"{v['kv_cache_gb']:g} GB ≈ {v['kv_sequences']} full-length sequences")
    for alt in doc["alternatives"]:
        a = alt["layout"]
        out.print(f"[cyan]alternative[/cyan] {alt['description']}: {a['num_processes']} × {a['per_device_batch_size']}"
                  f" × {a['gradient_accumulation_steps']} = {a['effective_batch_size']} {a['unit']}"
                  + (f", {a['actor_gpus']} actors × {a['local_rollout_batch_size']} + {a['vllm_engines']} vLLM "
                     f"× TP {a['vllm_tensor_parallel_size']}" if a.get("actor_gpus") else ""))
    for line in doc["warnings"]:
        out.print(f"[yellow]warning[/yellow] {line}")
    for line in doc["assumptions"]:
        out.print(f"[dim]assumed[/dim] {line}")


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)
