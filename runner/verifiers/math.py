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

  Deviation (documented, tested): release parsed with sympy 1.12's ANTLR ``parse_latex``
  under a SIGALRM. We never call sympy's ``parse_latex``/``sympify``/``parse_expr`` on model
  text: parsing uses ``latex2sympy2_extended`` (it builds sympy objects from the parse
  tree; its two ``sympy.Number(str)`` calls on lexer tokens are replaced by int()/Float()
  constructors in the worker) in a separate worker *process* with a soft SIGALRM on the
  worker's main thread, a hard kill from the caller and an address-space rlimit, so it is
  thread-safe and bounded. Known parser differences vs sympy parse_latex: sympy ignored
  trailing junk (``x/`` -> x, ``2\\sqrt`` -> 2); latex2sympy rejects these, so
  ``\\boxed{x/}`` vs ``x/ `` scores 0 here (1 in release). ``1,2`` is a set here (1 in
  sympy); ``2\\frac{1}{2}`` is 5/2 here (1 in sympy). ``100,000`` -> 100000 in both.
  sympy>=1.13 no longer has ``Float(0.0) == 0``; a numeric zero is accepted explicitly.
  Caps: candidates or ground truths longer than ``MAX_SYMPY_CHARS`` skip the symbolic
  check (release would mostly time out on them); string checks are exact at any size.
  Regex steps of ``normalize_final_answer`` that backtrack quadratically on adversarial
  input are replaced by linear scans with identical results.

corrected (differences from release):
  * last ``\\boxed{}``/``\\fbox{}``/``\\boxed x`` by position (``\\fbox`` works; a space form
    does not override a later braced box); boxed content is normalised;
  * the last *non-empty* math span (``$$..$$``, ``$..$``, ``\\[..\\]``, ``\\(..\\)``) is used;
  * ``Answer: X`` / ``answer is X`` on the last such line is a candidate;
  * equivalence = non-raising strip_string equality (raw and normalised) or
    math_verify ``verify`` on latex2sympy parses (with latex normalisation);
  * the corrected scans only look at the last ``CORRECTED_WINDOW`` characters.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

MARKER = "<|assistant|>\n"
INVALID = "[invalidanswer]"
SYMPY_TIMEOUT_S = float(os.environ.get("REPRO_MATH_SYMPY_TIMEOUT_S", "5"))
MAX_SYMPY_CHARS = 1000
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


def normalize_final_answer(final_answer: str) -> str:
    final_answer = final_answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        final_answer = final_answer.replace(before, after)
    for expr in _REMOVED:
        final_answer = final_answer.replace(expr, "")
    final_answer = _sub_first_dollar_pair(final_answer)
    for open_ in ("\\text{", "\\textbf{", "\\overline{"):
        final_answer = _sub_delimited(final_answer, open_, "}")
    final_answer = _sub_boxed_greedy(final_answer)
    final_answer = _FRAC_SHORT.sub("frac{\\2}{\\3}", final_answer)
    final_answer = _SQRT_SHORT.sub("sqrt{\\2}", final_answer)
    final_answer = final_answer.replace("$", "")
    if final_answer.replace(",", "").isdigit():
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
_SPAN_DELIMS = re.compile(r"\$\$|\$|\\\[|\\\]|\\\(|\\\)")
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
        cands += [boxed, normalize_final_answer(boxed)]
    minerva = minerva_unnormalized(text)
    if minerva != INVALID:
        cands.append(normalize_final_answer(minerva))
    if not cands:
        last = None
        for last in _ANSWER_CUE.finditer(text):
            pass
        if last is not None:
            ans = text[last.end():last.end() + 200].split("\n")[0].strip(" \t:").rstrip(".")
            if ans:
                cands += [ans, normalize_final_answer(ans)]
    if not cands:
        span = _last_math_span(text)
        if span is not None:
            cands += [span, normalize_final_answer(span)]
    if not cands:
        cands.append(normalize_final_answer(text))
    return [c for c in dict.fromkeys(cands)]


# --------------------------------------------------------------------------------------
# Symbolic equivalence in a worker process (never eval, bounded time and memory)
# --------------------------------------------------------------------------------------
_PKG_ROOT = str(Path(__file__).resolve().parents[2])
_BOOT = "from runner.verifiers.math import _worker_main; _worker_main()"


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = _PKG_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        # cwd=_PKG_ROOT so this package's math.py can never shadow the stdlib module.
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=_PKG_ROOT, env=env, bufsize=0)
        self.buf = b""

    def call(self, payload: bytes, deadline: float) -> dict | None:
        try:
            self.proc.stdin.write(payload)
            self.proc.stdin.flush()
        except OSError:
            return None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:  # worker died (e.g. GMP abort under the rlimit)
                return None
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:
            pass


