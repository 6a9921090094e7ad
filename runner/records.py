"""Run records: the run directory, run.json, the database row, lineage edges and artifact hashes.

run.json holds everything the database knows about a run (plan, deviations,
code version, packages, hardware, seeds, per-step metrics, final metrics,
artifact hashes), so the database can be rebuilt from the run directories.
"""

from __future__ import annotations

import errno
import json
import math
import os
import platform
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.db import session_scope
from registry.errors import ReproError, RunFailed
from registry.hashing import dvc_hash
from registry.models import RunRow, utcnow
from registry.queries import (
    add_edges,
    add_run,
    add_run_metrics,
    mark_stale_runs,
    register_run_checkpoint,
    replace_eval_metrics,
    replace_run_series,
    step_series,
    update_run,
)
from registry.run_status import pid_alive
from runner.plan import RunPlan, runs_root

if TYPE_CHECKING:
    from runner.eval_run import Target

PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "datasets", "deepspeed", "sqlalchemy", "pydantic",
            "trl", "vllm", "ray", "dvc")
ROOT = Path(__file__).resolve().parent.parent


def code_version() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"repository": "repro", "git_sha": sha, "dirty": bool(status) if status is not None else None}


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"hostname": socket.gethostname(), "platform": platform.platform(),
                            "python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def new_run_id(recipe: str, stage: str) -> str:
    return _stamped_id(f"{recipe}-{stage}")


