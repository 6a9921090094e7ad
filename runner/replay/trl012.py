"""TRL 0.12 as a subprocess reference: a side virtual environment, one request per process, JSON back.

The recorded SmolLM2 SFT and DPO ran alignment-handbook ae3f44f on TRL 0.12 (docs/semantics.md: v0.12.0 to
v0.12.2 share dpo_trainer.py). TRL 0.12 requires transformers < 4.47 and the project runs transformers 5, so
the reference lives in a venv of its own under the repro cache, created on first use (the way
runner/verifiers/math_sympy.py installs the release-era sympy): `PINS` plus the project's torch version,
installed by pip from the package index pip is configured with. Nothing of this project is imported there;
the child (`_trl012_child.py`) is run by path and reads one request file.

`REPRO_TRL012_PYTHON` names a prepared interpreter instead (offline machines: make a venv once and
`pip install` the pins into it).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from registry.errors import ReproError
from runner.cache import cache_root

# TRL's last 0.12 release and, for each library it imports, the last release its pins allow
# (transformers < 4.47 → 4.46.3, tokenizers < 0.21, huggingface_hub < 1.0) or one from the same weeks.
PINS = ("trl==0.12.2", "transformers==4.46.3", "tokenizers==0.20.3", "huggingface_hub==0.26.5",
        "accelerate==1.1.1", "datasets==3.1.0")
_CHILD = str(Path(__file__).with_name("_trl012_child.py"))
# pip's last line when the index could not be reached or does not carry a pin: the one case the tests skip.
_UNREACHABLE = re.compile(r"could not find a version|no matching distribution|connection|network|max retries|"
                          r"temporary failure|name resolution|timed out|proxy", re.IGNORECASE)


class TrlEnvError(ReproError):
    """The TRL 0.12 environment could not be installed or started."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable  # the package index was not reachable (tests skip on this only)


class TrlReplayError(ReproError):
    """The TRL 0.12 reference ran and failed."""




def torch_pin() -> str:
    """The project's torch, so both sides run the same kernels (`2.13.0+cpu` → `torch==2.13.0`)."""
    import torch

    return "torch==" + torch.__version__.split("+")[0]


def env_python() -> Path:
    """The side environment's interpreter; the environment is installed on first use."""
    given = os.environ.get("REPRO_TRL012_PYTHON")
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise TrlEnvError(f"REPRO_TRL012_PYTHON={path} is not a file; point it at a python whose "
                              f"environment holds {' '.join(PINS)}")
        return path
    pins = (*PINS, torch_pin())
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-" + "-".join(p.replace("==", "") for p in pins)
    root = cache_root() / "trl-replay"
    venv = root / tag
    python = venv / "bin" / "python"
    if (venv / ".complete").exists():
        return python
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (parallel tests, bench)
        if (venv / ".complete").exists():
            return python
        # A venv records its own path, so it is built in place (a half-built one is removed first).
        shutil.rmtree(venv, ignore_errors=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True)
        if made.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            raise TrlEnvError(f"could not create the TRL 0.12 venv at {venv}: {_last(made.stderr)}")
        cmd = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *pins]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(venv, ignore_errors=True)
            last = _last(done.stderr)
            raise TrlEnvError(f"could not install the TRL 0.12 reference ({' '.join(pins)}) into {venv}: {last}; "
                              "give pip access to PyPI, or set REPRO_TRL012_PYTHON to a python that has them",
                              unreachable=bool(_UNREACHABLE.search(done.stderr)))
        (venv / ".complete").write_text(" ".join(pins) + "\n")
    return python


def _last(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip() and not line.startswith("WARNING")]
    return lines[-1] if lines else "(no output)"


def run(request: dict[str, Any], timeout_s: float = 3600.0) -> dict[str, Any]:
    """Run one request in the TRL 0.12 environment and return its JSON reply.

    request: {"task": "dpo" | "sft", "model": folder, "rows": [...], "config": {...}} (see the child).
    """
    python = env_python()
    with tempfile.TemporaryDirectory(prefix="repro-trl012-") as tmp:
        req = Path(tmp) / "request.json"
        out = Path(tmp) / "reply.json"
        req.write_text(json.dumps(request))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        # The reference never touches the Hub: every file it reads is a local folder.
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", HF_DATASETS_CACHE=str(Path(tmp) / "hf-datasets"),
                   WANDB_DISABLED="true")
        done = subprocess.run([str(python), _CHILD, str(req), str(out), tmp], capture_output=True, text=True,
                              env=env, cwd=tmp, timeout=timeout_s)
        if done.returncode != 0 or not out.is_file():
            tail = "\n".join(done.stderr.strip().splitlines()[-15:])
            raise TrlReplayError(f"the TRL 0.12 reference failed (exit {done.returncode}):\n{tail}")
        return json.loads(out.read_text())
