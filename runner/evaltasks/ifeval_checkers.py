"""The official IFEval instruction checkers (Google's definitions), strict and loose, and their four metrics.

These are the checkers the published IFEval numbers were scored with, NOT the RLVR training verifiers
(runner/verifiers/ifeval.py re-implements open-instruct's `if_functions.py`: one constraint per prompt,
other rules). The record names each kind by CHECKERS["name"] here and by the verifier version there.

Source, read at the commit SmolLM2 was evaluated with (facts/smollm2.md §4.1):
huggingface/lighteval @ea46419a93fb390e8f694f7c6c64c1e684487c9d, src/lighteval/tasks/extended/ifeval/
  * instructions.py: the 25 registered checkers (`check_following`) and the argument handling of
    their `build_description` (stripping, lower-casing, sorting);
  * instructions_registry.py: INSTRUCTION_DICT, the 25 ids;
  * instructions_utils.py: count_words = nltk RegexpTokenizer(r"\\w+"), count_sentences = nltk Punkt
    (english), capital_word_frequency = nltk.word_tokenize;
  * main.py: kwargs with falsy values dropped (`if v`), strict = `response.strip() and check(response)`,
    loose = any of 8 transformations of the response passes, the four metrics.
Google's own copy (josejg/instruction_following_eval @0c495b2f95155e8b10acb919ae283bfb4d5be6e2,
instructions.py / instructions_util.py / evaluation.py) has the same checkers and the same 8 loose
responses; it passes kwargs as given where lighteval drops falsy ones (IFEval's data has no falsy
argument that matters).

Where the official `build_description` would draw a RANDOM argument (a missing threshold, an invalid
letter or paragraph index), these checkers refuse the row (CheckerError): IFEval's 541 rows always state
them, and a random threshold would make a score unrepeatable.

Two rules are not bit-exact on a machine without nltk's English Punkt model, and the run records them
(`sentence_rule()`, run.py deviations): sentences are counted with Punkt when nltk's non-pickle
`punkt_tab` data is installed, else with a Punkt-like boundary rule (below); language detection
(langdetect) is seeded per call (seed 0), where the official code leaves it unseeded.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections import Counter
from typing import Any, Callable

CHECKERS = {
    "name": "ifeval-official",
    "kind": "official IFEval instruction checkers (Google's definitions), strict and loose",
    "source": "huggingface/lighteval @ea46419a93fb390e8f694f7c6c64c1e684487c9d "
              "src/lighteval/tasks/extended/ifeval/{instructions,instructions_registry,instructions_utils,main}.py",
    "not": "runner/verifiers/ifeval.py (open-instruct if_functions.py RLVR training verifiers)",
}
METRICS = ("prompt_level_strict_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "inst_level_loose_acc")
LESS, AT_LEAST = "less than", "at least"  # instructions.py _COMPARISON_RELATION
RELATIONS = (LESS, AT_LEAST)
CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


class CheckerError(ValueError):
    """An instruction's arguments are missing or invalid (the official code would raise or draw randomly)."""


# ---------------------------------------------------------------- counting (instructions_utils.py)


def count_words(text: str) -> int:
    """nltk RegexpTokenizer(r"\\w+").tokenize is re.findall of \\w+ (exact)."""
    return len(re.findall(r"\w+", text))


@functools.lru_cache(maxsize=1)
def _punkt():
    """nltk's English Punkt model from the non-pickle punkt_tab data, or None where it is not installed."""
    try:
        from nltk.tokenize.punkt import PunktTokenizer

        return PunktTokenizer("english")
    except (LookupError, OSError, ImportError):
        return None


def sentence_rule() -> str:
    """Which sentence splitter counts sentences here (recorded with every IFEval metric)."""
    return "nltk punkt english (punkt_tab)" if _punkt() is not None else "punkt-like rule (no punkt model)"


