"""`repro plot schedule` draws the learning rate each update of a smoke run actually used.

The golden curves (tests/golden) hold the logged lr of every update; the plot must reproduce it exactly,
including open-instruct's schedule sizing (quirks 5 and 20: the Tülu 3 RM's 300 updates run over a
1,788-step schedule) and SFT packing (the SmolLM2 SFT packs 400 rows into the blocks of 70 updates).
The lr is a pure function of the step, so this holds on every CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
CASES = [("tulu3-8b", "sft"), ("tulu3-8b", "dpo"), ("tulu3-8b", "rm"), ("smollm2-135m", "pretrain"),
         ("smollm2-135m", "sft"), ("smollm2-135m", "dpo")]


@pytest.mark.parametrize("recipe, stage", CASES)
def test_schedule_plot_equals_the_lr_the_run_used(recipe, stage):
    from runner.plots import schedule_points

    logged = json.loads((GOLDEN / f"{recipe}--{stage}.json").read_text())["series"]["lr"]
    updates, points, label = schedule_points(recipe, stage, "smoke")
    assert updates == list(range(len(logged)))
    assert points == pytest.approx(logged, rel=1e-12, abs=0)
    if (recipe, stage) == ("tulu3-8b", "rm"):
        assert "schedule of 1,788 steps" in label
