"""repro's stage and TRL 0.12 on the same first update: the plan, the batch it draws, the request for TRL.

Used by tests/runner/test_trl_replay.py and bench/bench_recorded_vs_trl.py. The stage runs through
`runner.execute.execute` (the path `repro run` takes), with the recorded SmolLM2 hyperparameters restored
over the smoke profile's miniature settings (the smoke profile is the one whose data comes from the
fixtures), the real SmolLM2-135M-Instruct as `init`, and the layout cut to what a CPU can run in a test:
the recorded pairs (rows) per device, fewer accumulation steps. The TRL request then holds exactly the rows
of the stage's first update, in the order the stage draws them.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runner.plan import RunPlan
    from runner.records import RunRecord

# The recorded SmolLM2 DPO hyperparameters (recipes.json, smollm2-135m:dpo) that the smoke profile replaces.
RECORDED_DPO = {"learning_rate": 1e-6, "max_seq_length": 1024, "max_prompt_length": 512, "per_device_batch_size": 2}


def dpo_plan(init: Path, accumulation: int, extra: dict[str, Any] | None = None) -> RunPlan:
    """The smollm2-135m DPO plan with the recorded semantics, starting from `init`, with its inputs resolved."""
    from registry.recipes import load_recipes
    from runner.execute import resolve_inputs
    from runner.plan import attach_inputs, resolve, skip_heldout

    reg = load_recipes()
    plan = resolve(reg, "smollm2-135m", "dpo", "smoke",
                   {**RECORDED_DPO, "gradient_accumulation_steps": accumulation, **(extra or {})})
    attach_inputs(plan, resolve_inputs(reg, plan, {"init": str(init)}))
    skip_heldout(plan)  # the held-out evaluation after training is not part of the update compared here
    return plan


def first_update_indices(plan: RunPlan, num_examples: int) -> list[list[int]]:
    """The micro-batches (example indices) of update 0, as the stage draws them (one process)."""
    from runner.trainer import epoch_order, micro_batches

    order = epoch_order(num_examples, plan.seed, int(plan.hp("epochs", 1)))
    return micro_batches(order, 0, plan.hp("per_device_batch_size", 1), plan.hp("gradient_accumulation_steps", 1),
                         1, 0, num_examples)


def trl_config(plan: RunPlan, num_examples: int) -> dict[str, Any]:
    """The TrainingArguments / DPOConfig values the recorded recipe set, from the plan; `schedule_steps` is
    the stage's full update count, so TRL's schedule (sized by max_steps) is the stage's."""
    from runner.stages.kit import schedule_spec

    return {"schedule_steps": schedule_spec(plan, num_examples, None, 1).total_updates,
            "per_device_train_batch_size": plan.hp("per_device_batch_size"),
            "gradient_accumulation_steps": plan.hp("gradient_accumulation_steps"),
            "learning_rate": plan.hp("learning_rate"), "lr_scheduler_type": plan.hp("lr_scheduler"),
            "warmup_ratio": plan.hp("warmup_ratio", 0.0), "seed": plan.hp("seed"),
            "num_train_epochs": plan.hp("epochs", 1), "adam_beta1": plan.hp("adam_beta1", 0.9),
            "adam_beta2": plan.hp("adam_beta2", 0.999), "adam_epsilon": plan.hp("adam_epsilon", 1e-8),
            "max_grad_norm": plan.hp("max_grad_norm", 1.0), "weight_decay": plan.hp("weight_decay", 0.0)}


def dpo_request(plan: RunPlan, init: Path, steps: int = 1, threads: int = 1) -> dict[str, Any]:
    """The TRL request for the stage's first `steps` updates: their rows, in the order the stage draws them
    (TRL's sequential sampler then forms the same micro-batches and updates)."""
    from runner.stages.kit import train_rows
    from runner.trainer import epoch_order, micro_batches

    rows = train_rows(plan)
    # SmolLM2 DPO keeps every pair (TRL 0.12 drops none), so pair i is row i.
    order = epoch_order(len(rows), plan.seed, int(plan.hp("epochs", 1)))
    picked: list[int] = []
    for update in range(steps):
        mbs = micro_batches(order, update, plan.hp("per_device_batch_size", 1),
                            plan.hp("gradient_accumulation_steps", 1), 1, 0, len(rows))
        if len(mbs) != plan.hp("gradient_accumulation_steps", 1) or any(len(mb) != plan.hp("per_device_batch_size")
                                                                        for mb in mbs):
            raise ValueError(f"update {update} is not a full batch; ask for fewer steps")
        picked += [j for mb in mbs for j in mb]
    cfg = trl_config(plan, len(rows)) | {"beta": plan.hp("dpo_beta"), "loss_type": plan.hp("dpo_loss_type", "sigmoid"),
                              "max_length": plan.hp("max_seq_length"),
                              "max_prompt_length": plan.hp("max_prompt_length")}
    return {"task": "dpo", "model": str(init), "steps": steps, "config": cfg, "threads": threads,
            "rows": [{"chosen": rows[i]["chosen"], "rejected": rows[i]["rejected"]} for i in picked],
            "picked": picked}


def sft_plan(init: Path, accumulation: int, max_seq_length: int, per_device: int) -> RunPlan:
    """The smollm2-135m SFT plan: packing on (AH-ORIG run_sft.py), the real model as init."""
    from registry.recipes import load_recipes
    from runner.execute import resolve_inputs
    from runner.plan import attach_inputs, resolve, skip_heldout

    reg = load_recipes()
    plan = resolve(reg, "smollm2-135m", "sft", "smoke",
                   {"packing": True, "max_seq_length": max_seq_length, "per_device_batch_size": per_device,
                    "gradient_accumulation_steps": accumulation, "learning_rate": 1e-3})
    attach_inputs(plan, resolve_inputs(reg, plan, {"init": str(init)}))
    skip_heldout(plan)
    return plan


def sft_request(plan: RunPlan, init: Path, tokenizer: Any, steps: int = 1,
                threads: int = 1) -> dict[str, Any]:
    """TRL gets the conversations in the order the stage packs them and the block order of its first updates."""
    import random

    from runner.stages.kit import train_rows
    from runner.stages.sft import encode
    from runner.trainer import epoch_order, micro_batches

    rows = train_rows(plan)
    order = list(range(len(rows)))
    random.Random(plan.seed).shuffle(order)  # the order stages/sft.encode packs in
    blocks, _ = encode(plan, rows, tokenizer)
    block_order = epoch_order(len(blocks), plan.seed, int(plan.hp("epochs", 1)))
    picked = [i for u in range(steps) for mb in micro_batches(block_order, u, plan.hp("per_device_batch_size", 1),
                                                             plan.hp("gradient_accumulation_steps", 1), 1, 0,
                                                             len(blocks)) for i in mb]
    cfg = trl_config(plan, len(blocks)) | {"max_seq_length": plan.hp("max_seq_length"), "block_order": picked}
    return {"task": "sft", "model": str(init), "steps": steps, "config": cfg, "threads": threads,
            "rows": [{"messages": rows[i]["messages"]} for i in order],
            "ours_blocks": [blocks[i]["input_ids"] for i in range(len(blocks))], "picked": picked}


def run_stage(plan: RunPlan, max_updates: int = 1) -> RunRecord:
    """Run the planned stage in this process (what `repro run` does with the local launcher)."""
    from runner.execute import execute

    return execute(plan, plan.inputs, max_updates=max_updates)
