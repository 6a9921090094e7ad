"""The `repro` console script: the registry's read commands plus the runner's commands.

Runner commands import torch and friends inside their bodies, so `repro list`
and the other read commands stay light.
"""

from __future__ import annotations

import sys

import typer

from registry.cli import app, run_app
from runner import eval_cli, plan_cli, plots, run_cli

plot_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="PNG pictures: LR schedules, run curves, scorecards.")
app.add_typer(plot_app, name="plot")
run_cli.register(app)
plots.register(plot_app)
plan_cli.register(app)
eval_cli.register(app)
eval_cli.register_plot(plot_app)


def main() -> None:
    sys.exit(run_app(app))


if __name__ == "__main__":
    main()
