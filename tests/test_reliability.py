"""Hostile and broken input, table-driven: every case exits with its code, prints one line, and writes nothing.

The cases are the ones a hostile user or a broken environment tried (issue #10). Each bad-input case asserts
exit 2, exactly one line on stderr with the fragment that names what is wrong, no traceback, no runs
directory and no run row. The state, output-directory, resume and non-finite cases run real smoke stages.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SFT = ["run", "tulu3-8b", "--stage", "sft", "--profile", "smoke"]


def _assert_refused(cli, home: Path, argv: list[str], fragment: str, code: int = 2) -> str:
    got, _, err = cli(*argv)
    assert got == code, err
    assert fragment in err, err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _nothing_written(cli, home: Path) -> None:
    runs = home.parent / "runs"
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())
    code, out, err = cli("runs", "--json")
    assert code == 0, err
    assert json.loads(out) == []


SET_CASES = [
    # (--set value, fragment); all accepted or failing late before the validation layer
    ("epochs=0", "epochs=0: must be a positive integer"),
    ("epochs=-1", "epochs=-1: must be a positive integer"),
    ("warmup_ratio=5", "warmup_ratio=5: must be a finite number in [0, 1]"),
    ("max_seq_length=1e20", "max_seq_length=1e+20: must be a positive integer"),
    ("seed=-1", "seed=-1: must be a non-negative integer"),
    ("seed=abc", "seed='abc': must be a non-negative integer"),
    ("learning_rate=NaN", "learning_rate=nan: must be a finite number > 0"),
    ("learning_rate=Infinity", "learning_rate=inf: must be a finite number > 0"),
    ("learning_rate=-5e-6", "learning_rate=-5e-06: must be a finite number > 0"),
    ("learning_rate=0", "learning_rate=0: must be a finite number > 0"),
    ("adam_beta1=2", "adam_beta1=2: must be a finite number in [0, 1)"),
    ("adam_beta2=1", "adam_beta2=1: must be a finite number in [0, 1)"),
    ("lr_scheduler=bogus", "must be one of linear, cosine, constant, wsd"),
    ("loss_reduction=median", "must be one of sum, mean"),
    ("chat_template=bogus", "must be one of tulu, chatml"),
    ("gradient_accumulation_steps=1e20", "gradient_accumulation_steps=1e+20: must be a positive integer"),
    ("gradient_accumulation_steps=100000000000000000000", "must be a positive integer (at most 2147483647)"),
    ("packing=maybe", "packing='maybe': must be true or false"),
    ("max_grad_norm=-1", "max_grad_norm=-1: must be a finite number ≥ 0"),
    ("dpo_beta=0.1", "dpo_beta: does not apply to the sft stage (valid keys: learning_rate"),
    ("kl_beta=0.05", "kl_beta: does not apply to the sft stage"),
    ("decay_style=linear", "decay_style: does not apply to the sft stage"),
    ("lerning_rate=1e-3", "did you mean 'learning_rate'"),
]


@pytest.mark.parametrize("assignment, fragment", SET_CASES, ids=[c[0] for c in SET_CASES])
def test_bad_set_value_is_refused_before_anything_is_written(cli, isolated_home, assignment, fragment):
    _assert_refused(cli, isolated_home, [*SFT, "--set", assignment], fragment)
    _nothing_written(cli, isolated_home)


ARGV_CASES = [
    ([*SFT, "--deepspeed", "bogus"], "unknown DeepSpeed config 'bogus'"),
    ([*SFT, "--deepspeed", "zero2"], "needs --launcher accelerate"),
    ([*SFT, "--launcher", "accelerate", "--deepspeed", "bogus"], "unknown DeepSpeed config 'bogus'"),
    ([*SFT, "--resume"], "no interrupted run of tulu3-8b:sft (smoke) to resume"),
    ([*SFT, "--resume-run", "nope"], "no run 'nope' of tulu3-8b:sft (smoke) to resume"),
    (["run", "tulu3-8b", "--stage", "dpo", "--profile", "smoke", "--set", "dpo_beta=-1"],
     "dpo_beta=-1: must be a finite number > 0"),
    (["run", "tulu3-8b", "--stage", "rlvr", "--profile", "smoke", "--set", "gamma=2"],
     "gamma=2: must be a finite number in [0, 1]"),
]


@pytest.mark.parametrize("argv, fragment", ARGV_CASES, ids=[" ".join(c[0][5:]) for c in ARGV_CASES])
def test_bad_option_is_refused_before_anything_is_written(cli, isolated_home, argv, fragment):
    _assert_refused(cli, isolated_home, argv, fragment)
    _nothing_written(cli, isolated_home)


def _recipes_with(tmp_path: Path, edit) -> Path:
    raw = json.loads((ROOT / "recipes.json").read_text())
    edit(raw)
    path = tmp_path / "recipes.json"
    path.write_text(json.dumps(raw))
    return path


def _set_lr(value):
    def edit(raw: dict) -> None:
        raw["recipes"]["tulu3-8b"]["stages"][0]["hyperparameters"]["learning_rate"]["value"] = value
    return edit


def _rename_recipe(raw: dict) -> None:
    raw["recipes"]["../../x"] = raw["recipes"].pop("tulu3-70b")


RECIPE_CASES = [
    (_set_lr("abc"), "learning_rate='abc': must be a finite number > 0"),
    (_set_lr(-5e-6), "learning_rate=-5e-06: must be a finite number > 0"),
    (_set_lr(float("nan")), "learning_rate=nan: must be a finite number > 0"),
    (_rename_recipe, "recipe name '../../x' is not an identifier"),
]


@pytest.mark.parametrize("edit, fragment", RECIPE_CASES, ids=["lr-abc", "lr-negative", "lr-nan", "name-path"])
def test_validate_refuses_a_bad_recipes_file(cli, isolated_home, tmp_path, monkeypatch, edit, fragment):
    monkeypatch.setenv("REPRO_RECIPES", str(_recipes_with(tmp_path, edit)))
    _assert_refused(cli, isolated_home, ["validate"], fragment)
    _assert_refused(cli, isolated_home, [*SFT], fragment)  # every load, not only validate
    monkeypatch.delenv("REPRO_RECIPES")
    _nothing_written(cli, isolated_home)


def test_validate_accepts_the_committed_recipes(cli):
    code, out, err = cli("validate")
    assert code == 0, err


def _unreadable_recipes(kind: str, tmp_path: Path) -> Path:
    if kind == "directory":
        return tmp_path
    path = tmp_path / "recipes.json"
    path.write_bytes(b"\xff\xfe{}" if kind == "not-utf8" else b"[" * 200_000)
    return path


@pytest.mark.parametrize("kind, fragment", [
    ("directory", "is a directory; point REPRO_RECIPES at a recipes.json file"),
    ("not-utf8", "is not UTF-8 text"),
    ("deep", "JSON nested too deeply"),
])
def test_unreadable_recipes_file_is_one_line(cli, isolated_home, tmp_path, monkeypatch, kind, fragment):
    monkeypatch.setenv("REPRO_RECIPES", str(_unreadable_recipes(kind, tmp_path)))
    _assert_refused(cli, isolated_home, ["list"], fragment)
    _assert_refused(cli, isolated_home, [*SFT], fragment)


@pytest.mark.parametrize("content, fragment", [
    (b"\xff\xfe not text\n", "not UTF-8 text"),
    (b"[" * 200_000 + b"\n", "nested too deeply"),
])
def test_unreadable_fixture_is_one_line(tmp_path, content, fragment):
    from runner.data.fixtures import FixtureError, load_fixture

    path = tmp_path / "rows.jsonl"
    path.write_bytes(content)
    with pytest.raises(FixtureError, match=fragment) as info:
        load_fixture(path, "messages")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("argv", [["runs"], ["lineage", "tulu3-8b:sft"], [*SFT, "--max-steps", "1"]],
                         ids=["runs", "lineage", "run"])
def test_a_file_that_is_not_a_database_is_one_line(cli, isolated_home, tmp_path, monkeypatch, argv):
    garbage = tmp_path / "repro.db"
    garbage.write_bytes(b"not a database " * 64)
    monkeypatch.setenv("REPRO_DATABASE_URL", f"sqlite:///{garbage}")
    _assert_refused(cli, isolated_home, argv, "is not an SQLite database")
    assert garbage.read_bytes() == b"not a database " * 64
    runs = isolated_home.parent / "runs"
    assert not runs.exists() or not any(runs.iterdir())


# ---------------------------------------------------------------- the run directory


def test_output_dir_that_is_not_empty_is_refused_and_left_untouched(cli, isolated_home, tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    _assert_refused(cli, isolated_home, [*SFT, "--output-dir", str(precious)], "is not empty")
    assert [p.name for p in precious.iterdir()] == ["thesis.tex"]
    assert (precious / "thesis.tex").read_text() == "years of work"
    _nothing_written(cli, isolated_home)


@pytest.mark.parametrize("where, fragment", [
    ("file", "exists and is not a directory"),
    ("proc", "cannot create the run directory"),
])
def test_output_dir_that_cannot_be_a_run_directory(cli, isolated_home, tmp_path, where, fragment):
    target = tmp_path / "a-file" if where == "file" else Path("/proc/repro-cannot-write-here")
    if where == "file":
        target.write_text("not a directory")
    _assert_refused(cli, isolated_home, [*SFT, "--max-steps", "1", "--output-dir", str(target)], fragment)
    _nothing_written(cli, isolated_home)


@pytest.mark.parametrize("where, fragment", [
    ("file", "cannot create the run directory"),
    ("proc", "cannot create the run directory"),
])
def test_runs_dir_that_cannot_hold_runs(cli, isolated_home, tmp_path, monkeypatch, where, fragment):
    runs = tmp_path / "runs-file" if where == "file" else Path("/proc/repro-runs")
    if where == "file":
        runs.write_text("not a directory")
    monkeypatch.setenv("REPRO_RUNS_DIR", str(runs))
    _assert_refused(cli, isolated_home, [*SFT, "--max-steps", "1"], fragment)
    code, out, _ = cli("runs", "--json")
    assert json.loads(out) == []  # the database row went with the directory


def test_missing_runs_dir_is_created(cli, isolated_home, tmp_path, monkeypatch):
    runs = tmp_path / "not" / "there" / "yet"
    monkeypatch.setenv("REPRO_RUNS_DIR", str(runs))
    code, out, err = cli(*SFT, "--max-steps", "1", "--json")
    assert code == 0, err
    assert Path(json.loads(out)["run_dir"]).parent == runs.resolve()


def test_empty_output_dir_is_used_and_a_second_run_there_is_refused(cli, isolated_home, tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    code, out, err = cli(*SFT, "--max-steps", "1", "--output-dir", str(target), "--json")
    assert code == 0, err
    assert (target / "run.json").exists() and (target / "checkpoint").is_dir()
    before = sorted(p.name for p in target.iterdir())
    _assert_refused(cli, isolated_home, [*SFT, "--max-steps", "1", "--output-dir", str(target)], "is not empty")
    assert sorted(p.name for p in target.iterdir()) == before


def test_dpo_into_its_parents_run_directory_keeps_the_parent(cli, isolated_home):
    code, out, err = cli(*SFT, "--max-steps", "2", "--json")
    assert code == 0, err
    sft_dir = Path(json.loads(out)["run_dir"])
    weights = (sft_dir / "checkpoint" / "model.safetensors").read_bytes()
    argv = ["run", "tulu3-8b", "--stage", "dpo", "--profile", "smoke", "--max-steps", "1", "--output-dir",
            str(sft_dir)]
    _assert_refused(cli, isolated_home, argv, "is not empty")
    assert (sft_dir / "checkpoint" / "model.safetensors").read_bytes() == weights


def test_every_consumer_of_an_altered_checkpoint_refuses_it(cli, isolated_home):
    code, out, err = cli(*SFT, "--max-steps", "2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    weights = Path(summary["run_dir"]) / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes() + b"\0")
    for argv in (["eval", summary["run_id"], "--suite", "heldout"],
                 ["eval", str(weights.parent), "--suite", "heldout"],
                 ["run", "tulu3-8b", "--stage", "dpo", "--profile", "smoke", "--max-steps", "1"],
                 ["run", "tulu3-8b", "--stage", "dpo", "--profile", "smoke", "--max-steps", "1", "--input",
                  f"init={summary['run_id']}"]):
        _assert_refused(cli, isolated_home, argv, "was altered")
    code, out, _ = cli("runs", "--json")
    assert [r["id"] for r in json.loads(out)] == [summary["run_id"]]  # no eval or DPO run was recorded


def test_deviations_are_counted_once_and_the_same_everywhere(cli, isolated_home):
    code, out, err = cli(*SFT, "--max-steps", "2", "--json")
    assert code == 0, err
    summary = json.loads(out)
    record = json.loads((Path(summary["run_dir"]) / "run.json").read_text())
    code, out, _ = cli("runs", "--json")
    (row,) = json.loads(out)
    keys = [d["key"] for d in record["deviations"]]
    assert len(keys) == len(set(keys))  # once per key
    assert summary["deviations"] == len(keys) == len(row["deviations"])
    assert {"init", "optimizer_steps"} <= set(keys) and any(k.startswith("model.") for k in keys)  # added in training


# ---------------------------------------------------------------- failures of the run itself


def test_a_run_that_diverges_stops_as_failed_and_nothing_non_finite_is_stored(cli, isolated_home):
    argv = [*SFT, "--max-steps", "4", "--set", "learning_rate=1e30"]
    err = _assert_refused(cli, isolated_home, argv, "at step", code=1)
    assert "nan" in err or "inf" in err
    code, out, _ = cli("runs", "--json")
    (row,) = json.loads(out)
    assert row["status"] == "failed"
    record = json.loads((Path(row["run_dir"]) / "run.json").read_text())
    assert record["status"] == "failed" and "at step" in record["error"]
    text = json.dumps(record["steps"]) + json.dumps(record["final_metrics"]) + json.dumps(row)
    assert "NaN" not in text and "Infinity" not in text


def test_resume_considers_only_interrupted_runs(cli, isolated_home):
    _assert_refused(cli, isolated_home, [*SFT, "--max-steps", "4", "--set", "learning_rate=1e30"], "at step", 1)
    # The newest run of the stage failed: plain --resume must not pick it up.
    _assert_refused(cli, isolated_home, [*SFT, "--resume"], "no interrupted run of tulu3-8b:sft")


# ---------------------------------------------------------------- saved state is data, never code


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _killed_run(tmp_path: Path, home: Path, kill_after: int) -> Path:
    """A real smoke SFT run killed with SIGKILL after `kill_after` updates; returns its run directory."""
    env = dict(os.environ, REPRO_HOME=str(home), REPRO_RUNS_DIR=str(home.parent / "runs"),
               REPRO_KILL_AFTER_UPDATE=str(kill_after), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "runner.cli", *SFT, "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr
    (run_dir,) = (home.parent / "runs").iterdir()
    return run_dir


@pytest.mark.slow
def test_resume_never_unpickles_and_refuses_altered_state(cli, isolated_home, tmp_path):
    run_dir = _killed_run(tmp_path, isolated_home, kill_after=10)
    record = json.loads((run_dir / "run.json").read_text())
    ref = record["artifacts"]["state"]
    state_file = run_dir / "state" / ref["file"]
    assert state_file.exists() and ref["sha256"] == hashlib.sha256(state_file.read_bytes()).hexdigest()
    assert not list((run_dir / "state").glob("*.pt"))

    # A crafted pickle where the old format lived, and in place of the recorded file with a matching hash
    # (someone who can write the runs directory can also rewrite run.json): neither may run its payload.
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker))
    (run_dir / "state" / "latest.pt").write_bytes(payload)
    state_file.write_bytes(payload)
    record["artifacts"]["state"] = {**ref, "sha256": hashlib.sha256(payload).hexdigest()}
    (run_dir / "run.json").write_text(json.dumps(record))
    _assert_refused(cli, isolated_home, [*SFT, "--resume"], "not a state file this tool wrote")
    assert not marker.exists()

    # Altered bytes under the recorded hash: refused by the hash check, named as such.
    state_file.write_bytes(b"\x00" * 64)
    record["artifacts"]["state"] = ref
    (run_dir / "run.json").write_text(json.dumps(record))
    _assert_refused(cli, isolated_home, [*SFT, "--resume-run", record["run_id"]],
                    "altered after the run saved it")
    assert not marker.exists()


def test_state_round_trip_is_exact_and_refuses_unknown_objects(tmp_path):
    import random

    import torch

    from runner import state

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    tree = {"model": model.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state(),
            "python": random.getstate(), "nan": float("nan"), "n": 3}
    ref = state.save(tmp_path, 7, tree)
    back = state.load(tmp_path, ref)
    assert back["python"] == random.getstate() and torch.equal(back["rng"], tree["rng"])
    assert back["opt"]["state"].keys() == tree["opt"]["state"].keys()  # int keys survive
    assert all(torch.equal(back["model"][k], v) for k, v in tree["model"].items())
    assert back["n"] == 3 and back["nan"] != back["nan"]
    with pytest.raises(TypeError):
        state.save(tmp_path, 8, {"obj": object()})
    with pytest.raises(state.StateError, match="not one this tool writes"):
        state.load(tmp_path, {**ref, "file": "../../etc/passwd"})


def test_no_module_unpickles_with_torch_load():
    """Every torch.load in the code base is weights-only (the state itself needs none)."""
    offenders = []
    for path in [*ROOT.glob("runner/**/*.py"), *ROOT.glob("registry/**/*.py"), *ROOT.glob("bench/*.py")]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if "torch.load(" in line and "weights_only=True" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
            if "pickle.load" in line:
                offenders.append(f"{path.relative_to(ROOT)}:{n}")
    assert offenders == []
