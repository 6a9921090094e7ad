"""Verdict math, protocol fingerprints and the comparison of a run's metrics, by hand."""

from __future__ import annotations

import json
import math

import pytest

from registry.errors import ReproError
from runner import compare as C

# The registry's protocols, as recipes.json records them (8B card vs 405B card).
GSM8K_8B = {"harness": "OLMES", "task": "gsm8k::tulu", "shots": 8, "cot": True, "settings": "8 shot, CoT"}
GSM8K_405B = {"harness": "OLMES", "shots": 8, "cot": True,
              "settings": "8 shot, CoT; 405B table configuration (not comparable with the 8B/70B settings)"}
IFEVAL_8B = {"harness": "OLMES", "task": "ifeval::tulu", "metric": "prompt loose", "settings": "prompt loose"}


def test_binomial_se_in_points():
    assert C.binomial_se(0.5, 100) == pytest.approx(5.0)  # 100·sqrt(.25/100)
    assert C.binomial_se(0.9, 100) == pytest.approx(3.0)  # 100·sqrt(.09/100)
    assert C.binomial_se(0.5, 100, scale=1.0) == pytest.approx(0.05)
    assert C.binomial_se(1.0, 100) == 0.0
    with pytest.raises(ValueError):
        C.binomial_se(0.5, 0)


def test_granularity_and_tolerance():
    assert C.granularity(100) == pytest.approx(1.0)
    assert C.granularity(1319) == pytest.approx(100 / 1319)
    assert C.noise_tolerance(50.0, 100) == pytest.approx((11.0, 5.0, 1.0))  # T = 2·5 + 1
    # GSM8K, published 87.6 on 1,319 problems: SE = 100·sqrt(.876·.124/1319) = 0.90749 points
    tol, se, g = C.noise_tolerance(87.6, 1319)
    assert se == pytest.approx(0.907488, abs=1e-5)
    assert tol == pytest.approx(2 * 0.907488 + 0.075815, abs=1e-5)


def test_verdict_thresholds_exact():
    # p = 0.5, n = 100: T = 11, reproduced up to T/2 = 5.5, within noise up to 11.
    assert C.verdict(50.0, 50.0, 11.0) == C.REPRODUCED
    assert C.verdict(55.5, 50.0, 11.0) == C.REPRODUCED
    assert C.verdict(44.5, 50.0, 11.0) == C.REPRODUCED
    assert C.verdict(55.6, 50.0, 11.0) == C.WITHIN_NOISE
    assert C.verdict(61.0, 50.0, 11.0) == C.WITHIN_NOISE
    assert C.verdict(39.0, 50.0, 11.0) == C.WITHIN_NOISE
    assert C.verdict(61.01, 50.0, 11.0) == C.DEVIATES
    assert C.verdict(38.9, 50.0, 11.0) == C.DEVIATES
    assert C.verdict(1.0, 1.0, 0.0) == C.REPRODUCED
    with pytest.raises(ValueError):
        C.verdict(1.0, 1.0, -1.0)


def test_fingerprint_normalizes_and_separates():
    a = C.fingerprint(GSM8K_8B)
    assert a == C.fingerprint({**GSM8K_8B, "harness": " olmes ", "settings": "8  shot,  CoT", "extra": "ignored"})
    assert a == C.fingerprint({**GSM8K_8B, "shots": 8.0})
    assert len(a) == 16
    assert a != C.fingerprint({**GSM8K_8B, "shots": 5})  # different shots
    assert a != C.fingerprint(GSM8K_405B)  # 405B table settings vs 8B protocol
    assert C.normalized_protocol({"task": "", "cot": None})["task"] is None


def test_405b_protocol_not_comparable_with_8b_protocol():
    reason = C.comparability(GSM8K_8B, GSM8K_405B, "reference")
    assert reason.startswith("protocol fingerprints differ")
    assert "task: 'gsm8k::tulu' vs None" in reason
    assert "405b table configuration" in reason
    c = C.compare_metric("GSM8K", 87.6, GSM8K_8B, 95.5, GSM8K_405B, against="reference", n=1319)
    assert c.verdict == C.NOT_COMPARABLE and c.tolerance is None and "task" in c.reason
    assert c.run_fingerprint != c.reference_fingerprint


def test_the_registry_405b_and_8b_gsm8k_protocols_differ():
    from registry.recipes import load_recipes

    ckpts = load_recipes().model.checkpoints
    p8 = next(m.protocol.model_dump() for m in ckpts["allenai/Llama-3.1-Tulu-3-8B"].metrics if m.benchmark == "GSM8K")
    p405 = next(m.protocol.model_dump() for m in ckpts["allenai/Llama-3.1-Tulu-3-405B"].metrics
                if m.benchmark == "GSM8K")
    assert C.fingerprint(p8) != C.fingerprint(p405)
    assert C.fingerprint(p8) == C.fingerprint(GSM8K_8B)


