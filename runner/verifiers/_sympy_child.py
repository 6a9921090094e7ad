"""The child side of the MATH symbolic check: one process, one request per line on stdin, one reply per line.

Run by path (runpy) rather than imported, so that it needs nothing of this project and works in the
release-era site directory (sympy 1.12 + antlr4 4.11 only, started with `python -S`) as well as in the
project's own environment (latex2sympy2_extended + math-verify, for the corrected verifier).

Modes:
  release    open-instruct 3dd7a07 `is_equiv`: sympy's ANTLR `parse_latex` on both strings (its only
             string-to-number step, `sympy.Number` on a lexer NUMBER token, sees digits, commas and
             dots only), then `simplify(a − b) == 0`. The exceptions upstream caught give False.
  corrected  math-verify: both strings normalised with math-verify's LaTeX-extraction normaliser, parsed
             by latex2sympy2_extended (its `sympy.Number(str)` calls replaced by int()/Float()
             constructors, so no sympify of model text), then math_verify `verify`.

Protocol: after its imports the child writes {"ready": true}; each request {"mode", "a", "b", "soft"}
gets {"equal": bool, "err": str | null}. A soft SIGALRM on this (main) thread bounds Python-level work;
the parent kills the process at its hard deadline for work stuck in C code.
"""

import json
import os
import re
import resource
import signal
import sys

_INT_TOKEN = re.compile(r"[-+]?[0-9]+")
_FLOAT_TOKEN = re.compile(r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


def safe_number(text: str):
    """sympy number from a lexer NUMBER token without sympify (which would eval)."""
    import sympy

    t = text.replace(",", "").replace(" ", "")
    if _INT_TOKEN.fullmatch(t):
        return sympy.Integer(int(t))  # int() of >4300 digits raises: a parse failure
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


def equal_release(a: str, b: str) -> bool:
    import sympy
    from sympy.parsing.latex import parse_latex
    from sympy.parsing.latex.errors import LaTeXParsingError

    try:
        pa, pb = parse_latex(a), parse_latex(b)
    except (LaTeXParsingError, sympy.SympifyError, TypeError):
        return False
    try:
        diff = pa - pb
    except TypeError:
        return False
    try:
        return bool(sympy.simplify(diff) == 0)
    except ValueError:  # upstream fell through to an implicit None here
        return False


def equal_corrected(gold: str, pred: str) -> bool:
    from latex2sympy2_extended.latex2sympy2 import latex2sympy
    from math_verify.grader import verify
    from math_verify.parser import LatexExtractionConfig

    # The normaliser math-verify's `parse` applies before latex2sympy, for the gold as for the answer
    # (it mends `\frac32`, `2\sqrt2`, units, ...).
    config = LatexExtractionConfig().normalization_config
    try:
        pg = latex2sympy(gold, normalization_config=config)
        pp = latex2sympy(pred, normalization_config=config)
    except Exception:
        return False
    return bool(verify(pg, pp, timeout_seconds=None))


class _SoftTimeout(BaseException):
    """BaseException so that sympy's broad ``except Exception`` blocks cannot swallow it."""


def main() -> None:
    out = os.fdopen(os.dup(1), "wb", buffering=0)  # private protocol channel
    os.dup2(2, 1)  # stray prints from libraries must not corrupt the protocol
    sys.stdout = sys.stderr
    limit = int(os.environ.get("REPRO_MATH_SYMPY_MEM_MB", "3072")) << 20
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass
    mode = os.environ["REPRO_MATH_WORKER_MODE"]
    if mode == "release":
        import sympy
        from sympy.parsing.latex import parse_latex

        parse_latex("1")  # loads the ANTLR runtime now, outside any request's time
        fn = equal_release
        version = sympy.__version__
    else:
        import math_verify  # noqa: F401
        import sympy

        _patch_latex2sympy()
        fn = equal_corrected
        version = sympy.__version__

    def on_alarm(signum, frame):
        raise _SoftTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    out.write((json.dumps({"ready": True, "sympy": version}) + "\n").encode())
    for line in sys.stdin.buffer:
        req = json.loads(line)
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


if __name__ == "__main__":
    main()
