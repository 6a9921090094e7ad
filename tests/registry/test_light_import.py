"""The read commands import no torch (nor transformers): they must stay instant."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import sys
from registry.cli import run_app
from runner.cli import app
code = run_app(app, {argv!r})
heavy = sorted(m for m in ("torch", "transformers", "accelerate", "datasets", "numpy") if m in sys.modules)
print("HEAVY=" + ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.parametrize("argv", [
    ["list", "--json"],
    ["show", "tulu3-8b", "--stage", "sft", "--json"],
    ["command", "tulu3-8b", "--stage", "sft"],
    ["diff", "tulu3-8b:sft", "tulu3-70b:sft", "--json"],
    ["audit", "tulu3-405b", "--json"],
    ["lineage", "tulu3-8b:rlvr", "--json"],
    ["runs", "--json"],
])
def test_read_commands_import_no_torch(argv, tmp_path):
    env = dict(os.environ, REPRO_HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY=\n" in proc.stderr or proc.stderr.rstrip().endswith("HEAVY="), proc.stderr
