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


def fixture_tokenizer(plan: RunPlan):
    from runner.data.tokenizer import build_tokenizer, fixture_corpus

    kind = plan.tokenizer.get("family")
    if kind is None:  # the recorded profile names a real tokenizer: it comes with the init checkpoint
        raise ReproError(f"{plan.recipe}:{plan.stage} ({plan.profile} profile) loads the tokenizer of "
                         f"{plan.tokenizer.get('name')}; give the init with --input init=PATH, --hub-mirror DIR "
                         "or the Hub")
    tok = build_tokenizer(kind, fixture_corpus(kind), vocab_size=plan.tokenizer["vocab_size"])
    if plan.chat_template:
        tok.chat_template = chat_template_jinja(plan.chat_template)
    return tok


def load_tokenizer(path: Path | str, plan: RunPlan, revision: str | None = None):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, revision=revision)
    if plan.chat_template and plan.family == "tulu3":
        tok.chat_template = chat_template_jinja(plan.chat_template)
    if tok.pad_token is None:
        if plan.family == "tulu3" and plan.profile == "recorded":
            # finetune.py / dpo_tune.py: Llama-3's fast tokenizer has no pad token; "<pad>" is added (and the
            # embeddings resized to fit, see load_causal_lm).
            tok.add_special_tokens({"pad_token": "<pad>"})
        else:
            tok.pad_token = tok.eos_token
    return tok


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


def record_model_deviations(plan: RunPlan, deviations: list[dict[str, Any]]) -> None:
    for d in deviations:
        plan.deviate(f"model.{d['key']}", d["recorded"], d["miniature"], d["reason"])


def fresh_causal_lm(plan: RunPlan, tokenizer, reason: str):
    from runner.models import build_model

    config, deviations = miniature_config(plan, tokenizer)
    record_model_deviations(plan, deviations)
    plan.deviate("init", plan.inputs.get("init", {}).get("checkpoint"), "random miniature init", reason)
    return build_model(config, seed=plan.seed)


def load_causal_lm(path: Path | str, plan: RunPlan | None = None, tokenizer: Any = None,
                   revision: str | None = None) -> Any:
    """A causal LM from a folder or Hub id. The smoke profile loads in float32 as before; the recorded
    profile loads in the plan's precision with the attention kernel, gradient checkpointing and
    (Tülu) embedding resize of the recording (runner/models.recorded_load)."""
    from transformers import AutoModelForCausalLM

    from runner.models import disable_dropout, recorded_load

    if plan is None or plan.profile != "recorded":
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        disable_dropout(model)
        return model

    model = recorded_load(AutoModelForCausalLM, path, plan, tokenizer=tokenizer, revision=revision)
    disable_dropout(model)
    return model


def init_model(plan: RunPlan, role: str = "init") -> tuple[Any, Any]:
    """(tokenizer, model) of a stage's init in the recorded profile: `--input ROLE=PATH`, the mirror's
    DIR/<org>/<name>/, or the Hub at the recorded revision (resolved before the run by check_models)."""
    source, revision = model_source(plan, role)
    tokenizer = load_tokenizer(source, plan, revision)
    if plan.chat_template:
        tokenizer.chat_template = chat_template_jinja(plan.chat_template)
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
        ref["hub_id"] = ckpt.hub_id
        ref.setdefault("revision", None)  # recipes.json records no model revisions: the Hub's main
        folder = mirror / ckpt.hub_id if mirror is not None else None
        if folder is not None and folder.is_dir():
            if not (folder / "config.json").is_file():
                raise ReproError(f"model {ckpt.hub_id}: the mirror folder {folder} has no config.json (not a "
                                 "Hugging Face model folder); copy the repository there, or use --input "
                                 f"{role}=PATH")
            from runner.data.hub import folder_hash, git_head

            ref.update({"mirror": str(folder), "mirror_hash": folder_hash(folder), "mirror_head": git_head(folder)})
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
