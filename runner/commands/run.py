"""`repro run`: plan, check, execute (or resume) one stage.

Argument parsing and printing only: every change to the plan is a named function of runner.plan, the
run itself is runner.execute / runner.launched, and the database is written there, never here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from registry.cli import console, emit_json, fmt, registry
from registry.errors import ReproError


def _parse_inputs(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ReproError(f"invalid --input {pair!r}: expected ROLE=PATH_OR_RUN (e.g. --input init=/path/to/model)")
        role, value = pair.split("=", 1)
        out[role.strip()] = value.strip()
    return out


def run_cmd(
    recipe: str,
    stage: str = typer.Option(..., "--stage", "-s"),
    profile: str = typer.Option("recorded", "--profile", help="recorded (default) or smoke"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved plan and launch command; run nothing."),
    resume: bool = typer.Option(False, "--resume", help="Continue the latest interrupted run of this stage."),
    resume_run: Optional[str] = typer.Option(None, "--resume-run", metavar="RUN_ID",
                                             help="Continue this run (interrupted or failed) by its id."),
    sets: list[str] = typer.Option([], "--set", metavar="KEY=VALUE",
                                   help="Override a canonical hyperparameter (repeatable)."),
    inputs: list[str] = typer.Option([], "--input", metavar="ROLE=PATH_OR_RUN",
                                     help="Substitute an input checkpoint (repeatable)."),
    output_dir: Optional[Path] = typer.Option(None, "--output-dir", help="Write the run directory here."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Stop after N optimizer steps."),
    launcher: str = typer.Option("local", "--launcher",
                                 help="local (recorded profile: its recorded launcher on this node's GPUs) | "
                                      "accelerate (N CPU processes)"),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", min=1,
                                                help="processes for --launcher accelerate on CPU (default 2; a "
                                                     "resume: the interrupted run's)"),
    deepspeed: Optional[str] = typer.Option(None, "--deepspeed", help="DeepSpeed config for --launcher accelerate"),
    ray: bool = typer.Option(False, "--ray", help="RLVR: learner and generation engine as Ray actors (local)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="RLVR: join this Ray cluster."),
    tensorboard: bool = typer.Option(False, "--tensorboard", help="Also log to RUN_DIR/tensorboard."),
    emit_script: Optional[Path] = typer.Option(None, "--emit-script", metavar="FILE",
                                               help="Write a bash script that runs the recorded upstream code."),
    gpus: Optional[int] = typer.Option(None, "--gpus", min=1,
                                       help="Rescale to N GPUs by the planner (same effective batch; deviations)."),
    nodes: Optional[int] = typer.Option(None, "--nodes", min=1, help="With --gpus: lay them over N nodes."),
    num_machines: int = typer.Option(1, "--num-machines", min=1, envvar="REPRO_NUM_MACHINES",
                                     help="Multi-node: nodes running this same command."),
    machine_rank: int = typer.Option(0, "--machine-rank", min=0, envvar="REPRO_MACHINE_RANK",
                                     help="Multi-node: this node's rank (0 owns the record)."),
    main_process_ip: Optional[str] = typer.Option(None, "--main-process-ip", envvar="REPRO_MAIN_PROCESS_IP",
                                                  help="Multi-node: the address of machine rank 0."),
    main_process_port: int = typer.Option(29500, "--main-process-port", envvar="REPRO_MAIN_PROCESS_PORT",
                                          help="Multi-node: the rendezvous port on machine rank 0."),
    hub_mirror: Optional[Path] = typer.Option(None, "--hub-mirror", metavar="DIR",
                                              help="Serve datasets and models from DIR/<org>/<name>/ (as "
                                                   "REPRO_HUB_MIRROR)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="bf16 | fp16 | fp32 instead of the recorded "
                                                                      "precision (a deviation)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu: run the recorded profile in one CPU process "
                                                                "(a deviation)."),
    public_stand_in: bool = typer.Option(False, "--public-stand-in",
                                         help="Train on the public stand-in of unreleased recorded data "
                                              "(a deviation)."),
    as_json: bool = typer.Option(False, "--json"),
):
    """Execute one stage (or print its plan with --dry-run)."""
    from runner import plan as plans
    from runner.launch import describe

    reg = registry()
    reg.stage(recipe, stage)
    resuming = resume or resume_run is not None
    if emit_script is not None:
        from runner import emit_script as emit

        path = emit.write(emit_script, emit.build(reg, recipe, stage, gpus, nodes))
        if as_json:
            return emit_json({"script": str(path), "recipe": recipe, "stage": stage, "gpus": gpus})
        return console().print(f"wrote {path}: {recipe}:{stage} by the upstream code"
                               + (f", rescaled to {gpus} GPUs" if gpus else ", at the recorded layout"))
    if (gpus is not None or nodes is not None) and profile != "recorded":
        raise ReproError("--gpus and --nodes apply to the recorded profile and --emit-script (the smoke profile runs "
                         "on CPU)")
    if nodes is not None and gpus is None:
        raise ReproError("--nodes needs --gpus N (the planner lays N GPUs over the nodes)")
    from runner.launch import Nodes

    node_spec = Nodes(num_machines, machine_rank, main_process_ip, main_process_port)
    if node_spec != Nodes(main_process_ip=main_process_ip, main_process_port=main_process_port) and (
            profile != "recorded" or launcher != "local"):
        raise ReproError("--num-machines/--machine-rank apply to the recorded profile's own launcher "
                         "(--profile recorded, --launcher local)")
    if launcher not in ("local", "accelerate"):
        raise ReproError(f"unknown launcher {launcher!r} (valid: local, accelerate)")
    if deepspeed is not None:
        from runner.launch import resolve_deepspeed_config

        resolve_deepspeed_config(deepspeed)  # validated whatever the launcher: a bad name is bad input
        if launcher != "accelerate":
            raise ReproError(f"--deepspeed {deepspeed} needs --launcher accelerate (the local launcher runs one "
                             "process without DeepSpeed)")
        if resuming:
            from runner.launched import DEEPSPEED_NO_RESUME

            raise ReproError(DEEPSPEED_NO_RESUME)
    if output_dir is not None:
        from runner.records import check_output_dir

        check_output_dir(output_dir)
    overrides = plans.parse_sets(sets)
    substitutes = _parse_inputs(inputs)
    plan = plans.resolve(reg, recipe, stage, profile, overrides)
    mirror = plans.apply_recorded_options(plan, reg, hub_mirror, precision, device, public_stand_in, launcher)
    plans.limit_updates(plan, max_steps)
    if gpus is not None:
        if plan.extra.get("device") == "cpu":
            raise ReproError("--gpus lays the stage out on GPUs; --device cpu runs it on CPU: give one of them")
        plans.apply_layout(plan, reg, gpus, nodes or (num_machines if num_machines > 1 else None))
    own_launcher = profile == "recorded" and launcher == "local" and plan.extra.get("device") != "cpu"
    if own_launcher:
        if node_spec.num_machines > 1:  # flags that disagree with the plan come before the GPU count they imply
            from runner.launch import check_nodes

            check_nodes(plan, node_spec)
        if resuming:
            from runner.launched import recorded_resume_blocker

            blocker = recorded_resume_blocker(plan, node_spec)  # DeepSpeed, Ray, several nodes
            if blocker:
                raise ReproError(blocker)
    if ray or ray_address is not None:
        if stage != "rlvr":
            raise ReproError("--ray and --ray-address apply to the rlvr stage only")
        if ray_address is not None:
            from runner.stages.rlvr_ray import check_address

            check_address(ray_address)
        plans.use_ray(plan, ray_address)
    if dry_run:
        doc = {"plan": plan.to_json(), "launch": describe(plan, node_spec),
               "recorded_command": (reg.stage(recipe, stage).command.text
                                    if reg.stage(recipe, stage).command else None)}
        if as_json:
            return emit_json(doc)
        return _print_plan(plan, doc)
    if profile == "recorded":
        from runner.launched import recorded_blockers

        missing = recorded_blockers(plan, node_spec)
        if missing:
            raise ReproError(f"the recorded profile of {recipe}:{stage} needs {'; '.join(missing)}. See it with "
                             f"`repro run {recipe} --stage {stage} --dry-run` or `repro plan {recipe} --stage {stage} "
                             f"--gpus N`, or run the miniature with --profile smoke")
    from runner.execute import execute, find_resumable, preflight, resolve_inputs

    resume_record = None
    if resuming:
        from runner.launched import check_launched_resume

        resume_record = find_resumable(recipe, stage, profile, resume_run)
        # A launched run continues on its own process count; a DeepSpeed run does not continue at all.
        mode = "accelerate" if launcher == "accelerate" else "recorded" if own_launcher else "in-process"
        num_processes = check_launched_resume(resume_record, mode, num_processes)
        if own_launcher:  # the interrupted run's layout is what launches: check it, not this command's
            from runner.launched import recorded_blockers, recorded_resume_blocker

            missing = recorded_blockers(resume_record.plan, node_spec)
            blocker = recorded_resume_blocker(resume_record.plan, node_spec)
            if blocker or missing:
                raise ReproError(blocker or f"run {resume_record.run_id} needs {'; '.join(missing)} to resume")
        plan = resume_record.plan
        plans.limit_updates(plan, max_steps)  # this invocation's --max-steps, not the interrupted one's
        resolved = resume_record.inputs
    else:
        preflight(plan)
        resolved = resolve_inputs(reg, plan, substitutes)
        plans.attach_inputs(plan, resolved)
        from runner.stages.kit import check_models

        check_models(plan, reg, mirror)
    if launcher == "accelerate":
        from runner.launched import run_multiprocess

        record = run_multiprocess(plan, resolved, num_processes or 2, deepspeed, output_dir, resume_record)
    elif own_launcher:
        from runner.launched import run_recorded

        record = run_recorded(plan, resolved, node_spec, output_dir, resume_record)
        if record is None:  # machine rank > 0: rank 0 owns and finishes the record
            done = {"node": machine_rank, "num_machines": num_machines, "status": "finished"}
            if as_json:
                return emit_json(done)
            return console().print(f"node {machine_rank} of {num_machines} finished; the record is on machine rank 0")
    else:
        with _progress(plan, as_json) as progress:
            record = execute(plan, resolved, resume_record=resume_record, output_dir=output_dir,
                             progress=progress, tensorboard=tensorboard)
    summary = {"run_id": record.run_id, "status": record.status, "run_dir": str(record.run_dir),
               "final_metrics": record.final_metrics, "deviations": len(record.plan.deviations)}
    if as_json:
        return emit_json(summary)
    out = console()
    out.print(f"[bold green]{record.status}[/bold green] {record.run_id}  →  {record.run_dir}")
    out.print("final: " + ", ".join(f"{k}={fmt(v)}" for k, v in record.final_metrics.items() if v is not None))
    out.print(f"{len(record.plan.deviations)} deviations from the recording (repro runs / run.json)")


class _progress:
    """A rich progress bar on stderr (stdout stays clean for --json).

    The stage reports its update count through `total()` once it knows it (SmolLM2 SFT packs its
    rows, so only the encoded data tell): rich needs the total for the bar and the ETA."""

    def __init__(self, plan, quiet: bool) -> None:
        self.plan, self.quiet = plan, quiet or not sys.stderr.isatty()
        self.bar = None
        self.updates: int | None = None
        self.started = False

    def __enter__(self):
        if self.quiet:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn(f"{self.plan.recipe}:{self.plan.stage}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} steps {task.fields[info]}"),
                            TimeRemainingColumn(), console=Console(stderr=True))
        self.bar.start()
        self.task = self.bar.add_task("run", total=None, info="")
        return self

    def total(self, updates: int) -> None:
        if updates != self.updates:
            self.updates = updates
            self.bar.update(self.task, total=updates)

    def __call__(self, metrics: dict[str, Any]) -> None:
        info = " ".join(f"{k} {v:.4g}" for k, v in metrics.items() if k in ("loss", "lr", "reward_mean"))
        if not self.started:
            # A resumed run starts at its saved update: reset so the rate (and the ETA) counts only
            # updates done in this process, not the jump from 0.
            self.started = True
            self.bar.reset(self.task, total=self.updates, completed=metrics["step"], info=info)
            return
        self.bar.update(self.task, completed=metrics["step"], info=info)

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _print_plan(plan, doc: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    out.print(f"[bold]{plan.recipe}:{plan.stage}[/bold] ({plan.profile} profile) — plan only, nothing run")
    hp = plan.hyperparameters
    out.print(f"layout: {hp.get('num_processes', '?')} processes × {hp.get('per_device_batch_size', '?')} per device × "
              f"{hp.get('gradient_accumulation_steps', '?')} accumulation = effective "
              f"{hp.get('effective_batch_size')} {plan.layout.get('unit', '')}; "
              f"deepspeed {_deepspeed_label(plan.layout)}")
    table = Table(title="hyperparameters (resolved)")
    for col in ("key", "value", "recorded"):
        table.add_column(col, overflow="fold")
    for key, value in hp.items():
        table.add_row(key, fmt(value), "" if plan.recorded.get(key) == value else fmt(plan.recorded.get(key)))
    out.print(table)
    if plan.deviations:
        dev = Table(title=f"deviations ({len(plan.deviations)})")
        for col in ("key", "recorded", "value", "reason"):
            dev.add_column(col, overflow="fold")
        for d in plan.deviations:
            dev.add_row(d["key"], fmt(d["recorded"]), fmt(d["value"]), d["reason"])
        out.print(dev)
    out.print(f"launch ({doc['launch']['launcher']}):")
    out.print(doc["launch"]["command"], markup=False, highlight=False)
    if doc["launch"].get("recorded_launch"):
        out.print("recorded launch (not run by this profile):")
        out.print(doc["launch"]["recorded_launch"]["command"], markup=False, highlight=False)
    if doc.get("recorded_command"):
        out.print("recorded command:")
        out.print(doc["recorded_command"], markup=False, highlight=False)
    if plan.layout.get("deepspeed_config"):
        from runner.launch import CONFIGS

        cfg = CONFIGS / plan.layout["deepspeed_config"]
        if cfg.exists():
            out.print(f"{cfg.name}:")
            out.print(cfg.read_text(), markup=False, highlight=False)


def _deepspeed_label(layout: dict[str, Any]) -> str:
    # Accelerate stages name a config file; the Ray RLVR layout records its ZeRO stage directly.
    if layout.get("deepspeed_config"):
        return layout["deepspeed_config"]
    if layout.get("zero_stage") is not None:
        return f"ZeRO-{layout['zero_stage']}" + (" with offload" if layout.get("offload") else "")
    return "none"


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
