"""MATH verifier (Hendrycks MATH answers; "flex" extraction + symbolic or string equivalence).

release-2024-11 (open-instruct 3dd7a07da ``verify_math_sample``), candidates in order:
  1. content of the last ``\\boxed`` (lm-eval minerva ``last_boxed_only_string`` +
     ``remove_boxed``), *not* normalised. Reproduced quirks: if ``"\\boxed "`` (with a
     space) occurs anywhere it wins: the candidate is everything after the last
     ``"\\boxed "`` up to the next ``$``; ``\\fbox{..}`` is found but ``remove_boxed``
     rejects it, so it never yields a candidate; unbalanced braces -> no candidate.
  2. Minerva ``Final Answer: The final answer is(.*?). I hope it is correct.`` (first
     match, ``.`` excludes newlines) + ``normalize_final_answer`` (Lewkowycz et al. 2022,
     appendix D).
  3. only if there are no candidates yet: normalised text between the last two ``$``
     (so ``$$x$$`` gives the empty candidate).
  4. only if still none: the normalised whole response (``Answer: 3`` -> ``Answer:3``).
  A candidate matches if Hendrycks ``strip_string`` equality holds (on any exception in
  strip_string: raw equality) or ``simplify(parse(a) - parse(b)) == 0``.

  The symbolic check runs the release's own parser, sympy 1.12's ANTLR ``parse_latex`` with
  antlr4 4.11, in a worker process with its own site directory (math_sympy.py), so sympy's
  leniency is reproduced (``x/`` -> x, ``2\\sqrt`` -> 2, ``\\text{(A)}`` -> A*text).
  Deviations (docs/semantics.md, with their measured replay difference):
  * one time limit (5 s) for the whole answer, not 5 s per comparison, enforced by a kill;
  * candidates or ground truths longer than ``MAX_SYMPY_CHARS`` skip the symbolic check
    (release would mostly time out on them); string checks are exact at any size;
  * regex steps of ``normalize_final_answer`` that backtrack quadratically on adversarial
    input are replaced by linear scans with identical results.

corrected (differences from release):
  * last ``\\boxed{}``/``\\fbox{}``/``\\boxed x`` by position (``\\fbox`` works; a space form
    does not override a later braced box); boxed content is tried raw and normalised;
  * the Minerva answer is tried raw too, and the normaliser (``normalize_corrected``) drops
    unit words only where they stand alone and commas only from thousands groups;
  * the last *non-empty* math span (``$$..$$``, ``$..$``, ``\\[..\\]``, ``\\(..\\)``) is used;
    an escaped ``\\$`` is content, not a delimiter;
  * ``Answer: X`` / ``answer is X`` on the last such line is a candidate;
  * equivalence = non-raising strip_string equality (raw and normalised) or math_verify
    ``verify`` on latex2sympy parses of gold and answer, both through math-verify's own
    LaTeX normaliser (``\\frac32``, ``2\\sqrt2`` parse);
  * the corrected scans only look at the last ``CORRECTED_WINDOW`` characters.
"""

from __future__ import annotations

import re

from .math_sympy import MAX_SYMPY_CHARS, TIME_LIMIT_S, Budget, sympy_equal  # noqa: F401 (re-exported)

MARKER = "<|assistant|>\n"
INVALID = "[invalidanswer]"
CORRECTED_WINDOW = 1_000_000

