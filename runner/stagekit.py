"""What every stage needs: tokenizer, model, data, checkpoint writing, progress.

Stages stay readable top to bottom by calling these helpers; nothing here
knows about a particular loss.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from registry.errors import ReproError
from runner.plan import RunPlan
from runner.records import RunRecord


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


# ---------------------------------------------------------------- tokenizer


def chat_template_jinja(name: str) -> str:
    from runner.data import templates

    return {"tulu": templates.TULU_JINJA, "chatml": templates.CHATML_SMOLLM2_JINJA}[name]


def fixture_tokenizer(plan: RunPlan):  # noqa: ANN201
    from runner.data.tokenizer import build_tokenizer, fixture_corpus

    kind = plan.tokenizer["family"]
    tok = build_tokenizer(kind, fixture_corpus(kind), vocab_size=plan.tokenizer["vocab_size"])
    if plan.chat_template:
        tok.chat_template = chat_template_jinja(plan.chat_template)
    return tok


def load_tokenizer(path: Path, plan: RunPlan):  # noqa: ANN201
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if plan.chat_template and plan.family == "tulu3":
        tok.chat_template = chat_template_jinja(plan.chat_template)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


# ---------------------------------------------------------------- models


def miniature_config(plan: RunPlan, tokenizer):  # noqa: ANN001, ANN201
    from runner.models import ArchitectureSpec, miniature

    spec = ArchitectureSpec(**plan.model["spec"])
    vocab = len(tokenizer)
    if plan.family == "tulu3":
        vocab = (vocab + 7) // 8 * 8  # finetune.py resizes embeddings with pad_to_multiple_of=8
    config, deviations = miniature(spec, vocab, hidden_size=plan.model["hidden_size"],
                                   num_layers=plan.model["num_layers"],
                                   initializer_range=spec.initializer_range or 0.02, bos_token_id=tokenizer.bos_token_id,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return config, deviations


def record_model_deviations(plan: RunPlan, deviations: list[dict[str, Any]]) -> None:
    for d in deviations:
        plan.deviate(f"model.{d['key']}", d["recorded"], d["miniature"], d["reason"])


def fresh_causal_lm(plan: RunPlan, tokenizer, reason: str):  # noqa: ANN001, ANN201
    from runner.models import build_model

    config, deviations = miniature_config(plan, tokenizer)
    record_model_deviations(plan, deviations)
    plan.deviate("init", plan.inputs.get("init", {}).get("checkpoint"), "random miniature init", reason)
    return build_model(config, seed=plan.hp("seed", 0))


def load_causal_lm(path: Path):  # noqa: ANN201
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    _no_dropout(model)
    return model


def _no_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    if hasattr(model.config, "attention_dropout"):
        model.config.attention_dropout = 0.0


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


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(ctx: StageContext, model, tokenizer, *, datasets: list[str], base_model: str | None,
                    notes: str = "") -> Path:  # noqa: ANN001
    """HF-format checkpoint (safetensors + config + tokenizer) with a model card (runner/cards.py).

    `datasets` and `base_model` are what the recorded stage names; the card reports them as the
    recording's, and claims for this run only what its plan shows it loaded and read."""
    from runner.cards import model_card

    out = ctx.record.checkpoint_dir
    if not ctx.is_main:
        return out
    out.mkdir(parents=True, exist_ok=True)
    unwrapped = ctx.accelerator.unwrap_model(model) if ctx.accelerator is not None else model
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


def tensorboard_writer(ctx: StageContext):  # noqa: ANN201
    if ctx.log_dir is None or not ctx.is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(ctx.log_dir))
