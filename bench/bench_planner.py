"""Planner time for every recipe × stage × GPU count 1..512 (it should be instant).

Run: python bench/bench_planner.py
Counts below a stage's minimum raise (and are recorded as such); the rest are planned in full,
alternatives included where an invariant breaks.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from registry.errors import ReproError
from registry.recipes import load_recipes
from runner.layouts import plan_layout

MAX_GPUS = 512


def startup_seconds(runs: int = 5) -> float:
    """Median wall time of `python -c pass`: the yardstick for 'instant'."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def main() -> None:
    reg = load_recipes()
    calls = feasible = broken = too_few = 0
    slowest = (0.0, "")
    start = time.perf_counter()
    for name, recipe in reg.recipes.items():
        for stage in recipe.stage_names:
            for gpus in range(1, MAX_GPUS + 1):
                t0 = time.perf_counter()
                try:
                    result = plan_layout(reg, name, stage, gpus)
                    feasible += result.feasible
                    broken += not result.feasible
                except ReproError:
                    too_few += 1
                took = time.perf_counter() - t0
                slowest = max(slowest, (took, f"{name}:{stage}@{gpus}"))
                calls += 1
    total = time.perf_counter() - start
    base = startup_seconds()
    print(f"calls {calls}: {feasible} keep every invariant, {broken} break one (with alternatives), "
          f"{too_few} below the minimum GPU count")
    print(f"slowest call {slowest[0] * 1e3:.2f} ms ({slowest[1]})")
    mean = total / calls
    print(f"planner: {calls} calls in {total:.3f} s, mean {mean * 1e3:.3f} ms per call = {mean / base:.4f}× "
          f"`python -c pass` ({base * 1e3:.1f} ms); the whole sweep = {total / base:.1f}× startup")


if __name__ == "__main__":
    main()
