"""Resumable training state as one safetensors file: tensors as tensors, everything else as JSON.

Nothing here unpickles. A pickled state (`torch.load` without `weights_only=True`) runs whatever code the file
names, and the file's path comes from a run directory and a database that other people can write: a
crafted `latest.pt` would run in the next user's process. So the state tree (module and optimizer state
dicts, scheduler state, the torch and Python RNG states, the stage's own extras) is split into its tensors,
stored as safetensors, and a JSON skeleton of everything else, stored in the same file's metadata header.

Each save writes a new `state-<step>.safetensors` and returns its reference (file, sha256, step). The run
records that reference in run.json before older state files are removed, so a kill at any moment leaves the
reference pointing at a complete file; a resume loads only the file the record names, and only when its
bytes hash to the recorded digest.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import struct
from pathlib import Path
from typing import Any

import torch

PREFIX = "state-"
SUFFIX = ".safetensors"


class StateError(ValueError):
    """A state file that must not be loaded (missing, altered, or not one this module wrote)."""


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = value.detach().clone().contiguous().cpu()  # own storage: safetensors refuses shared
        return {"X": name}
    if isinstance(value, float) and not math.isfinite(value):
        return {"F": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"T": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return {"L": [_encode(v, tensors) for v in value]}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {"D": {k: _encode(v, tensors) for k, v in value.items()}}
        return {"P": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    raise TypeError(f"training state holds a {type(value).__name__}, which is neither a tensor nor plain data")


def _decode(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if not isinstance(node, dict):
        return node
    (tag, body), = node.items()
    if tag == "X":
        return tensors[body]
    if tag == "F":
        return float(body)
    if tag == "T":
        return tuple(_decode(v, tensors) for v in body)
    if tag == "L":
        return [_decode(v, tensors) for v in body]
    if tag == "D":
        return {k: _decode(v, tensors) for k, v in body.items()}
    if tag == "P":
        return {_decode(k, tensors): _decode(v, tensors) for k, v in body}
    raise StateError(f"unknown node {tag!r} in the state skeleton")


def save(state_dir: Path, step: int, tree: dict[str, Any]) -> dict[str, Any]:
    """Write `tree` as state-<step>.safetensors (atomically) and return its reference."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(_encode(tree, tensors), separators=(",", ":"), allow_nan=False)
    blob = save(tensors, metadata={"repro_state": skeleton, "step": str(step)})
    state_dir.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{step:08d}{SUFFIX}"
    tmp = state_dir / (name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, state_dir / name)
    if os.environ.get("REPRO_KILL_AFTER_STATE_WRITE") == str(step):
        # Tests kill a run in the window between a new state file and run.json naming it (a real SIGKILL).
        os.kill(os.getpid(), signal.SIGKILL)
    return {"file": name, "sha256": hashlib.sha256(blob).hexdigest(), "step": step}


def load(state_dir: Path, ref: dict[str, Any] | None) -> dict[str, Any]:
    """The state tree a reference names, after checking the file's bytes against the recorded sha256."""
    from safetensors.torch import load as load_tensors

    if not ref or not isinstance(ref.get("file"), str) or not isinstance(ref.get("sha256"), str):
        raise StateError("the run recorded no state reference")
    name = ref["file"]
    if Path(name).name != name or not (name.startswith(PREFIX) and name.endswith(SUFFIX)):
        raise StateError(f"the recorded state file name {name!r} is not one this tool writes")
    path = state_dir / name
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise StateError(f"state file {path} cannot be read ({exc.strerror})") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != ref["sha256"]:
        raise StateError(f"state file {path} hashes to {digest[:12]}, not the recorded {ref['sha256'][:12]}: "
                         "it was altered after the run saved it")
    try:
        (header_len,) = struct.unpack("<Q", blob[:8])
        metadata = json.loads(blob[8:8 + header_len]).get("__metadata__") or {}
        skeleton = json.loads(metadata["repro_state"])
        tensors = load_tensors(blob)
        return _decode(skeleton, tensors)
    except Exception as exc:  # safetensors raises its own error type; any failure here means "not ours"
        raise StateError(f"state file {path} is not a state file this tool wrote ({type(exc).__name__})") from None


def prune(state_dir: Path, keep: str) -> None:
    """Remove the older state files this module wrote (by their name pattern); nothing else."""
    for path in [*state_dir.glob(f"{PREFIX}*{SUFFIX}"), *state_dir.glob(f"{PREFIX}*{SUFFIX}.tmp")]:
        if path.name != keep:
            path.unlink(missing_ok=True)
