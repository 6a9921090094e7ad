"""The `repro` console script: the registry's read commands plus the runner's commands.

Runner commands import torch and friends inside their bodies, so `repro list`
and the other read commands stay light.
"""

from __future__ import annotations

import sys

from registry.cli import app, run_app


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
