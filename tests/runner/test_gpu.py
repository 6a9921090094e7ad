"""The GPU check (bench/gpu_check.py): the recorded profile of smollm2-135m SFT on the real model, 50 updates
in bf16 through the recorded launcher, reporting tokens/s, MFU and peak memory.

The full check needs CUDA (skipped without it); `--cpu-dry` runs the same script path on CPU (2 small fp32
updates in process) and keeps it from rotting on CPU-only CI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_check.py"


def _run(*args: str, timeout: int) -> subprocess.CompletedProcess:
    # As on a bare GPU box: the source tree on PYTHONPATH, run from elsewhere, nothing installed needed.
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd="/")


@pytest.fixture
def published_init():
    from runner import published

    try:
        return published.ensure_smollm2_135m_instruct()
    except published.PublishedCheckpointError as exc:
        pytest.skip(f"published checkpoint unavailable: {exc}")


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(published_init):
    proc = _run("--cpu-dry", "--json", "--init", str(published_init), timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["recipe"] == "smollm2-135m:sft" and summary["profile"] == "recorded"
    assert summary["updates"] == 2 and summary["tokens_per_s"] > 0 and summary["precision"] == "fp32"
    assert summary["tokens_per_update"] == 256  # 1 process × 1 per device × 1 accumulation × 256 tokens, packed
    assert {"device", "precision", "max_seq_length"} <= set(summary["deviations"])
    assert summary["mfu"] is None and summary["launch"] is None  # CPU: no peak to compare with, in process


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_check_summary_line():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    proc = _run(timeout=480)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    for token in ("recorded profile", "(bf16, seq 8192)", "50 updates", "tokens/s=", "mfu=", "peak_mem="):
        assert token in line, line
