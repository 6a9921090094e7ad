"""`repro run`: plans, dry runs, the recorded-profile gate and every bad input (one line, exit 2, nothing written)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_dry_run_shows_the_recorded_8b_sft_layout(cli):
    code, out, err = cli("run", "tulu3-8b", "--stage", "sft", "--dry-run", "--json")
    assert code == 0, err
    doc = json.loads(out)
    hp = doc["plan"]["hyperparameters"]
    assert (hp["num_processes"], hp["per_device_batch_size"], hp["gradient_accumulation_steps"]) == (64, 1, 2)
    assert hp["effective_batch_size"] == 128 and doc["plan"]["deviations"] == []
    argv = doc["launch"]["argv"]
    assert argv[:2] == ["accelerate", "launch"] and "--use_deepspeed" in argv
    assert argv[argv.index("--num_processes") + 1] == "64" and argv[argv.index("--num_machines") + 1] == "8"
    assert argv[argv.index("--deepspeed_config_file") + 1].endswith("stage3_no_offloading_accelerate.conf")
    assert "finetune.py" in doc["recorded_command"]


def test_dry_run_for_people_prints_layout_and_deepspeed_config(cli):
    code, out, _ = cli("run", "tulu3-70b", "--stage", "dpo", "--dry-run")
    assert code == 0
    assert "64 processes × 1 per device × 2 accumulation = effective 128 pairs" in out
    assert "stage3_offloading_accelerate.conf" in out and '"offload_optimizer"' in out


def test_dry_run_smoke_lists_deviations(cli):
    code, out, _ = cli("run", "smollm2-135m", "--stage", "pretrain", "--profile", "smoke", "--dry-run", "--json")
    plan = json.loads(out)["plan"]
    keys = {d["key"] for d in plan["deviations"]}
    assert {"train_steps", "max_seq_length", "batch_tokens", "decay_steps", "tokenizer"} <= keys
    hp = plan["hyperparameters"]
    assert hp["adam_beta2"] == 0.95 and hp["lr_scheduler"] == "wsd" and hp["decay_style"] == "linear"
    assert hp["decay_steps"] == round(hp["train_steps"] * 0.2)


def test_recorded_profile_stops_before_loading_anything(cli, isolated_home):
    code, out, err = cli("run", "tulu3-8b", "--stage", "rlvr")
    assert code == 2 and err.count("\n") == 1
    assert "8 GPUs (found 0)" in err and "--dry-run" in err and "--profile smoke" in err and "repro plan" in err
    assert not (Path(isolated_home).parent / "runs").exists()


@pytest.mark.parametrize("argv, fragment", [
    (["run", "smollm2-135m", "--stage", "rlvr", "--profile", "smoke"], "unknown stage for smollm2-135m 'rlvr'"),
    (["run", "tulu3-8b", "--stage", "sft", "--profile", "smok"], "did you mean 'smoke'"),
    (["run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--set", "learning_rte=1e-3"],
     "did you mean 'learning_rate'"),
    (["run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--set", "per_device_batch_size=0"],
     "must be a positive integer"),
    (["run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--set", "learning_rate"], "expected KEY=VALUE"),
    (["run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--set", "learning_rate=fast"],
     "must be a finite number > 0"),
    (["run", "tulu3-8b", "--stage", "dpo", "--profile", "smoke"],
     "run `repro run tulu3-8b --stage sft --profile smoke` first"),
    (["run", "tulu3-8b", "--stage", "rlvr", "--profile", "smoke"], "--profile smoke` first"),
    (["run", "tulu3-8b", "--stage", "dpo", "--profile", "smoke", "--input", "init=/nonexistent"],
     "neither a directory nor a run id"),
    (["run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--launcher", "slurm"], "unknown launcher"),
])
def test_bad_input_one_line_exit_2_nothing_written(cli, isolated_home, argv, fragment):
    code, out, err = cli(*argv)
    assert code == 2, err
    assert fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (Path(isolated_home).parent / "runs").exists()
    code, out, _ = cli("runs", "--json")
    assert json.loads(out) == []


def test_malformed_fixture_row_is_named(cli, tmp_path, monkeypatch):
    fixtures = tmp_path / "fixtures"
    shutil.copytree(ROOT / "fixtures", fixtures)
    path = fixtures / "tulu3" / "tulu-3-sft-mixture.jsonl"
    lines = path.read_text().splitlines()
    row = json.loads(lines[16])
    row["messages"][0]["role"] = "robot"
    lines[16] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    monkeypatch.setenv("REPRO_FIXTURES", str(fixtures))
    import importlib

    import runner.data.fixtures
    import runner.smoke

    def reload() -> None:  # the root is read once, at import, by the module that owns it
        importlib.reload(runner.data.fixtures)
        importlib.reload(runner.smoke)

    reload()
    assert runner.smoke.FIXTURES == fixtures.resolve()
    try:
        code, out, err = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke")
    finally:
        monkeypatch.delenv("REPRO_FIXTURES")
        reload()
    assert code == 2 and "tulu-3-sft-mixture.jsonl row 17" in err and "robot" in err
    assert err.count("\n") == 1


def test_corrupted_parent_checkpoint_is_refused(cli):
    code, out, err = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--max-steps", "2", "--json")
    assert code == 0, err
    ckpt = Path(json.loads(out)["run_dir"]) / "checkpoint" / "model.safetensors"
    data = bytearray(ckpt.read_bytes())
    data[-1] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    code, out, err = cli("run", "tulu3-8b", "--stage", "dpo", "--profile", "smoke")
    assert code == 2 and "was altered" in err and "does not match the recorded" in err
    code, out, _ = cli("runs", "--json")
    assert [r["stage"] for r in json.loads(out)] == ["sft"]


def test_max_steps_and_set_are_recorded_as_deviations(cli):
    code, out, err = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--max-steps", "3",
                         "--set", "seed=7", "--json")
    assert code == 0, err
    record = json.loads((Path(json.loads(out)["run_dir"]) / "run.json").read_text())
    devs = {d["key"]: d for d in record["deviations"]}
    assert devs["seed"]["value"] == 7 and devs["seed"]["reason"] == "--set on the command line"
    assert devs["optimizer_steps"]["value"] == 3 and len(record["steps"]) == 3


def test_tensorboard_logging_when_asked(cli):
    code, out, err = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--max-steps", "2",
                         "--tensorboard", "--json")
    assert code == 0, err
    events = list((Path(json.loads(out)["run_dir"]) / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_dry_runs_print_what_will_run(cli):
    code, out, _ = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--dry-run", "--json")
    launch = json.loads(out)["launch"]
    assert code == 0 and launch["argv"][:2] == ["repro", "run"] and "in-process" in launch["launcher"]
    assert launch["recorded_launch"]["run"] is False and "accelerate" in launch["recorded_launch"]["argv"]
    code, out, _ = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--dry-run")
    assert "recorded launch (not run by this profile):" in out
    code, out, _ = cli("run", "tulu3-8b", "--stage", "rlvr", "--dry-run")
    assert "deepspeed ZeRO-3" in out and "deepspeed none" not in out


def test_help_shows_no_type_for_flags_and_names_value_shapes(cli):
    code, out, _ = cli("run", "--help")
    assert code == 0 and "<bool>" not in out and "KEY=VALUE" in out


def test_common_spellings_of_keys_point_at_the_canonical_key(cli):
    code, _, err = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--set", "lr=1e-4")
    assert code == 2 and "did you mean 'learning_rate'" in err


def test_recorded_gpu_check_counts_gpus_per_node(cli):
    # 64 GPUs on 8 nodes: each node runs the same command with its own 8, so 8 per node is what a node needs.
    code, _, err = cli("run", "tulu3-8b", "--stage", "sft")
    assert code == 2 and "8 GPUs on each of 8 nodes (found 0 here)" in err


def test_every_stage_seeds_from_the_recorded_seed_and_none_is_made_up():
    """RunPlan.seed is the one source of every stage's seed: the recorded value, `--set seed=N`, or a refusal
    naming the fix where nothing records one (tulu3-405b's SFT states none)."""
    from registry.errors import ReproError
    from registry.recipes import load_recipes
    from runner.plan import resolve

    reg = load_recipes()
    assert resolve(reg, "tulu3-8b", "rm", "recorded", {}).seed == 1
    assert resolve(reg, "tulu3-8b", "sft", "smoke", {}).seed == 123
    assert resolve(reg, "tulu3-8b", "sft", "smoke", {"seed": "7"}).seed == 7
    plan = resolve(reg, "tulu3-405b", "sft", "recorded", {})
    with pytest.raises(ReproError, match=r"tulu3-405b:sft records no seed; give one with --set seed=N"):
        _ = plan.seed
