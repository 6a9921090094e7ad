"""Read commands: list, show, command, diff, lineage, audit, runs, db upgrade, validate.

These import no torch (a test proves it): the runner's commands are added by
runner.cli and import their heavy modules inside the command functions.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Optional

import typer

from registry.errors import ReproError
from registry.lean import (
    check_runs_options,
    console,
    emit_json,
    failure_exit,
    light_lineage,
    light_runs,
    lineage_report,
    list_command,
    runs_row,
)

if TYPE_CHECKING:  # registry.recipes brings pydantic and the schema: imported when a command needs it
    from registry.recipes import Registry

def _no_type_for_flags() -> None:
    """typer ≥ 0.2x prints a `<bool>` type beside every on/off flag (--json, --dry-run, even --help); a flag
    takes no value, so its type column stays empty, as click prints it."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich
    if getattr(shown, "_repro_flags", False):
        return

    def display_type_rich(self, ctx):
        return "" if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._repro_flags = True
    TyperOption.display_type_rich = display_type_rich


_no_type_for_flags()
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="repro: the published Tülu 3 and SmolLM2 recipes, runnable and auditable.")
db_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Database schema.")
app.add_typer(db_app, name="db")

JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout.")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def registry() -> Registry:
    from registry.recipes import load_recipes

    return load_recipes()


# ---------------------------------------------------------------- list / show / command


@app.command("list")
def list_cmd(family: Optional[str] = typer.Option(None, "--family", help="tulu3 or smollm2"), as_json: bool = JsonOpt):
    """Every recipe: name, family, size, base model, its stages in order."""
    list_command(family, as_json)  # registry.lean serves it without typer when it can


def stage_document(reg: Registry, recipe_name: str, stage_name: str) -> dict[str, Any]:
    from registry import derive

    recipe = reg.recipe(recipe_name)
    stage = reg.stage(recipe_name, stage_name)
    doc = {"recipe": recipe_name, **reg.raw_stage(recipe_name, stage_name)}
    doc["derived"] = derive.derived(reg.model, recipe, stage)
    doc["conflicts"] = [k for k, v in stage.hyperparameters.items() if v.alternatives]
    return doc


@app.command("show")
def show_cmd(recipe: str, stage: Optional[str] = typer.Option(None, "--stage", "-s"), as_json: bool = JsonOpt):
    """One recipe, or one stage of it, with every recorded value and its source."""
    reg = registry()
    rec = reg.recipe(recipe)
    if stage is None:
        doc = {"recipe": recipe, **{k: v for k, v in reg.raw["recipes"][recipe].items() if k != "stages"},
               "stages": rec.stage_names, "published_metrics": published_metrics_of(reg, recipe)}
        doc["sources"] = cited_sources(reg, doc)
        if as_json:
            return emit_json(doc)
        _print_recipe(reg, recipe, doc["published_metrics"])
        return _print_sources(doc["sources"])
    reg.stage(recipe, stage)
    doc = stage_document(reg, recipe, stage)
    doc["sources"] = cited_sources(reg, doc)
    if as_json:
        return emit_json(doc)
    _print_stage(reg, recipe, stage, doc)
    _print_sources(doc["sources"])


def cited_sources(reg: Registry, doc: Any) -> dict[str, dict[str, Any]]:
    """Every source tag `doc` cites (a "source" value's first word; the rest is a locator such as "§1.4"),
    with the title, URL and commit that recipes.json defines for it: an id alone sends no one anywhere."""
    tags: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "source" and isinstance(value, str):
                    tags.append(value.split(" ", 1)[0])
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    defined = reg.raw.get("sources", {})
    return {tag: {k: v for k, v in defined[tag].items() if v is not None}
            for tag in dict.fromkeys(tags) if tag in defined}


def _print_sources(sources: dict[str, dict[str, Any]]) -> None:
    out = console()
    out.print("sources:")
    for tag, src in sources.items():
        where = src.get("url") or ""
        if src.get("commit"):
            where += f" @ {src['commit'][:12]}"
        out.print(f"  {tag}: {src['title']}" + (f" — {where}" if where else ""), markup=False, highlight=False)


