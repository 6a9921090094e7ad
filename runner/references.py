"""Golden references for the smoke runs: what `repro compare` checks a smoke run against.

A smoke run has no published numbers of its own, so the registry keeps the
evaluation results of a reference set of smoke runs (registry/smoke_references.json).
`python -m runner.references` re-evaluates the latest succeeded smoke run of every
stage in the current database and rewrites that file; `repro compare RUN` then
checks each metric of a new run against it. That is a regression check (verdict "unchanged"
or "changed", or "too few items to judge" on a handful of items), never a reproduction:
these numbers come from the project's own runs, not from any publication.
"""

from __future__ import annotations

import json
import sys
from typing import Any

# The suites each smoke stage is evaluated with (fixture data, greedy, 0-shot).
SUITES: dict[tuple[str, str], tuple[str, ...]] = {
    ("tulu3", "sft"): ("verifiers",),
    ("tulu3", "dpo"): ("preference", "verifiers"),
    ("tulu3", "rm"): ("preference",),
    ("tulu3", "rlvr"): ("verifiers",),
    ("smollm2", "pretrain"): ("heldout",),
    ("smollm2", "sft"): ("heldout",),
    ("smollm2", "dpo"): ("preference",),
}
# Continuous metrics carry no binomial noise: a relative tolerance (float noise across CPUs is far smaller).
RELATIVE_TOLERANCE = {"heldout loss": 0.02, "heldout perplexity": 0.05}


def evaluate_run(run_id: str, family: str, stage: str) -> list[dict[str, Any]]:
    """Run the stage's suites on a run (recording the metrics on it); returns the metric documents."""
    from runner.eval_run import evaluate_target

    metrics: list[dict[str, Any]] = []
    for suite in SUITES[(family, stage)]:
        # Through JSON as `repro eval --json` prints it, so the file holds exactly what that command shows.
        metrics += json.loads(json.dumps(evaluate_target(run_id, suite)["metrics"], default=str))
    return metrics


def reference_document(metrics: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    from runner.compare import reference_entry

    out = {}
    for m in metrics:
        protocol = {k: v for k, v in m["protocol"].items() if k not in ("data_path", "reference")}  # per checkout
        rel = RELATIVE_TOLERANCE.get(m["name"])
        out[m["name"]] = reference_entry(m["value"], protocol, abs(m["value"]) * rel if rel else None)
    return out


def update() -> dict[str, Any]:
    from registry.cli import registry
    from registry.db import session_scope
    from registry.queries import latest_succeeded_run
    from runner.compare import smoke_references_path

    reg = registry()
    document: dict[str, Any] = {}
    for recipe_name, recipe in reg.recipes.items():
        for stage in recipe.stage_names:
            if (recipe.family, stage) not in SUITES:
                continue
            with session_scope() as session:
                run = latest_succeeded_run(session, recipe_name, stage, "smoke")
                run_id = run.id if run else None
            if run_id is None:
                continue
            document[f"{recipe_name}:{stage}"] = reference_document(evaluate_run(run_id, recipe.family, stage))
    path = smoke_references_path()
    path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return document


if __name__ == "__main__":
    written = update()
    sys.stdout.write(f"wrote references for {len(written)} stages: {', '.join(sorted(written))}\n")
