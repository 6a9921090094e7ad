"""A run killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def repro(home: Path, *args: str, kill_after: int | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, REPRO_HOME=str(home), REPRO_RUNS_DIR=str(home / "runs"), HF_HUB_OFFLINE="1")
    env.pop("REPRO_DATABASE_URL", None)
    if kill_after is not None:
        env["REPRO_KILL_AFTER_UPDATE"] = str(kill_after)
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "checkpoint" / "model.safetensors"))


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and bool((a[key] == b[key]).all()), key


def kill_and_resume(home: Path, recipe: str, stage: str, kill_after: int, *extra: str) -> dict:
    killed = repro(home, "run", recipe, "--stage", stage, "--profile", "smoke", *extra, kill_after=kill_after)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    runs = json.loads(repro(home, "runs", "--json").stdout)
    dead = [r for r in runs if r["recipe"] == recipe and r["stage"] == stage][0]
    assert dead["status"] == "interrupted"  # never left "running" forever
    resumed = repro(home, "run", recipe, "--stage", stage, "--profile", "smoke", "--resume", "--json", *extra)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["run_id"] == dead["id"]
    record = json.loads((Path(summary["run_dir"]) / "run.json").read_text())
    assert [e["event"] for e in record["events"]].count("resumed") == 1
    return record | {"run_dir": summary["run_dir"]}


def test_sft_killed_and_resumed_equals_uninterrupted(tmp_path, in_smoke_home):
    reference = in_smoke_home[("tulu3-8b", "sft")]
    record = kill_and_resume(tmp_path / "home", "tulu3-8b", "sft", 23)
    assert [s["loss"] for s in record["steps"]] == [s["loss"] for s in reference["steps"]]
    assert_identical(weights(Path(record["run_dir"])), weights(Path(reference["run_dir"])))


def test_pretrain_killed_and_resumed_equals_uninterrupted(tmp_path, in_smoke_home):
    reference = in_smoke_home[("smollm2-135m", "pretrain")]
    record = kill_and_resume(tmp_path / "home", "smollm2-135m", "pretrain", 33)
    assert [s["loss"] for s in record["steps"]] == [s["loss"] for s in reference["steps"]]
    assert_identical(weights(Path(record["run_dir"])), weights(Path(reference["run_dir"])))


def test_rlvr_killed_and_resumed_equals_uninterrupted(in_smoke_home, smoke_home):
    home = smoke_home  # RLVR reads its policy and reward model from the smoke chain's database
    full = repro(home, "run", "tulu3-8b", "--stage", "rlvr", "--profile", "smoke", "--max-steps", "9", "--json")
    assert full.returncode == 0, full.stderr
    full_dir = Path(json.loads(full.stdout)["run_dir"])
    record = kill_and_resume(home, "tulu3-8b", "rlvr", 7, "--max-steps", "9")
    full_steps = json.loads((full_dir / "run.json").read_text())["steps"]
    assert [s["reward_mean"] for s in record["steps"]] == [s["reward_mean"] for s in full_steps]
    assert_identical(weights(Path(record["run_dir"])), weights(full_dir))


def test_resume_without_an_interrupted_run_is_refused(tmp_path):
    proc = repro(tmp_path / "home", "run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--resume")
    assert proc.returncode == 2
    assert "no interrupted run of tulu3-8b:sft" in proc.stderr and proc.stderr.count("\n") == 1
