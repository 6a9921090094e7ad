"""`repro list`, `repro lineage` and `repro runs --json` without typer: a lean dispatch for read commands.

typer (≥ 0.2x builds pydantic adapters for its options) and pydantic cost ~80 ms of a cold process, half of
`repro list --json` and most of a cold `repro lineage`. `serve` takes an argv that only one of these commands
with its own options can mean, and serves it with the same code the typer command runs (`list_command`,
`lineage_report`, `runs_row`). Anything else (--help, an unknown option, a missing value, --depth, another
command, a database the sqlite3/psycopg path cannot answer from) returns None and goes through typer, so its
messages and exit codes stay click's.
"""

from __future__ import annotations

import json
import os
import re
import sys
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from registry.errors import ReproError, unknown

if TYPE_CHECKING:  # rich is imported only when a table is printed
    from rich.console import Console

    from registry.lineage_tree import LineageNode


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
    # As run_app does: the live fallback validates with pydantic, whose plugin scan repro does not need.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    listed, lineage, runs = parse_list(argv), parse_lineage(argv), parse_runs(argv)
    if listed is None and lineage is None and runs is None:
        return None
    try:
        if listed is not None:
            list_command(*listed)
            return 0
        if lineage is not None:
            target, downstream, verify, as_json = lineage
            reg = unvalidated_registry()
            # lineage_walk answers only when the database's recorded recipes hash is this content's (which
            # its sync validated); else typer's command validates, syncs or says what is wrong.
            answer = light_lineage(reg, target, downstream, verify) if reg is not None else None
            if answer is None:
                return None
            return lineage_report(*answer, downstream=downstream, verify=verify, depth=None, as_json=as_json)
        assert runs is not None
        check_runs_options(light_registry(), runs[0], runs[1], runs[2])
        rows = light_runs(*runs)
        if rows is None:
            return None
        emit_json(rows)
        return 0
    except (ReproError, OSError) as exc:
        return failure_exit(exc)


def parse_lineage(argv: list[str]) -> tuple[str, bool, bool, bool] | None:
    """(target, downstream, verify, as_json) when argv is `lineage TARGET [--downstream] [--verify] [--json]`
    in any order, an unbounded walk the light path answers; None for anything else (--depth, --help,
    `--downstream --verify`, which takes the SQLAlchemy path, a second argument, a token starting with "-")."""
    if not argv or argv[0] != "lineage":
        return None
    flags, targets = set(), []
    for token in argv[1:]:
        if token in ("--downstream", "--verify", "--json"):
            flags.add(token)
        elif token.startswith("-"):
            return None
        else:
            targets.append(token)
    if len(targets) != 1 or {"--downstream", "--verify"} <= flags:
        return None
    return targets[0], "--downstream" in flags, "--verify" in flags, "--json" in flags


def parse_runs(argv: list[str]) -> tuple[str | None, int, int, str | None] | None:
    """(recipe, limit, offset, after) when argv is `runs --json [--limit N] [--offset N] [--after ID]
    [--recipe R]` (each as `--opt V` or `--opt=V`, numbers in decimal digits); None for anything else (the
    table, a value click would refuse or that starts with "-", an unknown option)."""
    if not argv or argv[0] != "runs":
        return None
    values: dict[str, str] = {}
    as_json, rest, i = False, argv[1:], 0
    while i < len(rest):
        token = rest[i]
        name, eq, value = token.partition("=")
        if token == "--json":
            as_json = True
        elif name in ("--limit", "--offset", "--after", "--recipe") and eq:
            values[name] = value
        elif token in ("--limit", "--offset", "--after", "--recipe") and i + 1 < len(rest) \
                and not rest[i + 1].startswith("-"):
            values[token] = rest[i + 1]
            i += 1
        else:
            return None
        i += 1
    numbers = [values.get(k, d) for k, d in (("--limit", "50"), ("--offset", "0"))]
    if not as_json or not all(re.fullmatch(r"[0-9]+", v) for v in numbers):
        return None
    return values.get("--recipe"), int(numbers[0]), int(numbers[1]), values.get("--after")


def check_runs_options(reg: Any, recipe: str | None, limit: int, offset: int) -> None:
    """`repro runs`'s checks of its options (shared by the typer command and the lean dispatch)."""
    if recipe is not None and recipe not in reg.recipes and not recipe.startswith("external"):
        raise unknown("recipe", recipe, reg.recipes)
    if limit < 1 or offset < 0:
        raise ReproError(f"--limit must be ≥ 1 and --offset ≥ 0 (got limit {limit}, offset {offset})")


def light_registry() -> Any:
    """What lineage's target resolution and the database's recipes hash read from recipes.json: from the raw
    JSON an SQLite database indexes (its sync validated exactly this content), else the validated load
    (pydantic, still no typer; its errors are the typer command's)."""
    from registry.light_db import indexed_recipes

    raw = indexed_recipes()
    if raw is None:
        from registry.recipes import load_recipes

        return load_recipes()
    return IndexedRecipes(raw)


def unvalidated_registry() -> IndexedRecipes | None:
    """recipes.json as IndexedRecipes before any validation, for the lineage walk that checks its hash (on
    PostgreSQL too: that path imports the driver anyway, so the hash check costs no more than a query)."""
    from registry.light_db import unvalidated_recipes

    raw = unvalidated_recipes()
    try:
        return IndexedRecipes(raw) if raw is not None else None
    except (KeyError, TypeError, AttributeError):  # not the schema's shape: the validating load says why
        return None


