"""Fixture datasets: schemas, generator determinism, one-line errors; fixture tokenizers."""

import hashlib
import json
import subprocess
import sys

import pytest

from runner.data.fixtures import (
    FIXTURE_FILES,
    FIXTURE_SCHEMAS,
    FIXTURES_ROOT,
    FixtureError,
    content_hash,
    file_sha256,
    load_fixture,
)
from runner.data.tokenizer import build_tokenizer, fixture_corpus, load_tokenizer, tokenizer_files

# Release-era IF_FUNCTIONS_MAP keys (open-instruct if_functions.py, 9c2d44bec / 3dd7a07da).
RELEASE_IF_FUNCTIONS = {
    "verify_keywords", "verify_keyword_frequency", "validate_forbidden_words", "verify_letter_frequency",
    "validate_response_language", "verify_paragraph_count", "validate_word_constraint",
    "verify_sentence_constraint", "validate_paragraphs", "verify_postscript", "validate_placeholders",
    "verify_bullet_points", "validate_title", "validate_choice", "validate_highlighted_sections",
    "validate_sections", "validate_json_format", "validate_repeat_prompt", "validate_two_responses",
    "validate_uppercase", "validate_lowercase", "validate_frequency_capital_words", "validate_end",
    "validate_quotation", "validate_no_commas",
}


@pytest.mark.parametrize("rel", sorted(FIXTURE_FILES))
def test_every_fixture_validates(rel):
    rows = load_fixture(FIXTURES_ROOT / rel, FIXTURE_FILES[rel])
    assert 64 <= len(rows) <= 400


def test_every_committed_jsonl_is_listed_and_total_is_small():
    on_disk = {p.relative_to(FIXTURES_ROOT).as_posix() for p in FIXTURES_ROOT.rglob("*.jsonl")}
    assert on_disk == set(FIXTURE_FILES)
    assert sum((FIXTURES_ROOT / rel).stat().st_size for rel in FIXTURE_FILES) < 2_000_000


def test_generator_reproduces_committed_files():
    proc = subprocess.run([sys.executable, str(FIXTURES_ROOT / "make_fixtures.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _rows(rel):
    return load_fixture(FIXTURES_ROOT / rel, FIXTURE_FILES[rel])


def test_sft_mixture_has_system_and_multiturn_rows():
    rows = _rows("tulu3/tulu-3-sft-mixture.jsonl")
    assert {"id", "messages", "source"} <= set(rows[0])
    assert len({r["id"] for r in rows}) == len(rows)
    assert any(r["messages"][0]["role"] == "system" for r in rows)
    assert any(sum(m["role"] == "assistant" for m in r["messages"]) > 1 for r in rows)


def test_preference_pairs_share_the_prompt_and_differ_in_the_answer():
    for rel in ("tulu3/tulu-3-8b-preference-mixture.jsonl", "smollm2/ultrafeedback_binarized-train_prefs.jsonl"):
        for r in _rows(rel):
            assert r["chosen"][:-1] == r["rejected"][:-1]
            assert r["chosen"][-1]["content"] != r["rejected"][-1]["content"]
            assert r["prompt"] == next(m["content"] for m in r["chosen"] if m["role"] == "user")
    for r in _rows("smollm2/ultrafeedback_binarized-test_prefs.jsonl"):
        assert r["messages"] == r["chosen"] and r["score_chosen"] > r["score_rejected"]
        assert len(r["prompt_id"]) == 64
    assert all("source" in r for r in _rows("tulu3/ultrafeedback_binarized_cleaned-test_prefs.jsonl"))


def test_rlvr_rows_are_verifiable():
    rows = _rows("tulu3/rlvr-gsm-math-if.jsonl")
    by = {d: [r for r in rows if r["dataset"] == d] for d in ("gsm8k", "MATH", "ifeval")}
    # ~30% gsm8k, ~15% MATH, ~55% ifeval (constraints a miniature can learn within a short RLVR run)
    assert len(by["gsm8k"]) > len(rows) / 5 and len(by["MATH"]) > len(rows) / 10 and len(by["ifeval"]) > len(rows) / 3
    assert all(r["ground_truth"].isdigit() for r in by["gsm8k"])
    assert all("\\boxed{}" in r["messages"][0]["content"] for r in by["MATH"])
    for r in by["ifeval"]:
        truth = json.loads(r["ground_truth"])
        assert truth["func_name"] in RELEASE_IF_FUNCTIONS
        assert r["constraint"] and r["constraint"] in r["messages"][0]["content"]
    train = {r["messages"][0]["content"] for r in rows}
    held_out = _rows("tulu3/rlvr-eval.jsonl")
    assert not train & {r["messages"][0]["content"] for r in held_out}


def test_pretrain_components_differ():
    firsts = {c: _rows(f"smollm2/pretrain/{c}.jsonl")[0]["text"] for c in ("web", "code", "math", "cosmopedia")}
    assert "def " in firsts["code"] or "class " in firsts["code"] or "print(" in firsts["code"]
    assert "=" in firsts["math"] and "Chapter" in firsts["cosmopedia"]
    long_mean = sum(len(r["text"]) for r in _rows("smollm2/pretrain/long.jsonl")) / 100
    web_mean = sum(len(r["text"]) for r in _rows("smollm2/pretrain/web.jsonl")) / 400
    assert long_mean > 5 * web_mean


# ----------------------------------------------------------------------------- errors


def _write(tmp_path, rows, name="x.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "source": "s"}


@pytest.mark.parametrize("bad, schema, expected", [
    ({"source": "s"}, "messages", "row 17: 'messages' missing"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "x"}]}, "messages",
     "row 17: messages message 2 has role 'robot'; expected system/user/assistant"),
    ({"messages": "hi"}, "messages", "row 17: 'messages' is str, expected list"),
    ("{not json", "messages", "row 17: not valid JSON"),
    ({"messages": [{"role": "user", "content": "1+1"}], "ground_truth": "2", "dataset": "gsm8K"}, "rlvr",
     "row 17: 'dataset' is 'gsm8K'; expected gsm8k/MATH/ifeval"),
    ({"messages": [{"role": "user", "content": "x"}], "ground_truth": "{}", "dataset": "ifeval"}, "rlvr",
     "row 17: ifeval 'ground_truth' has no 'func_name'"),
    ({"text": 3}, "text", "row 17: 'text' is int, expected str"),
])
def test_broken_row_gives_one_line_with_row_number(tmp_path, bad, schema, expected):
    good = GOOD if schema == "messages" else (
        {"messages": [{"role": "user", "content": "1+1"}], "ground_truth": "2", "dataset": "gsm8k"}
        if schema == "rlvr" else {"text": "ok"})
    path = _write(tmp_path, [good] * 16 + [bad] + [good])
    with pytest.raises(FixtureError) as info:
        load_fixture(path, schema)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path} row 17: ")
    assert expected in message