def test_published_claim_matches_8b_but_not_405b_and_checks_shots():
    claim = {"harness": "repro", "shots": 8, "published": {"harness": "OLMES", "task": "gsm8k::tulu", "shots": 8,
                                                           "cot": True}}
    assert C.comparability(claim, GSM8K_8B, "published") is None
    assert "task" in C.comparability(claim, GSM8K_405B, "published")
    ran_zero_shot = {**claim, "shots": 0}
    assert C.comparability(ran_zero_shot, GSM8K_8B, "published") == "run used 0 shots, the published protocol 8"
    # A run without a claim (smoke protocol) is never the published protocol.
    reason = C.comparability({"harness": "repro", "task": "gsm8k", "shots": 0}, GSM8K_8B, "published")
    assert "harness: 'repro' vs 'olmes'" in reason


def test_compare_metric_binomial_verdicts():
    claim = {"harness": "repro", "shots": 0,
             "published": {"harness": "OLMES", "task": "ifeval::tulu", "metric": "prompt loose"}}
    # IFEval 82.4 on 541 prompts: SE = 100·sqrt(.824·.176/541) = 1.6373, g = 0.18484, T = 3.4594
    se = 100 * math.sqrt(0.824 * 0.176 / 541)
    tol = 2 * se + 100 / 541
    c = C.compare_metric("IFEval", 82.4 + tol / 2 - 1e-6, claim, 82.4, IFEVAL_8B, against="published", n=541)
    assert (c.verdict, c.tolerance_source) == (C.REPRODUCED, "binomial")
    assert c.tolerance == pytest.approx(tol) and c.standard_error == pytest.approx(se)
    assert C.compare_metric("IFEval", 82.4 - tol + 1e-6, claim, 82.4, IFEVAL_8B, against="published",
                            n=541).verdict == C.WITHIN_NOISE
    assert C.compare_metric("IFEval", 82.4 - tol - 1e-3, claim, 82.4, IFEVAL_8B, against="published",
                            n=541).verdict == C.DEVIATES
    subset = C.compare_metric("IFEval", 82.4, {**claim, "n": 18}, 82.4, IFEVAL_8B, against="published", n=541)
    assert subset.verdict == C.NOT_COMPARABLE and subset.reason == "evaluated 18 items; the published benchmark has 541"
    full = C.compare_metric("IFEval", 82.4, {**claim, "n": 541}, 82.4, IFEVAL_8B, against="published", n=541)
    assert full.verdict == C.REPRODUCED
    none = C.compare_metric("IFEval", 80.0, claim, 82.4, IFEVAL_8B, against="published")
    assert none.verdict == C.NOT_COMPARABLE and "no tolerance" in none.reason


def test_stated_tolerance_and_data_hash():
    p = {"harness": "repro", "task": "heldout", "metric": "nll", "settings": "s", "data_sha256": "a" * 64}
    # Against our own smoke reference: a regression check, unchanged within the tolerance, changed beyond.
    c = C.compare_metric("heldout loss", 2.1, p, 2.0, p, against="reference", stated_tolerance=0.2)
    assert (c.verdict, c.tolerance, c.tolerance_source) == (C.UNCHANGED, 0.2, "stated")
    assert "regression check" in c.reason
    assert C.compare_metric("heldout loss", 2.15, p, 2.0, p, against="reference",
                            stated_tolerance=0.2).verdict == C.UNCHANGED
    assert C.compare_metric("heldout loss", 2.3, p, 2.0, p, against="reference",
                            stated_tolerance=0.2).verdict == C.CHANGED
    other = {**p, "data_sha256": "b" * 64}
    c = C.compare_metric("heldout loss", 2.0, p, 2.0, other, against="reference", stated_tolerance=0.2)
    assert c.verdict == C.NOT_COMPARABLE and "different data" in c.reason


def test_compare_run_routes_and_lists_unmatched():
    claim = {"harness": "repro", "shots": 8, "published": {"harness": "OLMES", "task": "gsm8k::tulu", "shots": 8,
                                                           "cot": True}}
    smoke = {"harness": "repro", "task": "math", "shots": 0, "settings": "x", "n": 100}
    metrics = [{"name": "GSM8K", "value": 87.0, "protocol": claim},
               {"name": "MATH", "value": 40.0, "protocol": smoke},
               {"name": "heldout loss", "value": 3.0, "protocol": {}}]
    published = [{"benchmark": "GSM8K", "value": 95.5, "protocol": GSM8K_405B},
                 {"benchmark": "GSM8K", "value": 87.6, "protocol": GSM8K_8B}]
    refs = {"MATH": {"value": 50.0, "protocol": smoke}}
    results, unmatched = C.compare_run(metrics, published=published, published_source="ckpt", references=refs,
                                       reference_source="tulu3-8b:rlvr", prefer_published=False)
    by = {r.name: r for r in results}
    assert by["GSM8K"].reference == 87.6 and by["GSM8K"].verdict == C.REPRODUCED  # picked the 8B-protocol row
    assert by["GSM8K"].n == 1319
    # MATH vs our own smoke reference 50 at n = 100: T = 11, d = 10 -> a regression check, unchanged
    assert by["MATH"].against == "reference" and by["MATH"].verdict == C.UNCHANGED
    assert unmatched == ["heldout loss"]
    assert C.summary(results) == {**{v: 0 for v in C.VERDICTS}, C.REPRODUCED: 1, C.UNCHANGED: 1}


