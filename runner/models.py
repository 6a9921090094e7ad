"""Model shapes: the recorded architecture, its CPU miniature, and deterministic builds.

A miniature keeps what defines the architecture (LlamaForCausalLM, the GQA ratio,
tied embeddings, RoPE theta, RMSNorm eps, SiLU) and shrinks the sizes to a few
hundred thousand parameters. Every value it changes is returned as a deviation
{key, recorded, miniature, reason}.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Mapping

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification


@dataclass(frozen=True)
class ArchitectureSpec:
    """The recorded shape of a Llama-architecture model."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rope_theta: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    rms_norm_eps: float
    hidden_act: str = "silu"
    head_dim: int | None = None  # None: hidden_size // num_attention_heads
    initializer_range: float | None = None  # None: LlamaConfig's default (0.02)

    def __post_init__(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                             f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                             f"num_attention_heads {self.num_attention_heads}; give head_dim")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def gqa_ratio(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "ArchitectureSpec":
        """Build from a dict; values may be plain or registry-style {"value": ...}; extra keys are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        plain = {k: (v["value"] if isinstance(v, Mapping) and "value" in v else v)
                 for k, v in values.items() if k in names}
        return cls(**{k: v for k, v in plain.items() if v is not None})


# Released HF shapes (smollm2.md §1; Llama-3.1 config.json). The recipes' registry is
# the source of truth; these are here for tests and quick use.
SMOLLM2_135M = ArchitectureSpec(576, 1536, 30, 9, 3, 49152, 100000.0, True, 8192, 1e-5, "silu", 64)
SMOLLM2_360M = ArchitectureSpec(960, 2560, 32, 15, 5, 49152, 100000.0, True, 8192, 1e-5, "silu", 64)
SMOLLM2_1_7B = ArchitectureSpec(2048, 8192, 24, 32, 32, 49152, 130000.0, True, 8192, 1e-5, "silu", 64)
LLAMA31_8B = ArchitectureSpec(4096, 14336, 32, 32, 8, 128256, 500000.0, False, 131072, 1e-5, "silu", 128)


def _llama_config(*, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads, num_key_value_heads,
                  head_dim, vocab_size, rope_theta, tie_word_embeddings, max_position_embeddings, rms_norm_eps,
                  hidden_act, initializer_range=None, **token_ids) -> LlamaConfig:
    kwargs = dict(
        hidden_size=hidden_size, intermediate_size=intermediate_size, num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads, num_key_value_heads=num_key_value_heads, head_dim=head_dim,
        vocab_size=vocab_size, tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=rms_norm_eps, hidden_act=hidden_act,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
        attention_bias=False, mlp_bias=False, attention_dropout=0.0,
        **{k: v for k, v in token_ids.items() if v is not None},
    )
    if initializer_range is not None:
        kwargs["initializer_range"] = initializer_range
    return LlamaConfig(**kwargs)


def recorded_config(spec: ArchitectureSpec, **token_ids: int | None) -> LlamaConfig:
    """The LlamaConfig of the real-size model. Never instantiate weights from it on CPU;
    use `count_parameters(config)` for its size."""
    return _llama_config(**_spec_values(spec), **token_ids)


def _spec_values(spec: ArchitectureSpec) -> dict[str, Any]:
    values = dataclasses.asdict(spec)
    values["head_dim"] = spec.resolved_head_dim
    return values


def _attention_shape(ratio: int, hidden_size: int, head_dims: tuple[int, ...]) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) with heads = ratio * kv_heads and heads * head_dim
    as close as possible to hidden_size; ties go to the earlier entry of head_dims, then
    to fewer kv heads."""
    best = None
    for rank, head_dim in enumerate(head_dims):
        for kv in range(1, 17):
            heads = ratio * kv
            if heads * head_dim > 2 * hidden_size:
                break
            key = (abs(heads * head_dim - hidden_size), rank, kv)
            if best is None or key < best[0]:
                best = (key, (heads, kv, head_dim))
    if best is None:
        raise ValueError(f"no attention shape with GQA ratio {ratio} fits near hidden_size {hidden_size}")
    return best[1]


def miniature(
    spec: ArchitectureSpec,
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    *,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 512,
    head_dims: tuple[int, ...] = (16, 8, 32),
    initializer_range: float | None = 0.02,
    bos_token_id: int | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> tuple[LlamaConfig, list[dict]]:
    """Shrink `spec` to a CPU-sized LlamaConfig; returns (config, deviations).

    Kept: model class, GQA ratio (MHA stays MHA), tie_word_embeddings, rope_theta,
    rms_norm_eps, hidden_act. `hidden_size` is a target: the actual width is
    heads * head_dim for the head layout closest to it that keeps the ratio (so
    SmolLM2-135M's 9:3 gives 9 heads / 3 kv heads of 8 dims = 72). The MLP keeps the
    recorded intermediate/hidden ratio (rounded to a multiple of 8) unless given.
    """
    ratio = spec.gqa_ratio
    heads, kv_heads, head_dim = _attention_shape(ratio, hidden_size, head_dims)
    width = heads * head_dim
    ratio_mlp = max(8, 8 * round(width * spec.intermediate_size / spec.hidden_size / 8))
    if intermediate_size is None:
        intermediate_size = ratio_mlp
    init = initializer_range if initializer_range is not None else spec.initializer_range
    mini = dict(
        hidden_size=width, intermediate_size=intermediate_size, num_hidden_layers=num_layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim, vocab_size=vocab_size,
        rope_theta=spec.rope_theta, tie_word_embeddings=spec.tie_word_embeddings,
        max_position_embeddings=max_position_embeddings, rms_norm_eps=spec.rms_norm_eps,
        hidden_act=spec.hidden_act, initializer_range=init,
    )
    config = _llama_config(**mini, bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id)

    kind = "MHA" if ratio == 1 else f"GQA {ratio}:1"
    reasons = {
        "hidden_size": f"CPU miniature; {heads} heads x head_dim {head_dim} keep the {kind} layout"
                       + ("" if width == hidden_size else f" (target {hidden_size})"),
        "intermediate_size": "CPU miniature; keeps the recorded intermediate/hidden ratio"
                             if intermediate_size == ratio_mlp else "CPU miniature; set explicitly",
        "num_hidden_layers": "CPU miniature; fewer layers",
        "num_attention_heads": f"CPU miniature; {heads}/{kv_heads} keeps the {kind} ratio",
        "num_key_value_heads": f"CPU miniature; {heads}/{kv_heads} keeps the {kind} ratio",
        "head_dim": "CPU miniature; narrower heads",
        "vocab_size": "fixture tokenizer (byte-level BPE trained on the fixtures)",
        "max_position_embeddings": "fixture sequences are short",
        "initializer_range": "miniature init std",
    }
    recorded = _spec_values(spec)
    if recorded["initializer_range"] is None:
        recorded["initializer_range"] = LlamaConfig().initializer_range
    deviations = [
        {"key": key, "recorded": recorded[key], "miniature": mini[key], "reason": reason}
        for key, reason in reasons.items()
        if recorded[key] != mini[key]
    ]
    return config, deviations


def build_model(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A freshly initialised LlamaForCausalLM; the same (config, seed) gives the same weights.
    The global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.eval()


def disable_dropout(model: torch.nn.Module) -> None:
    """Set every Dropout's p to 0 (open-instruct's `disable_dropout_in_model`), and the config's attention
    dropout too, so that a checkpoint saved from the model says what it trained with."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "attention_dropout"):
        config.attention_dropout = 0.0


def build_reward_model(config: LlamaConfig, seed: int) -> LlamaForSequenceClassification:
    """LlamaForSequenceClassification(num_labels=1) as open-instruct's reward_modeling.py
    builds it: dropout off, score head re-initialised N(0, std=1/sqrt(hidden_size + 1)).
    Set `config.pad_token_id`: the score is read at the token before the first pad."""
    config = LlamaConfig.from_dict(config.to_dict())
    config.num_labels = 1
    config.attention_dropout = 0.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForSequenceClassification(config)
        torch.nn.init.normal_(model.score.weight, mean=0.0, std=1 / math.sqrt(config.hidden_size + 1))
    disable_dropout(model)
    return model.eval()


def _config_parameter_count(config: LlamaConfig) -> int:
    """Parameters of LlamaForCausalLM(config) from its shapes (no weights built)."""
    h, v, n_layers = config.hidden_size, config.vocab_size, config.num_hidden_layers
    head_dim = getattr(config, "head_dim", None) or h // config.num_attention_heads
    q = config.num_attention_heads * head_dim
    kv = config.num_key_value_heads * head_dim
    attn = h * q + 2 * h * kv + q * h
    if config.attention_bias:
        attn += q + 2 * kv + h
    mlp = 3 * h * config.intermediate_size
    if config.mlp_bias:
        mlp += 2 * config.intermediate_size + h
    per_layer = attn + mlp + 2 * h  # + input and post-attention RMSNorm
    embeddings = v * h * (1 if config.tie_word_embeddings else 2)
    return embeddings + n_layers * per_layer + h  # + final norm


def count_parameters(model_or_config: torch.nn.Module | LlamaConfig) -> int:
    """Distinct parameters (tied weights counted once). A LlamaConfig is counted from its
    shapes as a LlamaForCausalLM, without building weights."""
    if isinstance(model_or_config, LlamaConfig):
        return _config_parameter_count(model_or_config)
    return sum(p.numel() for p in model_or_config.parameters())


# ---------------------------------------------------------------- the recorded profile's real checkpoints

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def attention_implementation(device: str) -> str:
    """flash-attention 2 where it is installed and a GPU runs it (as the recorded runs used), else SDPA."""
    return "flash_attention_2" if device == "cuda" and find_spec("flash_attn") is not None else "sdpa"


def recorded_load(cls: Any, source: str | Path, plan: Any, tokenizer: Any = None, revision: str | None = None,
                  **kwargs: Any) -> tuple[Any, dict[str, Any]]:
    """`cls.from_pretrained(source, revision=...)` as the recorded stage loaded it: (model, what the load
    chose: `attn_implementation`, and `embedding_resize` as (rows, resized rows, tokenizer size) or None),
    which the caller records in the plan (runner.stages.kit.load_recorded).

    In the plan's precision (bf16 where recorded, unless --precision changed it), with SDPA or
    flash-attention 2, gradient checkpointing
    as recorded, and for Tülu open-instruct's embedding resize: when the tokenizer (with its added
    `<pad>`) outgrows the embedding matrix, resize to a multiple of 8. open-instruct ran transformers
    4.43, whose resize initialised the new rows with the model's own init (normal, initializer_range),
    not the mean of the old rows that later versions default to, hence mean_resizing=False; the
    draw is seeded so reruns agree."""
    device = plan.extra.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = DTYPES[plan.hp("precision") or "fp32"]
    attn = attention_implementation(device)
    facts: dict[str, Any] = {"attn_implementation": attn, "embedding_resize": None}
    model = cls.from_pretrained(source, revision=revision, torch_dtype=dtype, attn_implementation=attn, **kwargs)
    if plan.family == "tulu3" and tokenizer is not None:
        rows = model.get_input_embeddings().weight.shape[0]
        if len(tokenizer) > rows:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(plan.seed)
                model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=8, mean_resizing=False)
            facts["embedding_resize"] = (rows, model.get_input_embeddings().weight.shape[0], len(tokenizer))
    if plan.hp("gradient_checkpointing"):
        # transformers 5 renamed the switch; the older name still works there with a warning
        getattr(model, "activation_checkpointing_enable", model.gradient_checkpointing_enable)()
        model.config.use_cache = False  # what the HF Trainer and open-instruct set beside checkpointing
    if device != "cpu":
        model.to(device)
    return model, facts


def hardware_bf16() -> bool:
    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
