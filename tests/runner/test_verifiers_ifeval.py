"""IFEval verifier tests: all 25 functions, release quirks and corrected behaviour."""

import json
import time

import pytest

from runner.verifiers import ifeval as I
from runner.verifiers import score, validate_ground_truth

R, C = "release-2024-11", "corrected"


def gt(func_name, **kw):
    return json.dumps({"func_name": func_name, **kw})


EN = "This is a simple English sentence written to test the language detector properly."

# (response, ground truth, release, corrected)
IFEVAL = [
    ("I love Python and Rust", gt("verify_keywords", keyword_list=["python", "RUST"]), 1, 1),
    ("I love Python", gt("verify_keywords", keyword_list=["python", "rust"]), 0, 0),
    ("the cat and the dog", gt("verify_keyword_frequency", word="the", N=2), 1, 1),
    ("the cat and The dog; theme", gt("verify_keyword_frequency", word="the", N=3), 0, 0),
    ("nothing bad here", gt("validate_forbidden_words", forbidden_words=["evil"]), 1, 1),
    ("some EVIL text", gt("validate_forbidden_words", forbidden_words=["evil"]), 0, 0),
    ("banana", gt("verify_letter_frequency", letter="a", N=3), 1, 1),
    ("banana", gt("verify_letter_frequency", letter="A", N=3), 0, 0),
    ("banana", gt("verify_letter_frequency", letter="an", N=2), 0, 0),   # release raised
    (EN, gt("validate_response_language", language="en"), 1, 1),
    (EN, gt("validate_response_language", language="de"), 0, 0),
    ("12345", gt("validate_response_language", language="en"), 0, 0),   # langdetect raises
    ("one\n* * *\ntwo", gt("verify_paragraph_count", N=2), 1, 1),
    ("one\n* * *\n* * *\ntwo", gt("verify_paragraph_count", N=3), 0, 0),
    (" ".join(["w"] * 27), gt("validate_word_constraint", N=25, quantifier="around"), 1, 1),
    (" ".join(["w"] * 28), gt("validate_word_constraint", N=25, quantifier="around"), 0, 0),
    (" ".join(["w"] * 39), gt("validate_word_constraint", N=35, quantifier="around"), 1, 1),  # round(3.5)=4
    (" ".join(["w"] * 17), gt("validate_word_constraint", N=15, quantifier="around"), 1, 1),  # 1.5000000000000002 -> 2
    (" ".join(["w"] * 10), gt("validate_word_constraint", N=10, quantifier="at least"), 1, 1),
    (" ".join(["w"] * 11), gt("validate_word_constraint", N=10, quantifier="at most"), 0, 0),
    ("w", gt("validate_word_constraint", N=1, quantifier="roughly"), 0, 0),
    ("One. Two? Three.", gt("verify_sentence_constraint", N=3, quantifier="at least"), 1, 1),
    ("One. Two! Three.", gt("verify_sentence_constraint", N=3, quantifier="at least"), 0, 0),
    ("Mr. Smith went. Home now.", gt("verify_sentence_constraint", N=2, quantifier="around"), 1, 1),
    ("Alpha text\n\nBeta text", gt("validate_paragraphs", N=2, first_word="Beta", i=2), 1, 1),
    ("Alpha text\n\nBetamax text", gt("validate_paragraphs", N=2, first_word="Beta", i=2), 1, 0),
    ("Alpha\n\nBeta", gt("validate_paragraphs", N=2, first_word="Beta", i=5), 0, 0),  # IndexError in release
    ("Body.\nP.S. thanks", gt("verify_postscript", postscript_marker="P.S."), 1, 1),
    ("Body.\nP.S.", gt("verify_postscript", postscript_marker="P.S."), 0, 0),
    ("no placeholders at all", gt("validate_placeholders", N=2), 1, 0),   # release tuple quirk
    ("Dear [name], at [address]", gt("validate_placeholders", N=2), 1, 1),
    ("* a\n* b\n- c", gt("verify_bullet_points", N=3), 1, 1),
    ("**Bold** line\n* a\n---", gt("verify_bullet_points", N=1), 0, 1),
    ("<<My Title>>\nbody", gt("validate_title"), 1, 1),
    ("<<My\nTitle>>", gt("validate_title"), 0, 0),
    ("yes", gt("validate_choice", options=["My answer is yes.", "My answer is no."]), 1, 0),
    ("", gt("validate_choice", options=["My answer is yes."]), 1, 0),
    ("My answer is yes. Because it is.",
     gt("validate_choice", options=["My answer is yes.", "My answer is no."]), 0, 1),
    ("My answer is no.", gt("validate_choice", options=["My answer is yes.", "My answer is no."]), 1, 1),
    ("Apple", gt("validate_choice", options=["A", "B"]), 0, 0),
    ("**bold**", gt("validate_highlighted_sections", N=2), 1, 0),          # empty matches count
    ("*one* and *two*", gt("validate_highlighted_sections", N=2), 1, 1),
    ("**one** and *two*", gt("validate_highlighted_sections", N=2), 1, 1),
    ("SECTION 1 intro SECTION 2 end", gt("validate_sections", N=2, section_splitter="SECTION"), 1, 1),
    ("Section 1 a Section 2 b", gt("validate_sections", N=2, section_splitter="SECTION"), 0, 1),
    ('{"a": 1}', gt("validate_json_format"), 1, 1),
    ("5", gt("validate_json_format"), 1, 0),
    ("NaN", gt("validate_json_format"), 1, 0),
    ('```json\n{"a": 1}\n```', gt("validate_json_format"), 0, 1),
    ("not json", gt("validate_json_format"), 0, 0),
    ("Write a poem. Here it is.", gt("validate_repeat_prompt", original_prompt="Write a poem."), 1, 1),
    ("Here: Write a poem.", gt("validate_repeat_prompt", original_prompt="Write a poem."), 0, 0),
    ("first answer ****** second answer", gt("validate_two_responses"), 1, 1),
    ("same ****** same", gt("validate_two_responses"), 0, 0),
    ("ALL CAPS 123", gt("validate_uppercase"), 1, 1),
    ("Not caps", gt("validate_uppercase"), 0, 0),
    ("all lower", gt("validate_lowercase"), 1, 1),
    ("All lower", gt("validate_lowercase"), 0, 0),
    ("A B C D E F G H I J K", gt("validate_frequency_capital_words", N=10, quantifier="around"), 0, 1),
    ("A B C D E F G H I J", gt("validate_frequency_capital_words", N=10, quantifier="around"), 1, 1),
    ("NASA and ESA", gt("validate_frequency_capital_words", N=2, quantifier="at least"), 1, 1),
    ("Thanks. Any other questions?", gt("validate_end", end_phrase="Any other questions?"), 1, 1),
    ("Thanks. Any other questions?", gt("validate_end", end_phrase="Any other questions? "), 0, 1),
    ("Thanks. Any other questions?  ", gt("validate_end", end_phrase="Any other questions?"), 1, 1),
    ('"quoted"', gt("validate_quotation"), 1, 1),
    ('"', gt("validate_quotation"), 1, 0),
    ("no quotes", gt("validate_quotation"), 0, 0),
    ("no commas here", gt("validate_no_commas"), 1, 1),
    ("a, b", gt("validate_no_commas"), 0, 0),
    ("x", json.dumps({"func_name": "validate_no_commas", "unused": None}), 1, 1),  # None kwargs dropped
    ("prompt, with commas<|assistant|>\nno commas", gt("validate_no_commas"), 1, 1),
    ("x", json.dumps({"N": 3}), 0, 0),                                     # no func_name
    ("x", "{not json", 0, 0),
    ("x", gt("validate_unknown_function"), 0, 0),
    ("x", gt("validate_no_commas", bogus=1), 0, 0),                        # bad kwargs
    ("x", json.dumps(["validate_no_commas"]), 0, 0),
]


