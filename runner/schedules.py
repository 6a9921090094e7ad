"""Learning-rate schedules exactly as the recorded training code steps them.

Each schedule is a pure function `step -> multiplier` (the LambdaLR factor); the learning
rate is base_lr · multiplier. Which scheduler step a given optimizer update sees is a
separate question, answered by `lr_at_update` (docs/semantics.md quirks 1 and 5): both nanotron
and accelerate call `scheduler.step()` after `optimizer.step()`, so update k (1-based) runs
with factor f((k−1)·N), N = scheduler steps per update (accelerate: num_processes).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Schedule = Callable[[int], float]


# --------------------------------------------------------------------------------------
# transformers-style schedules (open-instruct SFT/DPO/PPO, TRL / alignment-handbook)
# --------------------------------------------------------------------------------------


def linear_warmup_decay(total_steps: int, warmup_steps: int) -> Schedule:
    """transformers `get_linear_schedule_with_warmup`.

    f(s) = s / max(1, W)                         for s < W
    f(s) = max(0, (T − s) / max(1, T − W))       otherwise
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        return max(0.0, float(total_steps - step) / float(max(1, total_steps - warmup_steps)))

    return factor


def cosine_warmup(total_steps: int, warmup_steps: int, num_cycles: float = 0.5) -> Schedule:
    """transformers `get_cosine_schedule_with_warmup` (min_lr_rate 0).

    f(s) = s / max(1, W)                                   for s < W
    f(s) = max(0, ½(1 + cos(2π·cycles·p))),  p = (s − W) / max(1, T − W)   otherwise
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1, warmup_steps))
        progress = float(step - warmup_steps) / float(max(1, total_steps - warmup_steps))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))

    return factor


def constant(warmup_steps: int = 0) -> Schedule:
    """transformers constant schedule (with optional warmup): f(s) = s / max(1, W) for s < W, else 1."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return float(step) / float(max(1.0, warmup_steps))
        return 1.0

    return factor


# --------------------------------------------------------------------------------------
# nanotron WSD (SmolLM2 pretraining)
# --------------------------------------------------------------------------------------

WSD_DECAY_STYLES = ("linear", "cosine", "1-sqrt")


def nanotron_wsd_phases(
    total_steps: int, warmup_steps: int | None, decay_start: int | None, decay_steps: int | None
) -> tuple[int, int]:
    """Resolve nanotron's optional decay arguments to (S, D) the way `lr_scheduler_builder` does.

    D = given decay_steps, else T − W − S_given (each term only if it was set; when both are
        set both are subtracted — docs/semantics.md quirk 2)
    S = given decay_start, else W (0 if warmup is unset too)
    """
    if decay_steps is None:
        decay_steps = total_steps
        if warmup_steps is not None:
            decay_steps -= warmup_steps
        if decay_start is not None:
            decay_steps -= decay_start
    if decay_start is None:
        decay_start = warmup_steps if warmup_steps is not None else 0
    return decay_start, decay_steps


def wsd_value(
    step: int,
    *,
    peak: float,
    min_lr: float,
    warmup_steps: int,
    decay_start: int,
    decay_steps: int,
    decay_style: str = "linear",
    warmup_style: str = "linear",
) -> float:
    """nanotron WSD learning rate v(s) (before the LambdaLR normalisation), with p = peak,
    m = min_lr, W, S, D:

    v(s) = p·s / max(W, 1)       for s ≤ W  (inclusive; warmup_style "constant": p)
    v(s) = p                     for s < S
    v(s) = m + (p − m)·g(x)      for s < S + D, x = (s − S)/D, with
           linear: g = 1 − x = (D − (s − S))/D;  cosine: g = (1 + cos πx)/2;  1-sqrt: g = 1 − √x
    v(s) = m                     afterwards
    """
    if step <= warmup_steps:
        if warmup_style == "linear":
            return peak * step / max(warmup_steps, 1)
        if warmup_style == "constant":
            return peak
        raise ValueError(f"unknown warmup style {warmup_style!r}")
    if step < decay_start:
        return peak
    if step < decay_start + decay_steps:
        elapsed = step - decay_start
        if decay_style == "linear":
            # Written as (D − elapsed)/D, the grouping nanotron uses, so values agree bitwise.
            return min_lr + (peak - min_lr) * (decay_steps - elapsed) / decay_steps
        if decay_style == "cosine":
            return min_lr + (peak - min_lr) * (1 + math.cos(math.pi * elapsed / decay_steps)) / 2
        if decay_style == "1-sqrt":
            return min_lr + (peak - min_lr) * (1 - math.sqrt(elapsed / decay_steps))
        raise ValueError(f"unknown decay style {decay_style!r}")
    return min_lr


def wsd(
    peak: float,
    min_lr: float,
    warmup_steps: int,
    decay_start: int,
    decay_steps: int,
    decay_style: str = "linear",
    *,
    warmup_style: str = "linear",
    reproduce_lr_squared_bug: bool = True,
) -> Schedule:
    """nanotron `lr_scheduler_builder` as a LambdaLR factor: f(s) = v(s) / p (see `wsd_value`).

    The lr the optimizer uses is p·f(s). nanotron quirk 3: with W = 0 and D = 0 its lambda
    returns p itself, so the effective lr is p²; kept by default (reproduce_lr_squared_bug)
    so a replay matches the recorded run — pass False to get the intended constant p.
    """
    if decay_style not in WSD_DECAY_STYLES:
        raise ValueError(f"unknown decay style {decay_style!r}")

    def factor(step: int) -> float:
        if warmup_steps == 0 and decay_steps == 0:
            return peak if reproduce_lr_squared_bug else 1.0
        value = wsd_value(
            step,
            peak=peak,
            min_lr=min_lr,
            warmup_steps=warmup_steps,
            decay_start=decay_start,
            decay_steps=decay_steps,
            decay_style=decay_style,
            warmup_style=warmup_style,
        )
        return value / peak

    return factor


