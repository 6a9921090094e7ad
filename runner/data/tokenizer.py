"""Tiny byte-level BPE tokenizers that mimic the recipes' real tokenizers (offline).

`build_tokenizer("tulu", ...)` mimics Llama-3.1's tokenizer as Tülu 3 used it:
Llama-3-style pre-tokenizer regex, `<|begin_of_text|>` (bos, prepended by the
post-processor as Llama-3's tokenizer.json does) and `<|end_of_text|>` (eos) placed
after the BPE vocabulary, then `<pad>` added as the pad token the way finetune.py
does, so `len(tok) == vocab_size + 1`. The chat-role markers `<|user|>`,
`<|assistant|>`, `<|system|>` are plain text, not special tokens.

`build_tokenizer("smollm2", ...)` mimics SmolLM2-Instruct's (cosmo2) tokenizer:
`<|endoftext|>` id 0, `<|im_start|>` id 1 (bos), `<|im_end|>` id 2 (eos and pad),
digits split individually, no bos added on encode; `len(tok) == vocab_size`.

Neither sets `chat_template`. Training is deterministic: same texts and vocab size
give the same files from `save_pretrained`, byte for byte.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from runner.data.fixtures import FIXTURE_FILES, FIXTURES_ROOT, load_fixture

# Llama-3's pre-tokenizer split pattern (tokenizer.json of meta-llama/Llama-3.1-8B).
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

KINDS = ("tulu", "smollm2")
TULU_SPECIALS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>"}
TULU_PAD = "<pad>"
SMOLLM2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")


def build_tokenizer(kind: str, texts: list[str], vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` and wrap it like the recipe's real tokenizer.

    `vocab_size` counts the special tokens of the base tokenizer (Llama-3.1's 128,256
    analogue for tulu; 49,152 for smollm2); tulu then adds `<pad>` on top.
    """
    _check_kind(kind)
    specials = list(TULU_SPECIALS.values()) if kind == "tulu" else SMOLLM2_SPECIALS
    if vocab_size < 256 + len(specials) + 1:
        raise ValueError(f"vocab_size {vocab_size} is too small for a byte-level BPE (needs > {256 + len(specials)})")
    tok = Tokenizer(models.BPE())
    if kind == "tulu":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    tok.decoder = decoders.ByteLevel()
    # Llama-3 keeps its specials after the BPE ids; SmolLM2 puts them first (ids 0-2).
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - (len(specials) if kind == "tulu" else 0),
        special_tokens=[] if kind == "tulu" else specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if kind == "tulu":
        tok.add_special_tokens(specials)
        bos = TULU_SPECIALS["bos_token"]
        tok.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                          special_tokens=[(bos, tok.token_to_id(bos))]),
        ])
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, **TULU_SPECIALS, clean_up_tokenization_spaces=False)
        # finetune.py: the Llama-3.1 tokenizer has no pad token, so one is added.
        fast.add_special_tokens({"pad_token": TULU_PAD})
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                       pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                       clean_up_tokenization_spaces=False)
    fast.model_max_length = 8192 if kind == "smollm2" else 131072
    fast.padding_side = "right"
    return fast


def _render(messages: list[dict]) -> str:
    # Rough plain-text rendering for tokenizer training only; chat templates are set later.
    return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages)


def fixture_corpus(kind: str) -> list[str]:
    """The texts of every fixture file a `kind` tokenizer should cover, in a fixed order."""
    _check_kind(kind)
    prefix = "tulu3/" if kind == "tulu" else "smollm2/"
    texts: list[str] = []
    for rel, schema in FIXTURE_FILES.items():
        if not rel.startswith(prefix):
            continue
        for row in load_fixture(FIXTURES_ROOT / rel, schema):
            if schema == "text":
                texts.append(row["text"])
            elif schema == "messages":
                texts.append(_render(row["messages"]))
            elif schema in ("preference", "ultrafeedback"):
                texts += [_render(row["chosen"]), row["rejected"][-1]["content"]]
            elif schema == "rlvr":
                texts.append(_render(row["messages"]) + row["ground_truth"])
    return texts


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Load a tokenizer written by `save_pretrained` (local files only)."""
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


def tokenizer_files(path: str | Path) -> dict[str, bytes]:
    """The files `save_pretrained` wrote, name -> bytes (for determinism checks)."""
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()}


__all__ = ["build_tokenizer", "fixture_corpus", "load_tokenizer", "tokenizer_files", "KINDS"]
