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

import json
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


# Short names for the configs kept in runner/configs (`--deepspeed zero2`); a file name there or a path works too.
DEEPSPEED_ALIASES = {
    "zero2": "zero2_cpu.json",
    "zero3": "stage3_no_offloading_accelerate.conf",
    "zero3_offload": "stage3_offloading_accelerate.conf",
}


def resolve_deepspeed_config(name: str) -> Path:
    """The DeepSpeed JSON a `--deepspeed` value names; one-line ReproError when there is none."""
    from registry.errors import ReproError

    candidates = [CONFIGS / DEEPSPEED_ALIASES.get(name, name), Path(name).expanduser()]
    for path in candidates:
        if path.is_file():
            try:
                json.loads(path.read_text())
            except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                raise ReproError(f"DeepSpeed config {path} is not valid JSON: {str(exc).splitlines()[0]}") from None
            except OSError as exc:
                raise ReproError(f"cannot read DeepSpeed config {path}: {exc.strerror}") from None
            return path.resolve()
    known = sorted(DEEPSPEED_ALIASES) + sorted(p.name for p in CONFIGS.iterdir() if p.suffix in (".json", ".conf"))
    raise ReproError(f"unknown DeepSpeed config {name!r} (valid: {', '.join(known)}, or a path to a JSON file)")


def cpu_launch(num_processes: int, run_dir: Path, deepspeed: str | None = None) -> tuple[list[str], dict[str, str]]:
    """argv and env for N real CPU processes (gloo).

    `--cpu` would be the obvious flag, but with it accelerate starts a single process whatever
    --num_processes says; `--multi_gpu` with ACCELERATE_USE_CPU=1 goes through torchrun and starts N.
    """
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    argv = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
            str(num_processes), "--num_machines", "1", "--main_process_port", str(_free_port()),
            "--mixed_precision", "no", "--dynamo_backend", "no"]
    if deepspeed:
        env["REPRO_DEEPSPEED_CONFIG"] = str(resolve_deepspeed_config(deepspeed))
        # DeepSpeed JIT-builds a CPU op on first use (~30-60 s); a stable cache dir makes that once per machine.
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "repro" / "torch_extensions"))
    # The workers import runner from this source tree whether or not the project is installed.
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
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


def deepspeed_config_for(path: str | Path, plan: RunPlan | None, num_processes: int) -> dict[str, Any]:
    """The DeepSpeed config with its "auto" entries filled from the plan, as accelerate would from a dataloader.

    The stages feed micro-batches themselves (no DataLoader for accelerate to read a batch size from), so
    accelerate cannot fill train_micro_batch_size_per_gpu; and its default clipping (1.0) must be the plan's.
    """
    config = json.loads(Path(path).read_text())
    if plan is None:
        return config
    pd = int(plan.hp("per_device_batch_size", 1))
    ga = int(plan.hp("gradient_accumulation_steps", 1))
    clip = plan.hp("max_grad_norm", 1.0)
    fill = {"train_micro_batch_size_per_gpu": pd, "gradient_accumulation_steps": ga,
            "train_batch_size": pd * ga * num_processes, "gradient_clipping": float(clip or 0.0)}
    for key, value in fill.items():
        if config.get(key, "auto") == "auto":
            config[key] = value
    for key in ("bf16", "fp16"):  # the CPU path trains in fp32, as the 1-process run does
        if isinstance(config.get(key), dict) and config[key].get("enabled") == "auto":
            config[key]["enabled"] = False
    return config


def make_accelerator(plan: RunPlan | None = None):  # noqa: ANN201
    """The Accelerator for a launched worker: DDP on gloo, or DeepSpeed when a config is given."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType

    class _Accelerator(Accelerator):
        """DeepSpeed must see the optimizer when it wraps the model; the stages prepare the model alone
        (runner.stages.common.build_trainer) before the Trainer builds the optimizer, so a lone module is
        returned as is under DeepSpeed and the Trainer prepares model + optimizer together."""

        def prepare(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            import torch

            if (self.distributed_type == DistributedType.DEEPSPEED and len(args) == 1
                    and isinstance(args[0], torch.nn.Module)):
                return args[0]
            return super().prepare(*args, **kwargs)

    ds_config = os.environ.get("REPRO_DEEPSPEED_CONFIG")
    if ds_config:
        from accelerate.utils import DeepSpeedPlugin

        world = int(os.environ.get("WORLD_SIZE", "1"))
        config = deepspeed_config_for(ds_config, plan, world)
        plugin = DeepSpeedPlugin(hf_ds_config=config)
        ga = config.get("gradient_accumulation_steps")
        return _Accelerator(cpu=True, deepspeed_plugin=plugin,
                            gradient_accumulation_steps=ga if isinstance(ga, int) else 1)
    return _Accelerator(cpu=True)


def worker_main(run_dir: Path) -> None:
    """One launched process: train the planned stage; rank 0 writes the record."""
    import importlib

    from runner.execute import STAGE_MODULES
    from runner.records import RunRecord
    from runner.stagekit import StageContext

    record = RunRecord.load(run_dir)
    accelerator = make_accelerator(record.plan)
    ctx = StageContext(plan=record.plan, record=record, accelerator=accelerator,
                       max_updates=record.plan.extra.get("max_updates"))
    importlib.import_module(STAGE_MODULES[record.plan.stage]).run(ctx)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        record.save()
    accelerator.end_training()  # destroys the process group: no "destroy_process_group() was not called" warning


def describe(plan: RunPlan) -> dict[str, Any]:
    """What `repro run` will start for this plan. The smoke profile runs in this process, on CPU in float32:
    its command is that, and the recorded launch stays beside it for comparison, labelled as not run."""
    if plan.profile == "smoke":
        argv = ["repro", "run", plan.recipe, "--stage", plan.stage, "--profile", "smoke"]
        return {"launcher": "local (in-process, CPU, float32)", "argv": argv, "command": shell(argv),
                "recorded_launch": {"argv": recorded_launch(plan), "command": shell(recorded_launch(plan)),
                                    "run": False}}
    out = {"launcher": plan.layout.get("launcher"), "argv": recorded_launch(plan),
           "command": shell(recorded_launch(plan))}
    ds = plan.layout.get("deepspeed_config")
    if ds and (CONFIGS / ds).is_file():
        text = (CONFIGS / ds).read_text()
        try:
            out["deepspeed_config"] = {"file": ds, "config": json.loads(text)}
        except ValueError:  # the accelerate YAML of the RM stage: shown as text
            out["deepspeed_config"] = {"file": ds, "text": text}
    return out
