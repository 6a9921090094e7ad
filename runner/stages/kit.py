"""What every stage needs: its context, model and tokenizer loading, data, the training loop's wiring
(schedule, trainer, resume), checkpoint writing, metrics and progress.

Stages stay readable top to bottom by calling these helpers; nothing here knows about a particular loss.
The optimizer and step mechanics are runner/trainer.py; tokenizers are runner/data/tokenizer.py; every
change to the plan is a named function of runner/plan.py.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from registry.errors import ReproError
from runner import plan as plans
from runner import schedules
from runner.data.tokenizer import stage_tokenizer
from runner.plan import RunPlan
from runner.records import RunRecord, commit_state, heartbeat
from runner.trainer import LoopConfig, Trainer, epoch_order, micro_batches, run_updates, updates_for


@dataclass
class StageContext:
    plan: RunPlan
    record: RunRecord
    resume: bool = False
    accelerator: Any = None
    progress: Callable[[dict[str, Any]], None] | None = None
    max_updates: int | None = None
    log_dir: Path | None = None  # tensorboard, when asked
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else self.accelerator.process_index

    @property
    def world(self) -> int:
        return 1 if self.accelerator is None else self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def report_total(ctx: StageContext, updates: int) -> None:
    """Tell the progress display how many updates this run will perform (its bar and ETA need it)."""
    announce = getattr(ctx.progress, "total", None)
    if callable(announce):
        announce(updates)


def quiet_libraries() -> None:
    """Keep the terminal for repro's own progress: no per-file bars from transformers, no DeepSpeed probe notice."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def set_determinism(seed: int) -> None:
    quiet_libraries()
    # Same thread count on every run: float reductions depend on it, and golden curves must match bit for bit.
    torch.set_num_threads(int(os.environ.get("REPRO_TORCH_THREADS", "1")))
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


# ---------------------------------------------------------------- models