# The approximation when no Punkt model is installed: Punkt's candidate boundaries (a token ending in . ? !,
# closing quotes/brackets allowed after it, then whitespace and more text), without its trained English
# abbreviation, collocation and orthographic tables. What it knows instead is what the official utility file
# itself lists as abbreviations (split_into_sentences: Mr St Mrs Ms Dr, Inc Ltd Jr Sr Co), single-letter
# initials and dotted acronyms ("U.S.", "e.g."); an ellipsis ends a sentence only before a capital letter.
_ABBREVIATIONS = {"mr", "st", "mrs", "ms", "dr", "inc", "ltd", "jr", "sr", "co"}
_CLOSERS = "\"'”’)]}"
_DOTTED = re.compile(r"^(?:[A-Za-z]\.)+$")


def _rule_sentences(text: str) -> list[str]:
    tokens = list(re.finditer(r"\S+", text))
    out, start = [], 0
    for k, tok in enumerate(tokens[:-1]):
        core = tok.group().rstrip(_CLOSERS)
        if not core or core[-1] not in ".?!":
            continue
        if core.endswith("..") or core.endswith("…"):
            nxt = tokens[k + 1].group().lstrip(_CLOSERS + "\"'“‘([{")
            if not (nxt[:1].isupper()):
                continue
        elif core[-1] == "." and (core[:-1].lower().lstrip("(\"'“‘") in _ABBREVIATIONS or
                                  _DOTTED.match(core.lstrip("(\"'“‘"))):
            continue
        out.append(text[start:tok.end()].strip())
        start = tok.end()
    rest = text[start:].strip()
    return out + ([rest] if rest else [])


def split_sentences(text: str) -> list[str]:
    tok = _punkt()
    return tok.tokenize(text) if tok is not None else _rule_sentences(text)


def count_sentences(text: str) -> int:
    return len(split_sentences(text))


def word_tokens(text: str) -> list[str]:
    """nltk.word_tokenize: sentences first, then nltk's improved Treebank tokenizer on each (exact given the
    sentences; the sentences come from split_sentences)."""
    try:
        from nltk.tokenize import NLTKWordTokenizer
    except ImportError as exc:  # nltk is part of the eval extra
        from registry.errors import ReproError

        raise ReproError("IFEval's capital_word_frequency checker needs nltk (pip install 'repro[eval]')") from exc
    tok = NLTKWordTokenizer()
    return [w for s in split_sentences(text) for w in tok.tokenize(s)]


_LANG_LOCK = threading.Lock()


def detect_language(text: str) -> str:
    """langdetect.detect on its own detector seeded 0 (the global factory and its seed are left alone);
    raises langdetect's LangDetectException on text without features, as detect does."""
    from langdetect import detector_factory

    with _LANG_LOCK:
        detector_factory.init_factory()
        detector = detector_factory._factory.create()
    detector.seed = 0
    detector.append(text)
    return detector.detect()


def _language_is(text: str, code: str) -> bool:
    from langdetect.lang_detect_exception import LangDetectException

    try:
        return detect_language(text) == code
    except LangDetectException:  # the official checkers count an undetectable language as followed
        return True


# ---------------------------------------------------------------- arguments


def _need(kw: dict[str, Any], key: str, iid: str) -> Any:
    if kw.get(key) is None:
        raise CheckerError(f"{iid}: no {key!r} (the official checker would draw one at random)")
    return kw[key]


def _number(kw: dict[str, Any], key: str, iid: str) -> int:
    value = _need(kw, key, iid)
    if value < 0:
        raise CheckerError(f"{iid}: {key}={value} (the official checker would draw one at random)")
    return value


def _relation(kw: dict[str, Any], key: str, iid: str) -> str:
    value = _need(kw, key, iid)
    if value not in RELATIONS:
        raise CheckerError(f"{iid}: {key}={value!r}; the supported relations are {RELATIONS}")
    return value


def _compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == LESS else count >= threshold


# ---------------------------------------------------------------- the 25 checkers (instructions.py)
# Each takes the response and the row's kwargs for this instruction (falsy values already dropped). Keywords,
# forbidden words, keyword frequency and custom postscript markers go into the regexes unescaped, as there.


def keywords_existence(r: str, kw: dict[str, Any]) -> bool:
    return all(re.search(k, r, flags=re.IGNORECASE) for k in sorted(_need(kw, "keywords", "keywords:existence")))


