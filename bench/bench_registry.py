"""Cold start of the registry commands, side by side with `python -c pass` and `dvc params diff`.

Run: python bench/bench_registry.py [--quick] [--reps N]

Every command runs in a fresh subprocess (nothing cached in-process), `reps` times after one discarded
warm-up (which lets the OS page cache and .pyc files settle, as they are on any machine that has run repro
once); the median wall time is reported. `dvc params diff` runs in /work/main when it is a DVC project, else
in a throwaway copy under /tmp (git init + dvc init + params.yaml + dvc.yaml + one commit, then one param
edited so the diff has a row to print).

Targets (issue #14 item 18): `repro list --json` at most 0.15 s on a 2-core machine, and at least 10x faster
than `dvc params diff`. `repro list` is timed twice: served from a synced database index (recipes.json parsed,
its hash matched against the one recorded when `repro db sync` validated it: registry.light_db), and live
(no database: the file validated through the schema), and the live/cached ratio is printed. When it misses
0.15 s, the top import costs of `runner.cli` are printed (python -X importtime).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
TARGET_LIST_S = 0.15
TARGET_VS_DVC = 10.0


def _env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    # A scratch registry database (the bench never touches the user's), found the way a user's default one
    # is: no REPRO_HOME, so repro resolves its data directory through platformdirs (XDG_DATA_HOME/repro).
    for var in ("REPRO_HOME", "REPRO_DATABASE_URL", "REPRO_RECIPES"):
        env.pop(var, None)
    env["XDG_DATA_HOME"] = str(home)
    env["REPRO_RUNS_DIR"] = str(home / "runs")
    return env


def time_cmd(argv: list[str], cwd: Path, env: dict[str, str], reps: int) -> tuple[float, list[float], str]:
    """(median seconds, all samples, stderr tail of a failure or '') over `reps` cold subprocesses."""
    first = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)  # warm-up, discarded
    if first.returncode != 0:
        return float("nan"), [], (first.stderr or first.stdout).strip()[-400:]
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - start)
        if done.returncode != 0:
            return float("nan"), samples, f"exit {done.returncode}"
    return statistics.median(samples), samples, ""


def dvc_project(scratch: Path) -> tuple[Path, str]:
    """A directory where `dvc params diff` has something to do, and a note on where it came from."""
    if (ROOT / ".dvc").is_dir():
        return ROOT, f"{ROOT} (the repository's own DVC project)"
    copy = scratch / "dvc-copy"
    ignore = shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "runs")
    shutil.copytree(ROOT, copy, ignore=ignore)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "-c", "commit.gpgsign=false"]
    (copy / "params.yaml").write_text("sft:\n  learning_rate: 5.0e-06\n  seed: 123\ndpo:\n  beta: 5\n")
    (copy / "dvc.yaml").write_text("stages:\n  sft:\n    cmd: repro run tulu3-8b --stage sft --profile smoke\n"
                                   "    params:\n    - sft.learning_rate\n    - sft.seed\n"
                                   "  dpo:\n    cmd: repro run tulu3-8b --stage dpo --profile smoke\n"
                                   "    params:\n    - dpo.beta\n")
    for argv in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"], git + ["add", "-A"],
                 git + ["commit", "-q", "-m", "bench snapshot"]):
        subprocess.run(argv, cwd=copy, check=True, capture_output=True)
    (copy / "params.yaml").write_text("sft:\n  learning_rate: 1.0e-05\n  seed: 123\ndpo:\n  beta: 5\n")
    return copy, f"throwaway copy {copy} (git init + dvc init + one commit; /work/main has no .dvc/ yet)"


def import_profile(env: dict[str, str], top: int = 12) -> list[tuple[int, str]]:
    """(cumulative microseconds, module) of the most expensive imports of `repro list --json` (runner.cli's
    main with that argv, so lazily imported modules count), top-level ones first."""
    probe = "import sys; sys.argv = ['repro', 'list', '--json']; from runner.cli import main; main()"
    done = subprocess.run([sys.executable, "-X", "importtime", "-c", probe], cwd=ROOT, env=env, capture_output=True,
                          text=True)
    rows = []
    for line in done.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if m:
            rows.append((int(m.group(2)), len(m.group(3)), m.group(4)))
    rows.sort(reverse=True)
    return [(us, ("  " * max(depth - 1, 0)) + name) for us, depth, name in rows[:top]]


BREAKDOWN = """
import io, sys, time, contextlib
t0 = time.perf_counter()
from runner.cli import main
t1 = time.perf_counter()
sys.argv = ["repro", "list", "--json"]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit:
        pass