def test_smoke_references_file_and_loader(tmp_path, monkeypatch):
    assert isinstance(C.load_smoke_references(C.SMOKE_REFERENCES), dict)  # the committed file loads
    good = tmp_path / "refs.json"
    good.write_text(json.dumps({"tulu3-8b:rlvr": {"GSM8K": C.reference_entry(12.5, {"harness": "repro"}, 3.0)}}))
    monkeypatch.setenv("REPRO_SMOKE_REFERENCES", str(good))
    assert C.load_smoke_references()["tulu3-8b:rlvr"]["GSM8K"] == {"value": 12.5, "protocol": {"harness": "repro"},
                                                                   "tolerance": 3.0}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tulu3-8b": {}}))
    with pytest.raises(ReproError, match="recipe:stage"):
        C.load_smoke_references(bad)
    bad.write_text(json.dumps({"a:b": {"m": {"value": "x"}}}))
    with pytest.raises(ReproError, match="numeric"):
        C.load_smoke_references(bad)
    assert C.load_smoke_references(tmp_path / "missing.json") == {}


def test_published_checkpoint_of_a_stage():
    from registry.recipes import load_recipes

    reg = load_recipes()
    assert C.published_checkpoint(reg, "tulu3-8b", "rlvr") == "allenai/Llama-3.1-Tulu-3-8B"
    assert C.published_checkpoint(reg, "smollm2-1.7b", "pretrain") == "HuggingFaceTB/SmolLM2-1.7B"
    assert C.published_checkpoint(reg, "tulu3-8b", "rm") is None  # the RM has no published metrics


def test_scorecard_png(tmp_path):
    rows = [C.compare_metric("GSM8K", 50.0, None, 50.0, None, against="reference", n=100),
            C.compare_metric("MATH", 70.0, None, 50.0, None, against="reference", n=100),
            C.compare_metric("X", 1.0, {"task": "a"}, 1.0, {"task": "b"}, against="reference", n=100)]
    out = C.scorecard_png(rows, tmp_path / "sc" / "card.png", "test")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_smoke_reference_on_few_items_is_too_few_to_judge():
    p = {"harness": "repro", "task": "math", "shots": 0, "settings": "x"}
    c = C.compare_metric("MATH", 0.0, p, 0.0, p, against="reference", n=7)
    assert c.verdict == C.TOO_FEW and "n = 7" in c.reason
    assert C.compare_metric("MATH", 0.0, p, 0.0, p, against="reference", n=C.MIN_ITEMS).verdict == C.UNCHANGED


PIQA_CARD = {"harness": "lighteval", "task": "custom|piqa|0|1", "shots": 0,
             "metric": "loglikelihood_acc_norm_nospace", "settings": "zero-shot"}


def _suite_protocol(n, deviations=(), **published):
    return {"suite": "published", "n": n, "parts": [{"n": n}], "deviations": list(deviations),
            "published": {"harness": "lighteval", "task": "custom|piqa|0|1", "shots": 0,
                          "metric": "loglikelihood_acc_norm_nospace", **published}}


def test_published_suite_verdict_uses_the_se_of_the_n_evaluated():
    row = {"benchmark": "PIQA", "value": 66.3, "protocol": PIQA_CARD}
    # p = 0.663, n = 400: SE = 100·sqrt(.663·.337/400) = 2.363; T = 2·SE + 100/400 = 4.977
    c = C.compare_published_suite("PIQA", 68.0, _suite_protocol(400, ["subset: 400 of 1838 items"]), row, "card")
    assert math.isclose(c.standard_error, 2.3634, abs_tol=1e-3) and math.isclose(c.tolerance, 4.977, abs_tol=1e-3)
    assert c.verdict == C.REPRODUCED and "subset: 400 of 1838" in c.reason and "n = 400" in c.reason
    assert C.compare_published_suite("PIQA", 70.0, _suite_protocol(400), row, "card").verdict == C.WITHIN_NOISE
    assert C.compare_published_suite("PIQA", 72.0, _suite_protocol(400), row, "card").verdict == C.DEVIATES
    # The same 5.7-point gap on the full benchmark is far outside its SE.
    assert C.compare_published_suite("PIQA", 72.0, _suite_protocol(1838), row, "card").verdict == C.DEVIATES
    assert C.compare_published_suite("PIQA", 66.3, _suite_protocol(12), row, "card").verdict == C.TOO_FEW


def test_published_suite_needs_the_published_protocol():
    row = {"benchmark": "PIQA", "value": 66.3, "protocol": PIQA_CARD}
    c = C.compare_published_suite("PIQA", 66.3, _suite_protocol(400, shots=5), row, "card")
    assert c.verdict == C.NOT_COMPARABLE and "shots" in c.reason


def test_averaged_benchmark_combines_its_parts():
    # ARC = (Easy + Challenge) / 2: SE = sqrt(SE_e² + SE_c²) / 2
    se = C.published_se(37.3, [{"n": 100}, {"n": 100}])
    assert math.isclose(se, 100 * math.sqrt(2 * 0.373 * 0.627 / 100) / 2)
