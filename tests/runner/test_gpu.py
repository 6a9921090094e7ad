"""The GPU check (bench/gpu_check.py): a 1B Llama proxy at sequence 4096 through the SFT and DPO loop.

The full check needs CUDA (skipped without it); the --tiny self-test runs anywhere and keeps the script
from rotting on CPU-only CI.
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
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd="/")


def test_gpu_check_tiny_self_test():
    proc = _run("--tiny", "--steps", "1", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    for stage in ("sft", "dpo"):
        assert summary[stage]["tokens_per_s"] > 0


@pytest.mark.gpu
@pytest.mark.slow
def test_gpu_check_summary_line():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    proc = _run(timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    for token in ("sft:", "dpo:", "tokens/s=", "mfu=", "peak_mem=", "seq=4096"):
        assert token in line, line
