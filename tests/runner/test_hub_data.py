"""The one data path (runner/data/hub.py) and the recorded profile's refusals.

The fixtures are the smoke profile's mirror: read through `datasets.load_dataset` they must give back
exactly the rows their files hold, in order (the golden curves depend on it). Every bad input of the
recorded path — a mirror missing a split, a shard row without `chosen`, an unknown revision, an
internal dataset, a model folder without config.json, a model the Hub cannot serve, bf16 on a CPU —
is one line, exit 2, and nothing written.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from runner.data import hub
from runner.data.fixtures import FIXTURE_FILES, FIXTURES_ROOT

ROOT = Path(__file__).resolve().parents[2]
UF = "HuggingFaceH4/ultrafeedback_binarized"
SFT_MIX = "allenai/tulu-3-sft-mixture"
SFT_MIX_REVISION = "b14afda60f1bbebe55d5d2fa1e4df5042f97f8be"  # recipes.json


def fixture_rows(rel: str) -> list[dict]:
    return [json.loads(line) for line in (FIXTURES_ROOT / rel).read_text().splitlines()]


@pytest.mark.parametrize("rel", sorted(FIXTURE_FILES))
def test_fixture_mirror_gives_back_the_file_rows_in_order(rel):
    rows = hub.load_split({"path": str(FIXTURES_ROOT / rel), "schema": FIXTURE_FILES[rel], "split": "train"})
    assert rows == fixture_rows(rel)


def uf_mirror(root: Path, splits=("train_prefs", "test_prefs"), n: int = 8, edit=None) -> Path:
    """DIR/HuggingFaceH4/ultrafeedback_binarized/data/<split>-00000-of-00001.parquet, as on the Hub."""
    folder = root / UF / "data"
    folder.mkdir(parents=True, exist_ok=True)
    for split in splits:
        rows = fixture_rows(f"smollm2/ultrafeedback_binarized-{split}.jsonl")[:n]
        if edit is not None:
            rows = edit(rows)
        pq.write_table(pa.Table.from_pylist(rows), folder / f"{split}-00000-of-00001.parquet")
    return root


def sft_mirror(root: Path, n: int = 16) -> Path:
    folder = root / SFT_MIX / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rows = fixture_rows("tulu3/tulu-3-sft-mixture.jsonl")[:n]
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")
    return root


def test_mirror_folder_loads_with_the_hub_layout(tmp_path):
    mirror = uf_mirror(tmp_path / "m", n=5)
    entry = {"dataset": UF, "hub_id": UF, "split": "test_prefs", "schema": "ultrafeedback",
             "mirror": str(mirror / UF)}
    assert hub.load_split(entry) == fixture_rows("smollm2/ultrafeedback_binarized-test_prefs.jsonl")[:5]
    assert hub.folder_hash(mirror / UF) == hub.folder_hash(mirror / UF)
    (mirror / UF / "README.md").write_text("changed\n")
    assert hub.folder_hash(mirror / UF) != hub.folder_hash(uf_mirror(tmp_path / "m2", n=5) / UF)


@pytest.fixture(scope="module")
def tiny_smollm2(tmp_path_factory) -> Path:
    """A tiny Llama with the fixture SmolLM2 tokenizer: a real model folder for --input init."""
    from transformers import LlamaConfig

    from runner.data.tokenizer import build_tokenizer, fixture_corpus
    from runner.models import build_model

    folder = tmp_path_factory.mktemp("tiny-smollm2")
    tok = build_tokenizer("smollm2", fixture_corpus("smollm2"), vocab_size=384)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    build_model(config, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def dpo_argv(mirror: Path | None, init: Path | None, *extra: str) -> list[str]:
    argv = ["run", "smollm2-135m", "--stage", "dpo", "--precision", "fp32", "--device", "cpu", "--max-steps", "1"]
    if mirror is not None:
        argv += ["--hub-mirror", str(mirror)]
    if init is not None:
        argv += ["--input", f"init={init}"]
    return argv + list(extra)


def refused(cli, isolated_home: Path, argv: list[str], fragment: str) -> str:
    code, _, err = cli(*argv)
    assert code == 2, err
    assert fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    runs = isolated_home.parent / "runs"
    assert not runs.exists() or not any(runs.iterdir())
    code, out, _ = cli("runs", "--json")
    assert json.loads(out) == []
    return err


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_mirror_missing_a_split_is_refused(cli, isolated_home, tmp_path, tiny_smollm2, offline):
    mirror = uf_mirror(tmp_path / "m", splits=("train_prefs",))
    err = refused(cli, isolated_home, dpo_argv(mirror, tiny_smollm2), "has no split 'test_prefs'")
    assert UF in err


def test_shard_row_without_chosen_is_refused(cli, isolated_home, tmp_path, tiny_smollm2, offline):
    def drop_chosen(rows):
        rows[2] = {k: v for k, v in rows[2].items() if k != "chosen"}
        return rows

    mirror = uf_mirror(tmp_path / "m", edit=drop_chosen)
    err = refused(cli, isolated_home, dpo_argv(mirror, tiny_smollm2), "row 3: 'chosen' missing")
    assert f"{UF}@unpinned split train_prefs" in err


def test_dataset_absent_from_the_mirror_is_refused(cli, isolated_home, tmp_path, tiny_smollm2, offline):
    (tmp_path / "empty").mkdir()
    refused(cli, isolated_home, dpo_argv(tmp_path / "empty", tiny_smollm2), f"{UF}@unpinned: not in the hub mirror")


def test_hub_data_offline_is_refused(cli, isolated_home, tiny_smollm2, offline):
    refused(cli, isolated_home, dpo_argv(None, tiny_smollm2), "the Hugging Face Hub (HF_HUB_OFFLINE=1)")


def _git(folder: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, text=True,
                          env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                               "GIT_COMMITTER_EMAIL": "t@t", "PATH": "/usr/bin:/bin"}).stdout.strip()


def test_unknown_revision_in_a_git_mirror_is_refused(cli, isolated_home, tmp_path, offline):
    mirror = sft_mirror(tmp_path / "m")
    folder = mirror / SFT_MIX
    _git(folder, "init", "-q")
    _git(folder, "add", ".")
    _git(folder, "commit", "-qm", "shards")
    err = refused(cli, isolated_home, ["run", "tulu3-8b", "--stage", "sft", "--precision", "fp32", "--device", "cpu",
                                       "--hub-mirror", str(mirror)], f"unknown revision {SFT_MIX_REVISION}")
    assert SFT_MIX in err


def test_internal_dataset_is_refused_with_its_public_stand_in(cli, isolated_home, tmp_path, offline):
    (tmp_path / "m").mkdir()
    err = refused(cli, isolated_home, ["run", "tulu3-405b", "--stage", "dpo", "--precision", "fp32", "--device",
                                       "cpu", "--hub-mirror", str(tmp_path / "m")],
                  "ai2-adapt-dev/405b_preference_mix: an internal set")
    assert "allenai/llama-3.1-tulu-3-405b-preference-mixture" in err and "--public-stand-in" in err


def test_public_stand_in_is_a_recorded_deviation(tmp_path):
    from registry.recipes import load_recipes
    from runner.plan import resolve, use_data_sources

    reg = load_recipes()
    plan = resolve(reg, "tulu3-405b", "dpo", "recorded")
    use_data_sources(plan, *hub.data_sources(plan, reg, None, stand_in=True))
    train = [d for d in plan.datasets if d["role"] == "train"]
    assert [d["dataset"] for d in train] == ["allenai/llama-3.1-tulu-3-405b-preference-mixture"]
    assert train[0]["stands_in_for"] == "ai2-adapt-dev/405b_preference_mix"
    devs = [d for d in plan.deviations if d["key"] == "datasets"]
    assert len(devs) == 1 and devs[0]["recorded"] == ["ai2-adapt-dev/405b_preference_mix"]


def smoltalk_mirror(root: Path) -> Path:
    folder = root / "HuggingFaceTB" / "smol-smoltalk" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    rows = fixture_rows("smollm2/smoltalk.jsonl")[:8]
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")
    return root


SFT_135M = ["run", "smollm2-135m", "--stage", "sft", "--precision", "fp32", "--device", "cpu"]


def test_unpublished_init_needs_an_input(cli, isolated_home, tmp_path, offline):
    mirror = uf_mirror(tmp_path / "m")
    refused(cli, isolated_home, dpo_argv(mirror, None),
            "init checkpoint 'HuggingFaceTB/smollm2-135M-8k-lc100k-mix1-ep2' was never published; give one with "
            "--input init=PATH")


def test_model_folder_without_config_is_refused(cli, isolated_home, tmp_path, offline):
    mirror = smoltalk_mirror(tmp_path / "m")
    (mirror / "HuggingFaceTB" / "SmolLM2-135M").mkdir(parents=True)
    refused(cli, isolated_home, [*SFT_135M, "--hub-mirror", str(mirror)], "has no config.json")
    (tmp_path / "not-a-model").mkdir()
    refused(cli, isolated_home, [*SFT_135M, "--hub-mirror", str(mirror), "--input", f"init={tmp_path / 'not-a-model'}"],
            "no config.json")


def test_model_the_hub_cannot_serve_is_refused(cli, isolated_home, tmp_path, offline):
    mirror = smoltalk_mirror(tmp_path / "m")
    err = refused(cli, isolated_home, [*SFT_135M, "--hub-mirror", str(mirror)],
                  "model HuggingFaceTB/SmolLM2-135M@main cannot be reached offline")
    assert "--input init=PATH" in err and "huggingface-cli login" in err


def test_bf16_on_a_machine_without_it_is_refused(cli, isolated_home, tmp_path, tiny_smollm2, offline):
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        pytest.skip("this machine computes in bf16")
    mirror = uf_mirror(tmp_path / "m")
    argv = ["run", "smollm2-135m", "--stage", "dpo", "--device", "cpu", "--hub-mirror", str(mirror),
            "--input", f"init={tiny_smollm2}"]
    refused(cli, isolated_home, argv, "trains in bf16 as recorded, and this machine has no bf16-capable GPU")


def test_recorded_flags_are_refused_in_the_smoke_profile(cli, isolated_home, tmp_path):
    refused(cli, isolated_home, ["run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--precision", "fp32"],
            "--precision applies to the recorded profile")
