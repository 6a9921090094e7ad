"""IFEval-style constraint verifier (one constraint per prompt, binary score).

Ground truth: JSON ``{"func_name": "<one of FUNC_NAMES>", <kwargs>}``; kwargs whose value
is ``None`` are dropped. The response is the text after the last ``"<|assistant|>\\n"``,
stripped (release behaviour, kept in both versions).

release-2024-11 (open-instruct 3dd7a07da ``if_functions.py``), quirks reproduced:
  * ``validate_placeholders`` returned a tuple (always truthy): every response passes;
  * ``validate_choice`` tests ``response in option`` (``"yes"`` and ``""`` pass, the full
    option plus an explanation fails);
  * capital-words "around" means exactly N;
  * word-count "around" tolerance ``max(round(0.1*N), 1)`` with round-half-even on the
    float product (N=25 -> 2, N=35 -> 4, N=15 -> 2);
  * ``validate_end``: response stripped, phrase not (a phrase with trailing space fails);
  * ``validate_json_format`` = ``json.loads`` succeeds (``5``, ``NaN`` pass; fenced fails);
  * highlighted sections = matches of ``\\*(.*?)\\*`` (``**bold**`` counts 2);
  * a lone ``"`` passes the quotation check; sections = ``text.split(splitter)`` count;
  * ground truth without ``func_name`` (or not parseable) scores 0.
  Deviation (switch ``checker_errors_score_0``, default on): where release *raised*
  (multi-character letter in letter_frequency, unknown func_name, bad kwargs, langdetect on
  featureless text, deeply nested JSON) and aborted the whole reward batch, we score 0 and
  count it in ``RELEASE_ERRORS``; with the switch off the exception propagates.
  langdetect is seeded (release was unseeded, i.e. nondeterministic on borderline
  text). Lazy-match regexes are replaced by linear scans with identical results.

corrected (differences from release):
  * placeholders: at least N ``[...]`` spans;
  * choice: some option occurs in the response as a standalone phrase (not inside a
    longer word), or the stripped response equals an option;
  * capital words "around": within ``max(round(0.1*N), 1)``;
  * end: stripped response ends with the stripped phrase;
  * json: ``` fences removed as the Google checker removes them (```json / ```Json / ```JSON /
    ``` prefix, ``` suffix, no newline needed); must parse to an object/array; NaN/Infinity rejected;
  * keyword and letter frequency take the Google relations ("less than", "at least"; letter also
    as ``let_relation``); without one they mean exactly N; a multi-character letter scores 0;
  * highlighted: non-empty ``*x*`` spans plus non-empty ``**x**`` spans (Google IFEval rule);
  * quotation: at least two characters;
  * sections: count of ``<splitter> <number>`` headers (case-insensitive) >= N;
  * paragraphs+first word: blank-line split, exact first word (case/punct-insensitive);
  * bullets: lines starting with ``*``/``-`` followed by whitespace (not ``**bold**``/``---``).
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import threading
from collections import Counter

MARKER = "<|assistant|>\n"
log = logging.getLogger(__name__)
RELEASE_ERRORS: Counter = Counter()  # (version, func_name, exception) -> count
_ERR_LOCK = threading.Lock()


def _count_delimited(text: str, open_: str, close: str) -> int:
    """len(re.findall(esc(open_) + '(.*?)' + esc(close), text)) in linear time."""
    n, pos = 0, 0
    while True:
        p = text.find(open_, pos)
        if p < 0:
            return n
        start = p + len(open_)
        q = text.find(close, start)
        if q < 0:
            return n
        nl = text.find("\n", start, q)
        if nl >= 0:
            pos = nl + 1
            continue
        n += 1
        pos = q + len(close)


_DETECTOR_LOCK = threading.Lock()


def _detect_language(text: str) -> str:
    from langdetect import detector_factory

    with _DETECTOR_LOCK:
        detector_factory.init_factory()
        detector = detector_factory._factory.create()
    detector.seed = 0  # deterministic, per instance (the global factory is untouched)
    detector.append(text)  # langdetect itself truncates to 10k chars
    return detector.detect()


def _quantity(count: int, N: int, quantifier: str, around) -> bool:
    if quantifier == "at least":
        return count >= N
    if quantifier == "at most":
        return count <= N
    if quantifier == "around":
        return around(count, N)
    return False


def _tol10(count: int, N: int) -> bool:
    return abs(count - N) <= max(round(N * 0.1), 1)


_SENTENCE_SPLIT = re.compile(r"(?<!\w\.\w.)(?<![A-Z][a-z]\.)(?<=\.|\?)\s")
_WORD = re.compile(r"\b\w+\b")
_CAPS = re.compile(r"\b[A-Z]+\b")


# ----------------------------- shared (identical in both versions) ---------------------
def verify_keywords(text, keyword_list):
    low = text.lower()
    return all(k.lower() in low for k in keyword_list)


def verify_keyword_frequency(text, word, N):
    target = word.lower()
    return sum(1 for w in _WORD.findall(text.lower()) if w == target) == N


def validate_forbidden_words(text, forbidden_words):
    low = text.lower()
    return not any(w.lower() in low for w in forbidden_words)


def verify_letter_frequency(text, letter, N):
    if len(letter) != 1:
        raise ValueError("letter must be a single character")  # release raised here too
    return text.count(letter) == N


def validate_response_language(text, language):
    return _detect_language(text) == language


def verify_paragraph_count(text, N):
    cleaned = "\n".join(line.strip() for line in text.splitlines()).strip()
    parts = cleaned.split("* * *")
    return all(p.strip() for p in parts) and len(parts) == N


def validate_word_constraint(text, N, quantifier):
    return _quantity(len(text.strip().split()), N, quantifier, _tol10)


def verify_sentence_constraint(text, N, quantifier):
    n = len(_SENTENCE_SPLIT.split(text))
    return _quantity(n, N, quantifier, lambda c, k: abs(c - k) <= 1)


def verify_postscript(text, postscript_marker):
    idx = text.find(postscript_marker)
    return idx >= 0 and len(text[idx:].strip()) > len(postscript_marker)


def validate_title(text):
    return _count_delimited(text, "<<", ">>") > 0


def validate_repeat_prompt(text, original_prompt):
    return text.startswith(original_prompt)


def validate_two_responses(text):
    if text.count("******") != 1:
        return False
    first, second = text.split("******")
    return first.strip() != second.strip()


def validate_uppercase(text):
    return text == text.upper()


def validate_lowercase(text):
    return text == text.lower()


def validate_no_commas(text):
    return "," not in text


# ----------------------------- release-era behaviour ----------------------------------
def rel_validate_paragraphs(text, N, first_word, i):
    paragraphs = text.split("\n\n")
    return len(paragraphs) == N and paragraphs[i - 1].strip().startswith(first_word)


def rel_validate_placeholders(text, N):
    return True  # upstream returned (has_enough, placeholders): a truthy tuple


def rel_verify_bullet_points(text, N):
    return sum(1 for line in text.split("\n") if line.strip().startswith(("*", "-"))) == N


def rel_validate_choice(text, options):
    return any(text in option for option in options)


def rel_validate_highlighted_sections(text, N):
    return _count_delimited(text, "*", "*") >= N


def rel_validate_sections(text, N, section_splitter):
    sections = text.split(section_splitter)
    if sections[0] == "":
        sections.pop(0)
    return len(sections) == N


def rel_validate_json_format(text):
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def rel_validate_frequency_capital_words(text, N, quantifier):
    return _quantity(len(_CAPS.findall(text)), N, quantifier, lambda c, k: c == k)


def rel_validate_end(text, end_phrase):
    return text.endswith(end_phrase)


def rel_validate_quotation(text):
    return text.startswith('"') and text.endswith('"')


# ----------------------------- corrected behaviour ------------------------------------
_FIRST_WORD_STRIP = re.compile(r"^\W+|\W+$")


def cor_validate_paragraphs(text, N, first_word, i):
    paragraphs = [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]
    if len(paragraphs) != N or not 1 <= i <= N:
        return False
    words = paragraphs[i - 1].split()
    head = _FIRST_WORD_STRIP.sub("", words[0]).lower() if words else ""
    return head == _FIRST_WORD_STRIP.sub("", first_word).lower()


def cor_validate_placeholders(text, N):
    return _count_delimited(text, "[", "]") >= N


_BULLET = re.compile(r"^[ \t]*[*-][ \t]+\S", re.MULTILINE)


def cor_verify_bullet_points(text, N):
    return len(_BULLET.findall(text)) == N


def cor_validate_choice(text, options):
    stripped = text.strip()
    for option in options:
        option = str(option).strip()
        if not option:
            continue
        if stripped == option or re.search(r"(?<!\w)" + re.escape(option) + r"(?!\w)", text):
            return True
    return False


_SINGLE_HL = re.compile(r"\*[^\n*]*\*")
_DOUBLE_HL = re.compile(r"\*\*[^\n*]*\*\*")


def cor_validate_highlighted_sections(text, N):
    n = sum(1 for h in _SINGLE_HL.findall(text) if h.strip("*").strip())
    n += sum(1 for h in _DOUBLE_HL.findall(text) if h[2:-2].strip())
    return n >= N


def cor_validate_sections(text, N, section_splitter):
    splitter = str(section_splitter).strip()
    if not splitter:
        return False
    headers = re.findall(r"(?<!\w)" + re.escape(splitter) + r"[ \t]*\d+", text, re.IGNORECASE)
    return len(headers) >= N


def _unfence(text: str) -> str:
    # The Google checker's fence removal: prefixes ```json / ```Json / ```JSON / ``` and a ``` suffix,
    # with no newline required, so a tight fence (```json{"a": 1}```) is accepted too.
    body = text.strip()
    for prefix in ("```json", "```Json", "```JSON", "```"):
        if body.startswith(prefix):
            body = body[len(prefix):]
            break
    if body.endswith("```"):
        body = body[:-3]
    return body.strip()


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def cor_validate_json_format(text):
    body = _unfence(text)
    try:
        value = json.loads(body, parse_constant=_no_constants)
    except (ValueError, RecursionError):
        return False
    return isinstance(value, (dict, list))


def cor_validate_frequency_capital_words(text, N, quantifier):
    return _quantity(len(_CAPS.findall(text)), N, quantifier, _tol10)


_RELATIONS = {"less than": lambda count, n: count < n, "at least": lambda count, n: count >= n}


def _relation_holds(count: int, N, relation) -> bool:
    # Google IFEval's two relations; without one, "exactly N" as the Tülu 3 ground truths mean it.
    if relation is None:
        return count == N
    test = _RELATIONS.get(str(relation).strip().lower())
    return test is not None and test(count, N)


def cor_verify_keyword_frequency(text, word, N, relation=None):
    target = word.lower()
    return _relation_holds(sum(1 for w in _WORD.findall(text.lower()) if w == target), N, relation)


def cor_verify_letter_frequency(text, letter, N, relation=None, let_relation=None):
    if len(letter) != 1:
        return False  # the release raised here (see verify_letter_frequency)
    return _relation_holds(text.count(letter), N, relation if relation is not None else let_relation)


def cor_validate_end(text, end_phrase):
    phrase = end_phrase.strip()
    return bool(phrase) and text.strip().endswith(phrase)


def cor_validate_quotation(text):
    return len(text) >= 2 and text.startswith('"') and text.endswith('"')


# ----------------------------- registry ------------------------------------------------
_SHARED = {f.__name__: f for f in (
    verify_keywords, verify_keyword_frequency, validate_forbidden_words,
    verify_letter_frequency, validate_response_language, verify_paragraph_count,
    validate_word_constraint, verify_sentence_constraint, verify_postscript, validate_title,
    validate_repeat_prompt, validate_two_responses, validate_uppercase, validate_lowercase,
    validate_no_commas)}
_VARIANT = ("validate_paragraphs", "validate_placeholders", "verify_bullet_points",
            "validate_choice", "validate_highlighted_sections", "validate_sections",
            "validate_json_format", "validate_frequency_capital_words", "validate_end",
            "validate_quotation")
RELEASE_FUNCS = {**_SHARED, **{n: globals()["rel_" + n] for n in _VARIANT}}
CORRECTED_FUNCS = {**_SHARED, **{n: globals()["cor_" + n] for n in _VARIANT},
                   "verify_keyword_frequency": cor_verify_keyword_frequency,
                   "verify_letter_frequency": cor_verify_letter_frequency}
FUNC_NAMES = tuple(sorted(RELEASE_FUNCS))
assert len(FUNC_NAMES) == 25


def parse_ground_truth(ground_truth) -> tuple[dict | None, str | None]:
    """(constraint dict copy, problem description)."""
    if isinstance(ground_truth, dict):
        constraint = dict(ground_truth)  # release popped from the caller's dict; we copy
    elif isinstance(ground_truth, str):
        try:
            constraint = json.loads(ground_truth)
        except (ValueError, RecursionError) as e:
            return None, f"ifeval ground truth is not valid JSON ({type(e).__name__})"
    else:
        return None, f"ifeval ground truth must be JSON text, got {type(ground_truth).__name__}"
    if not isinstance(constraint, dict):
        return None, f"ifeval ground truth JSON is a {type(constraint).__name__}, not an object"
    if "func_name" not in constraint:
        return None, "ifeval ground truth lacks 'func_name'"
    return constraint, None


def validate_ground_truth(ground_truth) -> str | None:
    constraint, problem = parse_ground_truth(ground_truth)
    if problem:
        return problem
    name = constraint.pop("func_name")
    if name not in RELEASE_FUNCS:
        return f"ifeval func_name {name!r} is not one of the 25 release functions"
    kwargs = {k: v for k, v in constraint.items() if v is not None}
    try:  # the corrected signatures are supersets (the frequency relations), so a row valid for either passes
        inspect.signature(CORRECTED_FUNCS[name]).bind("", **kwargs)
    except TypeError as e:
        return f"ifeval {name}: bad kwargs ({e})"
    if name == "verify_letter_frequency" and len(str(kwargs.get("letter", ""))) != 1:
        return (f"ifeval verify_letter_frequency letter {kwargs.get('letter')!r} is not one "
                "character (release raised ValueError)")
    return None


def _release_raising(funcs: dict, text: str, ground_truth) -> float:
    """verify_ifeval_sample as released, exceptions included (they aborted the reward computation)."""
    constraint = json.loads(ground_truth) if isinstance(ground_truth, str) else dict(ground_truth)
    if "func_name" not in constraint:
        return 0.0
    func = funcs[constraint.pop("func_name")]  # KeyError for an unknown name, as released
    kwargs = {k: v for k, v in constraint.items() if v is not None}
    return 1.0 if func(text, **kwargs) else 0.0


def _score(version: str, funcs: dict, response: str, ground_truth, raise_errors: bool = False) -> float:
    text = response.split(MARKER)[-1].strip()
    if raise_errors:
        return _release_raising(funcs, text, ground_truth)
    constraint, problem = parse_ground_truth(ground_truth)
    if problem:
        return 0.0
    name = constraint.pop("func_name")
    func = funcs.get(name) if isinstance(name, str) else None
    kwargs = {k: v for k, v in constraint.items() if v is not None}
    try:
        if func is None:
            raise KeyError(name)
        result = func(text, **kwargs)
    except Exception as e:  # release crashed the reward batch here; we score 0 and count
        with _ERR_LOCK:
            RELEASE_ERRORS[(version, str(name), type(e).__name__)] += 1
        log.warning("ifeval %s %s raised %s: %s", version, name, type(e).__name__, e)
        return 0.0
    return 1.0 if result else 0.0


def score_release(response: str, ground_truth, raise_errors: bool = False) -> float:
    return _score("release-2024-11", RELEASE_FUNCS, response, ground_truth, raise_errors)


def score_corrected(response: str, ground_truth) -> float:
    return _score("corrected", CORRECTED_FUNCS, response, ground_truth)