def _stamped_id(prefix: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{prefix}-{stamp}-{secrets.token_hex(2)}"


@dataclass
class RunRecord:
    """The live record of one run. `save()` rewrites run.json atomically."""

    run_id: str
    run_dir: Path
    plan: RunPlan
    status: str = "running"
    steps: list[dict[str, Any]] = field(default_factory=list)
    final_metrics: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    started_at: str = field(default_factory=lambda: utcnow().isoformat(timespec="seconds"))
    finished_at: str | None = None
    error: str | None = None
    code: dict[str, Any] = field(default_factory=code_version)
    packages: dict[str, str] = field(default_factory=package_versions)
    hw: dict[str, Any] = field(default_factory=hardware)

    @property
    def checkpoint_dir(self) -> Path:
        return self.run_dir / "checkpoint"

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "state"

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "recipe": self.plan.recipe, "stage": self.plan.stage,
            "profile": self.plan.profile, "status": self.status, "started_at": self.started_at,
            "finished_at": self.finished_at, "error": self.error, "plan": self.plan.to_json(),
            "deviations": self.plan.deviations, "code": self.code, "packages": self.packages, "hardware": self.hw,
            "seed": self.plan.hp("seed"), "inputs": self.inputs, "steps": self.steps,
            "final_metrics": self.final_metrics, "artifacts": self.artifacts, "events": self.events,
        }

    def save(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.run_dir / "run.json.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
        os.replace(tmp, self.run_dir / "run.json")

    @classmethod
    def load(cls, run_dir: Path) -> "RunRecord":
        data = json.loads((run_dir / "run.json").read_text())
        record = cls(run_id=data["run_id"], run_dir=run_dir, plan=RunPlan.from_json(data["plan"]),
                     status=data["status"], steps=data["steps"], final_metrics=data["final_metrics"],
                     artifacts=data["artifacts"], inputs=data["inputs"], events=data.get("events", []),
                     started_at=data["started_at"], finished_at=data.get("finished_at"), error=data.get("error"))
        record.code, record.packages, record.hw = data["code"], data["packages"], data["hardware"]
        return record


RANDOM_INIT_NODE = "init:random-miniature"


def lineage_for(record: RunRecord) -> list[tuple[str, str, str, str | None, str | None]]:
    """(parent, child, relation, content_hash, file path) edges of a run."""
    node = f"run:{record.run_id}"
    plan = record.plan
    edges: list[tuple[str, str, str, str | None, str | None]] = [
        (f"stage:{plan.recipe}:{plan.stage}", node, "executes", None, None)]
    code = record.code
    edges.append((f"code:repro@{code.get('git_sha') or 'unknown'}", node, "code", None, None))
    for role, ref in record.inputs.items():
        parent = f"run:{ref['run_id']}" if ref.get("run_id") else f"checkpoint:{ref['checkpoint']}"
        relation = role + (" (substituted)" if ref.get("substituted") else "")
        if role == "init" and not ref.get("path"):
            # Nothing was loaded: the stage built a random miniature. The published checkpoint it stands
            # for is named in the relation, never as the parent.
            parent, relation = RANDOM_INIT_NODE, f"init (random miniature init; recorded: {ref.get('checkpoint')})"
        edges.append((parent, node, relation, ref.get("content_hash"), ref.get("path")))
    seen: set[str] = set()
    for ds in plan.datasets + ([plan.heldout] if plan.heldout else []):
        # imports may come from elsewhere
        if ds and ds.get("path") and ds["path"] not in seen and Path(ds["path"]).exists():
            seen.add(ds["path"])
            digest = dvc_hash(ds["path"])
            name = ds.get("dataset") or Path(ds["path"]).name
            relation = ds.get("role", "eval")
            edges.append((f"dataset:{name}@md5:{digest[:12]}", node, relation, digest, ds["path"]))
    return edges


def check_output_dir(path: Path) -> Path:
    """`--output-dir` must be absent or an empty directory: a run never deletes or mixes into what it did
    not create. Checked before anything is written; start_run's rename then claims the directory atomically."""
    try:
        resolved = path.expanduser().resolve()
    except (OSError, RuntimeError) as exc:
        raise ReproError(f"--output-dir {path} cannot be resolved ({exc}); name a new or empty directory") from None
    if resolved.exists() or resolved.is_symlink():
        if not resolved.is_dir():
            raise ReproError(f"--output-dir {path} exists and is not a directory; name a new or empty directory")
        try:
            occupied = next(resolved.iterdir(), None) is not None
        except OSError as exc:
            raise ReproError(f"--output-dir {path} cannot be read ({exc.strerror}); name a new or empty "
                             "directory") from None
        if occupied:
            raise ReproError(f"--output-dir {path} is not empty; repro writes only into a new or empty directory "
                             "and touched nothing (name another directory)")
    return resolved


def _claim_run_dir(target: Path) -> bool:
    """Create `target` as this run's own directory; True when it replaced an empty directory that existed.

    The directory is made fresh beside the target and renamed into place: rename(2) replaces an empty
    directory and refuses a non-empty one, so a directory that filled up after the check is never mixed into.
    """
    existed = target.is_dir()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fresh = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as exc:
        raise ReproError(f"cannot create the run directory {target}: {exc.strerror or exc}; point --output-dir or "
                         "REPRO_RUNS_DIR at a writable directory") from None
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(fresh, 0o777 & ~umask)  # mkdtemp makes it private; a run directory is as shareable as any other
    try:
        os.rename(fresh, target)
    except OSError as exc:
        fresh.rmdir()
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            raise ReproError(f"{target} is not empty; repro writes only into a new or empty directory and touched "
                             "nothing (name another directory)") from None
        raise ReproError(f"cannot create the run directory {target}: {exc.strerror}; point --output-dir or "
                         "REPRO_RUNS_DIR at a writable directory") from None
    return existed


def _release_run_dir(target: Path, replaced_empty: bool) -> None:
    """Undo _claim_run_dir after a failed start: the directory and all in it are this run's own."""
    shutil.rmtree(target, ignore_errors=True)
    if replaced_empty:
        target.mkdir(exist_ok=True)


def start_run(plan: RunPlan, inputs: dict[str, Any], output_dir: Path | None = None) -> RunRecord:
    """Record a new run: its database row and lineage, and its own fresh directory with run.json.

    All or nothing: the directory is claimed inside the database transaction, so a database error leaves no
    directory behind and a directory error leaves no row."""
    run_id = new_run_id(plan.recipe, plan.stage)
    run_dir = check_output_dir(output_dir) if output_dir else runs_root() / run_id
    record = RunRecord(run_id=run_id, run_dir=run_dir, plan=plan, inputs=inputs)
    row = RunRow(id=run_id, recipe=plan.recipe, stage=plan.stage, profile=plan.profile, status="running",
                 run_dir=str(run_dir), pid=os.getpid(), hostname=socket.gethostname(),
                 git_sha=record.code.get("git_sha"), git_dirty=record.code.get("dirty"), plan=plan.to_json(),
                 deviations=plan.deviations, final_metrics={}, heartbeat_at=utcnow())
    claimed: bool | None = None
    try:
        with session_scope() as session:
            # A write command sweeps runs whose process died (read commands only report them as stale).
            mark_stale_runs(session, socket.gethostname(), pid_alive)
            add_run(session, row, [])
            _add_edges(session, lineage_for(record))
            if plan.profile == "smoke":
                from registry.dvc_versions import record_fixture_versions
                from registry.recipes import load_recipes
                from registry.sync import sync
                from runner.smoke import fixture_paths

                sync(session, load_recipes())  # dataset rows must exist before their versions
                record_fixture_versions(session, fixture_paths())
            session.flush()
            claimed = _claim_run_dir(run_dir)
            record.save()
    except BaseException:
        if claimed is not None:
            _release_run_dir(run_dir, claimed)
        raise
    return record


def _add_edges(session, edges) -> None:
    # Skips edges already recorded, refuses one that would close a cycle, stores paths relative to the runs root.
    add_edges(session, edges)


def resume_run(record: RunRecord) -> None:
    record.status = "running"
    record.error = None
    record.events.append({"event": "resumed", "at": utcnow().isoformat(timespec="seconds"),
                          "from_step": len(record.steps)})
    record.save()
    with session_scope() as session:
        update_run(session, record.run_id, status="running", pid=os.getpid(), hostname=socket.gethostname(),
                   heartbeat_at=utcnow(), error=None, finished_at=None)


def verify_checkpoint(path: Path, owner: str) -> str | None:
    """Refuse a checkpoint whose files no longer hash to what the run that wrote it recorded (its run.json
    beside it). Every consumer of a run's checkpoint (a later stage, `--input`, `repro eval`) calls this
    first. Returns the verified digest, or None for a directory no run of this tool recorded."""
    record_file = path.parent / "run.json"
    if not path.is_dir():
        raise ReproError(f"checkpoint of {owner} is missing at {path}; rerun that stage")
    if not record_file.is_file():
        return None
    try:
        recorded = json.loads(record_file.read_text()).get("artifacts", {}).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        raise ReproError(f"the run record beside checkpoint {path} is unreadable; rerun that stage") from None
    if recorded is None:
        return None
    actual = dvc_hash(path)
    if actual != recorded:
        raise ReproError(f"checkpoint of {owner} at {path} was altered: hash {actual[:12]} does not match the "
                         f"recorded {recorded[:12]}; rerun that stage")
    return actual


def commit_state(record: RunRecord, ref: dict[str, Any]) -> None:
    """Record a newly saved resumable state in run.json, then drop the older state files: a kill at any
    point leaves run.json naming a complete file (runner/state.py)."""
    from runner import state

    record.artifacts["state"] = ref
    record.save()
    state.prune(record.state_dir, ref["file"])


def heartbeat(record: RunRecord) -> None:
    record.save()
    with session_scope() as session:
        update_run(session, record.run_id, heartbeat_at=utcnow())


def finish_run(record: RunRecord, status: str, error: str | None = None) -> None:
    """End the run in the database first, then in run.json, so that the two never disagree: when the
    database refuses, run.json says the run failed and why, and the caller gets one line (exit 1)."""
    bad = next(((k, v) for k, v in record.final_metrics.items() if isinstance(v, float) and not math.isfinite(v)),
               None)
    if bad is not None:  # nothing non-finite reaches the database
        record.final_metrics = {k: v for k, v in record.final_metrics.items()
                                if not (isinstance(v, float) and not math.isfinite(v))}
        if status == "succeeded":
            status, error = "failed", f"final metric {bad[0]} is not finite ({bad[1]})"
    record.status, record.error = status, error
    record.finished_at = utcnow().isoformat(timespec="seconds")
    if status == "succeeded" and record.checkpoint_dir.exists():
        record.artifacts["checkpoint"] = dvc_hash(record.checkpoint_dir)
    try:
        with session_scope() as session:
            # The plan as run: stages add deviations while they load and train (model shape, init, steps).
            update_run(session, record.run_id, status=status, error=error, finished_at=utcnow(),
                       final_metrics=record.final_metrics, heartbeat_at=utcnow(), plan=record.plan.to_json(),
                       deviations=record.plan.deviations)
            # Per-step values: one series row per metric (steps.tsv and run.json hold them too).
            replace_run_series(session, record.run_id, step_series(record.steps))
            add_run_metrics(session, record.run_id, [
                {"name": name, "value": value, "kind": "final"} for name, value in record.final_metrics.items()
                if isinstance(value, (int, float)) and not isinstance(value, bool)])
            if status == "succeeded" and "checkpoint" in record.artifacts:
                name = f"run:{record.run_id}"
                register_run_checkpoint(session, record.run_id, name, str(record.checkpoint_dir),
                                        record.plan.stage, record.artifacts["checkpoint"])
                _add_edges(session, [(f"run:{record.run_id}", f"checkpoint:{name}", "output",
                                      record.artifacts["checkpoint"], str(record.checkpoint_dir))])
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        record.status, record.error = "failed", f"the database did not record the run's end ({status}): {reason}"
        record.save()
        raise RunFailed(f"run {record.run_id} ended {status}, but the database did not record it: {reason} "
                        f"(run.json in {record.run_dir} keeps the result)") from None
    record.save()


def import_run(run_dir: Path) -> bool:
    """Index a run directory's run.json into the database if it is not there (the database can be rebuilt
    from run directories). Returns True when a row was added."""
    from datetime import datetime

    from registry.queries import get_run

    data = json.loads((run_dir / "run.json").read_text())
    with session_scope() as session:
        if get_run(session, data["run_id"]) is not None:
            return False

        def when(text: str | None):
            return datetime.fromisoformat(text) if text else None

        row = RunRow(id=data["run_id"], recipe=data["recipe"], stage=data["stage"], profile=data["profile"],
                     status=data["status"], run_dir=str(run_dir.resolve()), created_at=when(data["started_at"]),
                     finished_at=when(data.get("finished_at")), git_sha=data["code"].get("git_sha"),
                     git_dirty=data["code"].get("dirty"), plan=data["plan"], deviations=data["deviations"],
                     final_metrics=data["final_metrics"], error=data.get("error"))
        add_run(session, row, [])
        record = RunRecord.load(run_dir)
        _add_edges(session, lineage_for(record))
        if "checkpoint" in data.get("artifacts", {}):
            name = f"run:{data['run_id']}"
            register_run_checkpoint(session, data["run_id"], name, str(run_dir / "checkpoint"), data["stage"],
                                    data["artifacts"]["checkpoint"])
    return True


# ---------------------------------------------------------------- evaluations

MAX_HASH_BYTES = 2 << 30  # hashing a multi-GB checkpoint on every eval is not worth it; lineage keeps its path


def hash_or_none(path: Path) -> str | None:
    """The DVC hash of an evaluated checkpoint or eval data file; None above MAX_HASH_BYTES."""
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
    return dvc_hash(path) if size <= MAX_HASH_BYTES else None


def record_eval(target: Target, suite: str, profile: str, metrics: list[dict[str, Any]],
                datasets: list[tuple[str, str | None, str | None]],
                extra: dict[str, Any] | None = None) -> tuple[str, Path]:
    """Record one evaluation in one transaction; returns (run id, run directory).

    A run target keeps its metrics: the new values replace its eval metrics of the same names. Any other
    target gets a new run (stage "eval", profile "eval") holding the metrics, linked to the checkpoint it
    evaluated. Each (dataset node, digest, path) in `datasets` becomes an "eval" edge into that run."""
    with session_scope() as session:
        if target.run_id is not None:
            run_id, run_dir = target.run_id, Path(session.get(RunRow, target.run_id).run_dir)
            replace_eval_metrics(session, run_id, [m["name"] for m in metrics])
        else:
            run_id, run_dir = _new_eval_run(session, target, suite, profile, metrics, extra)
        add_run_metrics(session, run_id, metrics)
        _add_edges(session, [(node, f"run:{run_id}", "eval", digest, path) for node, digest, path in datasets])
    return run_id, run_dir


def _new_eval_run(session, target: Target, suite: str, profile: str, metrics: list[dict[str, Any]],
                  extra: dict[str, Any] | None) -> tuple[str, Path]:
    run_id = _stamped_id("eval")
    run_dir = runs_root() / run_id
    recipe = (target.recipe_stage or "external:eval").split(":", 1)[0]
    row = RunRow(id=run_id, recipe=recipe, stage="eval", profile="eval", status="succeeded",
                 run_dir=str(run_dir), finished_at=utcnow(),
                 plan={"target": target.label, "checkpoint_path": str(target.path), "checkpoint": target.checkpoint,
                       "recipe_stage": target.recipe_stage, "suite": suite, "eval_profile": profile,
                       **(extra or {})},
                 deviations=[], final_metrics={m["name"]: m["value"] for m in metrics})
    add_run(session, row, [])
    _add_edges(session, [(target.node, f"run:{run_id}", "evaluated", hash_or_none(target.path), str(target.path))])
    return run_id, run_dir
