"""`--launcher accelerate` on CPU: real multi-process data-parallel runs (gloo), DDP and DeepSpeed ZeRO-2.

The 1-process reference uses the same effective batch: the smoke plan's 1 process × GA 8 against
`_run_multiprocess`'s 2 processes × GA 4; the data order gives rank r every N-th micro-batch, so both see
the same 8 micro-batches per update and the losses agree to float tolerance (reduction order differs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import launch

STEPS = 4
REL = 1e-6  # fp32 sums in another order: observed ≤ 4e-8


@pytest.fixture(autouse=True)
def _extensions_cache(monkeypatch):
    # DeepSpeed JIT-builds a CPU op on first use; one cache per machine keeps that to the first run.
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "repro" / "torch_extensions"))


def _steps(cli, *extra: str) -> tuple[list[dict], dict]:
    code, out, err = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--max-steps", str(STEPS),
                         "--json", *extra)
    assert code == 0, err
    run_dir = Path(json.loads(out)["run_dir"])
    record = json.loads((run_dir / "run.json").read_text())
    return record["steps"], record


def _close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def test_cpu_launch_starts_n_processes_not_cpu_flag(tmp_path):
    argv, env = launch.cpu_launch(2, tmp_path)
    # `accelerate launch --cpu --num_processes 2` silently starts one process; --multi_gpu + USE_CPU starts two.
    assert "--cpu" not in argv and "--multi_gpu" in argv
    assert argv[argv.index("--num_processes") + 1] == "2"
    assert env["ACCELERATE_USE_CPU"] == "1" and "REPRO_DEEPSPEED_CONFIG" not in env
    argv, env = launch.cpu_launch(2, tmp_path, "zero2")
    assert env["REPRO_DEEPSPEED_CONFIG"].endswith("zero2_cpu.json") and env["TORCH_EXTENSIONS_DIR"]


def test_deepspeed_auto_values_filled_from_plan():
    class Plan:
        hyperparameters = {"per_device_batch_size": 1, "gradient_accumulation_steps": 4, "max_grad_norm": 1.0}

        def hp(self, key, default=None):
            return self.hyperparameters.get(key, default)

    config = launch.deepspeed_config_for(launch.resolve_deepspeed_config("zero2"), Plan(), 2)
    assert config["train_micro_batch_size_per_gpu"] == 1 and config["gradient_accumulation_steps"] == 4
    assert config["train_batch_size"] == 8 and config["gradient_clipping"] == 1.0
    assert config["zero_optimization"]["stage"] == 2


def test_unknown_deepspeed_config_is_one_line_exit_2(cli):
    code, out, err = cli("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--launcher", "accelerate",
                         "--num-processes", "2", "--deepspeed", "zero9", "--max-steps", "1")
    assert code == 2
    assert "unknown DeepSpeed config 'zero9'" in err and len(err.strip().splitlines()) == 1


def test_dry_run_shows_recorded_deepspeed_config(cli):
    code, out, err = cli("run", "tulu3-8b", "--stage", "sft", "--dry-run", "--json")
    assert code == 0, err
    launch_doc = json.loads(out)["launch"]
    assert "--use_deepspeed" in launch_doc["argv"]
    assert launch_doc["deepspeed_config"]["config"]["zero_optimization"]["stage"] == 3


@pytest.mark.slow
def test_two_processes_match_one_process(cli):
    one, _ = _steps(cli)
    two, record = _steps(cli, "--launcher", "accelerate", "--num-processes", "2")
    assert record["plan"]["hyperparameters"]["gradient_accumulation_steps"] == 4
    assert record["plan"]["hyperparameters"]["num_processes"] == 2
    assert len(one) == len(two) == STEPS
    for a, b in zip(one, two):
        assert _close(a["loss"], b["loss"]), (a, b)
        assert _close(a["grad_norm"], b["grad_norm"], 1e-5), (a, b)
        assert _close(a["lr"], b["lr"], 1e-12), (a, b)
        assert _close(a["trainable_tokens"], b["trainable_tokens"]), (a, b)
    assert record["status"] == "succeeded" and record["artifacts"].get("checkpoint")  # rank 0 saved the model


@pytest.mark.slow
def test_deepspeed_zero2_two_processes(cli):
    one, _ = _steps(cli)
    two, record = _steps(cli, "--launcher", "accelerate", "--num-processes", "2", "--deepspeed", "zero2")
    assert record["status"] == "succeeded" and record["plan"]["extra"]["deepspeed"] == "zero2"
    for a, b in zip(one, two):
        assert _close(a["loss"], b["loss"]), (a, b)
        assert _close(a["lr"], b["lr"], 1e-12), (a, b)
        # DeepSpeed 0.19.8 + torch 2.13 reports 1/GA (here 1/4) of the DDP/1-process gradient norm, for ZeRO-1
        # and ZeRO-2 alike, with GA 1 it matches; the losses above agree to ~1e-8 regardless. Pinned so a change
        # in that behaviour is noticed.
        assert _close(a["grad_norm"], 4 * b["grad_norm"], 1e-5), (a, b)
