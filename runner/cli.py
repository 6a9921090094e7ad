"""The `repro` console script: the registry's read commands plus the runner's commands.

Runner commands import torch and friends inside their bodies, so `repro list`
and the other read commands stay light. `repro list` itself is served by registry.lean
before typer is imported (typer and the pydantic it builds option adapters with are half of its
cold start); every other argv goes through the typer app, built on first use (`app`).
"""

from __future__ import annotations

import sys
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _apps() -> tuple[Any, Any]:
    """(the `repro` typer app with every command registered, its `plot` sub-app)."""
    import typer

    from registry.cli import app
    from runner import plots
    from runner.commands import eval as eval_command
    from runner.commands import plan as plan_command
    from runner.commands import run as run_command

    plot_app = typer.Typer(add_completion=False, no_args_is_help=True,
                           help="PNG pictures: LR schedules, run curves, scorecards.")
    app.add_typer(plot_app, name="plot")
    run_command.register(app)
    plots.register(plot_app)
    plan_command.register(app)
    eval_command.register(app)
    eval_command.register_plot(plot_app)
    return app, plot_app


def __getattr__(name: str) -> Any:
    # `from runner.cli import app` (tests, runner.references) builds the full app, as importing it used to.
    if name == "app":
        return _apps()[0]
    if name == "plot_app":
        return _apps()[1]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    from registry.lean import serve

    code = serve(sys.argv[1:])
    if code is None:
        from registry.cli import run_app

        code = run_app(_apps()[0])
    sys.exit(code)


if __name__ == "__main__":
    main()