def keywords_frequency(r: str, kw: dict[str, Any]) -> bool:
    iid = "keywords:frequency"
    keyword = str(_need(kw, "keyword", iid)).strip()
    n = len(re.findall(keyword, r, flags=re.IGNORECASE))
    return _compare(n, _relation(kw, "relation", iid), _number(kw, "frequency", iid))


def keywords_forbidden_words(r: str, kw: dict[str, Any]) -> bool:
    words = sorted(set(_need(kw, "forbidden_words", "keywords:forbidden_words")))
    return not any(re.search(r"\b" + w + r"\b", r, flags=re.IGNORECASE) for w in words)


def keywords_letter_frequency(r: str, kw: dict[str, Any]) -> bool:
    iid = "keywords:letter_frequency"
    letter = _need(kw, "letter", iid)
    if len(letter) > 1 or not ("a" <= letter.lower() <= "z"):
        raise CheckerError(f"{iid}: letter {letter!r} is not one ASCII letter (the official checker would draw one)")
    threshold = _number(kw, "let_frequency", iid)
    relation = _relation(kw, "let_relation", iid)
    return _compare(Counter(r.lower())[letter.strip().lower()], relation, threshold)


def language_response_language(r: str, kw: dict[str, Any]) -> bool:
    return _language_is(r, _need(kw, "language", "language:response_language"))


def length_number_sentences(r: str, kw: dict[str, Any]) -> bool:
    iid = "length_constraints:number_sentences"
    threshold = _number(kw, "num_sentences", iid)
    return _compare(count_sentences(r), _relation(kw, "relation", iid), threshold)


def length_number_paragraphs(r: str, kw: dict[str, Any]) -> bool:
    want = _number(kw, "num_paragraphs", "length_constraints:number_paragraphs")
    parts = re.split(r"\s?\*\*\*\s?", r)
    n = len(parts)
    for i, p in enumerate(parts):
        if not p.strip():
            if i in (0, len(parts) - 1):
                n -= 1  # an empty piece before the first or after the last divider is not a paragraph
            else:
                return False  # two dividers in a row
    return n == want


def length_number_words(r: str, kw: dict[str, Any]) -> bool:
    iid = "length_constraints:number_words"
    threshold = _number(kw, "num_words", iid)
    return _compare(count_words(r), _relation(kw, "relation", iid), threshold)


def length_nth_paragraph_first_word(r: str, kw: dict[str, Any]) -> bool:
    iid = "length_constraints:nth_paragraph_first_word"
    want = _number(kw, "num_paragraphs", iid)
    nth = _need(kw, "nth_paragraph", iid)
    if nth <= 0 or nth > want:
        raise CheckerError(f"{iid}: nth_paragraph={nth} outside 1..{want} (the official checker would draw one)")
    first_word = str(_need(kw, "first_word", iid)).lower()
    parts = re.split(r"\n\n", r)
    n = sum(1 for p in parts if p.strip())
    if nth > n:
        return False
    paragraph = parts[nth - 1].strip()  # indexed among all pieces, empty ones included, as there
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    got = ""
    for ch in word:
        if ch in {".", ",", "?", "!", "'", '"'}:
            break
        got += ch.lower()
    return n == want and got == first_word


def content_number_placeholders(r: str, kw: dict[str, Any]) -> bool:
    want = _number(kw, "num_placeholders", "detectable_content:number_placeholders")
    return len(re.findall(r"\[.*?\]", r)) >= want


def content_postscript(r: str, kw: dict[str, Any]) -> bool:
    marker = str(_need(kw, "postscript_marker", "detectable_content:postscript")).strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + marker.lower() + r".*$"
    return bool(re.findall(pattern, r.lower(), flags=re.MULTILINE))


