"""The smoke chains, run once per test session and shared by the stage tests.

`smoke_runs` runs tulu3-8b (sft → dpo → rm → rlvr) and smollm2-135m
(pretrain → sft → dpo) through the CLI into one session directory and
returns their run records; tests that need them point REPRO_HOME and
REPRO_RUNS_DIR there.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest

CHAINS = {"tulu3-8b": ("sft", "dpo", "rm", "rlvr"), "smollm2-135m": ("pretrain", "sft", "dpo")}


def run_cli(*args: str) -> tuple[int, str, str]:
    from registry.cli import run_app
    from runner.cli import app

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = run_app(app, list(args))
    finally:
        sys.stdout, sys.stderr = saved
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def smoke_home(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke-home")


@pytest.fixture(scope="session")
def smoke_runs(smoke_home):
    """{(recipe, stage): run.json document} for both chains."""
    mp = pytest.MonkeyPatch()
    mp.setenv("REPRO_HOME", str(smoke_home))
    mp.setenv("REPRO_RUNS_DIR", str(smoke_home / "runs"))
    mp.delenv("REPRO_DATABASE_URL", raising=False)
    from registry import db

    db._engine_for.cache_clear()
    records = {}
    try:
        for recipe, stages in CHAINS.items():
            for stage in stages:
                code, out, err = run_cli("run", recipe, "--stage", stage, "--profile", "smoke", "--json")
                assert code == 0, f"{recipe}:{stage} failed: {err}"
                summary = json.loads(out)
                run_dir = Path(summary["run_dir"])
                records[(recipe, stage)] = json.loads((run_dir / "run.json").read_text()) | {"run_dir": str(run_dir)}
    finally:
        mp.undo()
        db._engine_for.cache_clear()
    return records


@pytest.fixture
def in_smoke_home(smoke_runs, smoke_home, monkeypatch):
    """Point this test at the session's smoke database and runs."""
    monkeypatch.setenv("REPRO_HOME", str(smoke_home))
    monkeypatch.setenv("REPRO_RUNS_DIR", str(smoke_home / "runs"))
    from registry import db

    db._engine_for.cache_clear()
    return smoke_runs