def _sourced_table(title: str, items: dict[str, Any]):
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for col in ("key", "value", "source", "also stated"):
        table.add_column(col, overflow="fold")
    for key, item in items.items():
        if item is None:
            continue
        alts = "; ".join(f"{fmt(a['value'])} ({a['source']})" for a in item.get("alternatives", []))
        value = fmt(item["value"]) + ("" if item.get("release_value_known", True) else " (release value unknown)")
        table.add_row(key, value, item["source"], alts)
    return table


def published_metrics_of(reg: Registry, recipe: str) -> list[dict[str, Any]]:
    """The published metrics of every checkpoint the recipe's stages output, in stage order, each with
    its protocol and source (and the other values sources state, if any)."""
    rows = []
    for st in reg.raw["recipes"][recipe]["stages"]:
        for out in st.get("outputs", []):
            ckpt = reg.raw["checkpoints"].get(out["checkpoint"]) or {}
            for m in ckpt.get("metrics", []):
                rows.append({"stage": st["name"], "checkpoint": out["checkpoint"], "benchmark": m["benchmark"],
                             "value": m["value"], "protocol": m["protocol"], "source": m["source"],
                             **({"alternatives": m["alternatives"]} if m.get("alternatives") else {})})
    return rows


def _print_recipe(reg: Registry, name: str, metrics: list[dict[str, Any]]) -> None:
    from rich.table import Table

    raw = reg.raw["recipes"][name]
    out = console()
    out.print(f"[bold]{name}[/bold]  family {raw['family']}  size {raw['size']}  base {raw['base_model']}")
    out.print("stages: " + " → ".join(s["name"] for s in raw["stages"]))
    out.print(_sourced_table("architecture", raw["architecture"]))
    if metrics:
        table = Table(title="published metrics", title_justify="left")
        for col in ("checkpoint", "benchmark", "value", "protocol", "source", "also stated"):
            table.add_column(col, overflow="fold")
        for m in metrics:
            protocol = ", ".join(f"{k}={fmt(v)}" for k, v in m["protocol"].items())
            alts = "; ".join(f"{fmt(a['value'])} ({a['source']})" for a in m.get("alternatives", []))
            table.add_row(m["checkpoint"], m["benchmark"], fmt(m["value"]), protocol, m["source"], alts)
        out.print(table)
    else:
        out.print("published metrics: none stated for this recipe's checkpoints")
    for note in raw.get("notes", []):
        out.print(f"[yellow]{note['kind']}[/yellow] {note['text']} ({note['source']})")


