"""Resolve a registry stage into a run plan: model, tokenizer, template, data, hyperparameters, layout.

The plan is plain JSON (it goes into run.json and is what `--dry-run` prints).
Hyperparameters start as recorded; the smoke profile and `--set` overrides are
applied on top, and every value that ends up different from the recording is
listed in `deviations` with its reason. Never silently.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from registry import derive, values
from registry.errors import ReproError, nearest
from registry.recipes import Registry
from registry.schema import CANONICAL_KEYS, Recipe, Stage
from runner import smoke, switches

REPO_ROOT = Path(__file__).resolve().parent.parent  # fixture paths are shown relative to it

PROFILES = ("smoke", "recorded")
# Common framework spellings of canonical keys: a typo-distance guess would send `lr` to `lam`.
KEY_ALIASES = {"lr": "learning_rate", "wd": "weight_decay", "beta": "dpo_beta", "beta1": "adam_beta1",
               "beta2": "adam_beta2", "eps": "adam_epsilon", "warmup": "warmup_ratio", "num_epochs": "epochs",
               "num_train_epochs": "epochs", "grad_accum": "gradient_accumulation_steps",
               "batch_size": "per_device_batch_size", "max_length": "max_seq_length"}
CHAT_TEMPLATE_DEFAULT = {"tulu3": "tulu", "smollm2": "chatml"}


@dataclass
class Deviation:
    key: str
    recorded: Any
    value: Any
    reason: str


@dataclass
class RunPlan:
    recipe: str
    stage: str
    family: str
    profile: str
    hyperparameters: dict[str, Any]
    recorded: dict[str, Any]
    model: dict[str, Any]
    tokenizer: dict[str, Any]
    chat_template: str | None
    datasets: list[dict[str, Any]]
    heldout: dict[str, Any] | None
    phases: list[dict[str, Any]]
    inputs: dict[str, dict[str, Any]]
    layout: dict[str, Any]
    derived: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    deviations: list[dict[str, Any]] = field(default_factory=list)

    def hp(self, key: str, default: Any = None) -> Any:
        value = self.hyperparameters.get(key)
        return default if value is None else value

    @property
    def seed(self) -> int:
        """The seed every stage draws from: the recorded one, or `--set seed=N`. A recipe that records none
        is refused here rather than given one nobody recorded."""
        value = self.hyperparameters.get("seed")
        if value is None:
            raise ReproError(f"{self.recipe}:{self.stage} records no seed; give one with --set seed=N")
        return int(value)

    def deviate(self, key: str, recorded: Any, value: Any, reason: str) -> None:
        """Record one difference from the recording, once per key: a resumed run or a stage that loads its
        model again replaces its entry instead of adding a second, so every count agrees."""
        entry = {"key": key, "recorded": recorded, "value": value, "reason": reason}
        for i, existing in enumerate(self.deviations):
            if existing["key"] == key:
                self.deviations[i] = entry
                return
        self.deviations.append(entry)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "RunPlan":
        return cls(**data)


def parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`--set KEY=VALUE`: canonical keys only; VALUE parsed as JSON where it parses, else a string, then
    checked by the one validation layer (registry.values) before anything runs."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ReproError(f"invalid --set {pair!r}: expected KEY=VALUE (e.g. --set learning_rate=1e-3)")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if key not in CANONICAL_KEYS:
            guess = KEY_ALIASES.get(key) or nearest(key, CANONICAL_KEYS)
            hint = f"; did you mean {guess!r}?" if guess else ""
            raise ReproError(f"invalid --set {key!r}: not a canonical hyperparameter key{hint}")
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            value = raw
        try:
            values.check_value(key, value)
        except ValueError as exc:
            raise ReproError(f"invalid --set {exc}") from None
        out[key] = value
    return out


def _arch(recipe: Recipe) -> dict[str, Any]:
    return {k: v.value for k, v in recipe.architecture if v is not None and v.value is not None}


def _effective(hps: dict[str, Any], stage: str) -> int | None:
    if stage in ("rlvr", "pretrain"):
        return hps.get("effective_batch_size")
    pd, ga, n = (hps.get(k) for k in ("per_device_batch_size", "gradient_accumulation_steps", "num_processes"))
    return pd * ga * n if all(isinstance(x, int) for x in (pd, ga, n)) else hps.get("effective_batch_size")


def resolve(registry: Registry, recipe_name: str, stage_name: str, profile: str = "smoke",
            sets: dict[str, Any] | None = None, inputs: dict[str, dict[str, Any]] | None = None) -> RunPlan:
    if profile not in PROFILES:
        guess = nearest(profile, PROFILES)
        raise ReproError(f"unknown profile {profile!r}" + (f"; did you mean {guess!r}?" if guess else "")
                         + f" (valid: {', '.join(PROFILES)})")
    recipe = registry.recipe(recipe_name)
    stage = registry.stage(recipe_name, stage_name)
    recorded = {k: v.value for k, v in stage.hyperparameters.items()}
    hps = dict(recorded)
    deviations: list[Deviation] = []

    def override(key: str, value: Any, reason: str) -> None:
        before = recorded.get(key)
        hps[key] = value
        if before != value:
            deviations.append(Deviation(key, before, value, reason))

    family = recipe.family
    if profile == "smoke":
        for key, (value, reason) in smoke.OVERRIDES.get((family, stage_name), {}).items():
            override(key, value, reason)
        _smoke_stage_specific(stage, hps, recorded, override)
    for key, value in (sets or {}).items():
        issue = values.stage_problem(key, stage_name)
        if issue:
            raise ReproError(f"invalid --set {key}: {issue}")
        override(key, value, "--set on the command line")

    effective = _effective(hps, stage_name)
    if effective is not None and stage_name not in ("rlvr", "pretrain"):
        override("effective_batch_size", effective, "per_device × accumulation × processes after the changes above")
    if stage_name == "pretrain":
        seqs = (hps.get("per_device_batch_size", 1) * hps.get("num_processes", 1)
                * hps.get("gradient_accumulation_steps", 1))
        override("effective_batch_size", seqs, "sequences per step after the changes above")
        override("batch_tokens", seqs * hps["max_seq_length"], "tokens per step after the changes above")
        override("train_tokens", seqs * hps["max_seq_length"] * hps["train_steps"], "tokens in the miniature run")

    chat_template = hps.get("chat_template") or (CHAT_TEMPLATE_DEFAULT[family] if stage_name != "pretrain" else None)
    model, tokenizer = _model_plan(recipe, profile, deviations)
    datasets, heldout, phases = _data_plan(registry, recipe, stage, profile, hps, deviations)
    layout = stage.layout.model_dump(exclude_none=True)
    if profile == "smoke":
        layout.update({"gpus": 0, "nodes": 1, "launcher": "local", "device": "cpu"})
        # The plan's own hyperparameters say what ran (run.json and `repro diff` read them there): a CPU
        # miniature computes in float32 whatever the recording or --set asked.
        deviations[:] = [d for d in deviations if d.key != "precision"]
        if recorded.get("precision") != "fp32":
            deviations.append(Deviation("precision", recorded.get("precision", "bf16"), "fp32",
                                        "CPU miniature runs in float32 so that reruns are bit-exact"))
        hps["precision"] = "fp32"
    plan = RunPlan(
        recipe=recipe_name, stage=stage_name, family=family, profile=profile, hyperparameters=hps,
        recorded=recorded, model=model, tokenizer=tokenizer, chat_template=chat_template, datasets=datasets,
        heldout=heldout, phases=phases, inputs=inputs or {}, layout=layout,
        derived=derive.derived(registry.model, recipe, stage),
        extra={"verifier_version": stage.verifier_version, "code": stage.code.model_dump(),
               "reference_mode": _reference_mode(stage), "switches": switches.resolve(family, stage_name)},
    )
    plan.deviations = [asdict(d) for d in deviations]
    return plan


def _reference_mode(stage: Stage) -> str | None:
    if stage.name != "dpo":
        return None
    entry = stage.code.entry_point
    # open-instruct's dpo_tune_cache.py precomputes reference log-probs; dpo_tune.py and TRL keep a live copy.
    return "cached" if "cache" in entry else "live"


def _smoke_stage_specific(stage: Stage, hps: dict[str, Any], recorded: dict[str, Any], override) -> None:
    if stage.name == "pretrain":
        steps = hps["train_steps"]
        fraction = recorded.get("decay_fraction")
        if fraction is None and recorded.get("decay_steps") and recorded.get("train_steps"):
            fraction = recorded["decay_steps"] / recorded["train_steps"]
        decay = round(steps * fraction)
        override("decay_steps", decay, "same decay fraction of the miniature run")
        override("decay_start_step", steps - decay, "decay over the last fraction of the miniature run")
    if stage.name == "rlvr":
        prompts = 16
        override("effective_batch_size", prompts, "16 prompts per PPO step (rollout batch) on one process")
        override("num_processes", 1, smoke.ONE_PROCESS)
        override("gradient_accumulation_steps", prompts // hps["per_device_batch_size"],
                 "local mini-batch of 16 in micro-batches of per_device_batch_size")


def _model_plan(recipe: Recipe, profile: str, deviations: list[Deviation]) -> tuple[dict, dict]:
    arch = _arch(recipe)
    if profile == "recorded":
        return {"kind": "recorded", "architecture": arch}, {"kind": "hub", "name": recipe.base_model}
    from runner.models import ArchitectureSpec

    missing = [k for k in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers")
               if k not in arch]
    if missing:
        raise ReproError(f"{recipe.family} architecture lacks {', '.join(missing)} in recipes.json; "
                         "a faithful miniature needs them")
    arch.setdefault("intermediate_size", arch["hidden_size"] * 4)
    arch.setdefault("rms_norm_eps", 1e-5)
    arch.setdefault("max_position_embeddings", 2048)
    arch.setdefault("vocab_size", 32000)
    arch.setdefault("rope_theta", 10000.0)
    arch.setdefault("tie_word_embeddings", False)
    spec = ArchitectureSpec.from_mapping(arch)
    model = {"kind": "miniature", "recorded_architecture": arch, "spec": asdict(spec),
             "hidden_size": smoke.MINIATURE["hidden_size"], "num_layers": smoke.MINIATURE["num_layers"]}
    tok_kind = "tulu" if recipe.family == "tulu3" else "smollm2"
    tokenizer = {"kind": "fixture-bpe", "family": tok_kind, "vocab_size": smoke.TOKENIZER_VOCAB}
    deviations.append(Deviation("tokenizer", f"{recipe.base_model} tokenizer ({arch.get('vocab_size')} tokens)",
                                f"byte-level BPE trained on the fixtures ({smoke.TOKENIZER_VOCAB} tokens), same "
                                "special tokens", "tests and smoke runs are offline; a tiny vocabulary keeps the "
                                "miniature small"))
    return model, tokenizer


def _data_plan(registry: Registry, recipe: Recipe, stage: Stage, profile: str, hps: dict[str, Any],
               deviations: list[Deviation]) -> tuple[list[dict], dict | None, list[dict]]:
    datasets: list[dict[str, Any]] = []
    for use in stage.datasets:
        if use.used_by_release is False:
            continue
        entry = {"dataset": use.dataset, "split": use.split, "role": use.role, "weight": use.weight,
                 "weight_semantics": use.weight_semantics, "revision": registry.model.datasets[use.dataset].revision}
        if profile == "smoke":
            fixture = smoke.FIXTURE_FOR.get(use.dataset)
            if fixture is None:
                if use.role == "eval":
                    continue
                # Internal (unpublished) sets the recorded run used have no fixture; the public mixture stands in.
                continue
            entry.update({"path": str(smoke.FIXTURES / fixture[0]), "schema": fixture[1]})
        datasets.append(entry)
    if profile == "smoke" and stage.name == "pretrain":
        # The recorded corpus ("smollm2-corpus") was never released; fixture components stand in for its sources.
        datasets = [{"dataset": f"fixture:pretrain/{name}", "split": "train", "role": "train", "weight": None,
                     "weight_semantics": "sampling-weight", "revision": None, "schema": "text",
                     "path": str(smoke.FIXTURES / "smollm2" / "pretrain" / f"{name}.jsonl")}
                    for name in smoke.PRETRAIN_COMPONENTS]
    if profile == "smoke":
        train = [d for d in datasets if d["role"] == "train"]
        if not train and stage.name != "pretrain":
            # Stages whose recorded data are all internal (e.g. the RM's DOC-v1 sets) train on the public mixture.
            for use in stage.datasets:
                fixture = smoke.FIXTURE_FOR.get(use.dataset)
                if fixture and use.role == "train":
                    train.append({"dataset": use.dataset, "split": use.split, "role": "train", "weight": "1.0",
                                  "weight_semantics": "fraction", "revision": None,
                                  "path": str(smoke.FIXTURES / fixture[0]), "schema": fixture[1]})
                    break
        seen = set()
        unique = []
        for d in train:
            if d["path"] not in seen:
                unique.append(d)
                seen.add(d["path"])
        datasets = unique + [d for d in datasets if d["role"] != "train"]
        names = sorted({d["dataset"] for d in datasets if d["role"] == "train"})
        deviations.append(Deviation("datasets", [u.dataset for u in stage.datasets if u.role == "train"],
                                    [_display_path(d["path"]) for d in unique],
                                    f"fixtures in the real schema of {', '.join(names) or 'the recorded data'}; "
                                    "small and learnable"))
    heldout = None
    if profile == "smoke" and (recipe.family, stage.name) in smoke.HELDOUT_FOR:
        path, schema = smoke.HELDOUT_FOR[(recipe.family, stage.name)]
        heldout = {"path": str(smoke.FIXTURES / path), "schema": schema}
    phases = [p.model_dump() for p in stage.phases]
    if stage.name == "pretrain" and profile == "smoke":
        phases = _smoke_phases(stage, hps)
        deviations.append(Deviation("phases", [f"{p.name}@{p.start_tokens}" for p in stage.phases] or "single stage",
                                    [f"{p['name']}@{p['start_tokens']}" for p in phases],
                                    "same proportions of the miniature's own total tokens"))
    return datasets, heldout, phases


def _smoke_phases(stage: Stage, hps: dict[str, Any]) -> list[dict[str, Any]]:
    total = hps["train_tokens"] if "train_tokens" in hps else None
    total = hps["effective_batch_size"] * hps["max_seq_length"] * hps["train_steps"] if total is None else total
    if not stage.phases:
        # 135M/360M: single-stage training; the exact mixture is unpublished, so the fixture components mix evenly.
        return [{"name": "single-stage", "start_tokens": 0, "end_tokens": total, "lr_phase": "warmup-stable",
                 "mixture": {"web": 0.5, "code": 0.2, "math": 0.2, "cosmopedia": 0.1},
                 "source": "fixture mixture (the recorded mixture is unpublished)"}]
    recorded_total = stage.phases[-1].end_tokens
    out = []
    for p in stage.phases:
        out.append({"name": p.name, "start_tokens": round(total * p.start_tokens / recorded_total),
                    "end_tokens": round(total * p.end_tokens / recorded_total), "lr_phase": p.lr_phase,
                    "mixture": _fixture_mixture(p.mixture), "recorded_mixture": p.mixture, "source": p.source})
    return out


def _fixture_mixture(mixture: dict[str, float]) -> dict[str, float]:
    """Map the recorded components (FineWeb-Edu, DCLM, StarCoderData, ...) onto the fixture components."""
    buckets = {c: 0.0 for c in smoke.PRETRAIN_COMPONENTS}
    for name, share in mixture.items():
        low = name.lower()
        if any(k in low for k in ("code", "stack", "starcoder", "jupyter")):
            buckets["code"] += share
        elif any(k in low for k in ("math", "owm", "infi", "gsm")):
            buckets["math"] += share
        elif "cosmo" in low:
            buckets["cosmopedia"] += share
        elif any(k in low for k in ("long", "book")):
            buckets["long"] += share
        else:
            buckets["web"] += share
    total = sum(buckets.values()) or 1.0
    return {k: round(v / total, 6) for k, v in buckets.items() if v > 0}


def _display_path(path: str) -> str:
    resolved = Path(path).resolve()
    return resolved.relative_to(REPO_ROOT).as_posix() if resolved.is_relative_to(REPO_ROOT) else str(resolved)


# Changes the run command and the launchers make. A resolved plan changes only here (and in the block the
# stages own, at the end): each function takes one flag or one fact about the launch and records every
# value it moves away from the recording as a deviation, so no caller can change a value silently.

PRECISIONS = ("bf16", "fp16", "fp32")
DEVICES = ("cuda", "cpu")


def limit_updates(plan: RunPlan, updates: int | None) -> None:
    """`--max-steps N`: stop after N optimizer updates. The plan is the one carrier of the limit (it is in
    run.json), so the in-process run and every launched process read the same value (`max_updates`).
    None clears it: a resumed run goes on to the end unless it is given a limit of its own."""
    if updates is None:
        plan.extra.pop("max_updates", None)
    else:
        plan.extra["max_updates"] = updates


def max_updates(plan: RunPlan) -> int | None:
    return plan.extra.get("max_updates")


def apply_recorded_options(plan: RunPlan, registry: Registry, hub_mirror: Path | None, precision: str | None,
                           device: str | None, public_stand_in: bool, launcher: str) -> Path | None:
    """--hub-mirror / REPRO_HUB_MIRROR, --precision, --device and --public-stand-in, applied to the plan with
    their deviations; returns the mirror directory (None: the Hub)."""
    from runner.data import hub

    if plan.profile != "recorded":
        given = [flag for flag, value in (("--hub-mirror", hub_mirror), ("--precision", precision),
                                          ("--device", device), ("--public-stand-in", public_stand_in)) if value]
        if given:
            raise ReproError(f"{given[0]} applies to the recorded profile (the smoke profile reads the fixtures "
                             "on CPU in float32)")
        return None
    if precision is not None:
        if precision not in PRECISIONS:
            raise ReproError(f"unknown --precision {precision!r} (valid: {', '.join(PRECISIONS)})")
        before = plan.hp("precision")
        plan.hyperparameters["precision"] = precision
        if before != precision:
            plan.deviate("precision", before, precision, "--precision on the command line")
    if device is not None:
        if device not in DEVICES:
            raise ReproError(f"unknown --device {device!r} (valid: {', '.join(DEVICES)})")
        plan.extra["device"] = device
    if device == "cpu":
        gpus = plan.layout.get("gpus") or plan.hp("num_processes") or 1
        plan.deviate("device", f"{gpus} GPUs", "cpu", "--device cpu on the command line")
        procs = plan.hp("num_processes") or 1
        if launcher == "local" and procs > 1:
            # One process keeps the recorded effective batch: its accumulation covers the missing processes.
            ga = plan.hp("gradient_accumulation_steps", 1) * procs
            plan.hyperparameters.update({"num_processes": 1, "num_machines": 1, "gradient_accumulation_steps": ga})
            plan.deviate("num_processes", plan.recorded.get("num_processes"), 1, "--device cpu runs one process")
            plan.deviate("gradient_accumulation_steps", plan.recorded.get("gradient_accumulation_steps"), ga,
                         "one process accumulates what the recorded processes computed (same effective batch)")
    mirror = hub.mirror_root(hub_mirror)
    use_data_sources(plan, *hub.data_sources(plan, registry, mirror, public_stand_in))
    if mirror is not None:
        plan.extra["hub_mirror"] = str(mirror)
    return mirror


def apply_layout(plan: RunPlan, registry: Registry, gpus: int, nodes: int | None) -> None:
    """`repro run --gpus N [--nodes M]`: the layout planner's layout for N GPUs, each change a deviation.

    runner.layouts keeps the effective batch (processes × per-device × accumulation) and the other
    invariants; a layout that cannot keep them is refused, naming what breaks."""
    from runner.layouts import plan_layout

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


def spread_over_processes(plan: RunPlan, num_processes: int) -> None:
    """`--launcher accelerate` on CPU: the micro-batches one update sums over (processes × accumulation)
    spread over N processes on one machine, so the effective batch stays the plan's; N must divide them."""
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


