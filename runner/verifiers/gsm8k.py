"""GSM8K verifier (last number in the response vs. the GSM8K final answer).

release-2024-11 (open-instruct 3dd7a07da ``verify_gsm8k_sample``), reproduced exactly:
  * the response is the text after the last ``"<|assistant|>\\n"``, stripped;
  * digit-group commas are removed with ``(\\d),(\\d) -> \\1\\2`` (non-overlapping, so
    ``1,2,3`` becomes ``12,3`` and the prediction is ``3``);
  * prediction = last match of ``[-+]?\\d*\\.\\d+|\\d+`` -- the sign only attaches to the
    decimal branch, so ``-5`` extracts as ``5``; ``\\d`` is Unicode-aware (``٣`` matches);
  * no number at all -> the whole (stripped) response is the prediction;
  * comparison is case-insensitive *string* equality with the *unstripped* ground truth,
    so ``18.00 != 18`` and ``" 42"`` never matches.

corrected (differences from release):
  * the sign is part of the number (``-5`` -> ``-5``) unless it follows a word character,
    so the range ``3-5`` still yields ``5`` rather than ``-5``;
  * only well-formed thousands groups lose their commas (``1,234,567`` -> ``1234567``;
    ``1,2,3`` stays three numbers);
  * digits are ASCII only;
  * the ground truth is stripped (and its thousands commas removed) and numbers compare by
    value with ``decimal.Decimal`` (``18.00 == 18``, ``.5 == 0.5``); a non-numeric ground
    truth falls back to case-insensitive equality of the stripped strings.

All regexes here are linear-time (no nested quantifiers); Decimal handles arbitrarily
long digit strings without the ``int`` 4300-digit limit.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MARKER = "<|assistant|>\n"

# release-era patterns (behaviour, not code, carried over)
_REL_COMMA = re.compile(r"(\d),(\d)")
_REL_NUMBER = re.compile(r"[-+]?\d*\.\d+|\d+")

# corrected patterns
_COR_COMMA = re.compile(r"(?<=[0-9]),(?=[0-9]{3}(?![0-9]))")
_COR_NUMBER = re.compile(r"(?<!\w)[-+]?(?:[0-9]*\.[0-9]+|[0-9]+)|[0-9]*\.[0-9]+|[0-9]+")
_COR_GT_NUMBER = re.compile(r"[-+]?(?:[0-9]*\.[0-9]+|[0-9]+\.?)")


def _response_text(response: str) -> str:
    # Release: every verifier re-splits the decoded prompt+response and strips.
    return response.split(MARKER)[-1].strip()


def score_release(response: str, ground_truth: str, raise_errors: bool = False) -> float:
    text = _response_text(response)
    joined = _REL_COMMA.sub(r"\1\2", text)
    numbers = _REL_NUMBER.findall(joined)
    prediction = numbers[-1] if numbers else joined
    return 1.0 if str(prediction).lower() == str(ground_truth).lower() else 0.0


def _to_decimal(s: str) -> Decimal | None:
    try:
        d = Decimal(s)
    except (InvalidOperation, ValueError):
        return None
    return d if d.is_finite() else None


def score_corrected(response: str, ground_truth: str) -> float:
    text = _response_text(response)
    joined = _COR_COMMA.sub("", text)
    numbers = _COR_NUMBER.findall(joined)
    gt = str(ground_truth).strip()
    if not numbers:
        return 1.0 if joined.lower() == gt.lower() else 0.0
    prediction = numbers[-1]
    gt_clean = _COR_COMMA.sub("", gt)
    if _COR_GT_NUMBER.fullmatch(gt_clean):
        p, g = _to_decimal(prediction), _to_decimal(gt_clean)
        if p is not None and g is not None:
            return 1.0 if p == g else 0.0
    return 1.0 if prediction.lower() == gt.lower() else 0.0


def validate_ground_truth(ground_truth) -> str | None:
    if not isinstance(ground_truth, str):
        return f"gsm8k ground truth must be a string, got {type(ground_truth).__name__}"
    if ground_truth != ground_truth.strip():
        return (f"gsm8k ground truth {ground_truth!r} has surrounding whitespace "
                "(release compares it unstripped, so it can never match)")
    if re.fullmatch(r"[-+]\d+", ground_truth):
        return (f"gsm8k ground truth {ground_truth!r} is a signed integer; release extraction "
                "drops the sign of integers, so it can never match")
    if not _REL_NUMBER.fullmatch(ground_truth):
        return f"gsm8k ground truth {ground_truth[:40]!r} is not a plain number"
    return None
