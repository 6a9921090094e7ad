"""The optimizer loop shared by the supervised stages (SFT, DPO, RM) and pretraining.

Batch semantics follow the recorded code: each optimizer update consumes
`processes × accumulation` micro-batches of `per_device` examples; each
micro-batch loss is divided by the accumulation steps and gradients are
averaged over processes, so the applied gradient is the mean of the N·GA
micro-batch losses (DeepSpeed and DDP both do this). The scheduler is stepped
after the optimizer, so update k uses the schedule at step k−1.

Data order is a pure function of (seed, update index): that, plus the saved
model/optimizer/scheduler/RNG state, is what makes a killed run resume to the
exact weights of an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from runner import schedules, state

StepMetrics = dict[str, float]
STATE_EVERY = 10  # optimizer updates between resumable-state saves
LossFn = Callable[[list[dict[str, Any]], int], tuple[torch.Tensor, StepMetrics]]


@dataclass
class LoopConfig:
    per_device: int
    accumulation: int
    learning_rate: float
    total_updates: int
    scheduler: str
    warmup_steps: int
    seed: int
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    wsd: dict[str, Any] = field(default_factory=dict)
    checkpoint_every: int = STATE_EVERY
    steps_per_update: int = 1  # scheduler steps per optimizer update (accelerate-prepared: one per process)
    stop_after: int | None = None  # run fewer updates than the schedule spans (--max-steps)
    schedule_steps: int | None = None  # the schedule's length where the recorded code sized it apart from the updates

    @property
    def schedule_length(self) -> int:
        if self.schedule_steps is not None:
            return self.schedule_steps
        return self.total_updates * self.steps_per_update

    @property
    def run_updates(self) -> int:
        return min(self.total_updates, self.stop_after or self.total_updates)


def epoch_order(num_examples: int, seed: int, epochs: int) -> list[int]:
    """Example indices in training order: a fresh seeded permutation per epoch."""
    order: list[int] = []
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed + epoch)
        order += torch.randperm(num_examples, generator=gen).tolist()
    return order


def updates_for(num_examples: int, per_device: int, accumulation: int, processes: int, epochs: int) -> int:
    """Optimizer updates as a dataloader with drop_last=False plus accumulation counts them."""
    micro_per_epoch = math.ceil(num_examples / (per_device * processes))
    return math.ceil(micro_per_epoch / accumulation) * epochs


def micro_batches(order: Sequence[int], update: int, per_device: int, accumulation: int, processes: int,
                  rank: int, epoch_len: int) -> list[list[int]]:
    """The micro-batches (lists of example indices) rank `rank` runs in optimizer update `update` (0-based).

    Micro-batches never straddle epochs; each rank takes every `processes`-th micro-batch of the global
    order (as a distributed sampler strides), so N processes × GA see what 1 process × N·GA sees.
    """
    micro_per_epoch = math.ceil(epoch_len / (per_device * processes)) * processes
    updates_per_epoch = math.ceil(micro_per_epoch / (accumulation * processes))
    epoch, within = divmod(update, updates_per_epoch)
    base = epoch * epoch_len
    out = []
    for a in range(accumulation):
        global_micro = (within * accumulation + a) * processes + rank
        start = global_micro * per_device
        if start >= epoch_len:
            break
        stop = min(start + per_device, epoch_len)
        out.append(list(order[base + start: base + stop]))
    return out


class Trainer:
    """Runs updates; the stage supplies the loss of one micro-batch."""

    def __init__(self, params: list[torch.nn.Parameter], config: LoopConfig, state_dir: Path,
                 modules: dict[str, torch.nn.Module], accelerator=None, wrapped=None,
                 forward: torch.nn.Module | None = None) -> None:
        self.config = config
        self.modules = modules  # what resumable state saves (unwrapped modules)
        self.state_dir = state_dir
        self.accelerator = accelerator
        self.wrapped = wrapped  # the DDP-wrapped model under accelerate, for no_sync; the engine under DeepSpeed
        trainable = [p for p in params if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, betas=config.betas, eps=config.eps,
                                           weight_decay=config.weight_decay)
        self.schedule = schedules.build_schedule(config.scheduler, config.schedule_length, config.warmup_steps,
                                                 **config.wsd)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self.schedule)
        self.update = 0
        self.params = trainable
        self.engine = None  # the DeepSpeed engine, when the accelerator runs DeepSpeed
        if accelerator is not None and uses_deepspeed(accelerator):
            self._prepare_deepspeed(forward if forward is not None else modules["model"])

    def _prepare_deepspeed(self, model: torch.nn.Module) -> None:
        """DeepSpeed needs the optimizer at initialize time, so the Trainer (which owns it) prepares both.

        Our torch AdamW is handed over as a client optimizer (no fused/CPU Adam op to build); the scheduler
        stays ours because the recorded quirk steps it `steps_per_update` times per update, which a DeepSpeed
        scheduler (stepped once per boundary) cannot express. ZeRO keeps the base optimizer's param_groups,
        so LambdaLR's writes to `lr` reach the partitioned step.
        """
        if type(self.wrapped).__name__ == "DeepSpeedEngine":
            self.engine = self.wrapped
            return
        engine, _ = self.accelerator.prepare(model, self.optimizer)
        self.engine = engine
        self.wrapped = engine

    @property
    def world(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    # ------------------------------------------------------------------ state

    def save_state(self, extra: dict[str, Any]) -> dict[str, Any] | None:
        """Write the resumable state (runner/state.py: safetensors + JSON, never a pickle); return its
        reference for the run record, or None on ranks that do not own the record."""
        if self.accelerator is not None and not self.accelerator.is_main_process:
            return None
        tree = {
            "update": self.update,
            "modules": {k: m.state_dict() for k, m in self.modules.items()},
            # Under ZeRO each rank holds only its optimizer partition; rank 0's alone cannot resume the run,
            # so DeepSpeed runs save none (load_state then refuses to resume them).
            "optimizer": None if self.engine is not None else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
            "extra": extra,
        }
        return state.save(self.state_dir, self.update, tree)

    def load_state(self, ref: dict[str, Any] | None) -> dict[str, Any] | None:
        """Restore the state the run record names (None: there is none, start fresh)."""
        from registry.errors import ReproError

        if ref is None:
            return None
        try:
            saved = state.load(self.state_dir, ref)
        except state.StateError as exc:
            raise ReproError(f"cannot resume: {exc}; start a new run") from None
        if saved["optimizer"] is None or self.engine is not None:
            raise ReproError(f"{self.state_dir} was written by a DeepSpeed run (or this is one): its partitioned "
                             "optimizer state was not saved, so it cannot resume; start a new run")
        for key, module in self.modules.items():
            module.load_state_dict(saved["modules"][key])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        torch.set_rng_state(saved["rng"]["torch"])
        random.setstate(saved["rng"]["python"])
        self.update = saved["update"]
        return saved["extra"]

    # ------------------------------------------------------------------ one update

    def step(self, batches: list[list[dict[str, Any]]], loss_fn: LossFn) -> StepMetrics:
        """One optimizer update over this process's micro-batches."""
        if self.engine is not None:
            return self._step_deepspeed(batches, loss_fn)
        lr = self.optimizer.param_groups[0]["lr"]
        totals: dict[str, float] = {}
        loss_sum = 0.0
        ga = self.config.accumulation
        model = self.wrapped
        for i, batch in enumerate(batches):
            loss, metrics = loss_fn(batch, i)
            scaled = loss / ga
            last = i == len(batches) - 1
            if self.accelerator is not None and model is not None and not last:
                with self.accelerator.no_sync(model):
                    self.accelerator.backward(scaled)
            elif self.accelerator is not None:
                self.accelerator.backward(scaled)
            else:
                scaled.backward()
            loss_sum += float(loss.detach())
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        if self.config.max_grad_norm is not None and self.config.max_grad_norm > 0:
            if self.accelerator is not None:
                norm = self.accelerator.clip_grad_norm_(self.params, self.config.max_grad_norm)
            else:
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params if p.grad is not None]))
        self.optimizer.step()
        for _ in range(self.config.steps_per_update):
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.update += 1
        return self._metrics(lr, float(norm), loss_sum, len(batches), totals)

    def _step_deepspeed(self, batches: list[list[dict[str, Any]]], loss_fn: LossFn) -> StepMetrics:
        """One update through the DeepSpeed engine, with the same gradient as the DDP path.

        The engine would divide by its own accumulation count and decide the boundary from its micro-step
        counter (accelerate's `backward` even marks every micro-batch a boundary unless inside
        `accumulate()`); we own both instead: the boundary is set before each forward (ZeRO needs it then),
        the loss is divided by the planned accumulation exactly as in the DDP path (scale_wrt_gas=False), and
        `engine.step()` runs once, at the boundary, where it reduces, clips (gradient_clipping = the plan's
        max_grad_norm) and steps. A rank with fewer micro-batches at an epoch's end still steps correctly.
        """
        engine = self.engine
        lr = self.optimizer.param_groups[0]["lr"]
        totals: dict[str, float] = {}
        loss_sum = 0.0
        ga = self.config.accumulation
        for i, batch in enumerate(batches):
            engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
            loss, metrics = loss_fn(batch, i)
            engine.backward(loss / ga, scale_wrt_gas=False)
            loss_sum += float(loss.detach())
            for k, v in metrics.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        engine.step()
        # The norm of the whole gradient, equal to the DDP and 1-process norm (ZeRO-2 and ZeRO-3 on CPU:
        # tests/runner/test_multiprocess.py).
        norm = engine.get_global_grad_norm()
        for _ in range(self.config.steps_per_update):
            self.scheduler.step()
        self.update += 1
        return self._metrics(lr, float(norm) if norm is not None else float("nan"), loss_sum, len(batches), totals)

    def _metrics(self, lr: float, norm: float, loss_sum: float, n: int, totals: dict[str, float]) -> StepMetrics:
        """Step metrics over every process's micro-batches (one process: this process's, unchanged).

        The gradient is already the mean over all N·GA micro-batches; the logged loss must be the same mean,
        not rank 0's share, or a 2-process curve would not match the 1-process one.
        """
        if self.world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world
            # Objects, not a tensor all-reduce: a rank may have no micro-batch (and no metric keys) at an
            # epoch's end, and every rank must still take part with the same call.
            dist.all_gather_object(gathered, (loss_sum, n, totals))
            loss_sum = sum(g[0] for g in gathered)
            n = sum(g[1] for g in gathered)
            merged: dict[str, float] = {}
            for _, _, part in gathered:
                for k, v in part.items():
                    merged[k] = merged.get(k, 0.0) + v
            totals = merged
        n = max(n, 1)
        out = {"step": self.update, "loss": loss_sum / n, "lr": lr, "grad_norm": norm}
        out.update({k: v / n for k, v in totals.items()})
        return out


