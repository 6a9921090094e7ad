"""Dispatch, API and GSM8K tests for runner.verifiers (table-driven)."""

import json
import time

import pytest

from runner import verifiers as V
from runner.verifiers import UnknownVerifierError, extract_response, reward, score, validate_ground_truth

R, C = "release-2024-11", "corrected"

# (response, ground_truth, release, corrected)
GSM8K = [
    ("The answer is 42", "42", 1, 1),
    ("The answer is 42.", "42", 1, 1),
    ("It costs 1,234 dollars", "1234", 1, 1),
    ("1,234,567 people", "1234567", 1, 1),
    ("1,2,3", "3", 1, 1),            # release: non-overlapping join 12,3 -> 3
    ("1,2,3", "123", 0, 0),
    ("The temperature is -5", "5", 1, 0),   # sign only attaches to decimals in release
    ("The temperature is -5", "-5", 0, 1),
    ("drop of -2.5", "-2.5", 1, 1),
    ("total 18.00", "18", 0, 1),      # string vs numeric equality
    ("total 18", "18.00", 0, 1),
    ("answer .5", "0.5", 0, 1),
    ("The answer is 42", " 42", 0, 1),  # release compares the ground truth unstripped
    ("The answer is 42", "42 ", 0, 1),
    ("first 3 then 7", "3", 0, 0),    # last number wins
    ("first 3 then 7", "7", 1, 1),
    ("no number here", "no number here", 1, 1),  # whole-text fallback
    ("No Number Here", "no number here", 1, 1),  # case-insensitive
    ("  padded text  ", "padded text", 1, 1),    # response is stripped
    ("pages 3-5", "5", 1, 1),         # corrected: a hyphen after a digit is not a sign
    ("x = +7", "7", 1, 1),
    ("value ٣", "٣", 1, 0),            # release \d is Unicode-aware; corrected is ASCII
    ("prompt 99 <|assistant|>\nresult 12", "12", 1, 1),
    ("prompt 12 <|assistant|>\nno digits", "12", 0, 0),
    ("3.14159", "3.14159", 1, 1),
    ("It is 1,000.50", "1000.5", 0, 1),
    ("It is 1,000.50", "1000.50", 1, 1),
    ("", "0", 0, 0),
    ("answer: 0", "0", 1, 1),
    ("Answer 10", "ten", 0, 0),
]


@pytest.mark.parametrize("response,gt,rel,cor", GSM8K)
def test_gsm8k_table(response, gt, rel, cor):
    assert score("gsm8k", response, gt, R) == rel
    assert score("gsm8k", response, gt, C) == cor


def test_gsm8k_module_functions_match_dispatch():
    from runner.verifiers import gsm8k
    assert gsm8k.score_release("-5", "5") == 1.0
    assert gsm8k.score_corrected("-5", "-5") == 1.0


@pytest.mark.parametrize("task", ["gsm8k", "GSM8K", "Gsm8k"])
def test_task_is_case_insensitive(task):
    assert score(task, "42", "42") == 1.0


def test_math_task_name_upper():
    assert score("MATH", r"\boxed{4}", "4") == 1.0


@pytest.mark.parametrize("bad,suggest", [("gsm9k", "gsm8k"), ("maths", "math"), ("if_eval", "ifeval")])
def test_unknown_task_suggests(bad, suggest):
    with pytest.raises(UnknownVerifierError) as e:
        score(bad, "x", "1")
    msg = str(e.value)
    assert f"unknown verifier {bad!r}" in msg
    assert f"did you mean {suggest!r}?" in msg
    assert "(valid: gsm8k, math, ifeval)" in msg
    assert isinstance(e.value, ValueError)


def test_unknown_task_exact_message():
    with pytest.raises(UnknownVerifierError,
                       match=r"^unknown verifier 'gsm9k'; did you mean 'gsm8k'\? \(valid: gsm8k, math, ifeval\)$"):
        score("gsm9k", "1", "1")


@pytest.mark.parametrize("bad,suggest", [("release", "release-2024-11"), ("corected", "corrected"),
                                         ("release-2024-12", "release-2024-11")])
def test_unknown_version_suggests(bad, suggest):
    with pytest.raises(UnknownVerifierError) as e:
        score("gsm8k", "1", "1", bad)
    assert f"did you mean {suggest!r}?" in str(e.value)
    assert "valid: release-2024-11, corrected" in str(e.value)


def test_constants():
    assert V.VERSIONS == ("release-2024-11", "corrected")
    assert V.TASKS == ("gsm8k", "math", "ifeval")


