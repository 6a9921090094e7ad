"""The one ground-truth check of RLVR rows, shared by the preflight (before anything is written) and the RLVR
stage (which reads its prompts again, also in launched processes and resumed runs, where no preflight ran).

runner.data.hub imports it (and the stages reach it as `hub.check_ground_truth`), so the imports of hub and of
the verifiers are made on the first call, not at import."""

from __future__ import annotations

from typing import Any


def check_ground_truth(entry: dict[str, Any], index: int, row: dict[str, Any]) -> None:
    """Refuse row `index` (1-based) of the data source `entry` when its ground truth cannot be scored.

    An unknown verifier task raises ValueError in runner.verifiers; here it is bad data like any other, so
    both callers stop with the same one-line message (exit 2) instead of one of them crashing."""
    from runner import verifiers
    from runner.data.hub import DataError, label

    try:
        problem = verifiers.validate_ground_truth(row["dataset"], row["ground_truth"])
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise DataError(f"{label(entry)} row {index}: malformed ground truth: {problem}")
