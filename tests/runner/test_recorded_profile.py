"""The recorded profile end to end on CPU: a mirror of Hub-shaped parquet shards, a real model folder as
the init, and the explicit CPU/float32 override recorded as deviations.

- smollm2-135m DPO from the real published SmolLM2-135M-Instruct (runner/published.py): TRL's sigmoid
  loss with β 0.5 and the recorded lengths; at the first update the policy is its reference, so the
  loss is exactly ln 2 and both rewards are 0.
- tulu3-8b SFT from a tiny Llama built from config: the `tulu` template, sum loss, `<pad>` added and the
  embeddings resized to a multiple of 8, one CPU process accumulating what the 64 recorded ones did.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.data.fixtures import FIXTURES_ROOT

# Each test trains from the real SmolLM2-135M-Instruct or a recorded-size batch: the slow tier.
pytestmark = pytest.mark.slow


def rows(rel: str, n: int | None = None) -> list[dict]:
    lines = (FIXTURES_ROOT / rel).read_text().splitlines()
    return [json.loads(line) for line in lines[:n]]


def shard(folder: Path, split: str, data: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(data), folder / f"{split}-00000-of-00001.parquet")


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def run_record(cli, argv: list[str]) -> dict:
    code, out, err = cli(*argv, "--json")
    assert code == 0, err
    run_dir = Path(json.loads(out)["run_dir"])
    return json.loads((run_dir / "run.json").read_text()) | {"run_dir": str(run_dir)}


def deviation(record: dict, key: str) -> dict:
    found = [d for d in record["plan"]["deviations"] if d["key"] == key]
    assert len(found) == 1, (key, record["plan"]["deviations"])
    return found[0]


def test_smollm2_dpo_on_the_published_checkpoint(cli, tmp_path, offline):
    from runner import published

    try:
        init = published.ensure_smollm2_135m_instruct()
    except published.PublishedCheckpointError as exc:
        pytest.skip(f"published checkpoint unavailable: {exc}")
    mirror = tmp_path / "mirror"
    uf = mirror / "HuggingFaceH4" / "ultrafeedback_binarized" / "data"
    shard(uf, "train_prefs", rows("smollm2/ultrafeedback_binarized-train_prefs.jsonl", 8))
    shard(uf, "test_prefs", rows("smollm2/ultrafeedback_binarized-test_prefs.jsonl", 4))
    record = run_record(cli, ["run", "smollm2-135m", "--stage", "dpo", "--hub-mirror", str(mirror), "--input",
                              f"init={init}", "--precision", "fp32", "--device", "cpu", "--max-steps", "2",
                              "--set", "per_device_batch_size=1", "--set", "gradient_accumulation_steps=1",
                              "--set", "num_processes=1"])
    plan = record["plan"]
    assert record["status"] == "succeeded"
    hp = plan["hyperparameters"]
    assert (hp["dpo_loss_type"], hp["dpo_beta"], hp["max_seq_length"], hp["max_prompt_length"]) == \
        ("sigmoid", 0.5, 1024, 512)
    assert deviation(record, "precision")["value"] == "fp32"
    assert deviation(record, "device")["value"] == "cpu"
    assert plan["extra"]["attn_implementation"] in ("sdpa", "flash_attention_2")
    assert plan["extra"]["hub_mirror"] == str(mirror.resolve())
    train = [d for d in plan["datasets"] if d["role"] == "train"]
    assert train[0]["mirror_hash"] and train[0]["revision_verified"] is False
    steps = record["steps"]
    assert len(steps) == 2
    # Step 1 runs with the policy equal to its reference: -log σ(0) and zero rewards, whatever the data.
    assert steps[0]["loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert steps[0]["rewards_chosen"] == 0.0 and steps[0]["rewards_rejected"] == 0.0
    card = (Path(record["run_dir"]) / "checkpoint" / "README.md").read_text()
    front = card.split("---")[1]
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"' in front
    assert "datasets:" not in front  # a plain mirror folder is no proof of the Hub dataset
    assert "revision not verified" in card and "Precision: fp32." in card


def tiny_llama_and_tulu_mirror(root: Path) -> tuple[Path, Path]:
    """A tiny Llama saved from config with the Tülu fixture tokenizer (no pad token, as Llama-3.1's ships),
    and a Hub-shaped mirror holding the Tülu SFT fixture rows as one parquet shard: (init, mirror)."""
    from transformers import LlamaConfig

    from runner.data.tokenizer import build_tokenizer, fixture_corpus
    from runner.models import build_model

    init = root / "tiny-llama"
    tok = build_tokenizer("tulu", fixture_corpus("tulu"), vocab_size=384)
    tok.pad_token = None  # as Llama-3.1's tokenizer ships: finetune.py adds "<pad>" itself
    config = LlamaConfig(vocab_size=384, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    build_model(config, seed=0).save_pretrained(init)
    tok.save_pretrained(init)
    mirror = root / "mirror"
    shard(mirror / "allenai" / "tulu-3-sft-mixture" / "data", "train", rows("tulu3/tulu-3-sft-mixture.jsonl"))
    return init, mirror


def test_tulu_sft_from_a_tiny_llama(cli, tmp_path, offline):
    init, mirror = tiny_llama_and_tulu_mirror(tmp_path)
    record = run_record(cli, ["run", "tulu3-8b", "--stage", "sft", "--hub-mirror", str(mirror), "--input",
                              f"init={init}", "--precision", "fp32", "--device", "cpu", "--max-steps", "2"])
    plan = record["plan"]
    assert record["status"] == "succeeded"
    assert plan["hyperparameters"]["loss_reduction"] == "sum" and plan["chat_template"] == "tulu"
    # 64 processes × accumulation 2 become one process accumulating 128: the same effective batch.
    assert plan["hyperparameters"]["gradient_accumulation_steps"] == 128
    assert plan["hyperparameters"]["num_processes"] == 1
    rev = deviation(record, "dataset.allenai/tulu-3-sft-mixture.revision")
    assert rev["recorded"] == "b14afda60f1bbebe55d5d2fa1e4df5042f97f8be" and "mirror" in rev["value"]
    resize = plan["extra"]["embedding_resize"]
    assert resize["from"] == 384 and resize["tokenizer"] == 385 and resize["to"] == 392
    assert len(record["steps"]) == 2 and all(math.isfinite(s["loss"]) for s in record["steps"])
    front = (Path(record["run_dir"]) / "checkpoint" / "README.md").read_text().split("---")[1]
    assert "base_model" not in front  # a local folder, not the recorded meta-llama/Llama-3.1-8B


def test_smollm2_sft_on_the_published_checkpoint(cli, tmp_path, offline):
    from runner import published

    try:
        init = published.ensure_smollm2_135m_instruct()
    except published.PublishedCheckpointError as exc:
        pytest.skip(f"published checkpoint unavailable: {exc}")
    mirror = tmp_path / "mirror"
    shard(mirror / "HuggingFaceTB" / "smol-smoltalk" / "data", "train", rows("smollm2/smoltalk.jsonl"))
    # The recorded 4 × 8192-token blocks per device do not fit this machine's memory on CPU: shorter blocks,
    # one per micro-batch, each a recorded deviation.
    record = run_record(cli, ["run", "smollm2-135m", "--stage", "sft", "--hub-mirror", str(mirror), "--input",
                              f"init={init}", "--precision", "fp32", "--device", "cpu", "--max-steps", "2",
                              "--set", "max_seq_length=512", "--set", "per_device_batch_size=1",
                              "--set", "gradient_accumulation_steps=2", "--set", "num_processes=1"])
    plan = record["plan"]
    assert record["status"] == "succeeded"
    assert plan["hyperparameters"]["packing"] is True and plan["hyperparameters"]["lr_scheduler"] == "cosine"
    assert deviation(record, "max_seq_length")["value"] == 512
    assert record["final_metrics"]["examples"] > 0
    assert len(record["steps"]) == 2 and all(math.isfinite(s["loss"]) for s in record["steps"])
    front = (Path(record["run_dir"]) / "checkpoint" / "README.md").read_text().split("---")[1]
    assert 'base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"' in front