def format_number_bullet_lists(r: str, kw: dict[str, Any]) -> bool:
    want = _number(kw, "num_bullets", "detectable_format:number_bullet_lists")
    stars = re.findall(r"^\s*\*[^\*].*$", r, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", r, flags=re.MULTILINE)
    return len(stars) + len(dashes) == want


def format_constrained_response(r: str, kw: dict[str, Any]) -> bool:
    r = r.strip()
    return any(option in r for option in CONSTRAINED_OPTIONS)


def format_number_highlighted_sections(r: str, kw: dict[str, Any]) -> bool:
    want = _number(kw, "num_highlights", "detectable_format:number_highlighted_sections")
    n = sum(1 for h in re.findall(r"\*[^\n\*]*\*", r) if h.strip("*").strip())
    n += sum(1 for h in re.findall(r"\*\*[^\n\*]*\*\*", r) if h.removeprefix("**").removesuffix("**").strip())
    return n >= want


def format_multiple_sections(r: str, kw: dict[str, Any]) -> bool:
    iid = "detectable_format:multiple_sections"
    splitter = str(_need(kw, "section_spliter", iid)).strip()
    want = _number(kw, "num_sections", iid)
    return len(re.split(r"\s?" + splitter + r"\s?\d+\s?", r)) - 1 >= want


def format_json_format(r: str, kw: dict[str, Any]) -> bool:
    body = (r.strip().removeprefix("```json").removeprefix("```Json").removeprefix("```JSON").removeprefix("```")
            .removesuffix("```").strip())
    try:
        json.loads(body)
    except ValueError:
        return False
    return True


def format_title(r: str, kw: dict[str, Any]) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", r))


def combination_two_responses(r: str, kw: dict[str, Any]) -> bool:
    pieces = r.split("******")
    valid = []
    for i, piece in enumerate(pieces):
        if not piece.strip():
            if i not in (0, len(pieces) - 1):
                return False
        else:
            valid.append(piece)
    return len(valid) == 2 and valid[0].strip() != valid[1].strip()


def combination_repeat_prompt(r: str, kw: dict[str, Any]) -> bool:
    prompt = str(_need(kw, "prompt_to_repeat", "combination:repeat_prompt"))
    return r.strip().lower().startswith(prompt.strip().lower())


def startend_end_checker(r: str, kw: dict[str, Any]) -> bool:
    phrase = str(_need(kw, "end_phrase", "startend:end_checker")).strip()
    return r.strip().strip('"').lower().endswith(phrase.strip().lower())


def startend_quotation(r: str, kw: dict[str, Any]) -> bool:
    r = r.strip()
    return len(r) > 1 and r[0] == '"' and r[-1] == '"'


def case_capital_word_frequency(r: str, kw: dict[str, Any]) -> bool:
    iid = "change_case:capital_word_frequency"
    threshold = _need(kw, "capital_frequency", iid)  # no `< 0` check in the official build_description
    relation = _relation(kw, "capital_relation", iid)
    return _compare(sum(1 for w in word_tokens(r) if w.isupper()), relation, threshold)


def case_english_capital(r: str, kw: dict[str, Any]) -> bool:
    if not r.isupper():
        return False
    return _language_is(r, "en")


def case_english_lowercase(r: str, kw: dict[str, Any]) -> bool:
    if not r.islower():
        return False
    return _language_is(r, "en")


def punctuation_no_comma(r: str, kw: dict[str, Any]) -> bool:
    return "," not in r


CHECKS: dict[str, Callable[[str, dict[str, Any]], bool]] = {
    "keywords:existence": keywords_existence,
    "keywords:frequency": keywords_frequency,
    "keywords:forbidden_words": keywords_forbidden_words,
    "keywords:letter_frequency": keywords_letter_frequency,
    "language:response_language": language_response_language,
    "length_constraints:number_sentences": length_number_sentences,
    "length_constraints:number_paragraphs": length_number_paragraphs,
    "length_constraints:number_words": length_number_words,
    "length_constraints:nth_paragraph_first_word": length_nth_paragraph_first_word,
    "detectable_content:number_placeholders": content_number_placeholders,
    "detectable_content:postscript": content_postscript,
    "detectable_format:number_bullet_lists": format_number_bullet_lists,
    "detectable_format:constrained_response": format_constrained_response,
    "detectable_format:number_highlighted_sections": format_number_highlighted_sections,
    "detectable_format:multiple_sections": format_multiple_sections,
    "detectable_format:json_format": format_json_format,
    "detectable_format:title": format_title,
    "combination:two_responses": combination_two_responses,
    "combination:repeat_prompt": combination_repeat_prompt,
    "startend:end_checker": startend_end_checker,
    "startend:quotation": startend_quotation,
    "change_case:capital_word_frequency": case_capital_word_frequency,
    "change_case:english_capital": case_english_capital,
    "change_case:english_lowercase": case_english_lowercase,
    "punctuation:no_comma": punctuation_no_comma,
}


# ---------------------------------------------------------------- strict, loose, metrics (main.py)


def clean_kwargs(kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """main.py: `{k: v for k, v in kwargs.items() if v}` (None, 0, "" and [] dropped)."""
    return {k: v for k, v in (kwargs or {}).items() if v}


def loose_responses(response: str) -> list[str]:
    """The 8 responses the loose variant tries, in main.py's order: the response, it without '*', it without
    its first line, last line, both (each stripped), and those three without '*'."""
    lines = response.split("\n")
    first, last, both = ("\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(),
                         "\n".join(lines[1:-1]).strip())
    return [response, response.replace("*", ""), first, last, both,
            first.replace("*", ""), last.replace("*", ""), both.replace("*", "")]


def check(instruction_id: str, response: str, kwargs: dict[str, Any] | None) -> bool:
    """One instruction on one response: True when it is followed (an empty response follows nothing)."""
    if instruction_id not in CHECKS:
        raise CheckerError(f"unknown IFEval instruction {instruction_id!r} ({len(CHECKS)} are registered)")
    return bool(response.strip()) and CHECKS[instruction_id](response, clean_kwargs(kwargs))


def score_prompt(response: str, instruction_ids: list[str], kwargs_list: list[dict[str, Any] | None]) -> dict:
    """lighteval's ifeval_metric for one prompt: prompt-level 0/1 and the per-instruction lists."""
    if len(instruction_ids) != len(kwargs_list):
        raise CheckerError(f"{len(instruction_ids)} instruction ids but {len(kwargs_list)} kwargs entries")
    variants = loose_responses(response)
    strict = [check(i, response, k) for i, k in zip(instruction_ids, kwargs_list)]
    loose = [any(check(i, v, k) for v in variants) for i, k in zip(instruction_ids, kwargs_list)]
    return {"prompt_level_strict_acc": int(all(strict)), "inst_level_strict_acc": [int(x) for x in strict],
            "prompt_level_loose_acc": int(all(loose)), "inst_level_loose_acc": [int(x) for x in loose]}


def aggregate(scores: list[dict]) -> dict[str, dict[str, Any]]:
    """The four corpus metrics (fractions, as lighteval's np.mean / agg_inst_level_acc), each with its n and
    binomial standard error (instruction level: over all instructions, as if independent)."""
    from runner.evaltasks.engine import binomial_se

    out: dict[str, dict[str, Any]] = {}
    for m in METRICS:
        values = [v for s in scores for v in s[m]] if m.startswith("inst_") else [s[m] for s in scores]
        out[m] = {"value": sum(values) / len(values), "n": len(values), "standard_error": binomial_se(values)}
    return out


def prompt_inst_average(scores: list[dict], level: str = "strict") -> tuple[float, float]:
    """(mean of prompt-level and instruction-level accuracy, its standard error over prompts): each prompt j
    contributes x_j = (p_j + k_j * n / N) / 2, where k_j of its instructions are followed and N instructions
    are in all n prompts, so mean(x) is the average exactly and its SE counts a prompt's instructions together."""
    import math

    n = len(scores)
    total = sum(len(s[f"inst_level_{level}_acc"]) for s in scores)
    xs = [(s[f"prompt_level_{level}_acc"] + sum(s[f"inst_level_{level}_acc"]) * n / total) / 2 for s in scores]
    mean = sum(xs) / n
    se = math.sqrt(sum((x - mean) ** 2 for x in xs) / n / n) if n > 1 else float("nan")
    return mean, se


__all__ = ["CHECKERS", "CHECKS", "METRICS", "CheckerError", "check", "score_prompt", "aggregate",
           "prompt_inst_average", "loose_responses", "clean_kwargs", "count_words", "count_sentences",
           "split_sentences", "word_tokens", "sentence_rule", "detect_language"]
