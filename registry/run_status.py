"""How a run's record reads to people, in pure Python (the cold read path of `repro runs` uses it too):
UTC times, and whether a run recorded as running has in fact died."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

# A run whose heartbeat is older than this, on a process that is gone, is reported interrupted.
STALE_AFTER = timedelta(minutes=10)


def as_utc(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.isoformat(timespec="seconds")


def stale_reason(run: Any, hostname: str, pid_alive: Callable[[int], bool], now: datetime | None = None) -> str | None:
    """Why a run recorded as 'running' is not running any more, or None while it may still be:
    on this host, when its pid is gone; elsewhere, when its heartbeat is older than STALE_AFTER.
    `run`: anything with status, heartbeat_at, created_at, hostname and pid."""
    if run.status != "running":
        return None
    now = now or datetime.now(timezone.utc)
    beat = run.heartbeat_at or run.created_at
    if beat.tzinfo is None:
        beat = beat.replace(tzinfo=timezone.utc)
    if run.hostname == hostname and run.pid is not None and not pid_alive(run.pid):
        return "process ended without finishing (killed or crashed)"
    if now - beat > STALE_AFTER:
        return f"no heartbeat since {beat.isoformat(timespec='seconds')}"
    return None


def pid_alive(pid: int) -> bool:
    """Whether process `pid` on this host is alive (a zombie counts as dead)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); read its state where /proc exists.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
