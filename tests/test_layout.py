"""The dependency rule, read from the source: runner imports registry, never the reverse, and registry imports
no torch stack. Statically, so that an import inside a function (which a cold-process probe never runs) counts.
"""

from __future__ import annotations

import ast
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
