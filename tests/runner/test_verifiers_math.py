"""MATH verifier tests: release quirks, corrected fixes, parser deviations, adversarial input."""

import threading
import time

import pytest

from runner.verifiers import _sympy_child as CHILD
from runner.verifiers import math as M
from runner.verifiers import math_sympy as MS
from runner.verifiers import score, validate_ground_truth

R, C = "release-2024-11", "corrected"


@pytest.fixture(scope="module", autouse=True)
def _warm_workers():
    # Installs the release-era site directory on a fresh machine (PyPI) and starts one worker per mode,
    # so that the timing assertions below measure verification, not start-up.
    for pool in MS.POOLS.values():
        pool.release(pool.acquire())

# (response, ground_truth, release, corrected)
MATH = [
    (r"The answer is $\boxed{5}$.", "5", 1, 1),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", 1, 1),
    (r"\boxed{\dfrac{1}{2}}", r"\frac{1}{2}", 1, 1),      # strip_string dfrac->frac
    (r"\boxed{0.5}", r"\frac{1}{2}", 1, 1),
    (r"\boxed{\frac{2}{4}}", r"\frac{1}{2}", 1, 1),      # symbolic
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", 1, 1),           # symbolic
    (r"\boxed{100,000}", "100000", 1, 1),                # parser reads 100,000 as 100000
    (r"$$\frac{1}{3}$$", "1/3", 0, 1),                   # release: empty candidate between $$
    ("Answer: 3", "3", 0, 1),                            # release: whole text -> "Answer:3"
    (r"\boxed{7 dollars}", "7", 0, 1),                   # release: boxed not normalised
    (r"\fbox{7}", "7", 0, 1),                            # release: \fbox never a candidate
    (r"\boxed 5 and later \boxed{7}", "7", 0, 1),        # release: space form wins
    (r"\boxed 5 and later \boxed{7}", "5 and later \\boxed{7}", 1, 1),  # corrected: latex norm unboxes gt
    (r"\boxed 7", "7", 1, 1),
    (r"so \boxed 7$ done", "7", 1, 1),
    (r"\boxed{3} then \boxed{4}", "4", 1, 1),            # last box
    (r"\boxed{3} then \boxed{4}", "3", 0, 0),
    (r"\boxed{\boxed{4}}", r"\boxed{4}", 0, 1),          # release: candidate 4; sympy 1.12 reads \boxed{4} as boxed*4
    (r"\boxed{{4}", "4", 0, 0),                          # unbalanced: no boxed candidate
    ("Final Answer: The final answer is $5$. I hope it is correct.", "5", 1, 1),
    ("Final Answer: The final answer is 12 inches. I hope it is correct.", "12", 1, 1),
    ("Final Answer: The final answer is x=4. I hope it is correct.", "4", 1, 1),
    ("Final Answer: The final answer is 5", "5", 0, 1),  # no end sentence: no Minerva match
    ("so $x = 5$ and we are done", "5", 1, 1),          # last two dollars + normalisation
    ("cost is $5 or $6", "5 or ", 1, 1),                 # span "5 or " between the last two $
    ("cost is $5 or $6", "6", 0, 0),
    ("The value is 5", "5", 0, 0),                       # whole text normalised to Thevalueis5
    ("The value is 5", "The value is 5", 1, 1),          # strip_string drops the spaces
    ("The final answer is 5.", "5", 0, 1),
    ("5", "5", 1, 1),
    ("x=5", "5", 1, 1),                                  # hendrycks k= prefix, normaliser split
    (r"\boxed{x=5}", "5", 1, 1),
    (r"\boxed{\left(1,2\right)}", "(1,2)", 1, 1),
    (r"\boxed{50\%}", "50", 1, 1),
    (r"\boxed{90^\circ}", "90", 1, 1),
    (r"\boxed{a/2}", "a/2", 1, 1),                       # strip_string raises -> raw equality
    (r"\boxed{a/2}", r"\frac{a}{2}", 1, 1),              # symbolic
    (r"\boxed{\sqrt}", r"\sqrt", 1, 1),                  # strip_string raises -> raw equality
    (r"\boxed{x/}", "x/ ", 1, 1),                        # sympy 1.12 parse_latex reads x/ as x
    (r"\boxed{2\sqrt}", "2", 1, 0),                      # ... and 2\sqrt as 2
    (r"\boxed{\text{(A)}}", "A", 0, 1),                   # ... and \text{(A)} as A*text (math-verify: A)
    (r"\boxed{\pi}", r"\pi", 1, 1),
    (r"\boxed{x^2+2x+1}", "(x+1)^2", 1, 1),
    (r"\boxed{6}", "7", 0, 0),
    (r"\boxed{\text{(A)}}", r"\text{(A)}", 1, 1),
    ("prompt \\boxed{9}<|assistant|>\nmy answer \\boxed{8}", "8", 1, 1),
    ("prompt \\boxed{9}<|assistant|>\nmy answer \\boxed{8}", "9", 0, 0),
    (r"The answer is \(\frac{3}{4}\).", r"\frac{3}{4}", 0, 1),
]


