"""The shape of recipes.json, as pydantic models.

recipes.json is the source of truth for published recipes. Every number in it
carries a `source` (a tag defined in the top-level `sources` map, optionally
followed by a locator such as "§1.1"), so a reader can trace it. Where sources
disagree, the primary `value` is the one the recorded run / released checkpoint
used, and the other values sit in `alternatives` with their own sources.
A value that no source states is simply absent.
"""

from __future__ import annotations

import re
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_validator

StageName = Literal["pretrain", "sft", "dpo", "rm", "rlvr"]
STAGE_NAMES: tuple[str, ...] = ("pretrain", "sft", "dpo", "rm", "rlvr")
FAMILY_STAGES: dict[str, tuple[str, ...]] = {
    "tulu3": ("sft", "dpo", "rm", "rlvr"),
    "smollm2": ("pretrain", "sft", "dpo"),
}

Scalar = Union[bool, int, float, str, None]
JsonValue = Union[Scalar, list[Any], dict[str, Any]]

# Canonical hyperparameter keys: the contract's table, extended (never renamed)
# with the keys the RLVR and pretraining stages need. key -> description/unit.
CANONICAL_KEYS: dict[str, str] = {
    "learning_rate": "peak learning rate",
    "lr_scheduler": "linear | cosine | constant | wsd",
    "warmup_ratio": "share of optimizer steps in linear warmup",
    "warmup_steps": "optimizer steps in linear warmup",
    "decay_fraction": "WSD: share of steps in the final decay",
    "decay_style": "WSD: linear | 1-sqrt | cosine",
    "decay_start_step": "WSD: step at which the decay starts",
    "decay_steps": "WSD: length of the decay in steps",
    "min_learning_rate": "floor of the schedule",
    "weight_decay": "AdamW decoupled weight decay",
    "adam_beta1": "AdamW beta1",
    "adam_beta2": "AdamW beta2",
    "adam_epsilon": "AdamW epsilon",
    "max_grad_norm": "gradient clipping threshold (global L2 norm)",
    "epochs": "passes over the training data",
    "max_seq_length": "tokens per sequence",
    "max_prompt_length": "tokens per prompt (DPO, RLVR)",
    "per_device_batch_size": "micro-batch per process, in the stage's unit",
    "gradient_accumulation_steps": "micro-batches per optimizer step per process",
    "num_processes": "data-parallel processes (GPUs) in total",
    "num_machines": "nodes",
    "effective_batch_size": "per optimizer step, in the stage's unit",
    "batch_tokens": "pretraining: tokens per optimizer step",
    "train_tokens": "pretraining: total tokens",
    "train_steps": "pretraining: total optimizer steps",
    "seed": "random seed",
    "loss_reduction": "SFT: sum | mean",
    "dpo_loss_type": "dpo | dpo_norm | sigmoid | simpo",
    "dpo_beta": "DPO temperature beta",
    "label_smoothing": "DPO label smoothing epsilon",
    "kl_beta": "RLVR: KL penalty coefficient",
    "kl_estimator": "RLVR: kl1 | kl2 | kl3",
    "response_length": "RLVR: max generated tokens",
    "temperature": "RLVR: sampling temperature",
    "total_episodes": "RLVR: sampled responses in total",
    "num_ppo_epochs": "RLVR: PPO passes over each rollout batch",
    "num_mini_batches": "RLVR: mini-batches per rollout batch",
    "samples_per_prompt": "RLVR: responses sampled per prompt",
    "gamma": "RLVR: GAE discount",
    "lam": "RLVR: GAE lambda",
    "cliprange": "RLVR: policy ratio clip epsilon",
    "cliprange_value": "RLVR: value clip range",
    "vf_coef": "RLVR: value loss coefficient",
    "verifier_reward": "RLVR: reward for a verified answer",
    "non_stop_penalty": "RLVR: replace the score of a response without EOS",
    "penalty_reward_value": "RLVR: the replacing score",
    "reward_model_multiplier": "RLVR: weight of the reward model score",
    "chat_template": "tulu | chatml | ...",
    "packing": "SFT: sequences packed or not",
    "gradient_checkpointing": "activation recomputation on or off",
    "precision": "training precision",
    "init_std": "pretraining: weight init standard deviation",
}
# Counts that must be positive integers wherever they are stated.
POSITIVE_INT_KEYS = frozenset({"per_device_batch_size", "gradient_accumulation_steps", "num_processes", "num_machines",
                               "effective_batch_size", "batch_tokens", "train_steps", "train_tokens", "max_seq_length",
                               "max_prompt_length", "response_length", "total_episodes", "num_ppo_epochs",
                               "num_mini_batches", "samples_per_prompt"})
