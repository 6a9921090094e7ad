"""Golden curves: each smoke stage's per-step logs, committed under tests/golden/, reproduced on CPU.

A golden file records the fingerprint of the machine that wrote it: torch version, the ATen CPU capability
in use, the oneDNN ISA cap, the CPU's identity, flags and cache sizes, and the thread count the stages use.
On a machine with the same fingerprint, the curves reproduce bit for bit (single-threaded float32, seeded
data order and init), and the test demands exactly that.

On any other x86-64 CPU, vectorised kernels may sum in another order. A training trajectory amplifies that
last-bit drift, and how far depends on the stage: measured with ATEN_CPU_CAPABILITY=avx2 against AVX-512
goldens, SFT, DPO and pretraining stay within 4e-4 over the final fifth, while the RM (300 updates at a
learning rate that barely decays, quirk 20) ends 10.6 % apart, which is 0.9 standard errors of its own
final-window noise: a chaotic trajectory, not a wrong one. So the portable check is:
- the learning rate, a pure function of the step, is exact at every step;
- the first EARLY_STEPS steps, where drift has not compounded, are held to EARLY_REL;
- the rest by what training guarantees: every value finite, the loss trending down (mean of the final
  window below the mean of the first window), and the final-window mean within WINDOW_REL of the golden
  one or within WINDOW_Z standard errors of the golden window's own step-to-step noise, whichever is wider.
RLVR samples discrete tokens, and its value model starts from that RM: across CPUs its losses are not
comparable from the first step (measured: pg_loss 50 % apart at step 1). Its first RLVR_SAMPLED_STEPS
steps sample from the unchanged policy, so their rewards must match exactly; its losses must be finite
and the value loss non-negative. (tests/runner/test_smoke_chains.py holds the reward's rise over a whole
run as a property.)
Regenerate with `REPRO_UPDATE_GOLDEN=1 pytest tests/runner/test_golden.py` after an intended change.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
from pathlib import Path

import pytest

from tests.runner.conftest import CHAINS

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
EARLY_STEPS = 5
EARLY_REL = 1e-4  # measured across AVX2 / AVX-512 kernels: at most 4e-6 in the first five steps
WINDOW_REL = 0.01  # measured: at most 4e-4 for the final-window mean of SFT, DPO, pretraining
WINDOW_Z = 4.0  # measured: the RM's final-window mean 0.9 standard errors apart
RLVR_STEPS = 3
RLVR_SAMPLED_STEPS = 2  # async generation: steps 1 and 2 sample from the initial policy
CASES = [(recipe, stage) for recipe, stages in CHAINS.items() for stage in stages]


def cpu_fingerprint() -> dict:
    """What decides the float results of the CPU kernels on this machine: the torch build and the ISA it
    dispatches to, the CPU's identity and flags, and its cache sizes (oneDNN sizes its blocks from them)."""
    import torch

    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "stepping", "flags") and key not in info:
                info[key] = " ".join(sorted(value.split())) if key == "flags" else value.strip()
            if not line.strip() and info:
                break  # the first processor's block is enough
    except OSError:
        info["model name"] = platform.processor()
    caches = sorted(p.read_text().strip() for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"))
    return {
        "torch": torch.__version__,
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
        "cpu": " / ".join(info.get(k, "?") for k in ("model name", "cpu family", "model", "stepping")),
        "cpu_flags_sha256": hashlib.sha256(info.get("flags", "").encode()).hexdigest()[:16],
        "caches": " ".join(caches),
        "run_threads": os.environ.get("REPRO_TORCH_THREADS", "1"),  # what the stages set (runner/stages/kit.py)
    }


def _series(record: dict, stage: str) -> dict[str, list[float]]:
    steps = record["steps"][:RLVR_STEPS] if stage == "rlvr" else record["steps"]
    keys = ["loss", "lr"] if stage != "rlvr" else ["reward_mean", "pg_loss", "vf_loss", "lr"]
    return {k: [s[k] for s in steps] for k in keys}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def check_portable(stage: str, key: str, got: list[float], expected: list[float]) -> None:
    """The checks that hold on any x86-64 CPU (see the module docstring)."""
    assert len(got) == len(expected), key
    assert all(math.isfinite(v) for v in got), f"{key}: non-finite value"
    if key == "lr":
        assert got == expected, key  # the schedule: exact
        return
    if stage == "rlvr":
        if key == "reward_mean":
            assert got[:RLVR_SAMPLED_STEPS] == expected[:RLVR_SAMPLED_STEPS], key  # discrete: exact
        elif key == "vf_loss":
            assert min(got) >= 0, key
        return
    early = min(EARLY_STEPS, len(expected))
    assert got[:early] == pytest.approx(expected[:early], rel=EARLY_REL, abs=1e-9), f"{key}: first {early} steps"
    window = max(1, len(expected) // 5)
    first, final = _mean(got[:window]), _mean(got[-window:])
    assert final < first, f"{key}: no downward trend (first window {first:.4g}, final window {final:.4g})"
    golden = expected[-window:]
    noise = statistics.pstdev(golden) / math.sqrt(window) if window > 1 else 0.0
    tolerance = max(WINDOW_REL * abs(_mean(golden)), WINDOW_Z * noise)
    assert abs(final - _mean(golden)) <= tolerance, (
        f"{key}: final-window mean {final:.6g}, golden {_mean(golden):.6g} ± {tolerance:.3g}")


@pytest.mark.parametrize("recipe, stage", CASES)
def test_smoke_stage_reproduces_its_golden_curve(in_smoke_home, recipe, stage):
    record = in_smoke_home[(recipe, stage)]
    series = _series(record, stage)
    path = GOLDEN / f"{recipe}--{stage}.json"
    if os.environ.get("REPRO_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps({"recipe": recipe, "stage": stage, "fingerprint": cpu_fingerprint(),
                                    "series": series}, indent=1) + "\n")
    golden = json.loads(path.read_text())
    assert golden["series"].keys() == series.keys()
    if golden.get("fingerprint") == cpu_fingerprint():
        assert series == golden["series"]  # same kernels, same machine kind: bit for bit
    for key, expected in golden["series"].items():
        check_portable(stage, key, series[key], expected)