# --------------------------------------------------------------------------------------
# Step bookkeeping
# --------------------------------------------------------------------------------------


def warmup_steps_for(total_steps: int, warmup_ratio: float, convention: str = "open-instruct") -> int:
    """Warmup length from a ratio: open-instruct (SFT, DPO, PPO) W = int(T·r) (floor);
    HF Trainer (TRL / alignment-handbook, SmolLM2 post-training) W = ceil(T·r)."""
    if convention == "open-instruct":
        return int(total_steps * warmup_ratio)
    if convention == "hf-trainer":
        return math.ceil(total_steps * warmup_ratio)
    raise ValueError(f"unknown warmup convention {convention!r}")


def open_instruct_schedule(script: str, num_examples: int, per_device: int, accumulation: int, processes: int,
                           epochs: int) -> tuple[int, int]:
    """(schedule length T, scheduler steps per optimizer update) as the open-instruct script sized them.

    finetune.py / dpo_tune.py ("sft", "dpo") size T before `accelerator.prepare`, from the un-sharded
    dataloader: T = epochs·⌈⌈n/pd⌉/GA⌉, and the prepared scheduler then steps once per process per update
    (docs/semantics.md quirk 5). reward_modeling.py ("rm") never hands its scheduler to accelerate: it steps
    once per update over T = ⌊epochs·n / (pd·GA·N)⌋·epochs (total_episodes // batch_size, times the epochs
    again).
    """
    if script in ("sft", "dpo"):
        return epochs * math.ceil(math.ceil(num_examples / per_device) / accumulation), processes
    if script == "rm":
        return (epochs * num_examples // (per_device * accumulation * processes)) * epochs, 1
    raise ValueError(f"no open-instruct schedule for stage {script!r}")


def lr_at_update(schedule_fn: Schedule, k: int, steps_per_update: int = 1, base_lr: float = 1.0) -> float:
    """Learning rate used by optimizer update k (1-based): base_lr · f((k − 1)·N).

    The scheduler is stepped N = steps_per_update times *after* each optimizer.step(), so
    update 1 always sees f(0) (lr 0 under warmup). nanotron: N = 1; open-instruct under
    accelerate: N = num_processes with T counted on the un-sharded dataloader.
    """
    if k < 1:
        raise ValueError("optimizer updates are numbered from 1")
    return base_lr * schedule_fn((k - 1) * steps_per_update)


def lr_curve(schedule: Schedule, total_updates: int, steps_per_update: int = 1, base_lr: float = 1.0) -> list[float]:
    """[lr_at_update(schedule, k, N, base_lr) for k = 1..total_updates], for plotting."""
    return [base_lr * schedule((k - 1) * steps_per_update) for k in range(1, total_updates + 1)]


SCHEDULE_NAMES = ("linear", "cosine", "constant", "wsd")


def build_schedule(name: str, total_steps: int, warmup_steps: int, **wsd_kwargs) -> Schedule:
    """Multiplier function by name. wsd_kwargs (wsd only): peak (required), min_lr, decay_start,
    decay_steps (each None → nanotron's default), decay_style, warmup_style,
    reproduce_lr_squared_bug; num_cycles for cosine.

    nanotron's `LRSchedulerArgs.__post_init__` sets an unset `min_decay_lr` to the learning rate itself,
    so a WSD schedule without min_lr never decays (docs/semantics.md quirk 19)."""
    if name == "linear":
        return linear_warmup_decay(total_steps, warmup_steps)
    if name == "cosine":
        return cosine_warmup(total_steps, warmup_steps, wsd_kwargs.get("num_cycles", 0.5))
    if name == "constant":
        return constant(warmup_steps)
    if name == "wsd":
        kwargs = dict(wsd_kwargs)
        peak = kwargs.pop("peak")
        decay_start, decay_steps = nanotron_wsd_phases(
            total_steps, warmup_steps, kwargs.pop("decay_start", None), kwargs.pop("decay_steps", None)
        )
        min_lr = kwargs.pop("min_lr", None)
        return wsd(peak, peak if min_lr is None else min_lr, warmup_steps, decay_start, decay_steps, **kwargs)
    raise ValueError(f"unknown schedule {name!r}; expected one of {SCHEDULE_NAMES}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, name: str, total_steps: int, warmup_steps: int, **wsd_kwargs
) -> torch.optim.lr_scheduler.LambdaLR:
    """torch LambdaLR over `build_schedule(...)`; lr = base_lr · f(scheduler step).

    For "wsd", `peak` defaults to the optimizer's first param-group lr (nanotron builds the
    optimizer with lr = peak and normalises the lambda by the same value).
    """
    if name == "wsd" and "peak" not in wsd_kwargs:
        wsd_kwargs = {**wsd_kwargs, "peak": optimizer.param_groups[0]["lr"]}
    fn = build_schedule(name, total_steps, warmup_steps, **wsd_kwargs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=fn)
