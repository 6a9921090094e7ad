"""Named behaviours a run can switch: release-era bugs the recorded code had, and this tool's deliberate
deviations from it. Each switch is resolved when the plan is made and stored in `plan.extra["switches"]`,
so run.json records what the run did; docs/semantics.md gives each one's replay difference.

Switch one off (or on) with `REPRO_SWITCHES="name=off,other=on"` in the environment of `repro run`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

from registry.errors import ReproError


@dataclass(frozen=True)
class Switch:
    default: bool
    applies: Callable[[str, str], bool]  # (family, stage) -> does this switch concern the stage?
    on: str   # what "on" means
    off: str  # what "off" means


SWITCHES: dict[str, Switch] = {
    "trl_2330_padding": Switch(
        True, lambda family, stage: family == "smollm2" and stage == "dpo",
        on="as TRL 0.12 ran SmolLM2 DPO: the last token of the longest row is dropped when the batch has an "
           "empty padding column (huggingface/trl#2330, docs/semantics.md quirk 18)",
        off="every token kept (TRL >= 0.13)"),
    "empty_ground_truth_scores_0": Switch(
        True, lambda family, stage: stage == "rlvr",
        on="deviation: an empty ground truth scores 0",
        off="as released: an empty ground truth is compared like any other (GSM8K/MATH can match it)"),
    "checker_error_scores_0": Switch(
        True, lambda family, stage: stage == "rlvr",
        on="deviation: a verifier that raises scores 0 (counted in ifeval.RELEASE_ERRORS)",
        off="as released: the exception propagates and aborts the reward computation (and the run)"),
}

_WORDS = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def _overrides(text: str) -> dict[str, bool]:
    out: dict[str, bool] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        name, value = name.strip(), value.strip().lower()
        if name not in SWITCHES:
            raise ReproError(f"REPRO_SWITCHES: unknown switch {name!r} (valid: {', '.join(SWITCHES)})")
        if value not in _WORDS:
            raise ReproError(f"REPRO_SWITCHES: {item!r} must be NAME=on or NAME=off")
        out[name] = _WORDS[value]
    return out


def resolve(family: str, stage: str, env: str | None = None) -> dict[str, bool]:
    """The switches that concern this stage, defaults overridden by REPRO_SWITCHES."""
    given = _overrides(os.environ.get("REPRO_SWITCHES", "") if env is None else env)
    return {name: given.get(name, sw.default) for name, sw in SWITCHES.items() if sw.applies(family, stage)}


def is_on(extra: dict, name: str) -> bool:
    """A plan's switch (its default where a plan made before the switch existed lacks it)."""
    return bool((extra.get("switches") or {}).get(name, SWITCHES[name].default))