class IndexedRecipes:
    """The parts of registry.recipes.Registry that registry.light_db.resolve_node reads, over raw JSON."""

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.recipes = {name: SimpleNamespace(stage_names=[st["name"] for st in r["stages"]])
                        for name, r in raw["recipes"].items()}
        self.model = SimpleNamespace(
            checkpoints={name: SimpleNamespace(hub_id=c.get("hub_id")) for name, c in raw["checkpoints"].items()},
            datasets=dict(raw["datasets"]))

    def parse_target(self, target: str) -> tuple[str, str]:
        """Registry.parse_target: `recipe:stage` -> (recipe, stage), with its messages."""
        if ":" not in target:
            raise ReproError(f"expected RECIPE:STAGE, got {target!r} (e.g. tulu3-8b:sft)")
        recipe, stage = target.split(":", 1)
        if recipe not in self.recipes:
            raise unknown("recipe", recipe, self.recipes)
        if stage not in self.recipes[recipe].stage_names:
            raise unknown(f"stage for {recipe}", stage, self.recipes[recipe].stage_names)
        return recipe, stage


def light_lineage(reg: Any, target: str, downstream: bool, verify: bool
                  ) -> tuple[str, LineageNode, list[str], list[dict[str, str]]] | None:
    """(node, tree, impacted, verify problems) of an unbounded walk through sqlite3/psycopg
    (registry.light_db.lineage_walk), or None when that path cannot answer (the SQLAlchemy path then does)."""
    from registry.light_db import lineage_walk
    from registry.lineage_tree import build_tree, reach, verify_subjects

    light = lineage_walk(reg, target, downstream, with_outputs=verify)
    if light is None:
        return None
    from registry.hashing import verify_files

    node, edges, outputs = light
    tree = build_tree(edges, node, downstream)
    impacted = reach(edges, node, True) if downstream else []
    problems = verify_files(verify_subjects(edges + outputs)) if verify else []
    return node, tree, impacted, problems


def lineage_report(node: str, tree: LineageNode, impacted: list[str], problems: list[dict[str, str]], *,
                   downstream: bool, verify: bool, depth: int | None, as_json: bool) -> int:
    """Print `repro lineage`'s answer (JSON, or a rich tree with the verify lines on stderr); the exit code:
    1 when a re-hashed file differs or is missing."""
    cut = tree.cut_nodes()
    if as_json:
        emit_json({"target": node, "direction": "downstream" if downstream else "upstream",
                   **({"depth": depth, "cut": cut} if depth is not None else {}), "tree": tree.to_json(),
                   **({"impacted": impacted} if downstream else {}),
                   **({"verify": problems} if verify else {})})
    else:
        from rich.tree import Tree

        def add(branch: Tree, child: LineageNode) -> None:
            label = child.key + (f"  [dim]({child.relation})[/dim]" if child.relation else "")
            if child.repeated:
                label += "  [dim](see above)[/dim]"
            if child.truncated:
                label += f"  [yellow](cut at depth {depth})[/yellow]"
            if child.content_hash:
                label += f"  [dim]{child.content_hash[:12]}[/dim]"
            sub = branch.add(label)
            for grand in child.children:
                add(sub, grand)

        root = Tree(f"[bold]{tree.key}[/bold] ({'downstream' if downstream else 'upstream'})")
        for child in tree.children:
            add(root, child)
        console().print(root)
        if cut:
            sys.stdout.write(f"cut at depth {depth} below {len(cut)} node(s): {', '.join(cut[:5])}"
                             f"{', …' if len(cut) > 5 else ''}; raise --depth or omit it for the whole graph\n")
        for p in problems:
            sys.stderr.write(f"{p['status']}: {p['node']} ({p['detail']})\n")
    return 1 if any(p["status"] != "ok" for p in problems) else 0


def runs_row(r: Any, host: str) -> dict[str, Any]:
    """One run as `repro runs` reports it. A dead run still recorded as running is reported interrupted
    without writing it down; `repro db gc` (or the next `repro run`/`eval`) records it."""
    from registry.run_status import as_utc, pid_alive, stale_reason

    stale = stale_reason(r, host, pid_alive)
    return {"id": r.id, "recipe": r.recipe, "stage": r.stage, "profile": r.profile,
            "status": "interrupted" if stale else r.status,
            "created_at": as_utc(r.created_at), "finished_at": as_utc(r.finished_at),
            "final_metrics": r.final_metrics, "deviations": r.deviations, "run_dir": r.run_dir,
            "error": r.error or stale, **({"stale": True} if stale else {})}


def light_runs(recipe: str | None, limit: int, offset: int, after: str | None) -> list[dict[str, Any]] | None:
    """`repro runs`'s rows through sqlite3/psycopg (registry.light_db.runs_page), or None when that path cannot
    answer (no database yet, another schema)."""
    import socket

    from registry.light_db import runs_page

    page = runs_page(recipe, limit, offset, after)
    if page is None:
        return None
    host = socket.gethostname()
    return [runs_row(r, host) for r in page]