class _Pool:
    """Thread-safe pool of worker processes; a timed-out or dead worker is discarded."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self.idle: list[_Worker] = []
        self.live = 0
        self.cond = threading.Condition()
        self.stats = {"calls": 0, "timeouts": 0, "restarts": 0}

    def _acquire(self) -> _Worker:
        with self.cond:
            while not self.idle and self.live >= self.size:
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            self.live += 1
        try:
            return _Worker()
        except Exception:
            with self.cond:
                self.live -= 1
                self.cond.notify()
            raise

    def _release(self, worker: _Worker | None) -> None:
        with self.cond:
            if worker is None:
                self.live -= 1
            else:
                self.idle.append(worker)
            self.cond.notify()

    def equal(self, mode: str, a: str, b: str, timeout: float) -> bool | None:
        payload = (json.dumps({"mode": mode, "a": a, "b": b, "soft": timeout}) + "\n").encode()
        worker = self._acquire()
        # hard deadline: soft limit + grace for worker start-up (imports) and IPC
        reply = worker.call(payload, time.monotonic() + timeout + 10.0)
        with self.cond:
            self.stats["calls"] += 1
        if reply is None:
            worker.kill()
            with self.cond:
                self.stats["restarts"] += 1
            self._release(None)
            return None
        self._release(worker)
        if reply.get("err") == "timeout":
            with self.cond:
                self.stats["timeouts"] += 1
        return bool(reply.get("equal"))

    def close(self) -> None:
        with self.cond:
            workers, self.idle = self.idle, []
            self.live -= len(workers)
        for w in workers:
            w.kill()


_POOL = _Pool(int(os.environ.get("REPRO_MATH_SYMPY_WORKERS", "2")))
atexit.register(_POOL.close)
_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()


def sympy_equal(mode: str, a: str, b: str, timeout: float | None = None) -> bool:
    """Symbolic equivalence of two LaTeX strings ('release' or 'corrected' semantics)."""
    if len(a) > MAX_SYMPY_CHARS or len(b) > MAX_SYMPY_CHARS or not a.strip() or not b.strip():
        return False
    key = (mode, a, b)
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    result = _POOL.equal(mode, a, b, SYMPY_TIMEOUT_S if timeout is None else timeout)
    if result is None:  # hard timeout / crash: not cached, scored as "not equivalent"
        return False
    with _CACHE_LOCK:
        _CACHE[key] = result
        if len(_CACHE) > 4096:
            _CACHE.popitem(last=False)
    return result


# ----------------------------- worker-process side -------------------------------------
_INT_TOKEN = re.compile(r"[-+]?[0-9]+")
_FLOAT_TOKEN = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def safe_number(text: str):
    """sympy number from a lexer NUMBER token without sympify (which would eval)."""
    import sympy

    t = text.replace(",", "").replace(" ", "")
    if _INT_TOKEN.fullmatch(t):
        return sympy.Integer(int(t))  # int() of >4300 digits raises: parse failure
    if _FLOAT_TOKEN.fullmatch(t) and len(t) <= 4300:
        return sympy.Float(t)  # mpmath string parsing, no eval
    raise ValueError(f"not a plain number: {text[:40]!r}")


def _patch_latex2sympy() -> None:
    from latex2sympy2_extended import latex2sympy2 as l2s

    def convert_number(number: str):
        if "," in number and number.startswith("0"):
            number = number.replace(",", ".")
        return safe_number(number)

    l2s.convert_number = convert_number
    l2s._Latex2Sympy.parse_number = lambda self, text: safe_number(text)


def _equal_release(a: str, b: str) -> bool:
    import sympy
    from latex2sympy2_extended.latex2sympy2 import ConversionConfig, latex2sympy

    cc = ConversionConfig(interpret_as_mixed_fractions=False, lowercase_symbols=False)
    try:
        pa = latex2sympy(a, normalization_config=None, conversion_config=cc)
        pb = latex2sympy(b, normalization_config=None, conversion_config=cc)
        r = sympy.simplify(pa - pb)
    except Exception:
        return False
    return bool(r == 0 or (isinstance(r, sympy.Number) and r.is_zero))


def _equal_corrected(gold: str, pred: str) -> bool:
    from latex2sympy2_extended.latex2sympy2 import latex2sympy
    from math_verify.grader import verify

    try:
        pg, pp = latex2sympy(gold), latex2sympy(pred)
    except Exception:
        return False
    return bool(verify(pg, pp, timeout_seconds=None))


class _SoftTimeout(BaseException):
    """BaseException so that sympy's broad ``except Exception`` blocks cannot swallow it."""


def _worker_main() -> None:  # pragma: no cover - runs in the child process
    import resource
    import signal

    out = os.fdopen(os.dup(1), "wb", buffering=0)  # private protocol channel
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    sys.stdout = sys.stderr
    limit = int(os.environ.get("REPRO_MATH_SYMPY_MEM_MB", "3072")) << 20
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass
    _patch_latex2sympy()

    def on_alarm(signum, frame):
        raise _SoftTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    for line in sys.stdin.buffer:
        req = json.loads(line)
        fn = _equal_release if req["mode"] == "release" else _equal_corrected
        equal, err = False, None
        try:
            try:
                signal.setitimer(signal.ITIMER_REAL, max(0.01, float(req["soft"])))
                equal = fn(req["a"], req["b"])
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
        except _SoftTimeout:
            err = "timeout"
        except (Exception, RecursionError, MemoryError) as e:
            err = type(e).__name__
        out.write((json.dumps({"equal": bool(equal), "err": err}) + "\n").encode())


# --------------------------------------------------------------------------------------
def _response_text(response: str) -> str:
    return response.split(MARKER)[-1].strip()


def score_release(response: str, ground_truth: str, raise_errors: bool = False) -> float:  # noqa: ARG001
    # verify_math_sample never raised: every parse/compare failure was already caught upstream.
    gt = str(ground_truth)
    for cand in release_candidates(_response_text(response)):
        # OR of the two checks; the cheap string check goes first (same result).
        if hendrycks_is_equiv(cand, gt) or sympy_equal("release", cand, gt):
            return 1.0
    return 0.0


def score_corrected(response: str, ground_truth: str) -> float:
    gt = str(ground_truth).strip()
    gt_forms = {_safe_strip(gt), _safe_strip(normalize_final_answer(gt))}
    cands = corrected_candidates(_response_text(response))
    for cand in cands:
        if cand == gt or _safe_strip(cand) in gt_forms:
            return 1.0
    for cand in cands:
        if sympy_equal("corrected", gt, cand):
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
