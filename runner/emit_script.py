"""`repro run RECIPE --stage S --emit-script FILE [--gpus N]`: the literal upstream route as a bash script.

For people who want the upstream code itself rather than this project's reimplementation: the script
checks out the recorded code pin, installs the environment that pin declares, and runs the recorded command
verbatim, with only the layout flags the planner changes for N GPUs rewritten (the planner keeps the
effective batch; `repro plan` shows why). A change the recorded command has no flag for is refused rather
than dropped, and a value recipes.json does not record (the nanotron commit of the SmolLM2 pretraining runs)
is never guessed: that stage is refused.
"""

from __future__ import annotations

import os
import shlex
import tempfile
from pathlib import Path
from typing import Any

from registry.errors import ReproError
from registry.recipes import Registry

# Planner layout key -> the native flag that sets it, per launcher segment and script family.
ACCELERATE_FLAGS = {"num_processes": "--num_processes", "num_machines": "--num_machines"}
SCRIPT_FLAGS = {
    "open-instruct": {"per_device_batch_size": "--per_device_train_batch_size",
                      "gradient_accumulation_steps": "--gradient_accumulation_steps"},
    "alignment-handbook": {"per_device_batch_size": "--per_device_train_batch_size",
                           "gradient_accumulation_steps": "--gradient_accumulation_steps"},
    # ppo_vllm_thread_ray_gtrl.py sizes its own processes from the actor GPUs; accumulation follows from
    # local_mini_batch_size / per_device_train_batch_size, so those two planner keys need no flag.
    "open-instruct-ray": {"actor_gpus_per_node": "--actor_num_gpus_per_node", "vllm_engines": "--vllm_num_engines",
                          "vllm_tensor_parallel_size": "--vllm_tensor_parallel_size",
                          "local_rollout_batch_size": "--local_rollout_batch_size",
                          "local_mini_batch_size": "--local_mini_batch_size",
                          "per_device_batch_size": "--per_device_train_batch_size"},
}
IMPLIED = {"open-instruct-ray": {"num_processes", "num_machines", "gradient_accumulation_steps", "actor_gpus"}}

# What each pin's own files install, read at the pin: open-instruct@3dd7a07's Dockerfile installs torch
# 2.4.0 (CUDA 12.1 wheels) and flash-attn 2.6.3 before requirements.txt and the package itself.
PIN_SETUP = {
    ("https://github.com/allenai/open-instruct", "3dd7a07da07e78550e7be48a7d317ec3d9c9cd6d"): [
        'pip install --upgrade pip "setuptools<70.0.0" wheel',
        "pip install torch==2.4.0 torchvision==0.19.0 torchaudio==2.4.0 --index-url "
        "https://download.pytorch.org/whl/cu121",
        "pip install packaging",
        "pip install flash-attn==2.6.3 --no-build-isolation",
        "pip install -r requirements.txt",
        "pip install -e .",
    ],
}
GENERIC_SETUP = ["pip install --upgrade pip wheel",
                 "if [ -f requirements.txt ]; then pip install -r requirements.txt; fi",
                 "pip install -e ."]


def recorded_tokens(text: str) -> list[str]:
    return shlex.split(text.replace("\\\n", " "))


def _family(tokens: list[str], repository: str) -> str:
    if "alignment-handbook" in repository:
        return "alignment-handbook"
    if any(t.endswith("ppo_vllm_thread_ray_gtrl.py") for t in tokens):
        return "open-instruct-ray"
    return "open-instruct"


def _script_index(tokens: list[str]) -> int:
    for i, tok in enumerate(tokens):
        if tok.endswith(".py"):
            return i
    raise ReproError("the recorded command names no Python script; it cannot be rescaled")


def _set_flag(tokens: list[str], lo: int, hi: int, flag: str, values: list[str]) -> list[str]:
    """Replace `flag`'s values within tokens[lo:hi], or insert the flag at hi when the command lacks it."""
    for i in range(lo, hi):
        if tokens[i] == flag:
            j = i + 1
            while j < hi and not tokens[j].startswith("--"):
                j += 1
            return tokens[:i + 1] + values + tokens[j:]
        if tokens[i].startswith(flag + "="):
            return tokens[:i] + [f"{flag}={' '.join(values)}"] + tokens[i + 1:]
    return tokens[:hi] + [flag, *values] + tokens[hi:]


def rescale(tokens: list[str], family: str, changes: list[dict[str, Any]], layout: dict[str, Any]) -> list[str]:
    """The recorded argv with the planner's layout changes written into their native flags."""
    out = list(tokens)
    keys = {c["key"] for c in changes}
    if family == "open-instruct-ray" and keys & {"actor_gpus", "num_machines"}:
        keys.add("actor_gpus_per_node")  # the flag takes the per-node list
    flags = SCRIPT_FLAGS[family]
    for key in sorted(keys):
        value = layout.get(key)
        values = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        script = _script_index(out)
        if key in flags:
            if family == "alignment-handbook":  # its parser reads `--key=value` overrides after the recipe YAML
                out = [t for t in out if not t.startswith(flags[key] + "=")] + [f"{flags[key]}={values[0]}"]
            else:
                out = _set_flag(out, script + 1, len(out), flags[key], values)
        elif key in ACCELERATE_FLAGS and out[:2] == ["accelerate", "launch"]:
            out = _set_flag(out, 2, script, ACCELERATE_FLAGS[key], values)
        elif key == "deepspeed_config" and out[:2] == ["accelerate", "launch"]:
            flag = "--config_file" if str(value).endswith(".yaml") else "--deepspeed_config_file"
            out = _set_flag(out, 2, script, flag, [f"configs/ds_configs/{value}"])
        elif key not in IMPLIED.get(family, set()):
            raise ReproError(f"the planned change {key}={value} has no flag in the recorded command; emit the "
                             f"script for a layout without it (see `repro plan`)")
    return out


