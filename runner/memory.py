"""Memory accounting for the planner: model shapes from the recorded architecture, and the bytes one
rank holds for a model's states and activations (accounting in runner/layouts.py's docstring)."""

from __future__ import annotations

from dataclasses import dataclass

from registry.errors import ReproError
from registry.schema import Architecture

GIB = 2**30
# Tokenizer sizes per family, used only where a recipe's architecture leaves vocab_size out.
FAMILY_VOCAB = {"tulu3": 128256, "smollm2": 49152}


@dataclass(frozen=True)
class Shape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @property
    def layer_params(self) -> int:
        attn = 2 * self.hidden * self.heads * self.head_dim + 2 * self.hidden * self.kv_heads * self.head_dim
        return attn + 3 * self.hidden * self.intermediate + 2 * self.hidden

    def params(self, lm_head: bool = True) -> int:
        """All parameters; lm_head=False is a sequence-classification model (a score head h × 1)."""
        head = (0 if self.tied else self.vocab * self.hidden) if lm_head else self.hidden
        return self.vocab * self.hidden + self.layers * self.layer_params + self.hidden + head


def shape_of(arch: Architecture, family: str | None = None) -> tuple[Shape, list[str]]:
    """The shape and the assumptions made for values the architecture leaves out."""
    value = {k: (v.value if v is not None else None) for k, v in arch}
    notes: list[str] = []
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(value.get(key), int):
            raise ReproError(f"cannot estimate memory: the architecture does not state {key}")
    vocab = value.get("vocab_size")
    if not isinstance(vocab, int):
        vocab = FAMILY_VOCAB.get(family or "", 128256)
        notes.append(f"vocab_size not recorded; assumed {vocab} (the {family or 'Llama-3'} tokenizer)")
    kv = value.get("num_key_value_heads")
    if not isinstance(kv, int):
        kv = value["num_attention_heads"]
        notes.append("num_key_value_heads not recorded; assumed full multi-head attention")
    head_dim = value.get("head_dim")
    if not isinstance(head_dim, int):
        head_dim = value["hidden_size"] // value["num_attention_heads"]
    tied = value.get("tie_word_embeddings")
    if tied is None:
        tied = False
        notes.append("tie_word_embeddings not recorded; assumed an untied output head")
    return Shape(value["hidden_size"], value["intermediate_size"], value["num_hidden_layers"],
                 value["num_attention_heads"], kv, head_dim, vocab, bool(tied)), notes


@dataclass(frozen=True)
class Relief:
    """One ZeRO/offload option. `level` orders them by the throughput they cost."""

    zero: int
    offload_optimizer: bool = False
    offload_params: bool = False
    config: str | None = None
    deviation: str | None = None  # set where the recorded code cannot do this without a change

    @property
    def level(self) -> int:
        return int(self.offload_optimizer) + int(self.offload_params)


def states(params: int, n: int, relief: Relief, grad_bytes: int,
           trained: bool = True) -> tuple[float, float, float, float]:
    """(weights, gradients, optimizer, host) bytes per rank for one model."""
    w, g, o = 2.0 * params, float(grad_bytes * params if trained else 0), float(12 * params if trained else 0)
    if relief.zero >= 1:
        o /= n
    if relief.zero >= 2:
        g /= n
    if relief.zero >= 3:
        w /= n
    host = 0.0
    if relief.offload_optimizer and trained:  # ZeRO-Offload steps Adam on the CPU from fp32 gradients there
        host += o + 4.0 * params / n
        o, g = 0.0, (g if relief.zero < 2 else 0.0)
    if relief.offload_params and relief.zero >= 3:
        host, w = host + w, 0.0
    return w, g, o, host


def activations(shape: Shape, tokens: int, gc: bool, logits: bool) -> tuple[float, float]:
    per_token_layer = 2 * (6 * shape.hidden + 2 * shape.kv_heads * shape.head_dim + 4 * shape.intermediate)
    if gc:
        act = tokens * (2 * shape.hidden * shape.layers + per_token_layer)
    else:
        act = tokens * per_token_layer * shape.layers
    return float(act), float(tokens * shape.vocab * 6 if logits else 0)