@pytest.mark.parametrize("task", V.TASKS)
@pytest.mark.parametrize("version", V.VERSIONS)
@pytest.mark.parametrize("gt", [None, ""])
def test_missing_ground_truth_scores_zero(task, version, gt):
    assert score(task, "anything", gt, version) == 0.0
    assert validate_ground_truth(task, gt) is not None


def test_none_response_scores_zero():
    assert score("gsm8k", None, "42") == 0.0


@pytest.mark.parametrize("decoded,expected", [
    ("<|user|>\nQ?\n<|assistant|>\nA", "A"),
    ("<|assistant|>\nfirst<|assistant|>\nsecond", "second"),
    ("no marker at all", "no marker at all"),
    ("<|assistant|>no newline", "<|assistant|>no newline"),
    ("x<|assistant|>\n", ""),
])
def test_extract_response(decoded, expected):
    assert extract_response(decoded) == expected


def test_reward_scales_score():
    assert reward("gsm8k", "42", "42", R) == 10.0
    assert reward("gsm8k", "41", "42", R) == 0.0
    assert reward("gsm8k", "42", "42", R, verifier_reward=3.5) == 3.5


@pytest.mark.parametrize("gt,ok", [("42", True), (" 42", False), ("abc", False), ("-3", False), ("-2.5", True),
                                   ("2.5", True), (42, False)])
def test_validate_gsm8k(gt, ok):
    assert (validate_ground_truth("gsm8k", gt) is None) == ok


def test_validate_unknown_task_raises():
    with pytest.raises(UnknownVerifierError):
        validate_ground_truth("gsm9k", "1")


@pytest.mark.parametrize("version", V.VERSIONS)
@pytest.mark.parametrize("response,gt", [
    ("1" * 100_000, "1"),                       # 10^100000-sized number
    ("1" * 100_000, "1" * 100_000),
    ("1," * 300_000 + "1", "1"),               # comma-joining on a huge input
    ("-." * 300_000, "0"),                     # sign/dot soup
    ("a" * 1_000_000, "a"),                    # 1 MB string
    ("9." * 200_000 + "x", "9"),
])
def test_gsm8k_adversarial_bounded(version, response, gt):
    t0 = time.perf_counter()
    s = score("gsm8k", response, gt, version)
    assert time.perf_counter() - t0 < 3.0
    assert s in (0.0, 1.0)


def test_gsm8k_huge_number_values():
    big = "1" * 100_000
    assert score("gsm8k", "x " + big, big, R) == 1.0
    assert score("gsm8k", "x " + big, big + ".0", C) == 1.0
    assert score("gsm8k", "x " + big, big + ".0", R) == 0.0


# ---------------------------------------------------------------- release deviations as switches --

def test_empty_ground_truth_switch():
    # number-free empty answer vs empty ground truth: the release compared "" == "" and rewarded it
    assert score("gsm8k", "", "", "release-2024-11") == 0.0
    assert score("gsm8k", "", "", "release-2024-11", empty_gt_scores_0=False) == 1.0
    assert score("math", r"so $$x$$", "", "release-2024-11", empty_gt_scores_0=False) == 1.0
    assert score("gsm8k", "", "", "corrected", empty_gt_scores_0=False) == 0.0


def test_raising_checker_switch():
    gt = json.dumps({"func_name": "verify_letter_frequency", "letter": "ab", "N": 1})
    assert score("ifeval", "abc", gt, "release-2024-11") == 0.0
    with pytest.raises(ValueError):
        score("ifeval", "abc", gt, "release-2024-11", checker_errors_score_0=False)
    with pytest.raises(KeyError):
        score("ifeval", "abc", json.dumps({"func_name": "nope"}), "release-2024-11", checker_errors_score_0=False)
    # without func_name the release returned False rather than raising
    assert score("ifeval", "abc", json.dumps({"N": 1}), "release-2024-11", checker_errors_score_0=False) == 0.0
    ok = json.dumps({"func_name": "validate_lowercase"})
    assert score("ifeval", "abc", ok, "release-2024-11", checker_errors_score_0=False) == 1.0


def test_switch_kwargs_from_a_plan():
    from runner.verifiers import switch_kwargs

    assert switch_kwargs({}) == {"empty_gt_scores_0": True, "checker_errors_score_0": True}
    assert switch_kwargs({"switches": {"checker_error_scores_0": False}})["checker_errors_score_0"] is False