def test_portable_check_refuses_what_training_does_not_allow():
    """The property checks must fail on a diverged, flat or non-finite curve, not only pass on good ones."""
    golden = [4.0 - 0.01 * i for i in range(100)]
    check_portable("sft", "loss", list(golden), golden)
    drifted = golden[:5] + [v * 1.001 for v in golden[5:]]  # last-bit drift compounded: allowed
    check_portable("sft", "loss", drifted, golden)
    for bad in (
        [golden[0] * 1.01] + golden[1:],  # an early step off
        golden[:5] + [v * 1.05 for v in golden[5:]],  # final window 5 % off
        golden[:5] + [golden[4]] * 95,  # no learning after step 5
        golden[:50] + [float("nan")] + golden[51:],  # a non-finite value
    ):
        with pytest.raises(AssertionError):
            check_portable("sft", "loss", bad, golden)
    with pytest.raises(AssertionError):
        check_portable("sft", "lr", [1e-3, 2e-3 * (1 + 1e-12)], [1e-3, 2e-3])
    # A noisy curve (the RM's kind): a shift within its own noise passes, one of many standard errors fails.
    noisy = [1.0 - 0.004 * i + (0.1 if i % 2 else -0.1) for i in range(100)]
    check_portable("rm", "loss", noisy[:5] + [v + 0.02 for v in noisy[5:]], noisy)
    with pytest.raises(AssertionError):
        check_portable("rm", "loss", noisy[:5] + [v + 0.2 for v in noisy[5:]], noisy)
    with pytest.raises(AssertionError):
        check_portable("rlvr", "reward_mean", [4.0, 3.5, 5.0], [4.0, 3.75, 5.0])