t2 = time.perf_counter()
print(f"{t1 - t0:.4f} {t2 - t1:.4f}")
"""


def breakdown(env: dict[str, str], reps: int) -> tuple[float, float]:
    """Median (import of runner.cli, running `list --json`) seconds inside a fresh interpreter."""
    imp, run = [], []
    for _ in range(reps):
        out = subprocess.run([sys.executable, "-c", BREAKDOWN], cwd=ROOT, env=env, capture_output=True, text=True,
                             check=True).stdout.split()
        imp.append(float(out[0]))
        run.append(float(out[1]))
    return statistics.median(imp), statistics.median(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repetitions instead of 9")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--profile", action="store_true", help="print the import profile even when on target")
    args = parser.parse_args()
    reps = args.reps or (3 if args.quick else 9)

    scratch = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    try:
        env = _env(scratch / "home")
        live_env = _env(scratch / "live-home")  # never synced: every command validates recipes.json
        repro = str(BIN / "repro")
        subprocess.run([repro, "db", "sync"], cwd=ROOT, env=env, check=True, capture_output=True)
        dvc_dir, dvc_note = dvc_project(scratch)
        cases = [
            ("python -c pass", [sys.executable, "-c", "pass"], ROOT, env),
            ("repro list --json", [repro, "list", "--json"], ROOT, env),
            ("repro list --json (live)", [repro, "list", "--json"], ROOT, live_env),
            ("repro show tulu3-8b --stage sft --json", [repro, "show", "tulu3-8b", "--stage", "sft", "--json"], ROOT,
             env),
            ("dvc params diff", [str(BIN / "dvc"), "params", "diff"], dvc_dir, env),
        ]
        results: dict[str, float] = {}
        print(f"cold wall time, median of {reps} fresh subprocesses (1 warm-up discarded); {os.cpu_count()} CPUs")
        print(f"dvc params diff runs in: {dvc_note}")
        print(f"{'command':42} {'median s':>9} {'min s':>7} {'max s':>7} {'x python':>9}")
        for label, argv, cwd, case_env in cases:
            med, samples, err = time_cmd(argv, cwd, case_env, reps)
            results[label] = med
            if err:
                print(f"{label:42} FAILED: {err}")
                continue
            base = results["python -c pass"]
            print(f"{label:42} {med:9.3f} {min(samples):7.3f} {max(samples):7.3f} {med / base:9.1f}x")
        dvc = results["dvc params diff"]
        for label in ("repro list --json", "repro show tulu3-8b --stage sft --json"):
            print(f"  {label}: dvc params diff / this = {dvc / results[label]:.2f}x")

        lst = results["repro list --json"]
        live = results["repro list --json (live)"]
        print(f"  repro list --json: live (validated) {live:.3f} s / served from the synced index {lst:.3f} s = "
              f"{live / lst:.2f}x")
        imp, run = breakdown(env, reps)
        print(f"inside `repro list --json`: import runner.cli {imp:.3f} s, command {run:.3f} s, interpreter start + "
              f"exit ~{max(lst - imp - run, 0.0):.3f} s")
        ok_abs = lst <= TARGET_LIST_S
        ok_rel = dvc / lst >= TARGET_VS_DVC
        if not ok_abs or args.profile:
            print("\nimport profile of `repro list --json` (cumulative µs, python -X importtime):")
            for us, name in import_profile(env):
                print(f"  {us / 1000:8.1f} ms  {name}")
        print(f"\nSUMMARY repro list {lst:.3f} s (live {live:.3f} s, {live / lst:.2f}x; "
              f"target ≤ {TARGET_LIST_S} s: {'MET' if ok_abs else 'MISSED'}), "
              f"{dvc / lst:.1f}x faster than dvc params diff {dvc:.3f} s (target >= {TARGET_VS_DVC}x: "
              f"{'MET' if ok_rel else 'MISSED'}); "
              f"repro show {results['repro show tulu3-8b --stage sft --json']:.3f} s; "
              f"python -c pass {results['python -c pass']:.3f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