# --------------------------------------------------------------------------------------
# Minerva normalisation (facts from Lewkowycz et al. 2022, appendix D)
# --------------------------------------------------------------------------------------
_SUBSTITUTIONS = [
    ("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""),
    ("mbox", "text"), (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}"),
]
_REMOVED = [
    "square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units",
    "\\ldots", "sue", "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm",
    "pounds", "meters", "meals", "edges", "students", "childrentickets", "multiples",
    "\\text{s}", "\\text{.}", "\\text{\ns}", "\\text{}^2", "\\text{}^3", "\\text{\n}",
    "\\text{}", "\\mathrm{th}", "^\\circ", "^{\\circ}", "\\;", ",\\!", "{,}", '"', "\\dots",
]
_FRAC_SHORT = re.compile(r"(frac)([^{])(.)")
_SQRT_SHORT = re.compile(r"(sqrt)([^{])")
_BRACES = re.compile(r"[{}]")


def _sub_first_dollar_pair(s: str) -> str:
    # == re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\3$", s): every line with >= 2 '$' becomes
    # "$<text between its first two $>$"; other lines are untouched. Linear.
    lines = s.split("\n")
    for i, line in enumerate(lines):
        a = line.find("$")
        if a >= 0:
            b = line.find("$", a + 1)
            if b >= 0:
                lines[i] = "$" + line[a + 1:b] + "$"
    return "\n".join(lines)


def _sub_delimited(s: str, open_: str, close: str) -> str:
    # == re.sub(re.escape(open_) + "(.*?)" + re.escape(close), r"\1", s) ('.' excludes
    # '\n'), without the quadratic retry on lines that have no closing delimiter.
    out, pos = [], 0
    while True:
        p = s.find(open_, pos)
        if p < 0:
            break
        start = p + len(open_)
        q = s.find(close, start)
        if q < 0:
            break
        nl = s.find("\n", start, q)
        if nl >= 0:  # no open on this line can reach a close
            out.append(s[pos:nl + 1])
            pos = nl + 1
            continue
        out.append(s[pos:p])
        out.append(s[start:q])
        pos = q + len(close)
    out.append(s[pos:])
    return "".join(out)


def _sub_boxed_greedy(s: str) -> str:
    # == re.sub(r"(\\boxed\{)(.*)(\})", r"\2", s): per line, first "\boxed{" .. last "}".
    lines = s.split("\n")
    for i, line in enumerate(lines):
        p = line.find("\\boxed{")
        if p >= 0:
            q = line.rfind("}")
            if q >= p + 7:
                lines[i] = line[:p] + line[p + 7:q] + line[q + 1:]
    return "\n".join(lines)


def _strip_markup(final_answer: str) -> str:
    """The steps both normalisers share, in the release's order: math delimiters, text and box wrappers,
    the short \\frac and \\sqrt forms, stray dollars."""
    final_answer = _sub_first_dollar_pair(final_answer)
    for open_ in ("\\text{", "\\textbf{", "\\overline{"):
        final_answer = _sub_delimited(final_answer, open_, "}")
    final_answer = _sub_boxed_greedy(final_answer)
    final_answer = _FRAC_SHORT.sub("frac{\\2}{\\3}", final_answer)
    final_answer = _SQRT_SHORT.sub("sqrt{\\2}", final_answer)
    return final_answer.replace("$", "")


def normalize_final_answer(final_answer: str) -> str:
    final_answer = final_answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in _REMOVED:
        final_answer = final_answer.replace(expr, "")
    final_answer = _strip_markup(final_answer)
    if final_answer.replace(",", "").isdigit():
        final_answer = final_answer.replace(",", "")
    return final_answer


_THOUSANDS = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+")
_REMOVED_WORDS = [r for r in _REMOVED if r.isalpha()]
_REMOVED_OTHER = [r for r in _REMOVED if not r.isalpha()]
_WORD_RE = re.compile(r"(?<![A-Za-z\\])(?:" + "|".join(sorted(_REMOVED_WORDS, key=len, reverse=True))
                      + r")(?![A-Za-z])")


def normalize_corrected(final_answer: str) -> str:
    """`normalize_final_answer` without its two text-mangling steps: unit words go only where they stand
    alone (not the "ft" of ``\\infty`` or the "sue" of "issue"), and commas only out of well-formed
    thousands groups (``100,000`` -> ``100000`` but ``3,2,1`` stays a list)."""
    final_answer = final_answer.split("=")[-1]
    # before the spaces go, so that a word's bounds are still visible ("x mph" loses "mph", "\\infty" keeps "ft")
    final_answer = _WORD_RE.sub("", final_answer)
    for before, after in _SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in _REMOVED_OTHER:
        final_answer = final_answer.replace(expr, "")
    final_answer = _strip_markup(final_answer)
    if _THOUSANDS.fullmatch(final_answer):
        final_answer = final_answer.replace(",", "")
    return final_answer


_MINERVA_HEAD = "Final Answer: The final answer is"
_MINERVA_TAIL = " I hope it is correct"


def minerva_unnormalized(text: str) -> str:
    # == re.search(r"Final Answer: The final answer is(.*?). I hope it is correct.",
    #              text + "I hope it is correct.").group(1).strip(), in linear time.
    text = text + "I hope it is correct."
    pos = 0
    while True:
        s = text.find(_MINERVA_HEAD, pos)
        if s < 0:
            return INVALID
        g0 = s + len(_MINERVA_HEAD)
        nl = text.find("\n", g0)
        line_end = len(text) if nl < 0 else nl
        k = text.find(_MINERVA_TAIL, g0 + 1, line_end - 1)
        if k >= 0:
            return text[g0:k - 1].strip()
        if nl < 0:
            return INVALID
        pos = nl + 1


# --------------------------------------------------------------------------------------
# Hendrycks strip_string, release flavour: raises exactly where the original raised.
# --------------------------------------------------------------------------------------
def _fix_fracs(string: str) -> str:
    substrs = string.split("\\frac")
    parts = [substrs[0]]
    for substr in substrs[1:]:
        parts.append("\\frac")
        if substr[0] == "{":  # IndexError on an empty tail, as upstream
            parts.append(substr)
            continue
        if len(substr) < 2:
            return string
        a, b = substr[0], substr[1]
        parts.append("{" + a + "}{" + b + "}" + substr[2:] if b != "{"
                     else "{" + a + "}" + b + substr[2:])
    return "".join(parts)


def _fix_a_slash_b(string: str) -> str:
    pieces = string.split("/")
    if len(pieces) != 2:
        return string
    a, b = int(pieces[0]), int(pieces[1])  # ValueError propagates, as upstream
    if string != f"{a}/{b}":
        return string
    return "\\frac{" + str(a) + "}{" + str(b) + "}"


def _remove_right_units(string: str) -> str:
    if "\\text{ " in string:
        splits = string.split("\\text{ ")
        if len(splits) != 2:
            raise AssertionError("more than one \\text{ ")
        return splits[0]
    return string


def _fix_sqrt(string: str) -> str:
    if "\\sqrt" not in string:
        return string
    splits = string.split("\\sqrt")
    parts = [splits[0]]
    for split in splits[1:]:
        parts.append("\\sqrt{" + split[0] + "}" + split[1:] if split[0] != "{"
                     else "\\sqrt" + split)
    return "".join(parts)


def strip_string(string: str) -> str:
    string = string.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    string = string.replace("tfrac", "frac").replace("dfrac", "frac")
    string = string.replace("\\left", "").replace("\\right", "")
    string = string.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    string = _remove_right_units(string)
    string = string.replace("\\%", "")
    string = string.replace(" .", " 0.").replace("{.", "{0.")
    if len(string) == 0:
        return string
    if string[0] == ".":
        string = "0" + string
    eq = string.split("=")
    if len(eq) == 2 and len(eq[0]) <= 2:
        string = eq[1]
    string = _fix_sqrt(string)
    string = string.replace(" ", "")
    string = _fix_fracs(string)
    if string == "0.5":
        string = "\\frac{1}{2}"
    return _fix_a_slash_b(string)


def hendrycks_is_equiv(str1, str2) -> bool:
    if str1 is None or str2 is None:
        return str1 is None and str2 is None
    try:
        return strip_string(str1) == strip_string(str2)
    except Exception:  # upstream: any failure falls back to raw equality
        return str1 == str2


def _safe_strip(string: str) -> str:
    """Corrected strip_string: same rewrites, never raises."""
    try:
        return strip_string(string)
    except Exception:
        s = string.replace("\n", "").replace(" ", "").replace("\\!", "")
        s = s.replace("tfrac", "frac").replace("dfrac", "frac")
        return s.replace("\\left", "").replace("\\right", "").replace("\\$", "")


# --------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------
def last_boxed_only_string(string: str) -> str | None:
    idx = string.rfind("\\boxed")
    space = string.rfind("\\boxed ")
    if space >= 0:
        return "\\boxed " + string[space + 7:].split("$")[0]
    if idx < 0:
        idx = string.rfind("\\fbox")
        if idx < 0:
            return None
    depth = 0
    for m in _BRACES.finditer(string, idx):
        if m.group() == "{":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                return string[idx:m.end()]
    return None


def remove_boxed(s: str) -> str | None:
    """None where upstream's asserts fired (the caller then drops the candidate)."""
    if "\\boxed " in s:
        return s[7:] if s.startswith("\\boxed ") else None
    if s.startswith("\\boxed{") and s.endswith("}"):
        return s[7:-1]
    return None


def release_candidates(text: str) -> list[str]:
    cands: list[str] = []
    boxed = last_boxed_only_string(text)
    if boxed is not None:
        inner = remove_boxed(boxed)
        if inner is not None:
            cands.append(inner)
    minerva = normalize_final_answer(minerva_unnormalized(text))
    if minerva != INVALID:
        cands.append(minerva)
    if not cands:
        last = text.rfind("$")
        prev = text.rfind("$", 0, last) if last > 0 else -1
        if prev >= 0:
            cands.append(normalize_final_answer(text[prev + 1:last]))
    if not cands:
        cands.append(normalize_final_answer(text))
    return cands


_BOX_CMD = re.compile(r"\\(?:boxed|fbox)")
# An escaped dollar (\$, a currency sign) is content, never a delimiter.
_SPAN_DELIMS = re.compile(r"(?<!\\)\$\$|(?<!\\)\$|\\\[|\\\]|\\\(|\\\)")
_ANSWER_CUE = re.compile(r"(?i)\banswer(?: is|:)")
_CLOSERS = {"$$": "$$", "$": "$", "\\[": "\\]", "\\(": "\\)"}


def _match_braces(text: str) -> dict[int, int]:
    pairs, stack = {}, []
    for m in _BRACES.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def _corrected_boxed(text: str) -> str | None:
    starts = [m.end() for m in _BOX_CMD.finditer(text)]
    if not starts:
        return None
    pairs = None
    for after in reversed(starts):
        rest = text[after:after + 1]
        if rest == "{":
            pairs = pairs if pairs is not None else _match_braces(text)
            close = pairs.get(after)
            if close is not None:
                return text[after + 1:close]
        elif rest == " ":
            inner = re.split(r"[$\n]", text[after + 1:after + 201], maxsplit=1)[0].strip()
            if inner:
                return inner
    return None


def _last_math_span(text: str) -> str | None:
    spans, open_tok, start = [], None, 0
    for m in _SPAN_DELIMS.finditer(text):
        tok = m.group()
        if open_tok is None:
            if tok in _CLOSERS:
                open_tok, start = tok, m.end()
        elif tok == _CLOSERS[open_tok]:
            spans.append(text[start:m.start()])
            open_tok = None
    for span in reversed(spans):
        if span.strip():
            return span.strip()
    return None


def corrected_candidates(text: str) -> list[str]:
    text = text[-CORRECTED_WINDOW:]
    cands: list[str] = []
    boxed = _corrected_boxed(text)
    if boxed is not None:
        cands += [boxed, normalize_corrected(boxed)]
    minerva = minerva_unnormalized(text)
    if minerva != INVALID:
        cands += [minerva.strip("$ "), normalize_corrected(minerva)]
    if not cands:
        cues = list(_ANSWER_CUE.finditer(text))
        last = cues[-1] if cues else None
        if last is not None:
            ans = text[last.end():last.end() + 200].split("\n")[0].strip(" \t:").rstrip(".")
            if ans:
                cands += [ans, normalize_corrected(ans)]
    if not cands:
        span = _last_math_span(text)
        if span is not None:
            cands += [span, normalize_corrected(span)]
    if not cands:
        cands.append(normalize_corrected(text))
    return [c for c in dict.fromkeys(cands)]


# --------------------------------------------------------------------------------------
def _response_text(response: str) -> str:
    return response.split(MARKER)[-1].strip()


def score_release(response: str, ground_truth: str, raise_errors: bool = False) -> float:
    # verify_math_sample never raised: every parse/compare failure was already caught upstream.
    gt = str(ground_truth)
    budget = Budget()  # one time limit for the whole answer (see math_sympy)
    for cand in release_candidates(_response_text(response)):
        # OR of the two checks; the cheap string check goes first (same result, less of the budget).
        if hendrycks_is_equiv(cand, gt) or sympy_equal("release", cand, gt, budget):
            return 1.0
    return 0.0


def score_corrected(response: str, ground_truth: str) -> float:
    gt = str(ground_truth).strip()
    gt_forms = {_safe_strip(gt), _safe_strip(normalize_corrected(gt))}
    cands = corrected_candidates(_response_text(response))
    for cand in cands:
        if cand == gt or _safe_strip(cand) in gt_forms:
            return 1.0
    budget = Budget()
    for cand in cands:
        if sympy_equal("corrected", gt, cand, budget):
            return 1.0
    return 0.0


def validate_ground_truth(ground_truth) -> str | None:
    if not isinstance(ground_truth, str):
        return f"math ground truth must be a string, got {type(ground_truth).__name__}"
    if not ground_truth.strip():
        return "math ground truth is blank"
    if len(ground_truth) > MAX_SYMPY_CHARS:
        return f"math ground truth is {len(ground_truth)} chars (> {MAX_SYMPY_CHARS})"
    return None
