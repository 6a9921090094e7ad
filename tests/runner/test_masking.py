"""SFT / preference encodings: trainable text decoded and compared with hand-written strings."""

import pytest
import torch

from runner.data.masking import (
    IGNORE_INDEX,
    alignment_handbook_dpo_texts,
    collate,
    constant_length_buffers,
    encode_chatml_sft_text,
    encode_preference_trl,
    encode_preference_tulu,
    encode_sft_example,
    pack_constant_length,
    trainable_text,
)
from runner.data.templates import render
from runner.data.tokenizer import build_tokenizer

CORPUS = [
    "<|system|>\nBe brief.\n<|user|>\nWhat is two plus two?\n<|assistant|>\nIt is four.\n",
    "<|user|>\nName a colour.\n<|assistant|>\n\n\nstarts with red\n<|user|>\nthanks\n",
    "hello world, the quick brown fox jumps over the lazy dog\n\n\n",
] * 20


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer("tulu", CORPUS)


@pytest.fixture(scope="module")
def smol():
    return build_tokenizer("smollm2", [render([{"role": "user", "content": c}], "chatml", "") for c in
                                       ("What is two plus two?", "It is four.", "Name a colour.")] * 20)


def M(role, content):
    return {"role": role, "content": content}


def test_trains_exactly_assistant_content_and_eos(tok):
    eos = tok.eos_token
    msgs = [M("system", "Be brief."), M("user", "What is two plus two?"), M("assistant", "It is four."),
            M("user", "Name a colour."), M("assistant", "red")]
    enc = encode_sft_example(msgs, tok, "tulu", 4096)
    assert tok.decode(enc["input_ids"]) == render(msgs, "tulu", eos)
    assert enc["attention_mask"] == [1] * len(enc["input_ids"])
    # header `<|assistant|>\n` masked; the "\n" after a non-final EOS falls in the next user span
    assert trainable_text(enc, tok) == f"It is four.{eos}red{eos}"
    spans, cur = [], []
    for t, lab in zip(enc["input_ids"], enc["labels"]):
        if lab != IGNORE_INDEX:
            cur.append(t)
        elif cur:
            spans.append(tok.decode(cur))
            cur = []
    spans.append(tok.decode(cur))
    assert spans == [f"It is four.{eos}", f"red{eos}"]


def test_two_assistants_in_a_row_train_the_header_between(tok):
    eos = tok.eos_token
    enc = encode_sft_example([M("user", "hi"), M("assistant", "one"), M("assistant", "two")], tok, "tulu", 4096)
    assert trainable_text(enc, tok) == f"one{eos}\n<|assistant|>\ntwo{eos}"


def test_conversation_starting_with_assistant_trains_its_header(tok):
    eos = tok.eos_token
    enc = encode_sft_example([M("assistant", "one"), M("user", "u")], tok, "tulu", 4096)
    assert trainable_text(enc, tok) == f"<|assistant|>\none{eos}"


def test_unknown_role_masks_the_following_header(tok):
    eos = tok.eos_token
    enc = encode_sft_example([M("user", "u"), M("tool", "ignored"), M("assistant", "a")], tok, "tulu", 4096)
    assert trainable_text(enc, tok) == f"a{eos}"


def test_truncation_cuts_eos_and_stops_loop(tok):
    msgs = [M("user", "What is two plus two?"), M("assistant", "It is four."), M("user", "Name a colour."),
            M("assistant", "red")]
    full = encode_sft_example(msgs, tok, "tulu", 4096)
    header = len(tok(render(msgs[:1], "tulu", tok.eos_token, True), add_special_tokens=False)["input_ids"])
    cut = header + 2
    enc = encode_sft_example(msgs, tok, "tulu", cut)
    assert enc["input_ids"] == full["input_ids"][:cut]
    assert trainable_text(enc, tok) == tok.decode(full["input_ids"][header:cut])
    assert tok.eos_token not in trainable_text(enc, tok)


def test_dropped_rows(tok):
    # no assistant turn at all
    assert encode_sft_example([M("system", "s"), M("user", "u")], tok, "tulu", 4096) is None
    # assistant content entirely beyond the truncation
    msgs = [M("user", "What is two plus two?"), M("assistant", "It is four.")]
    header = len(tok(render(msgs[:1], "tulu", tok.eos_token, True), add_special_tokens=False)["input_ids"])
    assert encode_sft_example(msgs, tok, "tulu", header) is None
    assert encode_sft_example(msgs, tok, "tulu", header + 1) is not None
    with pytest.raises(ValueError):
        encode_sft_example([], tok, "tulu", 10)


def test_multi_newline_merge_quirk(tok):
    # Llama-3-style pre-tokenizer + a learned "\n\n\n" token: the reply's leading "\n\n"
    # merges with the header's "\n" into one masked token (docs/semantics.md quirk 8).
    assert len(tok("\n\n\n", add_special_tokens=False)["input_ids"]) == 1
    eos = tok.eos_token
    enc = encode_sft_example([M("user", "Name a colour."), M("assistant", "\n\nstarts with red")], tok, "tulu", 4096)
    assert trainable_text(enc, tok) == f"starts with red{eos}"