def _print_stage(reg: Registry, recipe: str, stage: str, doc: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    out.print(f"[bold]{recipe}:{stage}[/bold] — {doc['summary']}")
    out.print(_sourced_table("hyperparameters", doc["hyperparameters"]))
    layout = {k: v for k, v in doc["layout"].items() if v is not None and k not in ("source", "note")}
    out.print("layout: " + ", ".join(f"{k}={fmt(v)}" for k, v in layout.items()) + f"  ({doc['layout']['source']})")
    derived = {k: v for k, v in doc["derived"].items() if v is not None}
    out.print("derived: " + ", ".join(f"{k}={fmt(v)}" for k, v in derived.items()))
    table = Table(title="datasets", title_justify="left")
    for col in ("dataset", "revision", "split", "role", "weight", "semantics", "used by release", "source"):
        table.add_column(col, overflow="fold")
    for use in doc["datasets"]:
        revision = reg.raw["datasets"][use["dataset"]].get("revision") or "—"
        table.add_row(use["dataset"], revision, use["split"], use["role"], fmt(use.get("weight")),
                      fmt(use.get("weight_semantics")), fmt(use.get("used_by_release")), use["source"])
    out.print(table)
    for phase in doc.get("phases", []):
        mix = ", ".join(f"{k} {v:g}" for k, v in phase["mixture"].items())
        out.print(f"phase {phase['name']}: tokens {phase['start_tokens']:,}–{phase['end_tokens']:,} "
                  f"({phase['lr_phase']}): {mix}  ({phase['source']})")
    for ref in doc["inputs"]:
        out.print(f"input {ref['role']}: {ref['checkpoint']}  ({ref['source']})")
    for ref in doc["outputs"]:
        out.print(f"output: {ref['checkpoint']}  ({ref['source']})")
    code = doc["code"]
    out.print(f"code: {code['repository']} @ {code['commit']} {code['entry_point']}  ({code['source']})")
    if doc.get("verifier_version"):
        out.print(f"verifier version: {doc['verifier_version']}")
    if doc.get("native_flags"):
        out.print("native flags: " + " ".join(f"--{k} {fmt(v)}" for k, v in doc["native_flags"].items()))
    if doc.get("command"):
        out.print(f"command ({doc['command']['source']}):")
        out.print(doc["command"]["text"], markup=False, highlight=False)
    for note in doc.get("notes", []):
        out.print(f"[yellow]{note['kind']}[/yellow] {note['text']} ({note['source']})")


@app.command("command")
def command_cmd(recipe: str, stage: str = typer.Option(..., "--stage", "-s")):
    """The recorded launch command, verbatim as published."""
    reg = registry()
    st = reg.stage(recipe, stage)
    if st.command is None:
        raise ReproError(f"no launch command is published for {recipe}:{stage}; "
                         f"see `repro show {recipe} --stage {stage}`")
    sys.stdout.write(st.command.text.rstrip("\n") + "\n")


# ---------------------------------------------------------------- diff / audit


def _flat_for(reg: Registry, target: str):
    from registry.diff import flatten_plan, flatten_stage

    if ":" in target:
        recipe, stage = reg.parse_target(target)
        return flatten_stage(reg, recipe, stage)
    from registry.db import read_scope
    from registry.queries import get_run

    with read_scope() as session:
        run = get_run(session, target)
        if run is None:
            raise ReproError(f"unknown target {target!r}: expected RECIPE:STAGE (e.g. tulu3-8b:sft) or a run id")
        return flatten_plan(run.plan)


@app.command("diff")
def diff_cmd(a: str, b: str, as_json: bool = JsonOpt):
    """Keys that differ between A and B (recipe:stage or run ids), raw and derived."""
    from registry.diff import diff_flat

    reg = registry()
    raw_a, der_a = _flat_for(reg, a)
    raw_b, der_b = _flat_for(reg, b)
    raw_rows, der_rows = diff_flat(raw_a, raw_b), diff_flat(der_a, der_b)
    if as_json:
        return emit_json({"a": a, "b": b,
                          "raw": [{"key": k, "a": x, "b": y} for k, x, y in raw_rows],
                          "derived": [{"key": k, "a": x, "b": y} for k, x, y in der_rows]})
    from rich.table import Table

    table = Table(title=f"{a}  vs  {b}")
    for col in ("key", a, b, "kind"):
        table.add_column(col, overflow="fold")
    for kind, rows in (("raw", raw_rows), ("derived", der_rows)):
        for key, x, y in rows:
            table.add_row(key, "—" if x is None else fmt(x), "—" if y is None else fmt(y), kind)
    console().print(table)


@app.command("audit")
def audit_cmd(recipe: str, as_json: bool = JsonOpt):
    """What does not add up: conflicting sources, unpublished inputs, layout arithmetic."""
    from registry.audit import audit

    reg = registry()
    findings = audit(reg, recipe)
    if as_json:
        return emit_json({"recipe": recipe, "findings": [f.to_json() for f in findings]})
    from rich.table import Table

    table = Table(title=f"audit {recipe}: {len(findings)} findings")
    for col in ("kind", "where", "finding"):
        table.add_column(col, overflow="fold")
    for f in findings:
        table.add_row(f.kind, f.where, f.message)
    console().print(table)


# ---------------------------------------------------------------- database-backed reads


@contextmanager
def indexed_session(reg: Registry) -> Iterator[Any]:
    """A read-only session on a database that indexes this recipes.json. It writes only when the index
    is stale (recipes.json changed or the database is new); on a read-only database that is one line."""
    from registry.db import database_url, is_read_only_error, read_scope, safe_url, session_scope
    from registry.sync import is_current, sync

    with read_scope() as session:
        if is_current(session, reg):
            yield session
            return
    try:
        with session_scope() as session:
            sync(session, reg)
    except ReproError as exc:
        if not is_read_only_error(exc):
            raise
        raise ReproError(f"database {safe_url(database_url())} is read-only and does not index the current "
                         "recipes.json; run `repro db sync` with write access, or point REPRO_DATABASE_URL at "
                         "a writable copy") from None
    with read_scope() as session:
        yield session


def resolve_node(session, reg: Registry, target: str) -> str:
    from registry.light_db import resolve_node as resolve
    from registry.lineage import parent_key
    from registry.queries import node_exists, run_id_for

    return resolve(reg, target, lambda key: node_exists(session, key),
                   lambda exact, prefix: parent_key(session, exact, prefix), lambda run: run_id_for(session, run))


def _depth_option(value: Optional[int]) -> Optional[int]:
    if value is not None and value < 1:
        raise ReproError(f"--depth must be ≥ 1 (got {value}); omit it for the whole graph")
    return value


@app.command("lineage")
def lineage_cmd(target: str, downstream: bool = typer.Option(False, "--downstream", help="What consumed TARGET."),
                verify: bool = typer.Option(False, "--verify", help="Re-hash recorded inputs and outputs."),
                depth: Optional[int] = typer.Option(None, "--depth", help="Stop N edges from TARGET (default: "
                                                    "the whole graph); the output names where it cut."),
                as_json: bool = JsonOpt):
    """The graph upstream of a checkpoint, run or recipe:stage (or downstream with --downstream)."""
    depth = _depth_option(depth)
    reg = registry()
    # Unbounded walks go through sqlite3/psycopg directly when the database is ready for it (no
    # SQLAlchemy import in a cold process; registry.lean serves these without typer too); anything else
    # takes the SQLAlchemy path below.
    answer = light_lineage(reg, target, downstream, verify) if depth is None and not (verify and downstream) \
        else None
    if answer is None:
        from registry.lineage import lineage_edges, lineage_tree, reachable

        with indexed_session(reg) as session:
            node = resolve_node(session, reg, target)
            edges = lineage_edges(session, node, downstream=downstream, max_depth=depth)
            tree = lineage_tree(session, node, downstream=downstream, max_depth=depth, edges=edges)
            # The whole impact, even where the tree is cut; without a cut it is the same walk's edges.
            impacted = reachable(session, node, downstream=True, edges=edges if depth is None else None) \
                if downstream else []
            problems = _verify_hashes(session, node, edges if not downstream and depth is None else None) \
                if verify else []
        answer = node, tree, impacted, problems
    code = lineage_report(*answer, downstream=downstream, verify=verify, depth=depth, as_json=as_json)
    if code:
        raise typer.Exit(code)


def _verify_hashes(session, node: str, upstream_edges=None) -> list[dict[str, str]]:
    """Re-hash every file-backed input/output recorded with a content hash under `node`'s runs."""
    from registry.lineage import verify_edges

    return verify_edges(session, node, upstream_edges)


@app.command("runs")
def runs_cmd(recipe: Optional[str] = typer.Option(None, "--recipe"), as_json: bool = JsonOpt,
             limit: int = typer.Option(50, "--limit", help="runs per page"),
             offset: int = typer.Option(0, "--offset", help="skip this many of the newest runs"),
             after: Optional[str] = typer.Option(None, "--after", help="the page after this run id (a cursor: "
                                                 "the last id of the previous page)")):
    """The recorded runs, newest first, one page at a time."""
    check_runs_options(registry(), recipe, limit, offset)  # a broken recipes.json is reported by every command
    rows = light_runs(recipe, limit, offset, after)  # sqlite3/psycopg directly: no SQLAlchemy import
    if rows is None:
        import socket

        from registry.db import read_scope, sqlite_file_missing
        from registry.queries import list_runs

        if sqlite_file_missing():  # no database yet: no runs, and nothing to create
            rows = []
        else:
            host = socket.gethostname()
            with read_scope() as session:
                rows = [runs_row(r, host) for r in list_runs(session, recipe=recipe, limit=limit, offset=offset,
                                                              after=after)]
    if as_json:
        return emit_json(rows)
    from rich.table import Table

    table = Table(title=f"runs ({len(rows)}{', from ' + str(offset + 1) if offset else ''})")
    for col in ("run", "profile", "status", "created (UTC)", "key metric", "deviations"):
        table.add_column(col, overflow="fold")
    for r in rows:
        preferred = ("heldout_accuracy", "reward_mean_last10", "heldout_rewards_accuracy", "heldout_loss",
                     "train_loss_last")
        metric = next(((k, r["final_metrics"][k]) for k in preferred
                       if isinstance(r["final_metrics"].get(k), (int, float))), None)
        keys = sorted({d.get("key", "?").split(".")[0] for d in r["deviations"]})
        table.add_row(r["id"], r["profile"], r["status"] + (" (stale)" if r.get("stale") else ""),
                      (r["created_at"] or "")[:16].replace("T", " "),
                      f"{metric[0]}={metric[1]:.4g}" if metric else "",
                      f"{len(r['deviations'])} ({', '.join(keys[:4])}{', …' if len(keys) > 4 else ''})"
                      if r["deviations"] else "none")
    console().print(table)
    if len(rows) == limit:
        sys.stdout.write(f"next page: repro runs --limit {limit} --after {rows[-1]['id']}"
                         f"{' --recipe ' + recipe if recipe else ''}\n")


# ---------------------------------------------------------------- db / validate


@db_app.command("upgrade")
def db_upgrade_cmd():
    """Bring the database schema to the current revision."""
    from registry.db import database_url, make_engine, safe_url, upgrade

    url = database_url()
    before, after = upgrade(make_engine(url))
    sys.stdout.write(f"{safe_url(url)}: {before or 'empty'} -> {after}\n")


@db_app.command("gc")
def db_gc_cmd(as_json: bool = JsonOpt):
    """Record runs whose process died (no pid, or no heartbeat for 10 minutes) as interrupted."""
    import socket

    from registry.db import session_scope
    from registry.queries import mark_stale_runs
    from registry.run_status import pid_alive

    with session_scope() as session:
        marked = mark_stale_runs(session, socket.gethostname(), pid_alive)
    if as_json:
        return emit_json({"interrupted": marked})
    sys.stdout.write((f"marked {len(marked)} run(s) interrupted: " + ", ".join(marked)) if marked
                     else "no stale runs")
    sys.stdout.write("\n")


@db_app.command("sync")
def db_sync_cmd(as_json: bool = JsonOpt):
    """Index recipes.json into the database (idempotent; prints what changed)."""
    from registry.db import session_scope
    from registry.sync import sync

    with session_scope() as session:
        changes = sync(session, registry())
    if as_json:
        return emit_json({"changes": changes})
    sys.stdout.write(("\n".join(changes) if changes else "already in sync") + "\n")


@app.command("validate")
def validate_cmd(path: Optional[str] = typer.Argument(None, help="recipes file (default: the project's)")):
    """Validate a recipes file: schema, references, lineage; one line per problem."""
    from registry.recipes import load_recipes

    reg = load_recipes(path)
    sys.stdout.write(f"{reg.path}: ok ({len(reg.recipes)} recipes, "
                     f"{sum(len(r.stages) for r in reg.recipes.values())} stages)\n")


def run_app(application: typer.Typer, argv: list[str] | None = None) -> int:
    """Run a typer app with the contract's error handling: one line on stderr, exit 2 for bad input."""
    import os

    # typer builds pydantic TypeAdapters to parse options, and pydantic then scans every installed
    # package's entry points for plugins (~30 ms of each cold command). repro uses no pydantic plugin;
    # setting the variable yourself still wins.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:  # typer ≥ 0.20 vendors click as typer._click; older typer uses click itself
        from typer._click import exceptions as click_errors
    except ImportError:
        from click import exceptions as click_errors
    exit_types = tuple({typer.Exit, *(t for t in (getattr(click_errors, "Exit", None),) if t)})
    abort_types = tuple({*(t for t in (getattr(typer, "Abort", None), getattr(click_errors, "Abort", None)) if t)})

    try:
        # Without standalone mode click returns a command's typer.Exit code instead of raising it.
        result = application(args=argv, standalone_mode=False, prog_name="repro")
        return result if isinstance(result, int) else 0
    except ReproError as exc:
        return failure_exit(exc)
    except exit_types as exc:
        return exc.exit_code
    except abort_types:
        sys.stderr.write("aborted\n")
        return 130
    except click_errors.UsageError as exc:
        sys.stderr.write(f"error: {exc.format_message()}\n")
        return 2
    except click_errors.ClickException as exc:
        sys.stderr.write(f"error: {exc.format_message()}\n")
        return exc.exit_code
    except OSError as exc:  # an environment fault no command anticipated is still one line, never a traceback
        return failure_exit(exc)


def main() -> None:
    sys.exit(run_app(app))
