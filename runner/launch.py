"""Launch commands: the recorded multi-GPU layouts, and real multi-process runs on CPU.

The recorded profile launches what the recipe recorded (accelerate + DeepSpeed
ZeRO-3 for Tülu SFT/DPO/RM, Ray + vLLM for RLVR, torchrun for nanotron-style
pretraining), with `runner.execute` as the entry point in every process.

On CPU, `--launcher accelerate --num-processes N` starts N real processes on
gloo. Note: `accelerate launch --cpu --num_processes 2` silently starts one
process; `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`
starts two, which is what this module does.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from runner.plan import RunPlan

CONFIGS = Path(__file__).resolve().parent / "configs"


def recorded_launch(plan: RunPlan, run_dir: str = "RUN_DIR") -> list[str]:
    """The argv that runs this stage at its recorded layout."""
    hp, layout = plan.hyperparameters, plan.layout
    entry = ["-m", "runner.execute", "--run-dir", run_dir]
    launcher = layout.get("launcher")
    if launcher == "ray":
        return ["python", *entry]  # runner.execute starts the Ray actors (learners + vLLM engine)
    if launcher in ("nanotron", "torchrun"):
        gpus = layout.get("gpus") or hp.get("num_processes") or 1
        nodes = layout.get("nodes") or 1
        return ["torchrun", f"--nnodes={nodes}", f"--nproc_per_node={max(1, gpus // nodes)}", *entry]
    ds = layout.get("deepspeed_config") or ""
    if ds.endswith(".yaml"):
        return ["accelerate", "launch", "--config_file", str(CONFIGS / ds), *entry]
    argv = ["accelerate", "launch", "--mixed_precision", "bf16",
            "--num_machines", str(hp.get("num_machines") or layout.get("nodes") or 1),
            "--num_processes", str(hp.get("num_processes") or layout.get("gpus") or 1)]
    if ds:
        argv += ["--use_deepspeed", "--deepspeed_config_file", str(CONFIGS / ds),
                 "--deepspeed_multinode_launcher", "standard"]
    return argv + entry


def cpu_launch(num_processes: int, run_dir: Path, deepspeed: str | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and env for N real CPU processes (gloo)."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(num_processes), "--num_machines", "1", "--main_process_port", str(_free_port()),
            "--mixed_precision", "no", "--dynamo_backend", "no"]
    if deepspeed:
        env["REPRO_DEEPSPEED_CONFIG"] = str(CONFIGS / deepspeed)
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "repro" / "torch_extensions"))
    return argv + ["-m", "runner.execute", "--run-dir", str(run_dir)], env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cpu_processes(num_processes: int, run_dir: Path, deepspeed: str | None = None) -> int:
    argv, env = cpu_launch(num_processes, run_dir, deepspeed)
    log = run_dir / "launch.log"
    with open(log, "w") as fh:
        proc = subprocess.run(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=Path(__file__).parent.parent)
    return proc.returncode


def shell(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def make_accelerator():  # noqa: ANN201
    """The Accelerator for a launched worker: DDP on gloo, or DeepSpeed when a config is given."""
    from accelerate import Accelerator

    ds_config = os.environ.get("REPRO_DEEPSPEED_CONFIG")
    if ds_config:
        from accelerate.utils import DeepSpeedPlugin

        return Accelerator(cpu=True, deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds_config))
    return Accelerator(cpu=True)


def worker_main(run_dir: Path) -> None:
    """One launched process: train the planned stage; rank 0 writes the record."""
    import importlib

    from runner.execute import STAGE_MODULES
    from runner.records import RunRecord
    from runner.stagekit import StageContext

    accelerator = make_accelerator()
    record = RunRecord.load(run_dir)
    ctx = StageContext(plan=record.plan, record=record, accelerator=accelerator,
                       max_updates=record.plan.extra.get("max_updates"))
    importlib.import_module(STAGE_MODULES[record.plan.stage]).run(ctx)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record.save()


def describe(plan: RunPlan) -> dict[str, Any]:
    return {"launcher": plan.layout.get("launcher"), "argv": recorded_launch(plan),
            "command": shell(recorded_launch(plan))}