# Corrected-verifier fixes (issue 14 item 9); the release keeps its verdicts.
CORRECTED_FIXES = [
    (r"So we get $\$15.00$.", "15", 1, 1),              # \$ is a currency sign, not a delimiter
    (r"So we get $\$15.00$", "15", 1, 1),
    (r"cost $\$5$ and then $\$7$", "7", 1, 1),
    (r"\boxed{1.5}", r"\frac32", 1, 1),                 # gold through math-verify's normaliser
    (r"\boxed{\sqrt{8}}", r"2\sqrt2", 0, 1),
    (r"\boxed{\frac{3}{2}}", r"\frac32", 1, 1),        # release: strip_string mends \frac32
    ("Final Answer: The final answer is 3,2,1. I hope it is correct.", "321", 1, 0),   # a list, not 321
    ("Final Answer: The final answer is 3,2,1. I hope it is correct.", "3,2,1", 0, 1),
    ("Final Answer: The final answer is 100,000. I hope it is correct.", "100000", 1, 1),
    (r"Final Answer: The final answer is $+\infty$. I hope it is correct.", r"+\infty", 0, 1),  # kept its "ft"
    (r"Final Answer: The final answer is $+\infty$. I hope it is correct.", r"\infty", 0, 1),
    ("Final Answer: The final answer is 12 inches. I hope it is correct.", "12", 1, 1),
]


@pytest.mark.parametrize("response,gt,rel,cor", CORRECTED_FIXES)
def test_corrected_fixes(response, gt, rel, cor):
    assert score("math", response, gt, R) == rel
    assert score("math", response, gt, C) == cor


@pytest.mark.parametrize("raw,expected", [("3,2,1", "3,2,1"), ("100,000", "100000"), (r"+\infty", r"+\infty"),
                                          ("12 inches", "12"), ("x mph", "x"), ("issue", "issue")])
def test_normalize_corrected(raw, expected):
    assert M.normalize_corrected(raw) == expected


@pytest.mark.parametrize("response,gt,rel,cor", MATH)
def test_math_table(response, gt, rel, cor):
    assert score("math", response, gt, R) == rel
    assert score("math", response, gt, C) == cor


@pytest.mark.parametrize("text,expected", [
    (r"a \boxed{1} b \boxed{2}", r"\boxed{2}"),
    (r"\boxed{a{b}c}", r"\boxed{a{b}c}"),
    (r"\fbox{3}", r"\fbox{3}"),
    (r"\boxed 5 then \boxed{7}", "\\boxed 5 then \\boxed{7}"),
    (r"\boxed 5$ tail", "\\boxed 5"),
    (r"\boxed{unclosed", None),
    ("no box", None),
])
def test_last_boxed_only_string(text, expected):
    assert M.last_boxed_only_string(text) == expected


@pytest.mark.parametrize("s,expected", [
    (r"\boxed{5}", "5"),
    (r"\fbox{5}", None),
    ("\\boxed 5", "5"),
])
def test_remove_boxed(s, expected):
    assert M.remove_boxed(s) == expected


