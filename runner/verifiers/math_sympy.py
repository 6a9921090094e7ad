"""Symbolic equivalence for the MATH verifier, in worker processes (never in this process).

Two kinds of worker (runner/verifiers/_sympy_child.py):
  * release: the parser the release used, sympy 1.12's ANTLR `parse_latex` with antlr4-python3-runtime
    4.11. DVC pins antlr4 4.9.3 in the project's environment, so these three pinned packages live in a
    site directory of their own, installed from PyPI on first use (`release_site`), and the worker runs
    `python -S` with only that directory and the standard library on its path.
  * corrected: latex2sympy2_extended + math-verify from the project's environment.

Time: one answer's verification has one budget, `TIME_LIMIT_S` (5 s, the release's SIGALRM) for all its
comparisons together, parse included. Each request gets what is left as a soft alarm inside the worker,
and the worker is killed at the budget's end plus `KILL_GRACE_S` when it is stuck in C code (a big power,
GMP). Worker start-up (imports) happens before the clock starts.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

from registry.errors import ReproError
from runner.cache import cache_root

TIME_LIMIT_S = float(os.environ.get("REPRO_MATH_SYMPY_TIMEOUT_S", "5"))
KILL_GRACE_S = 0.5
START_TIMEOUT_S = 120.0
MAX_SYMPY_CHARS = 1000
RELEASE_PINS = ("sympy==1.12", "mpmath==1.3.0", "antlr4-python3-runtime==4.11.0")
_CHILD = str(Path(__file__).with_name("_sympy_child.py"))
_PKG_ROOT = str(Path(__file__).resolve().parents[2])


class MathReleaseEnvError(ReproError):
    """The release-era sympy environment could not be installed or found."""


# ----------------------------------------------------------------------------- release site dir



def release_site() -> Path:
    """The directory holding sympy 1.12, mpmath 1.3.0 and antlr4 4.11.0; installed on first use.

    `REPRO_MATH_RELEASE_SITE` names a prepared directory instead (offline machines: fill it once with
    `pip install --no-deps --target DIR sympy==1.12 mpmath==1.3.0 antlr4-python3-runtime==4.11.0`).
    """
    given = os.environ.get("REPRO_MATH_RELEASE_SITE")
    if given:
        path = Path(given).expanduser()
        if not (path / "sympy").is_dir() or not (path / "antlr4").is_dir():
            raise MathReleaseEnvError(f"REPRO_MATH_RELEASE_SITE={path} lacks sympy or antlr4; fill it with "
                                      f"pip install --no-deps --target {path} {' '.join(RELEASE_PINS)}")
        return path
    tag = f"py{sys.version_info.major}{sys.version_info.minor}-" + "-".join(p.replace("==", "") for p in RELEASE_PINS)
    path = cache_root() / "math-release" / tag
    if (path / ".complete").exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f"{tag}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer at a time (parallel runs, test workers)
        if (path / ".complete").exists():
            return path
        tmp = path.parent / f"{tag}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
               "--no-compile", "--target", str(tmp), *RELEASE_PINS]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(tmp, ignore_errors=True)
            last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise MathReleaseEnvError(
                f"could not install the release-era MATH parser ({' '.join(RELEASE_PINS)}) into {path}: {last}; "
                "give pip access to PyPI, or set REPRO_MATH_RELEASE_SITE to a directory holding them")
        (tmp / ".complete").write_text(" ".join(RELEASE_PINS) + "\n")
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path


def _argv(mode: str) -> list[str]:
    boot = f"import runpy; runpy.run_path({_CHILD!r}, run_name='__main__')"
    if mode == "release":
        # -S: no site-packages at all, so the project's sympy 1.14 / antlr4 4.9.3 cannot leak in.
        site = str(release_site())
        return [sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {site!r}); " + boot]
    return [sys.executable, "-c", boot]


# ----------------------------------------------------------------------------- workers

class _Worker:
    def __init__(self, mode: str) -> None:
        env = dict(os.environ, REPRO_MATH_WORKER_MODE=mode)
        if mode == "release":
            env.pop("PYTHONPATH", None)
        # cwd=_PKG_ROOT so that this package's math.py can never shadow the stdlib module.
        self.proc = subprocess.Popen(_argv(mode), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=_PKG_ROOT, env=env, bufsize=0)
        self.buf = b""
        ready = self._read(time.monotonic() + START_TIMEOUT_S)
        if not ready or not ready.get("ready"):
            self.kill()
            raise MathReleaseEnvError(f"the {mode} MATH worker did not start ({' '.join(_argv(mode)[:3])} ...)")
        self.sympy = ready.get("sympy")

    def _read(self, deadline: float) -> dict | None:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # worker died (e.g. GMP abort under the rlimit)
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, payload: bytes, deadline: float) -> dict | None:
        try:
            self.proc.stdin.write(payload)
            self.proc.stdin.flush()
        except OSError:
            return None
        return self._read(deadline)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass


class _Pool:
    """Thread-safe pool of worker processes of one mode; a timed-out or dead worker is discarded."""

    def __init__(self, mode: str, size: int) -> None:
        self.mode = mode
        self.size = max(1, size)
        self.idle: list[_Worker] = []
        self.live = 0
        self.cond = threading.Condition()
        self.stats = {"calls": 0, "timeouts": 0, "restarts": 0}

    def acquire(self) -> _Worker:
        with self.cond:
            while not self.idle and self.live >= self.size:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            self.live += 1
        try:
            return _Worker(self.mode)
        except Exception:
            with self.cond:
                self.live -= 1
                self.cond.notify()
            raise

    def release(self, worker: _Worker | None) -> None:
        with self.cond:
            if worker is None:
                self.live -= 1
            else:
                self.idle.append(worker)
            self.cond.notify()

    def equal(self, worker: _Worker, a: str, b: str, budget: float) -> tuple[bool | None, _Worker | None]:
        """(verdict, or None on a timeout or crash; the worker if still usable). A timed-out verdict is
        None so that it is not cached: with more of the budget left it might have completed."""
        payload = (json.dumps({"a": a, "b": b, "soft": budget}) + "\n").encode()
        reply = worker.call(payload, time.monotonic() + budget + KILL_GRACE_S)
        with self.cond:
            self.stats["calls"] += 1
            if reply is None:
                self.stats["restarts"] += 1
            elif reply.get("err") == "timeout":
                self.stats["timeouts"] += 1
        if reply is None:
            worker.kill()
            return None, None
        if reply.get("err") == "timeout":
            return None, worker
        return bool(reply.get("equal")), worker

    def close(self) -> None:
        with self.cond:
            workers, self.idle = self.idle, []
            self.live -= len(workers)
        for w in workers:
            w.kill()


_SIZE = int(os.environ.get("REPRO_MATH_SYMPY_WORKERS", "2"))
POOLS = {"release": _Pool("release", _SIZE), "corrected": _Pool("corrected", _SIZE)}
for _pool in POOLS.values():
    atexit.register(_pool.close)
_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()


class Budget:
    """The time one answer's verification may spend in symbolic checks (all of them together)."""

    def __init__(self, seconds: float | None = None) -> None:
        self.left = TIME_LIMIT_S if seconds is None else seconds

    def spend(self, seconds: float) -> None:
        self.left = max(0.0, self.left - seconds)


def sympy_equal(mode: str, a: str, b: str, budget: Budget | None = None) -> bool:
    """Symbolic equivalence of two LaTeX strings ('release' or 'corrected' semantics) within `budget`."""
    if len(a) > MAX_SYMPY_CHARS or len(b) > MAX_SYMPY_CHARS or not a.strip() or not b.strip():
        return False
    key = (mode, a, b)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    budget = budget if budget is not None else Budget()
    if budget.left <= 0:
        return False
    pool = POOLS[mode]
    worker = pool.acquire()  # start-up, if any, is not charged to the budget
    started = time.monotonic()
    try:
        result, worker = pool.equal(worker, a, b, budget.left)
    finally:
        pool.release(worker)
        budget.spend(time.monotonic() - started)
    if result is None:  # hard timeout / crash: not cached, scored as "not equivalent"
        return False
    with _CACHE_LOCK:
        _CACHE[key] = result
        if len(_CACHE) > 4096:
            _CACHE.popitem(last=False)
    return result


def worker_sympy_version(mode: str) -> str | None:
    """The sympy version a worker of this mode runs (starts one if none is idle)."""
    pool = POOLS[mode]
    worker = pool.acquire()
    try:
        return worker.sympy
    finally:
        pool.release(worker)
