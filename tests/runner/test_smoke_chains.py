"""The smoke chains run end to end on CPU, learn visibly, and record everything a reproduction needs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.runner.conftest import run_cli

pytestmark = pytest.mark.usefixtures("in_smoke_home")


def _mean(values):
    return sum(values) / len(values)


def test_checkpoints_load_and_carry_a_model_card(in_smoke_home):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    for (recipe, stage), record in in_smoke_home.items():
        assert record["status"] == "succeeded", (recipe, stage)
        ckpt = Path(record["run_dir"]) / "checkpoint"
        loader = AutoModelForSequenceClassification if stage == "rm" else AutoModelForCausalLM
        model = loader.from_pretrained(ckpt)
        assert sum(p.numel() for p in model.parameters()) < 1_000_000
        card = (ckpt / "README.md").read_text()
        assert f"{recipe}:{stage}" in card and "library_name:" in card and "pipeline_tag:" in card
        assert record["artifacts"]["checkpoint"].endswith(".dir")


def test_run_json_records_code_packages_hardware_seed_and_steps(in_smoke_home):
    record = in_smoke_home[("tulu3-8b", "sft")]
    assert record["code"]["git_sha"] and record["code"]["dirty"] in (True, False)
    assert "torch" in record["packages"] and "transformers" in record["packages"]
    assert record["hardware"]["cpus"] >= 1 and record["seed"] == 123
    assert {"loss", "lr", "grad_norm", "step"} <= set(record["steps"][0])
    assert record["plan"]["hyperparameters"]["loss_reduction"] == "sum"
    assert record["plan"]["chat_template"] == "tulu"


def test_deviations_are_explicit(in_smoke_home):
    deviations = {d["key"]: d for d in in_smoke_home[("tulu3-8b", "sft")]["deviations"]}
    for key in ("learning_rate", "num_processes", "gradient_accumulation_steps", "effective_batch_size",
                "datasets", "tokenizer", "model.hidden_size", "init", "precision"):
        assert key in deviations, key
        assert deviations[key]["reason"]
    assert deviations["effective_batch_size"]["recorded"] == 128 and deviations["effective_batch_size"]["value"] == 8
    assert "per_device_batch_size" not in deviations  # pd = 1 kept: the sum loss depends on it
    code, out, _ = run_cli("runs", "--json")
    rows = json.loads(out)
    assert all(r["deviations"] for r in rows)


def test_sft_loss_falls(in_smoke_home):
    for recipe in ("tulu3-8b", "smollm2-135m"):
        losses = [s["loss"] for s in in_smoke_home[(recipe, "sft")]["steps"]]
        assert _mean(losses[-10:]) < 0.6 * _mean(losses[:10]), recipe


def test_dpo_accuracy_and_margin_rise(in_smoke_home):
    for recipe in ("tulu3-8b", "smollm2-135m"):
        final = in_smoke_home[(recipe, "dpo")]["final_metrics"]
        assert final["accuracy_last10"] >= final["accuracy_first10"] + 0.15, (recipe, final)
        assert final["margin_last10"] >= final["margin_first10"] + 0.3, (recipe, final)
    assert in_smoke_home[("tulu3-8b", "dpo")]["plan"]["hyperparameters"]["dpo_loss_type"] == "dpo_norm"
    assert in_smoke_home[("smollm2-135m", "dpo")]["plan"]["hyperparameters"]["dpo_beta"] == 0.5


def test_reward_model_beats_chance_on_heldout_pairs(in_smoke_home):
    final = in_smoke_home[("tulu3-8b", "rm")]["final_metrics"]
    # 100 held-out pairs: chance is 0.5 with a standard error of 0.05.
    assert final["heldout_pairs"] == 100
    assert final["heldout_accuracy"] >= 0.7, final
    steps = in_smoke_home[("tulu3-8b", "rm")]["steps"]
    assert _mean([s["loss"] for s in steps[-20:]]) < _mean([s["loss"] for s in steps[:5]]) - 0.2


def test_rlvr_reward_rises(in_smoke_home):
    record = in_smoke_home[("tulu3-8b", "rlvr")]
    rewards = [s["reward_mean"] for s in record["steps"]]
    # Mean verifiable reward (0-10 scale) of the last 30 PPO steps against the first 10, 16 prompts each.
    assert _mean(rewards[-30:]) >= _mean(rewards[:10]) + 0.75, rewards
    assert record["final_metrics"]["reward_mean_last"] >= record["final_metrics"]["reward_mean_first"] + 0.5
    for key in ("reward_mean", "kl", "non_stop_rate", "response_length", "pg_loss", "vf_loss", "lr", "episode"):
        assert key in record["steps"][0], key
    assert record["steps"][-1]["episode"] == record["plan"]["hyperparameters"]["total_episodes"]


def test_pretrain_records_phase_switches_and_wsd(in_smoke_home):
    record = in_smoke_home[("smollm2-135m", "pretrain")]
    steps = record["steps"]
    hp = record["plan"]["hyperparameters"]
    assert steps[0]["lr"] == 0.0  # nanotron: the first update runs at λ(0) = 0
    peak = hp["learning_rate"]
    assert steps[hp["warmup_steps"]]["lr"] == pytest.approx(peak)
    assert steps[-1]["lr"] == pytest.approx(peak / hp["decay_steps"])  # the last update uses p/D, not 0
    assert _mean([s["loss"] for s in steps[-20:]]) < _mean([s["loss"] for s in steps[:20]]) - 1.0
    assert record["final_metrics"]["heldout_perplexity"] > 1


def test_lineage_shows_the_chain(in_smoke_home):
    rlvr = in_smoke_home[("tulu3-8b", "rlvr")]
    code, out, err = run_cli("lineage", rlvr["run_id"], "--json")
    assert code == 0, err
    text = out
    for stage in ("dpo", "rm", "sft"):
        assert in_smoke_home[("tulu3-8b", stage)]["run_id"] in text, stage
    assert "stage:tulu3-8b:rlvr" in text and "dataset:allenai/RLVR-GSM-MATH-IF-Mixed-Constraints@md5:" in text
    tree = json.loads(out)["tree"]
    relations = {c["relation"] for c in tree["children"]}
    assert {"init", "reward_model", "value_model", "reference", "executes", "code"} <= relations
    code, out, _ = run_cli("lineage", in_smoke_home[("smollm2-135m", "dpo")]["run_id"])
    assert in_smoke_home[("smollm2-135m", "pretrain")]["run_id"] in out


def test_lineage_verify_passes_then_flags_a_tampered_input(in_smoke_home):
    dpo = in_smoke_home[("tulu3-8b", "dpo")]
    code, out, err = run_cli("lineage", dpo["run_id"], "--verify", "--json")
    assert code == 0, err
    verified = json.loads(out)["verify"]
    assert verified and all(v["status"] == "ok" for v in verified)
    # Tamper with the DPO's parent: one flipped byte in the SFT checkpoint's weights. The chain is shared
    # by the session's tests, so the original bytes go back whatever happens.
    weights = Path(in_smoke_home[("tulu3-8b", "sft")]["run_dir"]) / "checkpoint" / "model.safetensors"
    original = weights.read_bytes()
    tampered = bytearray(original)
    tampered[-1] ^= 0xFF
    try:
        weights.write_bytes(bytes(tampered))
        code, out, err = run_cli("lineage", dpo["run_id"], "--verify", "--json")
    finally:
        weights.write_bytes(original)
    assert code == 1
    flagged = [v for v in json.loads(out)["verify"] if v["status"] != "ok"]
    # The SFT checkpoint is both the DPO's input and the SFT run's output: each record of it is flagged, and
    # nothing else is.
    assert flagged and {v["status"] for v in flagged} == {"modified"}
    assert all(str(weights.parent) in v["detail"] for v in flagged), flagged
    code, out, err = run_cli("lineage", dpo["run_id"], "--verify", "--json")
    assert code == 0, err


def test_diff_two_runs(in_smoke_home):
    a, b = in_smoke_home[("tulu3-8b", "dpo")]["run_id"], in_smoke_home[("smollm2-135m", "dpo")]["run_id"]
    code, out, err = run_cli("diff", a, b, "--json")
    assert code == 0, err
    keys = {r["key"] for r in json.loads(out)["raw"]}
    assert {"dpo_loss_type", "dpo_beta", "learning_rate"} <= keys