@pytest.mark.parametrize("raw,expected", [
    ("7 dollars", "7"),
    ("x = 10", "10"),
    (r"\text{5 units}", "5"),
    ("100,000", "100000"),
    (r"\frac12", r"\frac{1}{2}"),
    (r"\sqrt2", r"\sqrt{2}"),
    ("$5$", "5"),
    ("an apple", "apple"),
    ("a cat", "cat"),
    (r"\boxed{42}", "42"),
    ("12^\\circ", "12"),
    ("[invalidanswer]", "[invalidanswer]"),
    ("two\n$a$ and $b$\nthree", "two\na\nthree"),
])
def test_normalize_final_answer(raw, expected):
    assert M.normalize_final_answer(raw) == expected


@pytest.mark.parametrize("text,expected", [
    ("Final Answer: The final answer is 5. I hope it is correct.", "5"),
    ("Final Answer: The final answer is 5", M.INVALID),
    ("Final Answer: The final answer is 5 ", ""),          # appended tail: group is " "
    ("Final Answer: The final answer is 1\n. I hope it is correct.", M.INVALID),
    ("Final Answer: The final answer is 1\nFinal Answer: The final answer is 2. I hope it is correct.", "2"),
])
def test_minerva_extraction(text, expected):
    assert M.minerva_unnormalized(text) == expected


@pytest.mark.parametrize("a,b,expected", [
    ("a/2", "a/2", True),          # raises inside strip_string -> raw equality
    ("a/2", "a/3", False),
    ("1/2", r"\frac{1}{2}", True),
    (r"\sqrt", r"\sqrt ", False),
    (r"\frac", r"\frac", True),
    (r"\text{ a}\text{ b}", r"\text{ a}\text{ b}", True),
    (".5", "0.5", True),
    ("k = 3", "3", True),
    (None, None, True),
    ("3", None, False),
])
def test_hendrycks_is_equiv(a, b, expected):
    assert M.hendrycks_is_equiv(a, b) is expected


@pytest.mark.parametrize("token,expected", [("12", 12), ("007", 7), ("1,000", 1000), ("2.5", 2.5), ("1e3", 1000.0)])
def test_safe_number_never_sympifies(token, expected):
    assert float(CHILD.safe_number(token)) == expected


@pytest.mark.parametrize("token", ["__import__('os')", "1+1", "x"])
def test_safe_number_rejects_non_numbers(token):
    with pytest.raises(ValueError):
        CHILD.safe_number(token)


def test_release_worker_runs_sympy_1_12():
    assert MS.worker_sympy_version("release") == "1.12"


def test_sympy_equal_modes():
    assert M.sympy_equal("release", r"\frac{2}{4}", "0.5") is True
    assert M.sympy_equal("corrected", r"\frac{1}{2}", r"\frac{2}{4}") is True
    assert M.sympy_equal("release", "x/", "x") is True        # sympy 1.12's lenient parser
    assert M.sympy_equal("release", "a" * (M.MAX_SYMPY_CHARS + 1), "a") is False
    assert M.sympy_equal("release", "", "0") is False


def test_injection_text_is_not_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    for v in (R, C):
        assert score("math", r"\boxed{" + payload + "}", "1", v) == 0.0
        assert score("math", payload, payload + "x", v) == 0.0
    assert not marker.exists()


def test_sympy_timeout_is_bounded(monkeypatch):
    monkeypatch.setattr(MS, "TIME_LIMIT_S", 1.0)
    t0 = time.perf_counter()
    assert score("math", r"\boxed{10^{10^{10}}+1}", "5", R) == 0.0
    assert time.perf_counter() - t0 < 8.0
    assert score("math", r"\boxed{4}", "4", R) == 1.0  # worker still usable


@pytest.mark.parametrize("version", [R, C])
def test_time_limit_bounds_the_whole_answer(version):
    # issue 10: two candidates (boxed, raw and normalised) each ran 5 s before: 10.2 s in all
    t0 = time.perf_counter()
    assert score("math", r"\boxed{\int_0^1 x^{10^{8}} dx}", "1", version) == 0.0
    assert time.perf_counter() - t0 < MS.TIME_LIMIT_S + MS.KILL_GRACE_S + 1.0


@pytest.mark.slow
def test_thread_safe_from_worker_threads():
    results = {}

    def run(i):
        results[i] = score("math", r"\boxed{\frac{%d}{%d}}" % (i, 2 * i), "0.5", R)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == {i: 1.0 for i in range(1, 7)}


