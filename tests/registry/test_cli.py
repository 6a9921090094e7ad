"""The read commands: tables for people, --json for scripts, one-line errors with exit code 2."""

from __future__ import annotations

import json

import pytest


def test_list_json(cli):
    code, out, err = cli("list", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == ["tulu3-8b", "tulu3-70b", "tulu3-405b", "smollm2-135m", "smollm2-360m",
                                         "smollm2-1.7b"]
    assert rows[0]["stages"] == ["sft", "dpo", "rm", "rlvr"]
    assert rows[0]["base_model"] == "meta-llama/Llama-3.1-8B"


def test_list_family_filter_and_table(cli):
    code, out, _ = cli("list", "--family", "smollm2")
    assert code == 0 and "smollm2-1.7b" in out and "tulu3-8b" not in out
    code, _, err = cli("list", "--family", "smollm")
    assert code == 2 and "did you mean 'smollm2'" in err


def test_show_stage_json_has_every_part(cli):
    code, out, err = cli("show", "tulu3-8b", "--stage", "sft", "--json")
    assert code == 0, err
    doc = json.loads(out)
    hp = doc["hyperparameters"]
    assert hp["learning_rate"]["value"] == 5e-6 and hp["loss_reduction"]["value"] == "sum"
    assert doc["derived"]["effective_batch_size"] == 128 and doc["derived"]["layout_batch"] == 128
    assert doc["layout"]["deepspeed_config"].startswith("stage3_no_offloading")
    assert doc["datasets"][0]["dataset"] == "allenai/tulu-3-sft-mixture"
    assert doc["code"]["commit"].startswith("3dd7a07da")
    assert "finetune.py" in doc["command"]["text"]


def test_show_human_output(cli):
    code, out, _ = cli("show", "smollm2-1.7b", "--stage", "pretrain")
    assert code == 0
    assert "wsd" in out and "phase" in out


def test_command_is_verbatim(cli):
    import registry.recipes as r

    reg = r.load_recipes()
    code, out, _ = cli("command", "tulu3-8b", "--stage", "dpo")
    assert code == 0 and out == reg.stage("tulu3-8b", "dpo").command.text.rstrip("\n") + "\n"


def test_diff_8b_vs_70b_sft(cli):
    code, out, err = cli("diff", "tulu3-8b:sft", "tulu3-70b:sft", "--json")
    assert code == 0, err
    doc = json.loads(out)
    keys = {row["key"] for row in doc["raw"]}
    assert {"learning_rate", "seed", "gradient_checkpointing"} <= keys
    assert not keys & {"output_dir", "exp_name", "native.output_dir", "native.exp_name", "native.with_tracking",
                       "native.report_to"}
    lr = next(r for r in doc["raw"] if r["key"] == "learning_rate")
    assert (lr["a"], lr["b"]) == (5e-6, 2e-6)


def test_diff_across_families_shows_derived(cli):
    code, out, err = cli("diff", "tulu3-8b:dpo", "smollm2-1.7b:dpo", "--json")
    assert code == 0, err
    doc = json.loads(out)
    raw = {r["key"]: r for r in doc["raw"]}
    assert raw["dpo_loss_type"]["a"] == "dpo_norm"
    assert raw["dpo_beta"]["a"] == 5 and raw["dpo_beta"]["b"] == 0.5
    assert any(r["key"] == "total_optimizer_steps" for r in doc["derived"])


def test_audit_405b_reports_known_conflicts(cli):
    code, out, err = cli("audit", "tulu3-405b", "--json")
    assert code == 0, err
    findings = json.loads(out)["findings"]
    text = json.dumps(findings)
    kinds = {f["kind"] for f in findings}
    assert "conflict" in kinds and "unpublished" in kinds
    assert any("response_length" in f["where"] for f in findings)
    assert any("total_episodes" in f["where"] for f in findings)
    assert "405b_dpo_v4" in text  # the internal policy path


def test_audit_smollm2_17b_reports_epoch_conflict(cli):
    code, out, _ = cli("audit", "smollm2-1.7b", "--json")
    findings = json.loads(out)["findings"]
    assert any("dpo epochs" in f["where"] for f in findings)
    assert any("adam_beta2" in f["where"] for f in findings)


def test_audit_table(cli):
    code, out, _ = cli("audit", "tulu3-8b")
    assert code == 0 and "audit tulu3-8b" in out


def test_lineage_upstream_of_final_8b(cli):
    code, out, err = cli("lineage", "allenai/Llama-3.1-Tulu-3-8B", "--json")
    assert code == 0, err
    text = json.dumps(json.loads(out))
    for node in ("stage:tulu3-8b:rlvr", "checkpoint:allenai/Llama-3.1-Tulu-3-8B-DPO",
                 "checkpoint:allenai/Llama-3.1-Tulu-3-8B-RM", "stage:tulu3-8b:sft",
                 "dataset:allenai/tulu-3-sft-mixture@", "code:"):
        assert node in text, node


def test_lineage_downstream_of_rm_and_ultrafeedback(cli):
    code, out, _ = cli("lineage", "allenai/Llama-3.1-Tulu-3-8B-RM", "--downstream", "--json")
    impacted = json.loads(out)["impacted"]
    for node in ("stage:tulu3-8b:rlvr", "stage:tulu3-70b:rlvr", "stage:tulu3-405b:rlvr",
                 "checkpoint:allenai/Llama-3.1-Tulu-3-70B", "checkpoint:allenai/Llama-3.1-Tulu-3-405B"):
        assert node in impacted, node
    code, out, _ = cli("lineage", "HuggingFaceH4/ultrafeedback_binarized", "--downstream", "--json")
    impacted = json.loads(out)["impacted"]
    assert {"stage:smollm2-135m:dpo", "stage:smollm2-360m:dpo", "stage:smollm2-1.7b:dpo"} <= set(impacted)


def test_lineage_tree_for_people(cli):
    code, out, _ = cli("lineage", "tulu3-70b:rlvr")
    assert code == 0 and "allenai/Llama-3.1-Tulu-3-8B-RM" in out


@pytest.mark.parametrize("argv, fragment", [
    (["show", "tulu-8b"], "unknown recipe 'tulu-8b'; did you mean 'tulu3-8b'?"),
    (["show", "smollm2-135m", "--stage", "rlvr"], "unknown stage for smollm2-135m 'rlvr'"),
    (["command", "tulu3-8b", "--stage", "rn"], "did you mean 'rm'"),
    (["diff", "tulu3-8b:sft", "tulu3-70b:rm"], "unknown stage for tulu3-70b 'rm'"),
    (["lineage", "allenai/Llama-3.1-Tulu-3-8B-RN"], "did you mean 'allenai/Llama-3.1-Tulu-3-8B-RM'"),
    (["audit", "smollm3-1.7b"], "did you mean 'smollm2-1.7b'"),
    (["show"], "Missing argument"),
])
def test_bad_names_one_line_exit_2(cli, argv, fragment):
    code, out, err = cli(*argv)
    assert code == 2
    assert fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
