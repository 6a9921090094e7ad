"""`repro list` without typer: a lean dispatch for the one read command that needs no schema.

typer (≥ 0.2x builds pydantic adapters for its options) and pydantic cost ~80 ms of a cold process, half of
`repro list --json`. `serve` takes an argv that only `list` with its own options can mean, and serves it
with the same code the typer command runs (`list_command`). Anything else (--help, an unknown option, a
missing value, another command) returns None and goes through typer, so its messages and exit codes stay
click's.
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from registry.errors import ReproError, unknown

if TYPE_CHECKING:  # rich is imported only when a table is printed
    from rich.console import Console


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def console() -> Console:
    from rich.console import Console

    return Console(soft_wrap=False, width=max(150, Console().width))


def list_command(family: str | None, as_json: bool) -> None:
    """Every recipe: name, family, size, base model, its stages in order (the body of `repro list`)."""
    from registry.light_db import indexed_recipes

    indexed = indexed_recipes()  # recipes.json as validated at the last sync, when unchanged since
    if indexed is not None:
        recipes = {name: (r["family"], r["size"], r["base_model"], [st["name"] for st in r["stages"]])
                   for name, r in indexed["recipes"].items()}
    else:
        from registry.recipes import load_recipes

        recipes = {name: (r.family, r.size, r.base_model, r.stage_names) for name, r in load_recipes().recipes.items()}
    families = sorted({r[0] for r in recipes.values()})
    if family is not None and family not in families:
        raise unknown("family", family, families)
    rows = [{"name": name, "family": fam, "size": size, "base_model": base, "stages": stages}
            for name, (fam, size, base, stages) in recipes.items() if family in (None, fam)]
    if as_json:
        return emit_json(rows)
    from rich.table import Table

    table = Table(title="recipes")
    for col in ("recipe", "family", "size", "base model", "stages"):
        table.add_column(col)
    for row in rows:
        table.add_row(row["name"], row["family"], row["size"], row["base_model"], " → ".join(row["stages"]))
    console().print(table)


def parse_list(argv: list[str]) -> tuple[str | None, bool] | None:
    """(family, as_json) when argv is `list [--json] [--family F | --family=F]...` as click would parse it
    without complaint; None for anything else. A value that starts with "-" is left to click."""
    if not argv or argv[0] != "list":
        return None
    family, as_json, rest = None, False, argv[1:]
    i = 0
    while i < len(rest):
        token = rest[i]
        if token == "--json":
            as_json = True
        elif token.startswith("--family="):
            family = token[len("--family="):]
        elif token == "--family" and i + 1 < len(rest) and not rest[i + 1].startswith("-"):
            family = rest[i + 1]
            i += 1
        else:
            return None
        i += 1
    return family, as_json


def failure_exit(exc: Exception) -> int:
    """The contract's one line on stderr for a ReproError or an OSError no command anticipated, and the exit
    code; with REPRO_DEBUG=1 the exception propagates (its traceback). Shared with registry.cli.run_app."""
    if os.environ.get("REPRO_DEBUG") == "1":
        raise exc
    if isinstance(exc, ReproError):
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    assert isinstance(exc, OSError)
    where = f" ({exc.filename})" if exc.filename else ""
    sys.stderr.write(f"error: {exc.strerror or exc}{where}; check that the path exists, is writable and has "
                     "free space (REPRO_DEBUG=1 for the traceback)\n")
    return 2


def serve(argv: list[str]) -> int | None:
    """The exit code of `repro ARGV` when the lean dispatch serves it, else None (typer serves it)."""
    parsed = parse_list(argv)
    if parsed is None:
        return None
    # As run_app does: the live fallback validates with pydantic, whose plugin scan repro does not need.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        list_command(*parsed)
    except (ReproError, OSError) as exc:
        return failure_exit(exc)
    return 0
