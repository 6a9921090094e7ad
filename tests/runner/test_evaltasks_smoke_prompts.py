"""The smoke `--suite verifiers` prompts discriminate: a degenerate reply cannot pass all of them.

The RLVR stage's held-out prompts (rlvr-eval.jsonl) hold only the IFEval kinds RLVR trains on, which an
empty reply satisfies; the eval suite's default data (verifiers-eval.jsonl) draws every kind.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner import verifiers
from runner.evaluate import DEFAULT_DATA


def _ifeval_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["dataset"] == "ifeval"]


@pytest.mark.parametrize("family", ["tulu3", "smollm2"])
def test_degenerate_replies_do_not_pass_every_ifeval_prompt(family):
    rows = _ifeval_rows(DEFAULT_DATA[("verifiers", family)])
    assert len(rows) >= 30
    kinds = {json.loads(r["ground_truth"])["func_name"] for r in rows}
    assert {"verify_keywords", "validate_end", "verify_keyword_frequency"} <= kinds
    for reply in ("", "the the the", "12 34.", "A"):
        rate = sum(verifiers.score("ifeval", reply, r["ground_truth"], "release-2024-11") for r in rows) / len(rows)
        assert rate < 0.75, (reply, rate)


def test_the_rlvr_heldout_prompts_are_the_ones_an_empty_reply_passes():
    # Why the eval suite no longer uses them: the reason this file exists.
    from runner.evaluate import FIXTURES

    rows = _ifeval_rows(FIXTURES / "tulu3/rlvr-eval.jsonl")
    assert all(verifiers.score("ifeval", "", r["ground_truth"], "release-2024-11") == 1.0 for r in rows)