def uses_deepspeed(accelerator) -> bool:
    return getattr(getattr(accelerator, "distributed_type", None), "value", None) == "DEEPSPEED"


def fault_injection(update: int) -> None:
    """Tests kill a run with a real SIGKILL right after a given update (REPRO_KILL_AFTER_UPDATE)."""
    target = os.environ.get("REPRO_KILL_AFTER_UPDATE")
    if target is not None and update == int(target):
        os.kill(os.getpid(), signal.SIGKILL)


def require_finite(metrics: StepMetrics) -> None:
    """A loss or metric that is NaN or infinite ends the run as failed, naming the step; it never reaches
    the record or the database."""
    from registry.errors import RunFailed

    for key, value in metrics.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise RunFailed(f"{key} became {value} at step {int(metrics.get('step', 0))}; the run stops as "
                            "failed (try a lower learning_rate)")


def run_updates(trainer: Trainer, loss_fn: LossFn, batches_for: Callable[[int], list[list[dict[str, Any]]]],
                on_step: Callable[[StepMetrics], None], save_extra: Callable[[], dict[str, Any]],
                progress=None, on_state: Callable[[dict[str, Any]], None] | None = None,
                ) -> Iterator[StepMetrics]:
    """Drive updates from trainer.update to total_updates, saving resumable state every few updates;
    `on_state` receives each saved state's reference (the run record keeps it)."""
    cfg = trainer.config
    while trainer.update < cfg.run_updates:
        started = time.perf_counter()
        metrics = trainer.step(batches_for(trainer.update), loss_fn)
        metrics["seconds"] = time.perf_counter() - started
        require_finite(metrics)
        on_step(metrics)
        if trainer.update % cfg.checkpoint_every == 0 or trainer.update == cfg.run_updates:
            ref = trainer.save_state(save_extra())
            if ref is not None and on_state is not None:
                on_state(ref)
        if progress is not None:
            progress(metrics)
        fault_injection(trainer.update)
        yield metrics