@pytest.mark.parametrize("response,ground_truth,rel,cor", IFEVAL)
def test_ifeval_table(response, ground_truth, rel, cor):
    assert score("ifeval", response, ground_truth, R) == rel
    assert score("ifeval", response, ground_truth, C) == cor


def test_there_are_25_functions_in_both_versions():
    assert len(I.FUNC_NAMES) == 25
    assert set(I.RELEASE_FUNCS) == set(I.CORRECTED_FUNCS)
    covered = {json.loads(g)["func_name"] for _, g, _, _ in IFEVAL if g.startswith("{") and "func_name" in g}
    assert set(I.FUNC_NAMES) <= covered


def test_dict_ground_truth_is_not_mutated():
    constraint = {"func_name": "validate_no_commas"}
    assert score("ifeval", "abc", constraint, R) == 1.0
    assert score("ifeval", "abc", constraint, R) == 1.0
    assert constraint == {"func_name": "validate_no_commas"}


def test_letter_frequency_error_is_counted_not_raised():
    before = I.RELEASE_ERRORS[("release-2024-11", "verify_letter_frequency", "ValueError")]
    assert score("ifeval", "banana", gt("verify_letter_frequency", letter="na", N=2), R) == 0.0
    assert I.RELEASE_ERRORS[("release-2024-11", "verify_letter_frequency", "ValueError")] == before + 1


def test_language_detection_is_deterministic():
    text = "ciao hello bonjour"
    results = {score("ifeval", text, gt("validate_response_language", language="it"), R) for _ in range(5)}
    assert len(results) == 1