def use_deepspeed(plan: RunPlan, config: str) -> None:
    """`--launcher accelerate --deepspeed NAME`: the CPU processes run under this DeepSpeed config."""
    plan.extra["deepspeed"] = config


def use_ray(plan: RunPlan, address: str | None = None) -> None:
    """RLVR with its learner and generation engine as Ray actors (`--ray`, a recorded Ray launch); with an
    address, the driver joins that cluster instead of starting a local one."""
    plan.extra["use_ray"] = True
    if address is not None:
        plan.extra["ray_address"] = address


def attach_inputs(plan: RunPlan, inputs: dict[str, dict[str, Any]]) -> None:
    """The resolved input checkpoints; each `--input` substitute is a deviation from the recorded input."""
    plan.inputs = inputs
    for role, ref in inputs.items():
        if ref.get("substituted"):
            plan.deviate(f"input.{role}", ref.get("substitutes"), ref["path"],
                         "--input substitution on the command line")


def use_data_sources(plan: RunPlan, entries: list[dict[str, Any]], stood_in_for: list[str] | None = None) -> None:
    """The recorded profile's datasets with their sources named (runner.data.hub.data_sources): Hub id,
    config, row schema, mirror folder. `stood_in_for` (the recorded training sets) says --public-stand-in
    replaced internal sets; a mirror folder that cannot prove its revision is a deviation of that dataset."""
    if stood_in_for is not None:
        plan.deviate("datasets", stood_in_for, [d["dataset"] for d in entries if d["role"] == "train"],
                     "--public-stand-in: the recorded run's internal sets were never released; the public "
                     "stand-in the recording names trains instead")
    plan.datasets = entries
    for entry in entries:
        if entry.get("mirror") and not entry.get("revision_verified") and entry.get("revision"):
            plan.deviate(f"dataset.{entry['dataset']}.revision", entry.get("revision"),
                         f"mirror {entry['mirror']} (content sha256 {entry['mirror_hash'][:16]})",
                         "a plain mirror folder cannot prove which Hub revision its files came from")


