"""A run killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, REPRO_HOME=str(home), REPRO_RUNS_DIR=str(home / "runs"), HF_HUB_OFFLINE="1", **extra)
    env.pop("REPRO_DATABASE_URL", None)
    return env


def repro(home: Path, *args: str, kill_after: int | None = None, kill_env: str = "REPRO_KILL_AFTER_UPDATE",
          ) -> subprocess.CompletedProcess:
    extra = {kill_env: str(kill_after)} if kill_after is not None else {}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], cwd=ROOT, env=_env(home, **extra),
                          capture_output=True, text=True, timeout=600)


def weights(run_dir: Path) -> dict:
    return load_file(str(run_dir / "checkpoint" / "model.safetensors"))


def assert_identical(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and bool((a[key] == b[key]).all()), key


def kill_and_resume(home: Path, recipe: str, stage: str, kill_after: int, *extra: str,
                    kill_env: str = "REPRO_KILL_AFTER_UPDATE") -> dict:
    killed = repro(home, "run", recipe, "--stage", stage, "--profile", "smoke", *extra, kill_after=kill_after,
                   kill_env=kill_env)
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
    keys = [d["key"] for d in record["deviations"]]
    assert len(keys) == len(set(keys)), keys  # a resume records no deviation twice
    return record | {"run_dir": summary["run_dir"]}


def test_sft_killed_and_resumed_equals_uninterrupted(tmp_path, in_smoke_home):
    reference = in_smoke_home[("tulu3-8b", "sft")]
    record = kill_and_resume(tmp_path / "home", "tulu3-8b", "sft", 23)
    assert [s["loss"] for s in record["steps"]] == [s["loss"] for s in reference["steps"]]
    assert_identical(weights(Path(record["run_dir"])), weights(Path(reference["run_dir"])))


def test_sft_killed_between_state_file_and_record_resumes_exactly(tmp_path, in_smoke_home):
    # The kill lands after state-00000020 is on disk but before run.json names it: the resume must take
    # the state run.json names (update 10), which the save did not remove, and still end bit-identical.
    reference = in_smoke_home[("tulu3-8b", "sft")]
    record = kill_and_resume(tmp_path / "home", "tulu3-8b", "sft", 20, kill_env="REPRO_KILL_AFTER_STATE_WRITE")
    assert record["events"][-1]["from_step"] in (10, 20)
    assert [s["loss"] for s in record["steps"]] == [s["loss"] for s in reference["steps"]]
    assert_identical(weights(Path(record["run_dir"])), weights(Path(reference["run_dir"])))
    assert [p.name for p in (Path(record["run_dir"]) / "state").iterdir()] == [record["artifacts"]["state"]["file"]]


def test_sft_stopped_with_sigterm_and_resumed_equals_uninterrupted(tmp_path, in_smoke_home):
    reference = in_smoke_home[("tulu3-8b", "sft")]
    home = tmp_path / "home"
    proc = subprocess.Popen([sys.executable, "-m", "runner.cli", "run", "tulu3-8b", "--stage", "sft", "--profile",
                             "smoke"], cwd=ROOT, env=_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        records = list((home / "runs").glob("*/run.json"))
        if records and json.loads(records[0].read_text() or "{}").get("artifacts", {}).get("state"):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "interrupted" in err, err
    resumed = repro(home, "run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr
    run_dir = Path(json.loads(resumed.stdout)["run_dir"])
    record = json.loads((run_dir / "run.json").read_text())
    assert [s["loss"] for s in record["steps"]] == [s["loss"] for s in reference["steps"]]
    assert_identical(weights(run_dir), weights(Path(reference["run_dir"])))


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


@pytest.mark.slow
def test_resume_without_an_interrupted_run_is_refused(tmp_path):
    proc = repro(tmp_path / "home", "run", "tulu3-8b", "--stage", "sft", "--profile", "smoke", "--resume")
    assert proc.returncode == 2
    assert "no interrupted run of tulu3-8b:sft" in proc.stderr and proc.stderr.count("\n") == 1