@pytest.mark.parametrize("ground_truth,problem", [
    (gt("validate_no_commas"), None),
    (gt("verify_keywords", keyword_list=["a"]), None),
    (json.dumps({"func_name": "validate_end", "end_phrase": "x", "N": None}), None),
    ("{oops", "not valid JSON"),
    (json.dumps({"N": 2}), "lacks 'func_name'"),
    (json.dumps([1]), "not an object"),
    (gt("no_such_func"), "not one of the 25"),
    (gt("validate_end"), "bad kwargs"),
    (gt("validate_end", end_phrase="x", extra=1), "bad kwargs"),
    (gt("verify_letter_frequency", letter="ab", N=1), "not one character"),
    (5, "must be JSON text"),
])
def test_validate_ifeval(ground_truth, problem):
    got = validate_ground_truth("ifeval", ground_truth)
    if problem is None:
        assert got is None
    else:
        assert got is not None and problem in got and "\n" not in got


ADVERSARIAL = [
    ("[" * 1_000_000, gt("validate_placeholders", N=1), 1, 0),
    ("*" + "a" * 1_000_000, gt("validate_highlighted_sections", N=1), 0, 0),
    ("<<" * 500_000, gt("validate_title"), 0, 0),
    ("[" * 200_000 + "\n" + "]", gt("validate_placeholders", N=1), 1, 0),
    ("A" * 1_000_000 + "a", gt("validate_frequency_capital_words", N=0, quantifier="at most"), 1, 1),
    ("a. " * 300_000, gt("verify_sentence_constraint", N=1, quantifier="at least"), 1, 1),
    ("[" * 100_000 + "]" * 100_000, gt("validate_json_format"), 0, 0),   # RecursionError in release
    ("word " * 200_000, gt("validate_response_language", language="en"), 0, 0),
    ("x" * 1_000_000, gt("validate_choice", options=["x"]), 0, 0),
    ("*" * 1_000_000, gt("verify_bullet_points", N=1), 1, 0),
]


@pytest.mark.parametrize("response,ground_truth,rel,cor", ADVERSARIAL)
def test_ifeval_adversarial_bounded(response, ground_truth, rel, cor):
    t0 = time.perf_counter()
    assert score("ifeval", response, ground_truth, R) == rel
    assert score("ifeval", response, ground_truth, C) == cor
    assert time.perf_counter() - t0 < 5.0


@pytest.mark.parametrize("text", ['```json{"a": 1}```', '```JSON {"a": [1, 2]} ```', '```{"a": 1}```',
                                  '```json\n{"a": 1}\n```', '  ```Json\n{"a": 1}```  '])
def test_corrected_json_accepts_tight_fences(text):
    assert score("ifeval", text, gt("validate_json_format"), C) == 1.0
    assert score("ifeval", text, gt("validate_json_format"), R) == 0.0  # release: json.loads on the fence


@pytest.mark.parametrize("func, kw, text, expected", [
    ("verify_keyword_frequency", {"word": "cat", "N": 3, "relation": "less than"}, "cat cat dog", 1),
    ("verify_keyword_frequency", {"word": "cat", "N": 2, "relation": "less than"}, "cat cat dog", 0),
    ("verify_keyword_frequency", {"word": "cat", "N": 2, "relation": "at least"}, "cat cat dog", 1),
    ("verify_keyword_frequency", {"word": "cat", "N": 3, "relation": "at least"}, "Cat cat dog", 0),
    ("verify_keyword_frequency", {"word": "cat", "N": 2}, "cat cat dog", 1),          # no relation: exactly
    ("verify_keyword_frequency", {"word": "cat", "N": 2, "relation": "around"}, "cat cat", 0),  # unknown
    ("verify_letter_frequency", {"letter": "a", "N": 4, "let_relation": "less than"}, "banana", 1),
    ("verify_letter_frequency", {"letter": "a", "N": 3, "relation": "less than"}, "banana", 0),
    ("verify_letter_frequency", {"letter": "a", "N": 3, "relation": "at least"}, "banana", 1),
    ("verify_letter_frequency", {"letter": "ab", "N": 3, "relation": "at least"}, "abab", 0),
])
def test_corrected_frequency_relations(func, kw, text, expected):
    assert score("ifeval", text, gt(func, **kw), C) == expected
    if len(kw.get("letter", "x")) == 1:  # a relation is a valid ground-truth key
        assert validate_ground_truth("ifeval", gt(func, **kw)) is None


def test_release_frequency_has_no_relation():
    # verify_keyword_frequency(text, word, N) took no relation: the call raised, which scores 0 here
    assert score("ifeval", "cat cat", gt("verify_keyword_frequency", word="cat", N=3, relation="less than"), R) == 0.0