def test_preference_tulu(tok):
    eos = tok.eos_token
    prompt = [M("user", "What is two plus two?")]
    out = encode_preference_tulu(prompt + [M("assistant", "four")], prompt + [M("assistant", "five")], tok, 2048)
    assert trainable_text({"input_ids": out["chosen_input_ids"], "labels": out["chosen_labels"]}, tok) == f"four{eos}"
    rejected = {"input_ids": out["rejected_input_ids"], "labels": out["rejected_labels"]}
    assert trainable_text(rejected, tok) == f"five{eos}"
    header = len(tok(render(prompt, "tulu", eos, True), add_special_tokens=False)["input_ids"])
    long_rej = prompt + [M("assistant", "five")]
    assert encode_preference_tulu(prompt + [M("assistant", "four")], long_rej, tok, header) is None
    assert encode_preference_tulu(prompt + [M("assistant", "four")], prompt, tok, 2048) is None


def test_chatml_sft_text_all_tokens(smol):
    out = encode_chatml_sft_text([M("user", "hi"), M("assistant", "yo")], smol)
    assert out["text"] == ("<|im_start|>system\n<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                           "<|im_start|>assistant\nyo<|im_end|>\n")
    assert smol.decode(out["input_ids"]) == out["text"]
    plain = encode_chatml_sft_text([M("user", "hi")], smol, auto_insert_empty_system_msg=False)
    assert plain["text"].startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    kept = encode_chatml_sft_text([M("system", "S"), M("user", "hi")], smol)
    assert kept["text"].startswith("<|im_start|>system\nS<|im_end|>\n")


def test_pack_constant_length_blocks():
    eos = 9
    blocks = pack_constant_length([[1, 2, 3], [4, 5], [6, 7, 8, 10]], 4, eos)
    # stream: 1 2 3 9 | 4 5 9 6 | 7 8 10 9  (12 tokens -> 3 full blocks)
    assert blocks == [[1, 2, 3, 9], [4, 5, 9, 6], [7, 8, 10, 9]]
    # remainder (not a full block) is dropped
    assert pack_constant_length([[1, 2, 3], [4]], 4, eos) == [[1, 2, 3, 9]]
    assert pack_constant_length([[1, 2]], 4, eos) == []
    assert pack_constant_length([[1, 2], [3, 4]], 2, eos, append_concat_token=False) == [[1, 2], [3, 4]]
    with pytest.raises(ValueError):
        pack_constant_length([[1]], 0, eos)


def test_constant_length_buffers():
    texts = ["a" * 5, "b" * 5, "c" * 3, "d"]
    # threshold 2 * 2.0 * 2 = 8 chars: the text that crosses it stays in the buffer
    assert list(constant_length_buffers(texts, 2, chars_per_token=2.0, num_of_sequences=2)) == [
        ["a" * 5, "b" * 5], ["c" * 3, "d"]]


def test_preference_trl_truncation(smol):
    eos = smol.eos_token_id
    prompt = [M("user", "What is two plus two?")]
    out = encode_preference_trl(prompt, [M("assistant", "It is four.")], [M("assistant", "five")], smol,
                                max_length=1024, max_prompt_length=512)
    p_text = render(prompt, "chatml", "", add_generation_prompt=True)
    p_ids = smol(p_text, add_special_tokens=False)["input_ids"]
    c_ids = smol("It is four.<|im_end|>\n", add_special_tokens=False)["input_ids"] + [eos]
    assert out["chosen_input_ids"] == p_ids + c_ids
    assert out["chosen_labels"] == [IGNORE_INDEX] * len(p_ids) + c_ids
    # no extra BOS in front: the ids start with the prompt render's own first token
    assert len(out["chosen_input_ids"]) == len(p_ids) + len(c_ids)
    # prompt keep-end, then the whole sequence keep-start at max_length
    small = encode_preference_trl(p_text, "It is four.", "five", smol, max_length=6, max_prompt_length=3)
    assert small["chosen_input_ids"][:3] == p_ids[-3:]
    assert small["chosen_labels"][:3] == [IGNORE_INDEX] * 3
    assert len(small["chosen_input_ids"]) == 6
    assert small["rejected_input_ids"][3:] == (smol("five", add_special_tokens=False)["input_ids"] + [eos])[:3]


def test_alignment_handbook_dpo_texts():
    chosen = [M("user", "Q"), M("assistant", "good")]
    rejected = [M("user", "Q"), M("assistant", "bad")]
    t = alignment_handbook_dpo_texts(chosen, rejected, "<|im_start|>")
    assert t["prompt"] == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n"
    assert t["chosen"] == ("system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                           "<|im_start|>assistant\ngood<|im_end|>\n")
    assert t["rejected"].endswith("<|im_start|>assistant\nbad<|im_end|>\n")


def test_collate_right_pads():
    batch = [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3], "attention_mask": [1, 1, 1]},
             {"input_ids": [4], "labels": [4], "attention_mask": [1]}]
    out = collate(batch, pad_token_id=0)
    assert out["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert out["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]
    assert out["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert out["input_ids"].dtype == torch.long
    pref = collate([{"chosen_input_ids": [1], "chosen_labels": [1]},
                    {"chosen_input_ids": [1, 2], "chosen_labels": [1, 2]}], pad_token_id=7)
    assert pref["chosen_input_ids"].tolist() == [[1, 7], [1, 2]]
    assert pref["chosen_labels"].tolist() == [[1, -100], [1, 2]]