def skip_heldout(plan: RunPlan) -> None:
    """No held-out evaluation after training: the replay comparisons (runner/replay) compare updates only."""
    plan.heldout = None


def record_launch(plan: RunPlan, launch: dict[str, Any]) -> None:
    """The commands a launcher actually ran, and where (run.json's plan.extra.launch)."""
    plan.extra["launch"] = launch


def record_distributed(plan: RunPlan, distributed: dict[str, Any]) -> None:
    """What a launched run actually trained with (DDP or DeepSpeed, ZeRO stage, processes, device): accelerate
    falls back quietly (its CPU mode drops DeepSpeed), so the record states it (plan.extra.distributed)."""
    plan.extra["distributed"] = distributed


def runs_root() -> Path:
    return Path(os.environ.get("REPRO_RUNS_DIR", "runs")).resolve()


# Changes the stages make. What a stage learns while it runs (the miniature it built, where a checkpoint
# came from, how it loaded the model, how it was orchestrated) goes into the plan through these functions
# only, each recording a deviation wherever the value is not the recording's.


def record_miniature(plan: RunPlan, deviations: list[dict[str, Any]], reason: str) -> None:
    """A randomly initialised miniature stands in for the recorded init: each architecture value the
    miniature shrank (runner/models.miniature) and the init itself are deviations."""
    for d in deviations:
        plan.deviate(f"model.{d['key']}", d["recorded"], d["miniature"], d["reason"])
    plan.deviate("init", plan.inputs.get("init", {}).get("checkpoint"), "random miniature init", reason)


