"""The `repro` console script: the registry's read commands plus the runner's commands.

Runner commands import torch and friends inside their bodies, so `repro list`
and the other read commands stay light.
"""

from __future__ import annotations

import sys

from registry.cli import app, run_app
from runner import run_cli

run_cli.register(app)
for _module in ("runner.plan_cli", "runner.eval_cli"):
    try:  # registered when present (each adds commands; none imports torch at module level)
        __import__(_module).__dict__  # noqa: B018
        sys.modules[_module].register(app)
    except ModuleNotFoundError:
        pass


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
