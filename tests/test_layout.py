"""The dependency rule, read from the source: runner imports registry, never the reverse, and registry imports
no torch stack. Statically, so that an import inside a function (which a cold-process probe never runs) counts.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "accelerate", "datasets", "deepspeed", "ray", "vllm", "numpy")


def imported_modules(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """(line, top-level module) of every import in the file, relative imports resolved within its package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = package or path.relative_to(ROOT).parts[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, package if node.level else (node.module or "").split(".")[0]))
    return found


def test_import_scan_sees_function_level_and_relative_imports(tmp_path) -> None:
    # The scan itself, on a file shaped like a registry module.
    probe = tmp_path / "probe.py"
    probe.write_text("import os\n\ndef f():\n    from runner.plan import RunPlan\n    from . import errors\n"
                     "    import torch.nn\n", encoding="utf-8")
    assert imported_modules(probe, "registry") == [(1, "os"), (4, "runner"), (5, "registry"), (6, "torch")]


@pytest.mark.parametrize("path", sorted((ROOT / "registry").rglob("*.py")), ids=lambda p: p.name)
def test_registry_imports_no_runner_and_no_torch_stack(path: Path) -> None:
    bad = [(line, mod) for line, mod in imported_modules(path) if mod == "runner" or mod in HEAVY]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}: registry/ must not depend on runner/ or the torch stack"


@pytest.mark.parametrize("path", sorted((ROOT / "migrations").rglob("*.py")), ids=lambda p: p.name)
def test_migrations_import_no_runner(path: Path) -> None:
    bad = [(line, mod) for line, mod in imported_modules(path) if mod == "runner" or mod in HEAVY]
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


# ---------------------------------------------------------------- command modules write nothing
# runner/commands/ parses options and prints; every database write goes through the modules that own it
# (runner/records.py for runs and evaluations, registry/ for the rest). Read from the source, like the
# import rule above, so a write on a path no test runs still counts.

COMMANDS = ROOT / "runner" / "commands"
# The modules whose functions write to the database: a command module must not call them itself.
WRITER_SOURCES = (*sorted((ROOT / "registry").rglob("*.py")), ROOT / "runner" / "records.py",
                  ROOT / "runner" / "published.py")
SESSION_WRITES = {"add", "add_all", "delete", "merge", "commit", "flush", "bulk_save_objects", "bulk_insert_mappings",
                  "bulk_update_mappings"}
STATEMENT_WRITES = {"insert", "update", "delete"}
# Raw SQL that writes, by its opening clause (so prose such as a help text's "Update the ..." is not one).
SQL_WRITE = re.compile(r"\s*(INSERT\s+(OR\s+\w+\s+)?INTO|REPLACE\s+INTO|MERGE\s+INTO|DELETE\s+FROM"
                       r"|UPDATE\s+\S+\s+SET)\s", re.IGNORECASE)
# Writers the body scan cannot see: they change ORM rows by attribute assignment (session.get + setattr).
ATTRIBUTE_WRITERS = {"update_run", "mark_stale_runs"}
# Opening a session or an engine (which commits what was written inside it) is not itself a write: a command
# may read through one. What writes inside it is what the scan looks for.
TRANSACTIONS = {"session_scope", "read_scope", "indexed_session", "get_engine"}


def _is_session(node: ast.AST) -> bool:
    """`session`, `self.session`, `db_session`...: what the registry and runner call a Session."""
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return "session" in name.lower()