def use_recorded_init_std(plan: RunPlan) -> None:
    """Pretraining's miniature draws its weights with the recorded init std (`init_std`), where one is given."""
    plan.model["spec"]["initializer_range"] = plan.hp("init_std", plan.model["spec"].get("initializer_range"))


def random_init_as_recorded(plan: RunPlan) -> None:
    """Pretraining starts from a random init as the recording did, with its init std: neither is a deviation
    (record_miniature listed them, as for every miniature)."""
    plan.deviations = [d for d in plan.deviations if d["key"] not in ("init", "model.initializer_range")]


def stop_early(plan: RunPlan, total_updates: int, stop_after: int) -> None:
    """`--max-steps` below the planned updates: the run stops after `stop_after`, its schedule keeps its length."""
    plan.deviate("optimizer_steps", total_updates, stop_after,
                 "--max-steps on the command line (the schedule keeps its full length)")


def input_on_hub(plan: RunPlan, role: str, hub_id: str) -> None:
    """The recorded profile loads input `role` from the Hub (or the mirror folder of that Hub id)."""
    ref = plan.inputs[role]
    ref["hub_id"] = hub_id
    ref.setdefault("revision", None)  # recipes.json records no model revisions: the Hub's main


def input_in_mirror(plan: RunPlan, role: str, folder: str, folder_hash: str, head: str | None) -> None:
    """Input `role` comes from a --hub-mirror folder; its content hash (and git head, if any) identify it."""
    plan.inputs[role].update({"mirror": folder, "mirror_hash": folder_hash, "mirror_head": head})


