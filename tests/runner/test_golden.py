"""Golden curves: each smoke stage's per-step losses, committed under tests/golden/, reproduced on CPU.

On the machine that wrote them the curves reproduce bit for bit (single-threaded float32, seeded data order
and init). Across CPUs, vectorised kernels may sum in another order, so continuous values are compared with a
relative tolerance of 1e-4; RLVR samples discrete tokens, where a last-bit difference can flip a sample and
the trajectory then diverges, so only its first steps are held to the golden values.
Regenerate with `REPRO_UPDATE_GOLDEN=1 pytest tests/runner/test_golden.py` after an intended change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.runner.conftest import CHAINS

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
REL_TOL = 1e-4
RLVR_STEPS = 3
METRIC = {"rlvr": "pg_loss"}
CASES = [(recipe, stage) for recipe, stages in CHAINS.items() for stage in stages]


def _series(record: dict, stage: str) -> dict[str, list[float]]:
    steps = record["steps"][:RLVR_STEPS] if stage == "rlvr" else record["steps"]
    keys = ["loss", "lr"] if stage != "rlvr" else ["reward_mean", "pg_loss", "vf_loss", "lr"]
    return {k: [s[k] for s in steps] for k in keys}


@pytest.mark.parametrize("recipe, stage", CASES)
def test_smoke_stage_reproduces_its_golden_curve(in_smoke_home, recipe, stage):
    record = in_smoke_home[(recipe, stage)]
    series = _series(record, stage)
    path = GOLDEN / f"{recipe}--{stage}.json"
    if os.environ.get("REPRO_UPDATE_GOLDEN") == "1":
        path.write_text(json.dumps({"recipe": recipe, "stage": stage, "torch": record["packages"].get("torch"),
                                    "series": series}, indent=1) + "\n")
    golden = json.loads(path.read_text())["series"]
    assert golden.keys() == series.keys()
    for key, expected in golden.items():
        got = series[key]
        assert len(got) == len(expected), key
        if stage == "rlvr" and key == "reward_mean":
            assert got == expected, key  # discrete: exact
        else:
            assert got == pytest.approx(expected, rel=REL_TOL, abs=1e-9), key
