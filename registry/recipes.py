"""Read, validate and format recipes.json.

Validation happens in two layers: the pydantic models (shape and types, one
error naming its JSON path) and the cross-reference checks here (sources,
datasets and checkpoints that exist, stage order, who produces what, no
lineage cycle). Either failure is a `ReproError`: one line, exit code 2.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from registry.errors import ReproError, unknown
from registry.schema import FAMILY_STAGES, Recipe, RecipesFile, Stage

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = Path(__file__).resolve().parent / "recipes.schema.json"


def recipes_path() -> Path:
    return Path(os.environ.get("REPRO_RECIPES", PROJECT_ROOT / "recipes.json"))


def canonical_text(data: Any) -> str:
    """The one accepted formatting of recipes.json (a test checks the file)."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def content_hash(data: Any) -> str:
    blob = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ReproError(f"duplicate key {key!r} in recipes file")
        seen[key] = value
    return seen


def _json_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(root)"


def parse_text(text: str, origin: str = "recipes.json") -> tuple[RecipesFile, dict[str, Any]]:
    try:
        raw = json.loads(text, object_pairs_hook=_reject_duplicates)
    except json.JSONDecodeError as exc:
        raise ReproError(f"{origin}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ReproError as exc:
        raise ReproError(f"{origin}: {exc}") from None
    except RecursionError:
        raise ReproError(f"{origin}: JSON nested too deeply to be a recipes file") from None
    try:
        model = RecipesFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise ReproError(f"{origin}: {_json_path(first['loc'])}: {message}{more}") from None
    check_references(model, raw, origin)
    return model, raw


@dataclass(frozen=True)
class Registry:
    """The validated recipes file plus its raw JSON (hashes are taken from the raw form)."""

    model: RecipesFile
    raw: dict[str, Any]
    path: Path

    @property
    def recipes(self) -> dict[str, Recipe]:
        return self.model.recipes

    def recipe(self, name: str) -> Recipe:
        if name not in self.model.recipes:
            raise unknown("recipe", name, self.model.recipes)
        return self.model.recipes[name]

    def stage(self, recipe_name: str, stage_name: str) -> Stage:
        recipe = self.recipe(recipe_name)
        stage = recipe.stage(stage_name)
        if stage is None:
            raise unknown(f"stage for {recipe_name}", stage_name, recipe.stage_names)
        return stage

    def raw_stage(self, recipe_name: str, stage_name: str) -> dict[str, Any]:
        stages = self.raw["recipes"][recipe_name]["stages"]
        return next(s for s in stages if s["name"] == stage_name)

    def parse_target(self, target: str) -> tuple[str, str]:
        """`recipe:stage` -> (recipe, stage), validated."""
        if ":" not in target:
            raise ReproError(f"expected RECIPE:STAGE, got {target!r} (e.g. tulu3-8b:sft)")
        recipe_name, stage_name = target.split(":", 1)
        self.stage(recipe_name, stage_name)
        return recipe_name, stage_name


def load_recipes(path: str | Path | None = None) -> Registry:
    path = Path(path) if path is not None else recipes_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReproError(f"recipes file not found: {path}") from None
    except IsADirectoryError:
        raise ReproError(f"recipes file {path} is a directory; point REPRO_RECIPES at a recipes.json file") from None
    except OSError as exc:
        raise ReproError(f"cannot read recipes file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ReproError(f"recipes file {path} is not UTF-8 text (byte {exc.start})") from None
    return _load_cached(str(path), text)


@lru_cache(maxsize=4)
def _load_cached(path: str, text: str) -> Registry:
    model, raw = parse_text(text, Path(path).name)
    return Registry(model=model, raw=raw, path=Path(path))


# ---------------------------------------------------------------- cross references


def _walk_sources(node: Any, path: str, out: list[tuple[str, str]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            child = f"{path}.{key}" if path else key
            if key == "source" and isinstance(value, str):
                out.append((child, value))
            else:
                _walk_sources(value, child, out)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk_sources(value, f"{path}[{i}]", out)


def check_references(model: RecipesFile, raw: dict[str, Any], origin: str) -> None:
    def fail(path: str, message: str) -> None:
        raise ReproError(f"{origin}: {path}: {message}")

    refs: list[tuple[str, str]] = []
    _walk_sources(raw, "", refs)
    for path, ref in refs:
        tag = ref.split(" ", 1)[0]
        if tag not in model.sources:
            fail(path, f"source tag {tag!r} is not defined in 'sources'")

    def check_dataset(path: str, name: str) -> None:
        if name not in model.datasets:
            fail(path, str(unknown("dataset", name, model.datasets)))

    def check_checkpoint(path: str, name: str) -> None:
        if name not in model.checkpoints:
            fail(path, str(unknown("checkpoint", name, model.checkpoints)))

    produced: dict[str, str] = {}
    for rname, recipe in model.recipes.items():
        base = f"recipes.{rname}"
        check_checkpoint(f"{base}.base_model", recipe.base_model)
        allowed = FAMILY_STAGES[recipe.family]
        names = recipe.stage_names
        if len(set(names)) != len(names):
            fail(f"{base}.stages", "a stage appears twice")
        order = [allowed.index(n) if n in allowed else -1 for n in names]
        for i, (name, pos) in enumerate(zip(names, order)):
            if pos < 0:
                fail(f"{base}.stages[{i}].name",
                     f"stage {name!r} is not a {recipe.family} stage (valid: {', '.join(allowed)})")
        if order != sorted(order):
            fail(f"{base}.stages", f"stages out of order; expected the order {', '.join(allowed)}")
        for i, stage in enumerate(recipe.stages):
            spath = f"{base}.stages[{i}]"
            for j, use in enumerate(stage.datasets):
                check_dataset(f"{spath}.datasets[{j}].dataset", use.dataset)
            for j, ref in enumerate(stage.inputs):
                check_checkpoint(f"{spath}.inputs[{j}].checkpoint", ref.checkpoint)
            for j, out in enumerate(stage.outputs):
                check_checkpoint(f"{spath}.outputs[{j}].checkpoint", out.checkpoint)
                produced[out.checkpoint] = f"{rname}:{stage.name}"
            for j, phase in enumerate(stage.phases):
                if j and phase.start_tokens != stage.phases[j - 1].end_tokens:
                    fail(f"{spath}.phases[{j}].start_tokens", "phases must be contiguous")

    for cname, ckpt in model.checkpoints.items():
        cpath = f"checkpoints.{cname}"
        if ckpt.produced_by is not None:
            rname, _, sname = ckpt.produced_by.partition(":")
            recipe = model.recipes.get(rname)
            if recipe is None or recipe.stage(sname) is None:
                fail(f"{cpath}.produced_by", f"no stage {ckpt.produced_by!r} in the recipes")
        if cname in produced and ckpt.produced_by not in (None, produced[cname]):
            fail(f"{cpath}.produced_by", f"says {ckpt.produced_by!r} but {produced[cname]!r} lists it as output")

    # Every stage input must come from somewhere: a published checkpoint, or a stage that produces it.
    for rname, recipe in model.recipes.items():
        for i, stage in enumerate(recipe.stages):
            for j, ref in enumerate(stage.inputs):
                ckpt = model.checkpoints[ref.checkpoint]
                if not ckpt.published and ckpt.produced_by is None and ref.checkpoint not in produced:
                    fail(f"recipes.{rname}.stages[{i}].inputs[{j}]",
                         f"checkpoint {ref.checkpoint!r}: nothing produces it and no source publishes it")

    _check_acyclic(model, origin)


def lineage_edges(model: RecipesFile) -> list[tuple[str, str]]:
    """Checkpoint graph: (input checkpoint -> output checkpoint) through each stage."""
    edges = []
    for recipe in model.recipes.values():
        for stage in recipe.stages:
            for ref in stage.inputs:
                for out in stage.outputs:
                    edges.append((ref.checkpoint, out.checkpoint))
    return edges


def _check_acyclic(model: RecipesFile, origin: str) -> None:
    graph: dict[str, list[str]] = {}
    for parent, child in lineage_edges(model):
        graph.setdefault(parent, []).append(child)
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for child in graph.get(node, []):
            if state.get(child) == 1:
                cycle = trail[trail.index(child):] + [child] if child in trail else [node, child]
                raise ReproError(f"{origin}: lineage cycle: {' -> '.join(cycle)}")
            if state.get(child) is None:
                visit(child, trail + [child])
        state[node] = 2

    for node in list(graph):
        if state.get(node) is None:
            visit(node, [node])


def json_schema() -> dict[str, Any]:
    return RecipesFile.model_json_schema(by_alias=True)