def record_attention(plan: RunPlan, implementation: str) -> None:
    """The attention kernel the recorded profile loaded its model with (flash-attention 2 or SDPA)."""
    plan.extra["attn_implementation"] = implementation


def record_embedding_resize(plan: RunPlan, rows: int, resized: int, tokenizer_size: int) -> None:
    """Tülu's tokenizer (with its added `<pad>`) outgrew the embedding matrix, which was resized as recorded."""
    plan.extra["embedding_resize"] = {"from": rows, "to": resized, "tokenizer": tokenizer_size}


def record_ray_actors(plan: RunPlan) -> None:
    """The Ray RLVR driver trains with one learner actor and one engine actor whatever the layout recorded:
    the difference from the recorded learner count (DeepSpeed ZeRO-3 over the actor GPUs) and from its vLLM
    engines is a deviation, recorded once."""
    layout = plan.layout
    if layout.get("actor_gpus") and layout["actor_gpus"] != 1:
        plan.deviate("actor_gpus", layout["actor_gpus"], 1,
                     "the Ray driver of runner.stages.rlvr trains with one learner actor")
    if layout.get("vllm_engines"):
        plan.deviate("generation_engine", f"{layout['vllm_engines']} vLLM engine(s), TP "
                     f"{layout.get('vllm_tensor_parallel_size') or 1}", "1 engine actor sampling with transformers",
                     "no vLLM engine in runner.stages.rlvr's Ray driver: the engine actor samples with the policy copy")


def record_orchestration(plan: RunPlan, orchestration: str) -> None:
    """How the stage's processes were orchestrated, when not in one process (the Ray RLVR driver)."""
    plan.extra["orchestration"] = orchestration
