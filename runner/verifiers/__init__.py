"""RLVR verifiers: one scoring function per task, shared by the RL reward and evaluation.

Public API::

    score(task, response, ground_truth, version="release-2024-11") -> 1.0 | 0.0
    reward(task, response, ground_truth, version, verifier_reward=10.0) -> float
    extract_response(decoded) -> str
    validate_ground_truth(task, ground_truth) -> str | None

``task`` is the RLVR row's ``dataset`` field, matched case-insensitively ("gsm8k",
"MATH", "ifeval"). ``version`` selects release-era behaviour (open-instruct 3dd7a07da,
quirks included; see each module's docstring) or the ``corrected`` verifiers.

Release dispatch facts reproduced here: the reward is ``verifier_reward`` (10) when
verified, else 0; a ``None`` ground truth scores 0. Deviations: an empty-string ground
truth also scores 0 (release GSM8K would have matched an empty/number-free response
against it); unknown tasks raise ``UnknownVerifierError`` instead of silently scoring 0
(the runner should reject such rows up front, see ``validate_ground_truth``); verifier
exceptions that aborted the release reward computation score 0 instead (ifeval counts
them in ``ifeval.RELEASE_ERRORS``).
"""

from __future__ import annotations

import difflib

from . import gsm8k as _gsm8k
from . import ifeval as _ifeval
from . import math as _math

VERSIONS = ("release-2024-11", "corrected")
TASKS = ("gsm8k", "math", "ifeval")
ASSISTANT_MARKER = "<|assistant|>\n"
_MODULES = {"gsm8k": _gsm8k, "math": _math, "ifeval": _ifeval}

__all__ = ["VERSIONS", "TASKS", "UnknownVerifierError", "score", "reward",
           "extract_response", "validate_ground_truth"]


class UnknownVerifierError(ValueError):
    """Unknown task or version; the message names the nearest valid choice."""


def _unknown(kind: str, value, valid: tuple[str, ...]) -> UnknownVerifierError:
    guess = difflib.get_close_matches(str(value).lower(), valid, n=1, cutoff=0.0)
    hint = f"; did you mean {guess[0]!r}?" if guess else ""
    return UnknownVerifierError(f"unknown {kind} {value!r}{hint} (valid: {', '.join(valid)})")


def _task(task) -> str:
    name = str(task).lower() if task is not None else ""
    if name not in _MODULES:
        raise _unknown("verifier", task, TASKS)
    return name


def _version(version) -> str:
    if version not in VERSIONS:
        raise _unknown("verifier version", version, VERSIONS)
    return version


def extract_response(decoded: str) -> str:
    """Text after the last ``"<|assistant|>\\n"`` (unchanged if the marker is absent).

    Release decoded prompt+response together and scored only this tail. The verifiers
    apply it themselves (and strip), so passing either form to ``score`` is fine.
    """
    idx = decoded.rfind(ASSISTANT_MARKER)
    return decoded if idx < 0 else decoded[idx + len(ASSISTANT_MARKER):]


def score(task: str, response: str, ground_truth, version: str = "release-2024-11") -> float:
    """1.0 if ``response`` is verified against ``ground_truth`` for ``task``, else 0.0."""
    module = _MODULES[_task(task)]
    version = _version(version)
    if ground_truth is None or (isinstance(ground_truth, str) and ground_truth == ""):
        return 0.0
    if response is None:
        response = ""
    fn = module.score_release if version == "release-2024-11" else module.score_corrected
    return float(fn(str(response), ground_truth))


def reward(task: str, response: str, ground_truth, version: str = "release-2024-11",
           verifier_reward: float = 10.0) -> float:
    return verifier_reward * score(task, response, ground_truth, version)


def validate_ground_truth(task: str, ground_truth) -> str | None:
    """One-line description of what is wrong with a fixture row's ground truth, or None."""
    module = _MODULES[_task(task)]
    if ground_truth is None:
        return f"{_task(task)} ground truth is missing (None)"
    if isinstance(ground_truth, str) and ground_truth == "":
        return f"{_task(task)} ground truth is empty"
    return module.validate_ground_truth(ground_truth)