ADVERSARIAL = [
    "\\boxed{" * 10_000,
    "1" * 100_000,
    "$" + "1" * 100_000 + "$",
    "x" * 1_000_000,
    "Final Answer: The final answer is" * 30_000,
    "\\text{" * 100_000,
    "$a" * 200_000,
    "\\frac" * 100_000,
    "\\sqrt" * 100_000,
    "\\boxed " * 100_000,
    "{" * 300_000 + "}" * 300_000,
    "\\fbox{" * 50_000,
    "a/" * 100_000,
]


@pytest.mark.parametrize("version", [R, C])
@pytest.mark.parametrize("idx", range(len(ADVERSARIAL)))
def test_math_adversarial_bounded(version, idx):
    t0 = time.perf_counter()
    s = score("math", ADVERSARIAL[idx], "1", version)
    assert time.perf_counter() - t0 < 4.0
    assert s == 0.0


@pytest.mark.parametrize("version", [R, C])
def test_deeply_nested_boxes_resolve_to_innermost(version):
    text = "\\boxed{" * 10_000 + "1" + "}" * 10_000
    t0 = time.perf_counter()
    assert score("math", text, "1", version) == 1.0
    assert score("math", text, "2", version) == 0.0
    assert time.perf_counter() - t0 < 4.0


def test_math_huge_number_matches_itself():
    big = "1" * 100_000
    assert score("math", r"\boxed{" + big + "}", big, R) == 1.0
    assert score("math", r"\boxed{" + big + "}", big, C) == 1.0


@pytest.mark.parametrize("gt,ok", [("5", True), (r"\frac{1}{2}", True), ("   ", False), (5, False),
                                   ("9" * 2000, False)])
def test_validate_math(gt, ok):
    assert (validate_ground_truth("math", gt) is None) == ok


# The linear scans must agree with the release regexes they replace (checked on random
# short strings where the regexes are cheap).
_ALPHABET = ["$", "a", " ", "\n", "{", "}", "\\text{", "\\boxed{", "*", "[", "]", "<<", ">>", "x",
             "Final Answer: The final answer is", " I hope it is correct", ".", "I"]


def _random_strings(seed, n=1500):
    import random
    rng = random.Random(seed)
    return ["".join(rng.choice(_ALPHABET) for _ in range(rng.randint(0, 14))) for _ in range(n)]


def test_linear_scans_match_release_regexes():
    import re
    for s in _random_strings(0):
        assert M._sub_first_dollar_pair(s) == re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", s), s
        assert M._sub_delimited(s, "\\text{", "}") == re.sub(r"(\\text\{)(.*?)(\})", "\\2", s), s
        assert M._sub_boxed_greedy(s) == re.sub(r"(\\boxed\{)(.*)(\})", "\\2", s), s
        m = re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.", s + "I hope it is correct.")
        assert M.minerva_unnormalized(s) == (m.group(1).strip() if m else M.INVALID), s


def test_ifeval_delimited_count_matches_regex():
    import re

    from runner.verifiers.ifeval import _count_delimited
    for s in _random_strings(1):
        assert _count_delimited(s, "*", "*") == len(re.findall(r"\*(.*?)\*", s)), s
        assert _count_delimited(s, "[", "]") == len(re.findall(r"\[(.*?)\]", s)), s
        assert _count_delimited(s, "<<", ">>") == len(re.findall(r"<<(.*?)>>", s)), s


def test_release_site_is_the_pinned_one(tmp_path, monkeypatch):
    site = MS.release_site()
    assert (site / ".complete").read_text().split() == list(MS.RELEASE_PINS)
    assert (site / "sympy").is_dir() and (site / "antlr4").is_dir()
    # a prepared directory can stand in for the download; a wrong one is refused in one line
    monkeypatch.setenv("REPRO_MATH_RELEASE_SITE", str(site))
    assert MS.release_site() == site
    monkeypatch.setenv("REPRO_MATH_RELEASE_SITE", str(tmp_path))
    with pytest.raises(MS.MathReleaseEnvError, match="lacks sympy or antlr4"):
        MS.release_site()
