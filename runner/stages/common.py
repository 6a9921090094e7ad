"""The loop wiring the supervised stages share: optimizer settings, schedule, data order, resume."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from runner import schedules
from runner.records import commit_state, heartbeat
from runner.stagekit import StageContext, report_total, tensorboard_writer
from runner.trainer import LoopConfig, Trainer, epoch_order, micro_batches, run_updates, updates_for

if TYPE_CHECKING:
    import torch


def warmup_convention(plan) -> str:
    # open-instruct floors int(T·ratio); the HF Trainer (TRL / alignment-handbook) ceils.
    return "open-instruct" if plan.family == "tulu3" else "hf-trainer"


@dataclass
class ScheduleSpec:
    """The learning-rate schedule of a stage as the recorded code sized it (the trainer and the plot)."""

    total_updates: int
    schedule_steps: int
    steps_per_update: int
    warmup_steps: int
    wsd: dict[str, Any]


def schedule_spec(plan, num_examples: int | None, total_updates: int | None, world: int) -> ScheduleSpec:
    pd = plan.hp("per_device_batch_size", 1)
    ga = plan.hp("gradient_accumulation_steps", 1)
    epochs = int(plan.hp("epochs", 1))
    if total_updates is None:
        total_updates = updates_for(num_examples, pd, ga, world, epochs)
    schedule_steps, steps_per_update = total_updates, 1
    if plan.family == "tulu3" and num_examples is not None and plan.stage in ("sft", "dpo", "rm"):
        # The schedule's length as each open-instruct script computed it (docs/semantics.md quirks 5 and 20),
        # which is not the update count this run performs once the data is sharded over several processes.
        schedule_steps, steps_per_update = schedules.open_instruct_schedule(plan.stage, num_examples, pd, ga, world,
                                                                            epochs)
    warmup = plan.hp("warmup_steps")
    if warmup is None:
        warmup = schedules.warmup_steps_for(schedule_steps, plan.hp("warmup_ratio", 0.0), warmup_convention(plan))
    wsd = {}
    if plan.hp("lr_scheduler") == "wsd":
        wsd = {"peak": plan.hp("learning_rate"), "min_lr": plan.hp("min_learning_rate"),  # unset: the peak (nanotron)
               "decay_start": plan.hp("decay_start_step"), "decay_steps": plan.hp("decay_steps"),
               "decay_style": plan.hp("decay_style", "linear")}
    return ScheduleSpec(total_updates, schedule_steps, steps_per_update, warmup, wsd)


def loop_config(ctx: StageContext, num_examples: int | None, total_updates: int | None = None) -> LoopConfig:
    plan = ctx.plan
    spec = schedule_spec(plan, num_examples, total_updates, ctx.world)
    stop_after = None
    if ctx.max_updates is not None and ctx.max_updates < spec.total_updates:
        stop_after = ctx.max_updates
        plan.deviate("optimizer_steps", spec.total_updates, stop_after,
                     "--max-steps on the command line (the schedule keeps its full length)")
    return LoopConfig(
        per_device=plan.hp("per_device_batch_size", 1), accumulation=plan.hp("gradient_accumulation_steps", 1),
        learning_rate=plan.hp("learning_rate"), total_updates=spec.total_updates,
        scheduler=plan.hp("lr_scheduler", "linear"), warmup_steps=spec.warmup_steps, seed=plan.seed,
        weight_decay=plan.hp("weight_decay", 0.0),
        betas=(plan.hp("adam_beta1", 0.9), plan.hp("adam_beta2", 0.999)), eps=plan.hp("adam_epsilon", 1e-8),
        max_grad_norm=plan.hp("max_grad_norm", 1.0), wsd=spec.wsd, steps_per_update=spec.steps_per_update,
        stop_after=stop_after, schedule_steps=spec.schedule_steps,
    )


def build_trainer(ctx: StageContext, modules: dict[str, Any], params: list, num_examples: int | None,
                  total_updates: int | None = None, cfg: LoopConfig | None = None,
                  forward: torch.nn.Module | None = None) -> tuple[Trainer, int]:
    """The Trainer of a stage. `forward` is the module whose forward the loss calls, when it is not
    modules["model"] itself (the RM's PairScorer): that is what accelerate must wrap."""
    cfg = cfg or loop_config(ctx, num_examples, total_updates)
    target = forward if forward is not None else modules["model"]
    wrapped = None
    if ctx.accelerator is not None:
        wrapped = ctx.accelerator.prepare(target)
    trainer = Trainer(params, cfg, ctx.record.state_dir, modules, accelerator=ctx.accelerator, wrapped=wrapped,
                      forward=target)
    return trainer, cfg.run_updates


def run_loop(ctx: StageContext, trainer: Trainer, examples: list[Any], loss_fn: Callable,
             epochs: int | None = None) -> None:
    """Run (or resume) the updates; steps go to the run record as they happen."""
    plan = ctx.plan
    cfg = trainer.config
    epochs = int(epochs or plan.hp("epochs", 1))
    order = epoch_order(len(examples), cfg.seed, epochs)

    def batches_for(update: int) -> list[list[Any]]:
        return [[examples[i] for i in mb] for mb in micro_batches(order, update, cfg.per_device, cfg.accumulation,
                                                                 ctx.world, ctx.rank, len(examples))]

    drive(ctx, trainer, loss_fn, batches_for)


def drive(ctx: StageContext, trainer: Trainer, loss_fn: Callable, batches_for: Callable[[int], list]) -> None:
    if ctx.resume and trainer.load_state(ctx.record.artifacts.get("state")) is not None:
        ctx.record.steps = [s for s in ctx.record.steps if s["step"] <= trainer.update]
    else:
        ctx.record.steps = []
    writer = tensorboard_writer(ctx)

    def on_step(metrics: dict[str, float]) -> None:
        ctx.record.steps.append(metrics)
        if writer is not None:
            for key, value in metrics.items():
                if key != "step":
                    writer.add_scalar(f"{ctx.plan.stage}/{key}", value, metrics["step"])
        if ctx.is_main and metrics["step"] % trainer.config.checkpoint_every == 0:
            heartbeat(ctx.record)

    on_state = (lambda ref: commit_state(ctx.record, ref)) if ctx.is_main else None
    report_total(ctx, trainer.config.run_updates)
    for _ in run_updates(trainer, loss_fn, batches_for, on_step, lambda: {}, ctx.progress, on_state):
        pass
    if writer is not None:
        writer.close()