def miniature_config(plan: RunPlan, tokenizer):
    from runner.models import ArchitectureSpec, miniature

    spec = ArchitectureSpec(**plan.model["spec"])
    vocab = len(tokenizer)
    if plan.family == "tulu3":
        vocab = (vocab + 7) // 8 * 8  # finetune.py resizes embeddings with pad_to_multiple_of=8
    config, deviations = miniature(spec, vocab, hidden_size=plan.model["hidden_size"],
                                   num_layers=plan.model["num_layers"],
                                   initializer_range=spec.initializer_range or 0.02,
                                   bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    return config, deviations


def fresh_causal_lm(plan: RunPlan, tokenizer, reason: str):
    from runner.models import build_model

    config, deviations = miniature_config(plan, tokenizer)
    plans.record_miniature(plan, deviations, reason)
    return build_model(config, seed=plan.seed)


def load_causal_lm(path: Path | str, plan: RunPlan | None = None, tokenizer: Any = None,
                   revision: str | None = None) -> Any:
    """A causal LM from a folder or Hub id. The smoke profile loads in float32 as before; the recorded
    profile loads in the plan's precision with the attention kernel, gradient checkpointing and
    (Tülu) embedding resize of the recording (runner/models.recorded_load)."""
    from transformers import AutoModelForCausalLM

    from runner.models import disable_dropout

    if plan is None or plan.profile != "recorded":
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    else:
        model = load_recorded(AutoModelForCausalLM, path, plan, tokenizer, revision)
    disable_dropout(model)
    return model


def load_recorded(cls: Any, path: Path | str, plan: RunPlan, tokenizer: Any, revision: str | None,
                  **kwargs: Any) -> Any:
    """runner.models.recorded_load, with what it chose (attention kernel, Tülu's embedding resize) recorded
    in the plan."""
    from runner.models import recorded_load

    model, facts = recorded_load(cls, path, plan, tokenizer=tokenizer, revision=revision, **kwargs)
    plans.record_attention(plan, facts["attn_implementation"])
    if facts["embedding_resize"] is not None:
        plans.record_embedding_resize(plan, *facts["embedding_resize"])
    return model


def init_model(plan: RunPlan, role: str = "init") -> tuple[Any, Any]:
    """(tokenizer, model) of a stage's init in the recorded profile: `--input ROLE=PATH`, the mirror's
    DIR/<org>/<name>/, or the Hub at the recorded revision (resolved before the run by check_models)."""
    source, revision = model_source(plan, role)
    tokenizer = stage_tokenizer(plan, source, revision, foreign=True)
    return tokenizer, load_causal_lm(source, plan, tokenizer, revision)


def model_source(plan: RunPlan, role: str = "init") -> tuple[str, str | None]:
    ref = plan.inputs.get(role) or {}
    if ref.get("path"):
        return ref["path"], None
    if ref.get("mirror"):
        return ref["mirror"], None
    if ref.get("hub_id"):
        return ref["hub_id"], ref.get("revision")
    raise ReproError(f"{plan.recipe}:{plan.stage}: no source for its {role} checkpoint "
                     f"{ref.get('checkpoint')!r}; give it with --input {role}=PATH")


# Input roles a stage loads from their own checkpoint (DPO's reference is a frozen copy of its init).
LOADED_ROLES = ("init", "reward_model", "value_model")


def check_models(plan: RunPlan, registry: Any, mirror: Path | None) -> None:
    """Before anything is written, in the recorded profile: name where every loaded checkpoint comes from
    (`--input` folder, the mirror's DIR/<org>/<name>/, or the Hub) and check that it can be loaded, and
    that the machine computes in the plan's precision. Each failure is one line (exit 2)."""
    if plan.profile != "recorded":
        return
    from runner.models import hardware_bf16

    precision = plan.hp("precision")
    if precision in ("bf16", "fp16") and plan.extra.get("device") == "cpu" or \
            precision == "bf16" and not hardware_bf16() and plan.extra.get("device") != "cpu":
        raise ReproError(f"{plan.recipe}:{plan.stage} trains in {precision} as recorded, and this machine has no "
                         f"{precision}-capable GPU; pass --precision fp32 --device cpu to run it in float32 on CPU "
                         "(recorded as a deviation)")
    for role in LOADED_ROLES:
        ref = plan.inputs.get(role)
        if ref is None or ref.get("path"):
            continue
        name = ref.get("checkpoint")
        ckpt = registry.model.checkpoints.get(name) if name else None
        if ckpt is None or not ckpt.hub_id or not ckpt.published:
            raise ReproError(f"{plan.recipe}:{plan.stage}: its {role} checkpoint {name!r} was never published; "
                             f"give one with --input {role}=PATH")
        plans.input_on_hub(plan, role, ckpt.hub_id)
        folder = mirror / ckpt.hub_id if mirror is not None else None
        if folder is not None and folder.is_dir():
            if not (folder / "config.json").is_file():
                raise ReproError(f"model {ckpt.hub_id}: the mirror folder {folder} has no config.json (not a "
                                 "Hugging Face model folder); copy the repository there, or use --input "
                                 f"{role}=PATH")
            from runner.data.hub import folder_hash, git_head

            plans.input_in_mirror(plan, role, str(folder), folder_hash(folder), git_head(folder))
            continue
        _check_hub_model(ckpt.hub_id, ref.get("revision"), role)


def _check_hub_model(hub_id: str, revision: str | None, role: str) -> None:
    from huggingface_hub import hf_hub_download

    fix = (f"log in with `huggingface-cli login` (or HF_TOKEN) if it is gated, serve it from a mirror with "
           f"--hub-mirror DIR holding DIR/{hub_id}/, or give --input {role}=PATH")
    try:
        hf_hub_download(hub_id, "config.json", revision=revision)
    except OSError as exc:  # huggingface_hub's HTTP, gated, revision and offline errors are OSErrors
        kind = type(exc).__name__
        what = {"GatedRepoError": "is gated and no token was given",
                "RevisionNotFoundError": f"has no revision {revision}",
                "RepositoryNotFoundError": "is not on the Hub (or is private)"}.get(kind)
        if what is None:
            what = "cannot be reached" + (" offline (HF_HUB_OFFLINE=1, not cached)"
                                          if os.environ.get("HF_HUB_OFFLINE") == "1" else f" ({kind})")
        raise ReproError(f"model {hub_id}@{revision or 'main'} {what}; {fix}") from None


def on_device(tensors: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
    """Batches are built on the CPU; a model on a GPU (the recorded profile) gets them on its own device.
    On the CPU the very same tensors come back (the smoke profile's bits cannot change)."""
    device = next(model.parameters()).device
    return tensors if device.type == "cpu" else {k: v.to(device) for k, v in tensors.items()}


def input_path(plan: RunPlan, role: str) -> Path | None:
    ref = plan.inputs.get(role)
    return Path(ref["path"]) if ref and ref.get("path") else None


# ---------------------------------------------------------------- data


def load_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """One dataset split's rows, through the one data path (runner/data/hub.py) whatever the profile."""
    from runner.data import hub

    return hub.load_split(entry)


def train_rows(plan: RunPlan) -> list[dict[str, Any]]:
    """Rows of the training mixture, mixed with the recorded code's semantics (runner/data/hub.py)."""
    from runner.data import hub

    return hub.train_rows(plan)


# ---------------------------------------------------------------- the loop: schedule, trainer, resume


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
        plans.stop_early(plan, spec.total_updates, stop_after)
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
    resumed = ctx.resume and trainer.load_state(ctx.record.artifacts.get("state")) is not None
    keep_steps(ctx, trainer.update if resumed else None)
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


def keep_steps(ctx: StageContext, resumed_at: int | None) -> None:
    """The steps the run record keeps as a (resumed) run starts: those up to the restored update, or none
    for a fresh start. Every driver (the supervised loop, both RLVR drivers) starts this way."""
    ctx.record.steps = [] if resumed_at is None else [s for s in ctx.record.steps if s["step"] <= resumed_at]


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(ctx: StageContext, model, tokenizer, *, datasets: list[str], base_model: str | None,
                    notes: str = "") -> Path:
    """HF-format checkpoint (safetensors + config + tokenizer) with a model card (runner/cards.py).

    `datasets` and `base_model` are what the recorded stage names; the card reports them as the
    recording's, and claims for this run only what its plan shows it loaded and read."""
    from runner.cards import model_card

    out = ctx.record.checkpoint_dir
    unwrapped = ctx.accelerator.unwrap_model(model) if ctx.accelerator is not None else model
    # Under ZeRO-3 every rank holds a slice of each weight: all ranks gather them, rank 0 writes the whole.
    partitioned = [p for p in unwrapped.parameters() if hasattr(p, "ds_id")]
    if not partitioned and not ctx.is_main:
        return out
    from contextlib import nullcontext

    if partitioned:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)
    else:
        gathered = nullcontext()
    with gathered:
        if not ctx.is_main:
            return out
        out.mkdir(parents=True, exist_ok=True)
        unwrapped.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    card = model_card(ctx.plan, recorded_base=base_model, recorded_datasets=datasets, notes=notes)
    (out / "README.md").write_text(card)
    return out


def write_metrics_file(ctx: StageContext) -> None:
    """metrics.json beside run.json (DVC metrics) and steps.tsv (DVC plots)."""
    if not ctx.is_main:
        return
    run_dir = ctx.record.run_dir
    (run_dir / "metrics.json").write_text(json.dumps(ctx.record.final_metrics, indent=2, sort_keys=True) + "\n")
    keys: list[str] = []
    for step in ctx.record.steps:
        keys += [k for k in step if k not in keys and isinstance(step[k], (int, float))]
    lines = ["\t".join(keys)]
    for step in ctx.record.steps:
        lines.append("\t".join("" if step.get(k) is None else f"{step[k]:.8g}" for k in keys))
    (run_dir / "steps.tsv").write_text("\n".join(lines) + "\n")


def tensorboard_writer(ctx: StageContext):
    if ctx.log_dir is None or not ctx.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(ctx.log_dir))