def _called_name(call: ast.Call) -> str:
    func = call.func
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def direct_writes(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of every database write the syntax shows: a session's write methods, an
    insert/update/delete statement (or raw SQL doing one), an ORM row constructed."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func, name = node.func, _called_name(node)
            if isinstance(func, ast.Attribute) and name in SESSION_WRITES and _is_session(func.value):
                found.append((node.lineno, f"session.{name}()"))
            elif isinstance(func, ast.Name) and name in STATEMENT_WRITES:
                found.append((node.lineno, f"{name}() statement"))
            elif isinstance(func, ast.Attribute) and name in STATEMENT_WRITES and not node.args and not node.keywords:
                found.append((node.lineno, f"table.{name}() statement"))  # Table.insert(); a dict's .update() has args
            elif name.endswith("Row") and name[:1].isupper():
                found.append((node.lineno, f"{name}(...) row construction"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL_WRITE.match(node.value):
            found.append((node.lineno, f"raw SQL {node.value.split()[0].upper()}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "sqlalchemy":
            found += [(node.lineno, f"import of sqlalchemy.{a.name}") for a in node.names if a.name in STATEMENT_WRITES]
    return found


def _functions(path: Path) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


@functools.cache
def writer_names() -> frozenset[str]:
    """Names of the write helpers: a function of a writer module that writes, or calls one that does
    (to a fixed point, so add_run → add_edges counts), plus the attribute-assigning ones."""
    # Private functions too: a private writer makes its public callers writers. A list, not a dict: two
    # modules may define the same name.
    functions = [item for path in WRITER_SOURCES for item in _functions(path).items()]
    writers = {name for name, fn in functions if direct_writes(fn) and name not in TRANSACTIONS}
    writers |= ATTRIBUTE_WRITERS
    while True:
        more = {name for name, fn in functions if name not in writers and name not in TRANSACTIONS
                and any(isinstance(c, ast.Call) and _called_name(c) in writers for c in ast.walk(fn))}
        if not more:
            return frozenset(name for name in writers if not name.startswith("_"))
        writers |= more


def command_writes(path: Path, writers: frozenset[str]) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = direct_writes(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found += [(node.lineno, f"import of write helper {node.module}.{a.name}") for a in node.names
                      if a.name in writers and node.module.split(".")[0] in ("registry", "runner")]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in writers:
            found.append((node.lineno, f"call of write helper .{node.func.attr}()"))
    return sorted(found)


def test_writer_names_cover_the_known_write_helpers() -> None:
    writers = writer_names()
    known = {"add_edges", "add_run", "add_run_metrics", "replace_eval_metrics", "replace_run_series", "update_run",
             "register_run_checkpoint", "mark_stale_runs", "sync", "record_fixture_versions", "register_in_db",
             "record_eval", "start_run", "finish_run", "import_run"}
    assert known <= writers, sorted(known - writers)
    assert not writers & {"get_run", "run_metrics", "list_runs", "checkpoint_by_name", "verify_checkpoint"}


def test_write_scan_sees_each_kind_of_write(tmp_path) -> None:
    # The scan itself, on a file shaped like a command module that writes in every way it looks for.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from registry.queries import add_run_metrics\n"
        "def cmd(run_id):\n"
        "    from registry.db import session_scope\n"
        "    from registry.models import RunRow\n"
        "    from sqlalchemy import delete\n"
        "    with session_scope() as session:\n"
        "        session.add(RunRow(id=run_id))\n"
        "        session.execute(delete(RunRow))\n"
        "        session.execute(RunRow.__table__.insert())\n"
        "        session.execute('UPDATE runs SET status = 1')\n"
        "        session.commit()\n"
        "    import registry.queries as q\n"
        "    q.update_run(None, run_id)\n"
        "    progress = {}\n"
        "    progress.update(step=1)\n"  # a dict's update is no write
        "    seen = set()\n"
        "    seen.add(run_id)\n",  # nor is a set's add
        encoding="utf-8")
    found = {what for _, what in command_writes(probe, writer_names())}
    assert found == {"import of write helper registry.queries.add_run_metrics", "session.add()",
                     "RunRow(...) row construction", "import of sqlalchemy.delete", "delete() statement",
                     "table.insert() statement", "raw SQL UPDATE", "session.commit()",
                     "call of write helper .update_run()"}, found


@pytest.mark.parametrize("path", sorted(COMMANDS.rglob("*.py")), ids=lambda p: p.name)
def test_command_modules_write_nothing_to_the_database(path: Path) -> None:
    found = command_writes(path, writer_names())
    assert not found, (f"{path.relative_to(ROOT)} writes to the database {found}: a command module parses and "
                       "prints; move the write into the module that owns it (runner/records.py, registry/)")