# Keys that never change what is trained (diff ignores them).
COSMETIC_KEYS = frozenset({"output_dir", "exp_name", "run_name", "report_to", "with_tracking",
                           "push_to_hub", "hub_model_id", "logging_steps", "checkpointing_steps",
                           "keep_last_n_checkpoints", "save_freq", "num_evals", "wandb_project"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Source(_Strict):
    title: str
    url: str | None = None
    commit: str | None = None
    note: str | None = None


class Alternative(_Strict):
    value: JsonValue
    source: str
    note: str | None = None


class Sourced(_Strict):
    """A value and where it comes from. `value` is what the recorded run used."""

    value: JsonValue
    source: str
    note: str | None = None
    alternatives: list[Alternative] = Field(default_factory=list)
    # False when the sources do not settle which value the released checkpoint used.
    release_value_known: bool = True


class Architecture(_Strict):
    """Model shape. A field no source states is left out (None), never guessed."""

    model_type: Sourced | None = None
    hidden_size: Sourced | None = None
    intermediate_size: Sourced | None = None
    num_hidden_layers: Sourced | None = None
    num_attention_heads: Sourced | None = None
    num_key_value_heads: Sourced | None = None
    vocab_size: Sourced | None = None
    rope_theta: Sourced | None = None
    tie_word_embeddings: Sourced | None = None
    max_position_embeddings: Sourced | None = None
    rms_norm_eps: Sourced | None = None
    hidden_act: Sourced | None = None
    head_dim: Sourced | None = None


class Layout(_Strict):
    """Hardware the recorded run used. Batch arithmetic lives in the hyperparameters."""

    unit: Literal["sequences", "pairs", "prompts", "tokens"]
    gpus: PositiveInt | None = None
    gpu_type: str | None = None
    nodes: PositiveInt | None = None
    launcher: Literal["accelerate", "torchrun", "ray", "nanotron"]
    deepspeed_config: str | None = None
    zero_stage: int | None = Field(default=None, ge=0, le=3)
    offload: bool | None = None
    # RLVR (Ray + vLLM): actor (learner) GPUs, generation engines and their tensor parallelism.
    actor_gpus: PositiveInt | None = None
    actor_gpus_per_node: list[PositiveInt] | None = None
    vllm_engines: PositiveInt | None = None
    vllm_tensor_parallel_size: PositiveInt | None = None
    local_rollout_batch_size: PositiveInt | None = None
    source: str
    note: str | None = None


class DatasetUse(_Strict):
    dataset: str  # key into the top-level `datasets` map
    split: str
    role: Literal["train", "eval"] = "train"
    weight: str | None = None  # the literal as published ("1.0", "128"): semantics depend on it
    weight_semantics: Literal["fraction", "count", "proportion", "sampling-weight"] | None = None
    used_by_release: bool | None = True  # False: in the public command but not what the run used
    source: str
    note: str | None = None


class DataPhase(_Strict):
    """Pretraining data phase: the mixture switches at recorded token positions."""

    name: str
    start_tokens: int = Field(ge=0)
    end_tokens: PositiveInt
    lr_phase: Literal["warmup-stable", "stable", "decay"]
    mixture: dict[str, float]  # component -> share of the phase's tokens
    source: str
    note: str | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "DataPhase":
        if self.end_tokens <= self.start_tokens:
            raise ValueError("end_tokens must exceed start_tokens")
        return self


class CheckpointRef(_Strict):
    role: Literal["init", "reference", "reward_model", "value_model", "tokenizer"]
    checkpoint: str  # key into the top-level `checkpoints` map
    source: str
    note: str | None = None


class OutputRef(_Strict):
    checkpoint: str
    source: str
    note: str | None = None


class CodePin(_Strict):
    repository: str
    commit: str
    entry_point: str
    source: str
    note: str | None = None


class RecordedCommand(_Strict):
    text: str  # verbatim as published
    source: str
    note: str | None = None


class Note(_Strict):
    text: str
    source: str
    kind: Literal["conflict", "doc-bug", "unpublished", "quirk", "info"] = "info"


class Stage(_Strict):
    name: StageName
    summary: str
    hyperparameters: dict[str, Sourced]
    native_flags: dict[str, Scalar | list[Scalar]] = Field(default_factory=dict)
    native_flags_source: str | None = None
    layout: Layout
    datasets: list[DatasetUse] = Field(default_factory=list)
    phases: list[DataPhase] = Field(default_factory=list)
    inputs: list[CheckpointRef] = Field(default_factory=list)
    outputs: list[OutputRef] = Field(default_factory=list)
    code: CodePin
    command: RecordedCommand | None = None
    verifier_version: Literal["release-2024-11", "corrected"] | None = None
    notes: list[Note] = Field(default_factory=list)

    @model_validator(mode="after")
    def _valid_values(self) -> "Stage":
        # The one validation layer (registry.values): the recorded value must be runnable; another source's
        # statement (an alternative) must have the right type and range, but may describe a choice in words.
        from registry.values import problem, stage_problem

        for key, item in self.hyperparameters.items():
            issue = problem(key, item.value) or stage_problem(key, self.name)
            if issue:
                raise ValueError(f"hyperparameter {key}={item.value!r}: {issue}")
            for alt in item.alternatives:
                issue = problem(key, alt.value, descriptive=True)
                if issue:
                    raise ValueError(f"hyperparameter {key} alternative {alt.value!r}: {issue}")
        return self


class MetricProtocol(_Strict):
    harness: str
    task: str | None = None
    shots: int | None = None
    cot: bool | None = None
    metric: str | None = None
    settings: str | None = None  # as printed ("4 shot CoT, Flex")


class PublishedMetric(_Strict):
    benchmark: str
    value: float
    protocol: MetricProtocol
    source: str
    alternatives: list[Alternative] = Field(default_factory=list)
    note: str | None = None


class Checkpoint(_Strict):
    hub_id: str | None = None
    kind: Literal["base", "pretrain", "sft", "dpo", "rm", "rlvr", "intermediate"]
    published: bool
    produced_by: str | None = None  # "recipe:stage"
    source: str
    quantization: str | None = None
    metrics: list[PublishedMetric] = Field(default_factory=list)
    note: str | None = None


class Dataset(_Strict):
    hub_id: str | None = None
    config: str | None = None
    revision: str | None = None
    schema_: Literal["messages", "preference", "rlvr", "text", "unknown"] = Field(alias="schema")
    published: bool = True
    size: Sourced | None = None
    source: str
    note: str | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Recipe(_Strict):
    family: Literal["tulu3", "smollm2"]
    size: str
    base_model: str  # key into `checkpoints`
    architecture: Architecture
    stages: list[Stage]
    notes: list[Note] = Field(default_factory=list)

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.stages]


RECIPE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class RecipesFile(_Strict):
    schema_ref: str | None = Field(default=None, alias="$schema")
    format_version: Literal[1] = 1
    sources: dict[str, Source]
    datasets: dict[str, Dataset]
    checkpoints: dict[str, Checkpoint]
    recipes: dict[str, Recipe]

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @field_validator("recipes")
    @classmethod
    def _recipe_names(cls, value: dict[str, Recipe]) -> dict[str, Recipe]:
        # A recipe name becomes part of run ids and run directory names: no path separators, no "..".
        for name in value:
            if not RECIPE_NAME.match(name) or ".." in name:
                raise ValueError(f"recipe name {name!r} is not an identifier (lower-case letters, digits, '.', "
                                 "'_' and '-', starting with a letter or digit; e.g. 'tulu3-8b')")
        return value
