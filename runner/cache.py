"""Where repro keeps what it fetches or builds once per machine (PyPI wheels, converted checkpoints, benchmark
data, the release-era verifier's and the TRL replay's side environments)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """`$REPRO_CACHE`, else the per-user cache directory (platformdirs `user_cache_dir("repro")`:
    `$XDG_CACHE_HOME/repro` or `~/.cache/repro` on Linux)."""
    env = os.environ.get("REPRO_CACHE")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("repro"))
