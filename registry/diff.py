"""Differences between two stages (or runs): raw keys and derived quantities, cosmetic keys ignored."""

from __future__ import annotations

from typing import Any

from registry import derive
from registry.recipes import Registry
from registry.schema import COSMETIC_KEYS


def flatten_stage(registry: Registry, recipe_name: str, stage_name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(raw, derived) flat dicts for `recipe:stage`."""
    recipe = registry.recipe(recipe_name)
    stage = registry.stage(recipe_name, stage_name)
    raw: dict[str, Any] = {}
    for key, item in stage.hyperparameters.items():
        raw[key] = item.value
    for key, value in stage.layout.model_dump(exclude={"source", "note"}, exclude_none=True).items():
        raw[f"layout.{key}"] = value
    for key, value in stage.native_flags.items():
        if key not in COSMETIC_KEYS:
            raw[f"native.{key}"] = value
    raw["datasets"] = [f"{u.dataset}:{u.split} {u.weight}" for u in stage.datasets if u.used_by_release is not False]
    for ref in stage.inputs:
        raw[f"input.{ref.role}"] = ref.checkpoint
    raw["code"] = f"{stage.code.repository}@{stage.code.commit[:12]} {stage.code.entry_point}"
    if stage.verifier_version:
        raw["verifier_version"] = stage.verifier_version
    raw["base_model"] = recipe.base_model
    derived = derive.derived(registry.model, recipe, stage)
    return raw, derived


def flatten_plan(plan: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run's resolved plan (run.json `plan`) in the same flat form."""
    raw = {k: v for k, v in plan.get("hyperparameters", {}).items() if k not in COSMETIC_KEYS}
    for key, value in plan.get("model", {}).items():
        raw[f"model.{key}"] = value
    raw["datasets"] = plan.get("datasets")
    for key, value in plan.get("inputs", {}).items():
        raw[f"input.{key}"] = value
    return raw, dict(plan.get("derived", {}))


def diff_flat(a: dict[str, Any], b: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    rows = []
    for key in list(dict.fromkeys([*a, *b])):
        if key in COSMETIC_KEYS or key.split(".")[-1] in COSMETIC_KEYS:
            continue
        va, vb = a.get(key), b.get(key)
        if va != vb:
            rows.append((key, va, vb))
    return rows
