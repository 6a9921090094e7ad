"""`--resume` of launched runs: a `--launcher accelerate` DDP run killed mid-way continues in its own record on
the processes it ran on and equals an uninterrupted launch step for step; DeepSpeed ZeRO runs (and the recorded
GPU launcher) are refused before anything is written or started.

The kill is real: REPRO_KILL_AFTER_UPDATE reaches every launched process (runner.trainer.fault_injection),
which SIGKILL themselves after that update; state was saved at update STATE_EVERY (10) by rank 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.trainer import STATE_EVERY

SMOKE = ("run", "tulu3-8b", "--stage", "sft", "--profile", "smoke")
LAUNCH = ("--launcher", "accelerate", "--num-processes", "2")
STEPS = STATE_EVERY + 4  # resumed from update 10, four updates after it
REL = 1e-6


def _close(a: float, b: float, rel: float = REL) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def _record(run_dir: str | Path) -> dict:
    return json.loads((Path(run_dir) / "run.json").read_text())


def _runs(cli) -> list[dict]:
    code, out, err = cli("runs", "--json")
    assert code == 0, err
    return json.loads(out)


def _killed_launch(cli, monkeypatch, kill_after: int, steps: int) -> dict:
    """A 2-process launch whose processes die after update `kill_after` (> 10); its record (state saved at 10)."""
    monkeypatch.setenv("REPRO_KILL_AFTER_UPDATE", str(kill_after))
    code, _, err = cli(*SMOKE, *LAUNCH, "--max-steps", str(steps))
    monkeypatch.delenv("REPRO_KILL_AFTER_UPDATE")
    assert code == 1 and "--resume-run" in err, err  # the failure line says how to continue
    (run,) = _runs(cli)
    assert run["status"] == "failed"
    record = _record(run["run_dir"])
    assert record["artifacts"]["state"]["step"] == STATE_EVERY
    return record | {"id": run["id"], "run_dir": run["run_dir"]}


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.suffix != ".log"}


@pytest.mark.slow
def test_resumed_launch_equals_uninterrupted_launch(cli, monkeypatch):
    code, out, err = cli(*SMOKE, *LAUNCH, "--max-steps", str(STEPS), "--json")
    assert code == 0, err
    reference = _record(json.loads(out)["run_dir"]) | {"run_dir": json.loads(out)["run_dir"]}
    before = {r["id"] for r in _runs(cli)}

    monkeypatch.setenv("REPRO_KILL_AFTER_UPDATE", "12")
    code, _, err = cli(*SMOKE, *LAUNCH, "--max-steps", str(STEPS))
    monkeypatch.delenv("REPRO_KILL_AFTER_UPDATE")
    assert code == 1 and "--resume-run" in err, err
    (killed_id,) = {r["id"] for r in _runs(cli)} - before
    killed_dir = Path(next(r["run_dir"] for r in _runs(cli) if r["id"] == killed_id))
    assert _record(killed_dir)["artifacts"]["state"]["step"] == STATE_EVERY

    code, out, err = cli(*SMOKE, "--launcher", "accelerate", "--max-steps", str(STEPS), "--resume-run", killed_id,
                         "--json")
    assert code == 0, err
    summary = json.loads(out)
    # The same run goes on: same id, same directory, no new row.
    assert summary["run_id"] == killed_id and Path(summary["run_dir"]) == killed_dir
    assert {r["id"] for r in _runs(cli)} == before | {killed_id}
    record = _record(killed_dir)
    assert record["status"] == "succeeded"
    assert [(e["event"], e["from_step"]) for e in record["events"]] == [("resumed", STATE_EVERY)]
    # The plan was not spread again: 2 processes × 4 accumulation, as launched (the smoke plan: 1 × 8).
    hp = record["plan"]["hyperparameters"]
    assert (hp["num_processes"], hp["gradient_accumulation_steps"]) == (2, 4)
    keys = [d["key"] for d in record["deviations"]]
    assert len(keys) == len(set(keys)), keys
    assert record["plan"]["extra"]["launch"]["commands"][0].endswith("--resume")
    assert record["plan"]["extra"]["distributed"]["processes"] == 2

    steps, ref_steps = record["steps"], reference["steps"]
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1)) == [s["step"] for s in ref_steps]
    for a, b in zip(steps, ref_steps):
        assert _close(a["loss"], b["loss"]), (a, b)
        assert _close(a["grad_norm"], b["grad_norm"]), (a, b)
        assert _close(a["lr"], b["lr"], 1e-12), (a, b)
    # The updates after the resume (11..14) are where a process that skipped the state would part.
    assert steps[STATE_EVERY]["loss"] != steps[0]["loss"]

    from safetensors.torch import load_file

    a = load_file(str(killed_dir / "checkpoint" / "model.safetensors"))
    b = load_file(str(Path(reference["run_dir"]) / "checkpoint" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert float((a[key] - b[key]).abs().max()) <= 1e-6, key


@pytest.mark.slow
def test_resume_on_another_process_count_or_launcher_is_refused(cli, monkeypatch):
    # Killed one update after the save: rank 1 dies only once rank 0 has joined update 11, so after its state
    # is in run.json (a kill right at update 10 can end rank 0 while it writes).
    killed = _killed_launch(cli, monkeypatch, STATE_EVERY + 1, STATE_EVERY + 2)
    runs_root = Path(killed["run_dir"]).parent
    before = _snapshot(runs_root)
    for extra, message in (
            (("--launcher", "accelerate", "--num-processes", "4"),
             f"run {killed['id']} was launched on 2 processes and this command says --num-processes 4"),
            (("--launcher", "accelerate", "--num-processes", "1"), "--num-processes 1"),
            ((), f"run {killed['id']} was launched on 2 processes; resume it with --launcher accelerate "
                 "--num-processes 2")):
        code, out, err = cli(*SMOKE, *extra, "--resume-run", killed["id"])
        assert code == 2, (extra, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert _snapshot(runs_root) == before  # nothing written: no record, no state, no launch
    assert [(r["id"], r["status"]) for r in _runs(cli)] == [(killed["id"], "failed")]


def test_deepspeed_resume_is_refused_before_anything_starts(cli, tmp_path):
    code, out, err = cli(*SMOKE, *LAUNCH, "--deepspeed", "zero2", "--resume")
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    for part in ("DeepSpeed ZeRO", "partition of the optimizer state", "pickled (torch.save/torch.load)",
                 "start a new run"):
        assert part in err, err
    assert not (tmp_path / "runs").exists()
    assert _runs(cli) == []


def test_recorded_launcher_resume_is_refused_in_one_line(cli, tmp_path):
    code, _, err = cli("run", "tulu3-8b", "--stage", "sft", "--resume")  # accelerate + ZeRO-3 on GPUs
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "pickled (torch.save/torch.load)" in err and "start a new run" in err
    code, _, err = cli("run", "smollm2-135m", "--stage", "pretrain", "--resume")  # torchrun, no DeepSpeed
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "needs 64 GPUs" in err  # one node without DeepSpeed resumes; here the GPUs are missing
    code, _, err = cli("run", "smollm2-135m", "--stage", "pretrain", "--gpus", "16", "--nodes", "2", "--resume")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "on one node only" in err and "start a new run" in err
    assert not (tmp_path / "runs").exists()


def test_a_deepspeed_record_or_an_in_process_one_does_not_resume_launched(tmp_path):
    """The checks on the interrupted record itself (after it is found, before anything is written)."""
    from registry.errors import ReproError
    from registry.recipes import load_recipes
    from runner import plan as plans
    from runner.launched import check_launched_resume
    from runner.records import RunRecord

    def record(deepspeed: str | None, launched: bool) -> RunRecord:
        plan = plans.resolve(load_recipes(), "tulu3-8b", "sft", "smoke", {})
        if launched:
            plans.spread_over_processes(plan, 2)
            # As an older record states it: no "launcher" key, told by the CPU launch's own command.
            plans.record_launch(plan, {"commands": ["python -m accelerate.commands.launch --multi_gpu ..."],
                                       "num_machines": 1, "machine_rank": 0})
        if deepspeed:
            plans.use_deepspeed(plan, deepspeed)
        return RunRecord(run_id="r1", run_dir=tmp_path / "r1", plan=plan)

    with pytest.raises(ReproError, match="pickled"):
        check_launched_resume(record("zero2", True), "accelerate", None)
    with pytest.raises(ReproError, match="ran in one process; resume it without --launcher accelerate"):
        check_launched_resume(record(None, False), "accelerate", 2)
    assert check_launched_resume(record(None, True), "accelerate", None) == 2
    assert check_launched_resume(record(None, True), "accelerate", 2) == 2
    assert check_launched_resume(record(None, False), "in-process", None) is None
    with pytest.raises(ReproError, match="was launched on 2 processes; resume it with --launcher accelerate"):
        check_launched_resume(record(None, True), "recorded", None)
    assert not (tmp_path / "r1").exists()


@pytest.mark.slow
def test_recorded_torchrun_launch_resumes_on_one_node(cli, monkeypatch):
    """The recorded launcher's resume (one node, no DeepSpeed: pretraining's torchrun) through the same
    worker entry (`runner.execute --resume`), run here on CPU: the smoke SFT plan laid out as torchrun on
    2 processes (1 × 8 micro-batches as 2 × 4), killed after update 12, continues to equal the
    uninterrupted launch."""
    from registry.errors import RunFailed
    from registry.recipes import load_recipes
    from runner.execute import find_resumable, resolve_inputs
    from runner.launch import Nodes, _free_port
    from runner.launched import check_launched_resume, run_recorded
    from runner.plan import limit_updates, resolve

    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def plan():
        planned = resolve(load_recipes(), "tulu3-8b", "sft", "smoke", {})
        planned.layout.update(launcher="torchrun", gpus=2)  # torchrun applies no DeepSpeed config: DDP
        planned.hyperparameters.update(num_processes=2, gradient_accumulation_steps=4)
        limit_updates(planned, STEPS)
        planned.inputs = resolve_inputs(load_recipes(), planned, {})
        return planned

    fresh = plan()
    reference = run_recorded(fresh, fresh.inputs, Nodes(main_process_port=_free_port()), None)
    monkeypatch.setenv("REPRO_KILL_AFTER_UPDATE", "12")
    killed_plan = plan()
    with pytest.raises(RunFailed):
        run_recorded(killed_plan, killed_plan.inputs, Nodes(main_process_port=_free_port()), None)
    monkeypatch.delenv("REPRO_KILL_AFTER_UPDATE")
    (killed_id,) = {r["id"] for r in _runs(cli)} - {reference.run_id}
    record = find_resumable("tulu3-8b", "sft", "smoke", killed_id)
    assert check_launched_resume(record, "recorded", None) is None
    with pytest.raises(Exception, match="resume it with the recorded launcher"):
        check_launched_resume(record, "accelerate", 2)
    resumed = run_recorded(record.plan, record.inputs, Nodes(main_process_port=_free_port()), None, record)
    assert resumed.run_id == killed_id and resumed.status == "succeeded"
    assert [(e["event"], e["from_step"]) for e in resumed.events] == [("resumed", STATE_EVERY)]
    assert "--resume" in resumed.plan.extra["launch"]["commands"][0].split()
    assert [s["step"] for s in resumed.steps] == [s["step"] for s in reference.steps] == list(range(1, STEPS + 1))
    for a, b in zip(resumed.steps, reference.steps):
        assert _close(a["loss"], b["loss"]) and _close(a["grad_norm"], b["grad_norm"]), (a, b)
