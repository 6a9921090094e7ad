"""Tokenizers: the one loader (the template and pad rules, stated once) and tiny byte-level BPE
tokenizers that mimic the recipes' real tokenizers (offline).

`build_tokenizer("tulu", ...)` mimics Llama-3.1's tokenizer as Tülu 3 used it:
Llama-3-style pre-tokenizer regex, `<|begin_of_text|>` (bos, prepended by the
post-processor as Llama-3's tokenizer.json does) and `<|end_of_text|>` (eos) placed
after the BPE vocabulary, then `<pad>` added as the pad token the way finetune.py
does, so `len(tok) == vocab_size + 1`. The chat-role markers `<|user|>`,
`<|assistant|>`, `<|system|>` are plain text, not special tokens.

`build_tokenizer("smollm2", ...)` mimics SmolLM2-Instruct's (cosmo2) tokenizer:
`<|endoftext|>` id 0, `<|im_start|>` id 1 (bos), `<|im_end|>` id 2 (eos and pad),
digits split individually, no bos added on encode; `len(tok) == vocab_size`.

Neither sets `chat_template` (fixture_tokenizer sets the plan's). Training is deterministic: same texts and vocab size
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


# ---------------------------------------------------------------- loading: the one place for the rules
# Template: a registry name (runner/data/templates.py) set as the tokenizer's Jinja chat template.
# Pad: a tokenizer without a pad token pads with its EOS, except where the recorded code added one
# (Tülu's finetune.py / dpo_tune.py add "<pad>" to Llama-3's tokenizer; runner/models.recorded_load then
# resizes the embeddings to a multiple of 8, docs/semantics.md).


def load_tokenizer(source: str | Path, revision: str | None = None, *, template: str | None = None,
                   template_if_missing: str | None = None, pad_token: str | None = None,
                   local_files_only: bool = True):
    """A saved tokenizer: a folder, or (with local_files_only=False) a Hub id at `revision`.

    `template` replaces the saved chat template; `template_if_missing` only fills one the files lack
    (neither: the saved template stays). A tokenizer without a pad token gets `pad_token` added as a new
    special token, or pads with its EOS when none is given. An unknown template name is a ReproError."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(source), revision=revision, local_files_only=local_files_only)
    if template is None and not getattr(tok, "chat_template", None):
        template = template_if_missing
    if template is not None:
        _set_template(tok, template)
    if tok.pad_token is None:
        if pad_token is not None:
            tok.add_special_tokens({"pad_token": pad_token})
        else:
            tok.pad_token = tok.eos_token
    return tok


def stage_tokenizer(plan, source: str | Path, revision: str | None = None, *, foreign: bool = False):
    """The tokenizer a training stage of `plan` uses, loaded from its input checkpoint `source`.

    Tülu sets the plan's template on every tokenizer it loads (open-instruct overwrites the template with
    its `tulu` one whatever the checkpoint saved). SmolLM2's later stages keep the template their input
    checkpoint was saved with (the earlier stage of the recipe wrote it there), unless `foreign`: the
    checkpoint does not come from the recipe's previous stage (SFT's base model, a Hub or mirror model in
    the recorded profile), so the plan's template replaces whatever it saved. Pad: `<pad>` is added where
    the recorded Tülu code added it (the recorded profile; the fixture tokenizer already has it), EOS
    otherwise."""
    tulu = plan.family == "tulu3"
    template = plan.chat_template if plan.chat_template and (tulu or foreign) else None
    pad = TULU_PAD if tulu and plan.profile == "recorded" else None
    return load_tokenizer(source, revision, template=template, pad_token=pad, local_files_only=False)


def fixture_tokenizer(plan) -> PreTrainedTokenizerFast:
    """The smoke profile's tokenizer when a stage has no input checkpoint: the fixture tokenizer of the
    plan's family, trained on the fixture texts, with the plan's template."""
    from registry.errors import ReproError

    kind = plan.tokenizer.get("family")
    if kind is None:  # the recorded profile names a real tokenizer: it comes with the init checkpoint
        raise ReproError(f"{plan.recipe}:{plan.stage} ({plan.profile} profile) loads the tokenizer of "
                         f"{plan.tokenizer.get('name')}; give the init with --input init=PATH, --hub-mirror DIR "
                         "or the Hub")
    tok = build_tokenizer(kind, fixture_corpus(kind), vocab_size=plan.tokenizer["vocab_size"])
    if plan.chat_template:
        _set_template(tok, plan.chat_template)
    return tok


def _set_template(tok, name: str) -> None:
    from registry.errors import ReproError
    from runner.data.templates import jinja_template

    try:
        tok.chat_template = jinja_template(name)
    except ValueError as exc:
        raise ReproError(str(exc)) from None


def tokenizer_files(path: str | Path) -> dict[str, bytes]:
    """The files `save_pretrained` wrote, name -> bytes (for determinism checks)."""
    return {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()}


__all__ = ["build_tokenizer", "fixture_corpus", "fixture_tokenizer", "load_tokenizer", "stage_tokenizer",
           "tokenizer_files", "KINDS"]
