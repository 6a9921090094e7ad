"""Quantities derived from a stage's recorded values: batch arithmetic, step counts, schedule shape.

Shared by `diff`, `audit`, `show` and the planner so that one formula serves all.
Every function returns None where the recorded values do not determine the answer.
"""

from __future__ import annotations

from typing import Any

from registry.schema import Recipe, RecipesFile, Stage


def hp(stage: Stage, key: str) -> Any:
    item = stage.hyperparameters.get(key)
    return None if item is None else item.value


def layout_product(stage: Stage) -> int | None:
    """What the layout actually gives per optimizer step, in the stage's unit."""
    if stage.name == "rlvr":
        per_gpu = stage.layout.local_rollout_batch_size
        gpus = stage.layout.actor_gpus
        samples = hp(stage, "samples_per_prompt") or 1
        return per_gpu * gpus // samples if per_gpu and gpus else None
    pd, ga, procs = (hp(stage, k) for k in ("per_device_batch_size", "gradient_accumulation_steps", "num_processes"))
    if stage.name == "pretrain" and ga is None:
        ga = 1  # nanotron configs state micro-batch × DP; no accumulation unless stated
    if isinstance(pd, int) and isinstance(ga, int) and isinstance(procs, int):
        return pd * ga * procs
    return None


def train_rows(registry_file: RecipesFile, stage: Stage) -> int | None:
    """Training rows the recorded mixture takes (fractions of the stated dataset sizes)."""
    total = 0
    uses = [u for u in stage.datasets if u.role == "train" and u.used_by_release is not False]
    if not uses:
        return None
    for use in uses:
        ds = registry_file.datasets[use.dataset]
        size = ds.size.value if ds.size else None
        if not isinstance(size, int) or use.weight is None:
            return None
        weight = float(use.weight)
        total += int(weight) if "." not in use.weight and weight > 1 else int(size * weight)
    return total


def optimizer_steps(registry_file: RecipesFile, stage: Stage) -> int | None:
    """Total optimizer steps as the recorded code counts them (approximate for SFT/DPO/RM:
    rows dropped after truncation are not known)."""
    if stage.name == "pretrain":
        return hp(stage, "train_steps")
    batch = hp(stage, "effective_batch_size")
    if not isinstance(batch, int) or batch <= 0:
        return None
    if stage.name == "rlvr":
        episodes = hp(stage, "total_episodes")
        epochs = hp(stage, "num_ppo_epochs") or 1
        minibatches = hp(stage, "num_mini_batches") or 1
        samples = hp(stage, "samples_per_prompt") or 1
        if not isinstance(episodes, int):
            return None
        # open-instruct: training steps = episodes // (rollout prompts × samples), each running
        # num_epochs × num_mini_batches optimizer steps (the LR schedule's length).
        return episodes // (batch * samples) * epochs * minibatches
    rows = train_rows(registry_file, stage)
    epochs = hp(stage, "epochs")
    if rows is None or not isinstance(epochs, (int, float)):
        return None
    return (rows // batch) * int(epochs) if rows >= batch else int(epochs)


def warmup(stage: Stage, steps: int | None) -> int | None:
    if hp(stage, "warmup_steps") is not None:
        return hp(stage, "warmup_steps")
    ratio = hp(stage, "warmup_ratio")
    if ratio is None or steps is None:
        return None
    return int(steps * ratio)  # open-instruct floors; the HF Trainer ceils (shown per stage in show)


def tokens_per_step(stage: Stage) -> int | None:
    if hp(stage, "batch_tokens") is not None:
        return hp(stage, "batch_tokens")
    batch, seq = hp(stage, "effective_batch_size"), hp(stage, "max_seq_length")
    if isinstance(batch, int) and isinstance(seq, int) and stage.name != "rlvr":
        return batch * seq  # an upper bound: sequences may be shorter than max_seq_length
    return None


def schedule_shape(stage: Stage) -> str | None:
    name = hp(stage, "lr_scheduler")
    if name is None:
        return None
    if name == "wsd":
        return (f"wsd: warmup {hp(stage, 'warmup_steps')}, decay {hp(stage, 'decay_style') or '?'} "
                f"over last {hp(stage, 'decay_fraction')} to {hp(stage, 'min_learning_rate')}")
    if hp(stage, "warmup_steps") is not None:
        return f"{name}, warmup {hp(stage, 'warmup_steps')} steps"
    if hp(stage, "warmup_ratio") is not None:
        return f"{name}, warmup ratio {hp(stage, 'warmup_ratio')}"
    return name


def derived(registry_file: RecipesFile, recipe: Recipe, stage: Stage) -> dict[str, Any]:
    steps = optimizer_steps(registry_file, stage)
    return {
        "layout_batch": layout_product(stage),
        "effective_batch_size": hp(stage, "effective_batch_size"),
        "batch_unit": stage.layout.unit,
        "total_optimizer_steps": steps,
        "warmup_optimizer_steps": warmup(stage, steps),
        "tokens_per_step": tokens_per_step(stage),
        "schedule_shape": schedule_shape(stage),
    }