def test_preference_row_must_end_with_assistant(tmp_path):
    row = json.loads((FIXTURES_ROOT / "tulu3/tulu-3-8b-preference-mixture.jsonl").read_text().splitlines()[0])
    row["rejected"] = row["rejected"][:-1]
    path = _write(tmp_path, [row])
    with pytest.raises(FixtureError, match=r"row 1: 'rejected' does not end with an assistant message"):
        load_fixture(path, "preference")


def test_unknown_schema_and_missing_file(tmp_path):
    with pytest.raises(FixtureError, match="unknown fixture schema 'chat'"):
        load_fixture(FIXTURES_ROOT / "tulu3/rlvr-eval.jsonl", "chat")
    with pytest.raises(FixtureError, match="cannot read"):
        load_fixture(tmp_path / "absent.jsonl", "text")
    assert set(FIXTURE_SCHEMAS) == {"messages", "preference", "ultrafeedback", "rlvr", "text"}


def test_hashes(tmp_path):
    a = _write(tmp_path, [{"text": "a"}], "a.jsonl")
    b = _write(tmp_path, [{"text": "b"}], "b.jsonl")
    assert file_sha256(a) == hashlib.sha256(b'{"text": "a"}\n').hexdigest()
    assert content_hash([a, b]) == content_hash([b, a]) != content_hash([a])
    b.write_text('{"text": "c"}\n')
    assert content_hash([a, b]) != content_hash([b.with_name("a.jsonl"), a])


# ----------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def corpora():
    return {kind: fixture_corpus(kind) for kind in ("tulu", "smollm2")}


def test_tulu_tokenizer_mimics_llama31(corpora):
    tok = build_tokenizer("tulu", corpora["tulu"])
    assert len(tok) == 385  # 384 + <pad> added as finetune.py does
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|begin_of_text|>", "<|end_of_text|>", "<pad>")
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (382, 383, 384)
    text = "<|user|>\nWhat is 3 + 4?\n<|assistant|>\n7"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id  # Llama-3's post-processor prepends bos
    assert tok(text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert tok.decode(ids[1:]) == text
    assert "<|user|>" not in tok.get_vocab() and "<|user|>" not in tok.all_special_tokens
    assert tok.chat_template is None


def test_smollm2_tokenizer_mimics_smollm2_instruct(corpora):
    tok = build_tokenizer("smollm2", corpora["smollm2"])
    assert len(tok) == 384
    assert tok.convert_ids_to_tokens([0, 1, 2]) == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    ids = tok("<|im_start|>user\n12 + 3<|im_end|>")["input_ids"]
    assert ids[0] == 1 and ids[-1] == 2
    assert [t for t in tok.tokenize("123") if t.isdigit()] == ["1", "2", "3"]  # digits split
    assert tok.chat_template is None


@pytest.mark.parametrize("kind", ["tulu", "smollm2"])
def test_tokenizer_is_deterministic_and_roundtrips(tmp_path, corpora, kind):
    first, second = tmp_path / "a", tmp_path / "b"
    build_tokenizer(kind, corpora[kind]).save_pretrained(first)
    build_tokenizer(kind, corpora[kind]).save_pretrained(second)
    files = tokenizer_files(first)
    assert "tokenizer.json" in files and files == tokenizer_files(second)
    # also across processes (no hash-seed dependence)
    third = tmp_path / "c"
    code = ("import sys; from runner.data.tokenizer import build_tokenizer, fixture_corpus; "
            f"build_tokenizer({kind!r}, fixture_corpus({kind!r})).save_pretrained(sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(third)], check=True, env={"PYTHONHASHSEED": "7",
                   "HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": str(FIXTURES_ROOT.parent)})
    assert tokenizer_files(third) == files
    loaded = load_tokenizer(first)
    original = build_tokenizer(kind, corpora[kind])
    sample = corpora[kind][5]
    assert loaded(sample)["input_ids"] == original(sample)["input_ids"]
    assert (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) == (
        original.bos_token_id, original.eos_token_id, original.pad_token_id)


def test_tokenizer_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown tokenizer kind 'llama'"):
        build_tokenizer("llama", ["x"])