def build(reg: Registry, recipe: str, stage: str, gpus: int | None, nodes: int | None = None) -> str:
    """The bash script's text."""
    st = reg.stage(recipe, stage)
    if st.command is None:
        raise ReproError(f"{recipe}:{stage} has no published launch command (see `repro audit {recipe}`); there "
                         "is no upstream route to emit")
    pin = st.code
    tokens = recorded_tokens(st.command.text)
    family = _family(tokens, pin.repository)
    changes: list[dict[str, Any]] = []
    layout: dict[str, Any] = {}
    if gpus is not None:
        from runner.layouts import plan_layout

        result = plan_layout(reg, recipe, stage, gpus, nodes=nodes).to_dict()
        if not result["feasible"]:
            raise ReproError(f"no layout on {gpus} GPUs keeps {recipe}:{stage}'s invariants "
                             f"({', '.join(result['broken'])}); "
                             f"see `repro plan {recipe} --stage {stage} --gpus {gpus}`")
        changes, layout = result["changes"], result["layout"]
        recorded_ds = st.layout.deepspeed_config  # only a command that names a config file can have it swapped
        if recorded_ds and layout.get("deepspeed_config") and layout["deepspeed_config"] != recorded_ds:
            changes = [*changes, {"key": "deepspeed_config", "recorded": st.layout.deepspeed_config,
                                  "planned": layout["deepspeed_config"]}]
    argv = rescale(tokens, family, changes, layout)
    machines = int(layout.get("num_machines") or st.layout.nodes or 1)
    lines = [
        "#!/usr/bin/env bash",
        f"# {recipe}:{stage} by the literal upstream route, written by `repro run {recipe} --stage {stage} "
        f"--emit-script FILE{f' --gpus {gpus}' if gpus else ''}`.",
        f"# Code: {pin.repository} @ {pin.commit} ({pin.entry_point}; source {pin.source}).",
        f"# Command: as recorded ({st.command.source}), "
        + ("with the planner's layout changes:" if changes else "unchanged (the recorded layout)."),
        *[f"#   {c['key']}: {c['recorded']} -> {c['planned']}" for c in changes],
        "set -euo pipefail",
        f'WORKDIR="${{WORKDIR:-$PWD/{Path(pin.repository).name}-{pin.commit[:12]}}}"',
        f'[ -d "$WORKDIR/.git" ] || git clone {shlex.quote(pin.repository)} "$WORKDIR"',
        'cd "$WORKDIR"',
        f"git checkout --quiet {shlex.quote(pin.commit)}",
        '[ -d .venv ] || python3 -m venv .venv',
        ". .venv/bin/activate",
        "# The environment the pin itself declares:",
        *PIN_SETUP.get((pin.repository, pin.commit), GENERIC_SETUP),
    ]
    if machines > 1 and family == "open-instruct-ray":
        lines += [f"# {machines} machines: start a Ray cluster over them (`ray start --head` here, `ray start "
                  "--address` on the others) and run this script on the head node.",
                  ': "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray cluster this script joins}"']
    elif machines > 1:
        lines += [f"# {machines} machines: run this script on each, with its rank and the first node's address.",
                  ': "${MACHINE_RANK:?set MACHINE_RANK (0 on the main node)}"',
                  ': "${MAIN_PROCESS_IP:?set MAIN_PROCESS_IP (the main node)}"']
        if argv[:2] == ["accelerate", "launch"]:
            script = _script_index(argv)
            argv = argv[:script] + ["--machine_rank", "$MACHINE_RANK", "--main_process_ip", "$MAIN_PROCESS_IP",
                                    "--main_process_port", "${MAIN_PROCESS_PORT:-29500}"] + argv[script:]
    lines += ["# --- the recorded command ---", " ".join(_quote(t) for t in argv), ""]
    return "\n".join(lines)


def _quote(token: str) -> str:
    # Keep the multi-node variables expandable; quote everything else as the recording spelled it.
    return f'"{token}"' if token.startswith("$") else shlex.quote(token)


def write(path: Path, text: str) -> Path:
    """Write the script atomically, never over an existing file."""
    path = path.expanduser()
    if path.exists():
        raise ReproError(f"--emit-script {path} exists; name a new file (nothing was overwritten)")
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o755)
        os.link(tmp, path)  # fails if the path appeared meanwhile: no overwrite
        os.unlink(tmp)
    except FileExistsError:
        if tmp is not None:
            os.unlink(tmp)
        raise ReproError(f"--emit-script {path} exists; name a new file (nothing was overwritten)") from None
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise ReproError(f"cannot write --emit-script {path}: {exc.strerror}") from None
    return path
