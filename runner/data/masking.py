"""Token-level encoding of SFT and preference examples, per recorded recipe.

Tülu 3 (open-instruct 3dd7a07da, `finetune.encode_sft_example`, reused by
`dpo_tune.py` for both sides; docs/semantics.md "SFT mask", quirks 7-8):
  the whole conversation is tokenized (add_special_tokens=False, truncated at
  max_seq_length); labels = input_ids; then for every non-assistant message i the
  label span [|tok(render(m[:i]))|, |tok(render(m[:i+1], gen=m[i+1] is assistant))|)
  is set to -100, every prefix length also truncated at max_seq_length; the loop
  stops after the first span whose end reaches max_seq_length. Because the spans are
  token counts of prefix renders with the real tokenizer, merges across the
  header/content boundary (quirk 8) come out as upstream had them. Rows with no
  label != -100 are dropped by the caller (`finetune.py` filters on
  `(labels != -100).any()`); here such rows return None.

SmolLM2 SFT (alignment-handbook ae3f44f `scripts/run_sft.py` + `alignment.data.
apply_chat_template(task="sft")`, TRL SFTTrainer with packing=True):
  the chat template is applied to text; `DataArguments.auto_insert_empty_system_msg`
  defaults to True and the recipe does not set it, so an empty system message is
  inserted when the first message is not a system one (the template mentions
  "system"). The packed dataset (TRL `ConstantLengthDataset`) yields labels =
  input_ids: every token trains, there is no completion-only masking and no
  attention separation between packed documents.

SmolLM2 DPO: see `encode_preference_trl` (TRL 0.12 `DPOTrainer.tokenize_row` and
`concatenated_forward`) and `alignment_handbook_dpo_texts` (the strings AH fed it).
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch

from runner.data.templates import CHATML_SMOLLM2_JINJA, check_template, render

IGNORE_INDEX = -100
Messages = Sequence[Mapping[str, str]]


def _tok(tokenizer, text: str, max_len: int | None = None) -> list[int]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    # apply_chat_template(truncation=True, max_length=L) keeps the first L tokens.
    return list(ids[:max_len]) if max_len else list(ids)


def encode_sft_example(messages: Messages, tokenizer, template: str = "tulu",
                       max_seq_length: int | None = None) -> dict[str, list[int]] | None:
    """Tülu SFT encoding: dict(input_ids, labels, attention_mask), or None if nothing trains."""
    check_template(template)
    if len(messages) == 0:
        raise ValueError("messages field is empty.")  # upstream raises too
    eos = tokenizer.eos_token

    def length(prefix: Messages, gen: bool) -> int:
        return len(_tok(tokenizer, render(prefix, template, eos, add_generation_prompt=gen), max_seq_length))

    input_ids = _tok(tokenizer, render(messages, template, eos), max_seq_length)
    labels = list(input_ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = 0 if i == 0 else length(messages[:i], False)
        # The header of a following assistant turn is masked with this message.
        next_is_assistant = i < len(messages) - 1 and messages[i + 1]["role"] == "assistant"
        end = length(messages[: i + 1], next_is_assistant)
        for j in range(start, min(end, len(labels))):
            labels[j] = IGNORE_INDEX
        if max_seq_length and end >= max_seq_length:
            break  # upstream stops here: later spans are all beyond the truncation
    if all(x == IGNORE_INDEX for x in labels):
        return None
    return {"input_ids": input_ids, "labels": labels, "attention_mask": [1] * len(input_ids)}


def trainable_text(encoded: Mapping[str, list[int]], tokenizer) -> str:
    """Decode the trainable tokens (labels != -100), for checks and debugging."""
    ids = [t for t, lab in zip(encoded["input_ids"], encoded["labels"]) if lab != IGNORE_INDEX]
    return tokenizer.decode(ids)


def encode_preference_tulu(chosen_messages: Messages, rejected_messages: Messages, tokenizer,
                           max_seq_length: int | None = None,
                           template: str = "tulu") -> dict[str, list[int]] | None:
    """open-instruct DPO: each side encoded like SFT; None when either side has no trainable token."""
    chosen = encode_sft_example(chosen_messages, tokenizer, template, max_seq_length)
    rejected = encode_sft_example(rejected_messages, tokenizer, template, max_seq_length)
    if chosen is None or rejected is None:
        return None
    out = {f"chosen_{k}": v for k, v in chosen.items()}
    out.update({f"rejected_{k}": v for k, v in rejected.items()})
    return out


# ---------------------------------------------------------------- SmolLM2 SFT

def maybe_insert_empty_system(messages: Messages, chat_template: str) -> list[dict]:
    """alignment-handbook `maybe_insert_system_message`: prepend {"system", ""} when the
    first message is not a system one and the Jinja template mentions "system" or
    "<|im_start|>" (true for SmolLM2's). Returns a new list; never mutates."""
    msgs = [dict(m) for m in messages]
    if msgs and msgs[0]["role"] != "system" and ("system" in chat_template or "<|im_start|>" in chat_template):
        msgs.insert(0, {"role": "system", "content": ""})
    return msgs


def encode_chatml_sft_text(messages: Messages, tokenizer, *, auto_insert_empty_system_msg: bool = True,
                           add_special_tokens: bool = True) -> dict[str, Any]:
    """SmolLM2 SFT as alignment-handbook ORIG did it: dict(text, input_ids).

    text = ChatML render (no generation prompt) after the optional empty-system
    insertion; input_ids = the tokenizer on that text as ConstantLengthDataset called
    it (`add_special_tokens=True` by default; SmolLM2's tokenizer adds nothing).
    Every token trains (labels = input_ids after packing).
    """
    msgs = maybe_insert_empty_system(messages, CHATML_SMOLLM2_JINJA) if auto_insert_empty_system_msg else list(messages)
    text = render(msgs, "chatml", tokenizer.eos_token)
    ids = tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"]
    return {"text": text, "input_ids": list(ids)}


def constant_length_buffers(texts: Iterable[str], seq_length: int, chars_per_token: float = 3.6,
                            num_of_sequences: int = 1024) -> Iterator[list[str]]:
    """Group texts the way TRL's ConstantLengthDataset fills its buffer.

    A buffer takes texts until its character count reaches
    seq_length * chars_per_token * num_of_sequences (the text that crosses the
    threshold is included); each buffer is tokenized and packed on its own, so the
    packing remainder is lost once per buffer, not once per dataset.
    """
    max_chars = seq_length * chars_per_token * num_of_sequences
    buffer: list[str] = []
    size = 0
    for text in texts:
        buffer.append(text)
        size += len(text)
        if size >= max_chars:
            yield buffer
            buffer, size = [], 0
    if buffer:
        yield buffer


def pack_constant_length(token_streams: Iterable[Sequence[int]], seq_length: int, eos_token_id: int,
                         append_concat_token: bool = True) -> list[list[int]]:
    """Pack one ConstantLengthDataset buffer: each stream + [eos], concatenated, cut
    into seq_length blocks; the last block is dropped unless it is exactly full.

    TRL (trainer/utils.py, 0.9-0.12): `concat_token_id = tokenizer.eos_token_id`,
    `tokenized_input + [concat_token_id]` when append_concat_token (default True),
    `for i in range(0, len(all), seq_length)` keeping only `len == seq_length`
    blocks. Blocks carry labels = input_ids. Deviation: TRL then shuffles the
    buffer's texts before tokenizing and the blocks after packing with Python's
    global `random` (seeded by `set_seed`, state depends on the run); this function
    keeps input order, so call sites that want TRL-like order must shuffle.
    """
    if seq_length <= 0:
        raise ValueError(f"seq_length must be positive, got {seq_length}")
    flat: list[int] = []
    for ids in token_streams:
        flat.extend(ids)
        if append_concat_token:
            flat.append(eos_token_id)
    n_full = len(flat) // seq_length
    return [flat[i * seq_length:(i + 1) * seq_length] for i in range(n_full)]


# ---------------------------------------------------------------- SmolLM2 DPO

def alignment_handbook_dpo_texts(chosen: Messages, rejected: Messages, bos_token: str | None, *,
                                 prompt: Messages | None = None,
                                 auto_insert_empty_system_msg: bool = True) -> dict[str, str]:
    """The (prompt, chosen, rejected) strings alignment-handbook's
    `apply_chat_template(task="dpo")` handed to DPOTrainer, with the ChatML template.

    prompt = chosen[:-1] (unless a message-list `prompt` is given), with the empty
    system message inserted, rendered WITHOUT generation prompt; chosen/rejected =
    the template applied to the last turn alone (so it starts with its own
    `<|im_start|>assistant\\n` header, and the SmolLM2 template injects its default
    system turn in front of it), then a leading `bos_token` is stripped. SmolLM2's
    bos is `<|im_start|>`, so the completion begins with `system\\n...`.
    """
    if prompt is not None:
        p_msgs, c_msgs, r_msgs = list(prompt), list(chosen), list(rejected)
    else:
        p_msgs, c_msgs, r_msgs = list(chosen[:-1]), list(chosen[-1:]), list(rejected[-1:])
    if auto_insert_empty_system_msg and p_msgs:
        p_msgs = maybe_insert_empty_system(p_msgs, CHATML_SMOLLM2_JINJA)

    def strip_bos(text: str) -> str:
        return text[len(bos_token):] if bos_token and text.startswith(bos_token) else text

    return {"prompt": render(p_msgs, "chatml", ""),
            "chosen": strip_bos(render(c_msgs, "chatml", "")),
            "rejected": strip_bos(render(r_msgs, "chatml", ""))}


def trl_conversational_texts(prompt: Messages, chosen: Messages, rejected: Messages) -> dict[str, str]:
    """TRL 0.12 `maybe_apply_chat_template` on conversational rows: prompt rendered with
    the generation prompt; each completion = render(prompt + completion) minus the
    prompt render (so only `{content}<|im_end|>\\n` remains)."""
    p = render(prompt, "chatml", "", add_generation_prompt=True)
    out = {"prompt": p}
    for key, comp in (("chosen", chosen), ("rejected", rejected)):
        full = render(list(prompt) + list(comp), "chatml", "")
        if not full.startswith(p):
            raise ValueError("prompt render is not a prefix of prompt+completion render")
        out[key] = full[len(p):]
    return out


def encode_preference_trl(prompt: str | Messages, chosen: str | Messages, rejected: str | Messages,
                          tokenizer, max_length: int | None = 1024, max_prompt_length: int | None = 512,
                          max_completion_length: int | None = None) -> dict[str, list[int]]:
    """SmolLM2 DPO tokenization as TRL 0.12 DPOTrainer did it (decoder-only model).

    Message lists go through `trl_conversational_texts`; strings (e.g. from
    `alignment_handbook_dpo_texts`) are used as given.
    `tokenize_row`: each string tokenized with add_special_tokens=False; no BOS or EOS
    on the prompt (those are only for encoder-decoders); EOS appended to chosen and
    rejected; prompt truncated keep-end `[-max_prompt_length:]`; completions cut
    `[:max_completion_length]` (None in the recipe).
    `concatenated_forward`: prompt + completion, loss mask 0 on the prompt, then the
    whole sequence truncated on the right to max_length (keep the start).
    Returns chosen_/rejected_ input_ids, labels (-100 on prompt), attention_mask, and the
    prompt_length / completion_length ints before the max_length cut;
    pairs are never dropped here (TRL 0.12 keeps every row).
    """
    if not isinstance(prompt, str):
        texts = trl_conversational_texts(prompt, chosen, rejected)  # type: ignore[arg-type]
    else:
        if not (isinstance(chosen, str) and isinstance(rejected, str)):
            raise TypeError("with a string prompt, chosen and rejected must be strings too")
        texts = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    eos = tokenizer.eos_token_id
    p_ids = _tok(tokenizer, texts["prompt"])
    if max_prompt_length is not None:
        p_ids = p_ids[-max_prompt_length:] if max_prompt_length > 0 else []
    out: dict[str, list[int]] = {}
    for side in ("chosen", "rejected"):
        c_ids = _tok(tokenizer, texts[side]) + [eos]
        if max_completion_length is not None:
            c_ids = c_ids[:max_completion_length]
        ids = p_ids + c_ids
        labels = [IGNORE_INDEX] * len(p_ids) + c_ids
        # TRL pads prompt and completion apart before its max_length cut; the padding quirk of 0.12
        # (huggingface/trl#2330, runner/stages/dpo.py) depends on these two lengths.
        out[f"{side}_prompt_length"], out[f"{side}_completion_length"] = len(p_ids), len(c_ids)
        if max_length is not None:
            ids, labels = ids[:max_length], labels[:max_length]
        out[f"{side}_input_ids"] = ids
        out[f"{side}_labels"] = labels
        out[f"{side}_attention_mask"] = [1] * len(ids)
    return out


# ---------------------------------------------------------------- batching

def collate(batch: Sequence[Mapping[str, Sequence[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad every field to the batch max: *input_ids with pad_token_id, *labels
    with -100, anything else (attention masks) with 0."""
    if not batch:
        raise ValueError("empty batch")
    out: dict[str, torch.Tensor] = {}
    for key in batch[0]:
        seqs = [list(row[key]) for row in batch]
        width = max(len(s) for s in seqs)
        fill = pad_token_id if key.endswith("input_ids") else IGNORE_INDEX if key.endswith("labels") else 0
        out[key] = torch.tensor([s + [fill] * (width - len(s)) for s in seqs], dtype=torch.long)
    return out


__all__ = ["encode_sft_example", "trainable_text", "encode_preference_tulu", "encode_chatml_sft_text",
           "maybe_insert_empty_system", "constant_length_buffers", "pack_constant_length",
           "alignment_handbook_dpo_texts", "trl_conversational_texts", "encode_preference_trl",
           "collate", "IGNORE_INDEX"]
