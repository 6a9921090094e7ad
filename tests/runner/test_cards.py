"""Model cards, lineage and run records claim only what happened (#14 item 11)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

# Front-matter keys of the Hub's model card spec (huggingface/hub-docs modelcard.md) that a card here may use.
HUB_KEYS = {"license", "license_name", "license_link", "library_name", "pipeline_tag", "base_model",
            "base_model_relation", "datasets", "tags", "language", "metrics"}


def _front(card: str) -> dict:
    assert card.startswith("---\n")
    meta = yaml.safe_load(card[4:card.index("\n---\n", 4)])
    assert set(meta) <= HUB_KEYS, set(meta) - HUB_KEYS
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] and meta["license"]
    for value in meta.values():  # no free text where the Hub expects an id
        assert "none" not in str(value).lower() and "random" not in str(value).lower()
    return meta


def _run(cli, *args: str) -> dict:
    code, out, err = cli("run", *args, "--profile", "smoke", "--max-steps", "2", "--json")
    assert code == 0, err
    run_dir = Path(json.loads(out)["run_dir"])
    return json.loads((run_dir / "run.json").read_text()) | {"run_dir": str(run_dir)}


def _edges(run_id: str) -> list[tuple[str, str]]:
    from registry.db import session_scope
    from registry.models import LineageEdgeRow

    with session_scope() as session:
        return [(e.parent, e.relation) for e in session.query(LineageEdgeRow).filter_by(child=f"run:{run_id}")]


def test_smoke_sft_card_lineage_and_precision_say_random_miniature_on_a_fixture(cli):
    record = _run(cli, "tulu3-8b", "--stage", "sft")
    card = (Path(record["run_dir"]) / "checkpoint" / "README.md").read_text()
    meta = _front(card)
    assert "base_model" not in meta  # the weights did not come from meta-llama/Llama-3.1-8B
    assert "datasets" not in meta  # a fixture file, not allenai/tulu-3-sft-mixture
    assert meta["license"] == "other" and "miniature" in meta["tags"]
    assert "random miniature init" in card and "`meta-llama/Llama-3.1-8B`; this run did not load it" in card
    assert "fixture `fixtures/tulu3/tulu-3-sft-mixture.jsonl` (in the schema of `allenai/tulu-3-sft-mixture`" in card
    assert f"## Deviations from the recording ({len(record['deviations'])})" in card
    assert all(f"- `{d['key']}`:" in card for d in record["deviations"])
    assert "Precision: fp32." in card

    edges = _edges(record["run_id"])
    assert not any(p == "checkpoint:meta-llama/Llama-3.1-8B" for p, _ in edges), edges
    assert ("init:random-miniature", "init (random miniature init; recorded: meta-llama/Llama-3.1-8B)") in edges
    code, out, err = cli("lineage", record["run_id"], "--json")
    assert code == 0, err
    direct = {c["node"]: c["relation"] for c in json.loads(out)["tree"]["children"]}
    # The recorded stage (stage:tulu3-8b:sft, below) does start from Llama 3.1 8B; the run did not.
    assert "checkpoint:meta-llama/Llama-3.1-8B" not in direct and "init:random-miniature" in direct, direct

    assert record["plan"]["hyperparameters"]["precision"] == "fp32"
    code, out, err = cli("diff", record["run_id"], "tulu3-8b:sft", "--json")
    assert code == 0, err
    rows = {r["key"]: (r["a"], r["b"]) for r in json.loads(out)["raw"]}
    assert rows["precision"] == ("fp32", "bf16")

    # A child names its parent run by stage and checkpoint hash (no run id: outputs must not depend on it).
    dpo = _run(cli, "tulu3-8b", "--stage", "dpo")
    card = (Path(dpo["run_dir"]) / "checkpoint" / "README.md").read_text()
    meta = _front(card)
    assert "base_model" not in meta and meta["license"] == "other"
    assert f"repro smoke run of `tulu3-8b:sft` (content hash `{record['artifacts']['checkpoint']}`)" in card
    assert record["run_id"] not in card
    assert (f"run:{record['run_id']}", "init") in _edges(dpo["run_id"])


def test_pretrain_card_omits_base_model(cli):
    record = _run(cli, "smollm2-135m", "--stage", "pretrain")
    card = (Path(record["run_dir"]) / "checkpoint" / "README.md").read_text()
    meta = _front(card)
    assert "base_model" not in meta and "datasets" not in meta
    assert "base_model:" not in card
    assert "random miniature init, as the recorded stage starts from a random init too" in card


def test_card_names_a_real_published_base(tmp_path):
    """Weights from the converted SmolLM2-135M-Instruct (runner/published.py) are a real base model."""
    from huggingface_hub import ModelCard

    from registry.recipes import load_recipes
    from runner.cards import model_card
    from runner.plan import resolve

    folder = tmp_path / "SmolLM2-135M-Instruct-Q4_1"
    folder.mkdir()
    (folder / "repro-conversion.json").write_text(json.dumps(
        {"checkpoint": "HuggingFaceTB/SmolLM2-135M-Instruct", "quantization": "Q4_1"}))
    plan = resolve(load_recipes(Path(__file__).resolve().parents[2] / "recipes.json"), "smollm2-135m", "dpo",
                   "smoke", {})
    plan.inputs = {"init": {"checkpoint": "HuggingFaceTB/SmolLM2-135M-SFT", "path": str(folder),
                            "content_hash": "abc.dir", "substituted": True}}
    plan.deviate("input.init", "HuggingFaceTB/SmolLM2-135M-SFT", str(folder), "--input substitution")
    card = model_card(plan, recorded_base="HuggingFaceTB/SmolLM2-135M-SFT")
    meta = _front(card)
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and meta["license"] == "apache-2.0"
    assert str(tmp_path) not in card  # the substitution shows by hash, not by absolute path
    assert ModelCard(card).data.to_dict()["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
