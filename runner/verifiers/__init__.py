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
verified, else 0; a ``None`` ground truth scores 0. Unknown tasks raise
``UnknownVerifierError`` instead of silently scoring 0 (the runner rejects such rows up
front, see ``validate_ground_truth``).

Two deliberate deviations from the release, each a switch (runner/switches.py, recorded in
the run's plan; docs/semantics.md gives their replay difference):
  * ``empty_gt_scores_0`` (default on): an empty-string ground truth scores 0. Off: it is
    compared as the release compared it (GSM8K matches a number-free empty answer, MATH an
    empty candidate such as the one ``$$x$$`` yields, IFEval raises on the JSON).
  * ``checker_errors_score_0`` (default on): an exception from a release checker scores 0
    (ifeval counts it in ``ifeval.RELEASE_ERRORS``). Off: it propagates, which in the
    release aborted the whole reward computation.
The corrected verifiers always score both cases 0.
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


def score(task: str, response: str, ground_truth, version: str = "release-2024-11", *,
          empty_gt_scores_0: bool = True, checker_errors_score_0: bool = True) -> float:
    """1.0 if ``response`` is verified against ``ground_truth`` for ``task``, else 0.0.

    The two keyword switches are the release deviations of the module docstring; they only
    change the release version.
    """
    module = _MODULES[_task(task)]
    version = _version(version)
    release = version == "release-2024-11"
    if ground_truth is None:
        return 0.0
    if isinstance(ground_truth, str) and ground_truth == "" and (empty_gt_scores_0 or not release):
        return 0.0
    if response is None:
        response = ""
    if release:
        return float(module.score_release(str(response), ground_truth, raise_errors=not checker_errors_score_0))
    return float(module.score_corrected(str(response), ground_truth))


def switch_kwargs(extra: dict | None) -> dict[str, bool]:
    """``score`` keywords from a plan's recorded switches (``plan.extra``)."""
    from runner import switches

    extra = extra or {}
    return {"empty_gt_scores_0": switches.is_on(extra, "empty_ground_truth_scores_0"),
            "checker_errors_score_0": switches.is_on(extra, "checker_error_scores_0")}


def reward(task: str, response: str, ground_truth, version: str = "release-2024-11",
           verifier_reward: float = 10.0, **switch_kw: bool) -> float:
    return verifier_reward * score(task, response, ground_truth, version, **switch_kw)


def validate_ground_truth(task: str, ground_truth) -> str | None:
    """One-line description of what is wrong with a fixture row's ground truth, or None."""
    module = _MODULES[_task(task)]
    if ground_truth is None:
        return f"{_task(task)} ground truth is missing (None)"
    if isinstance(ground_truth, str) and ground_truth == "":
        return f"{_task(task)} ground truth is empty"
    return module.validate_ground_truth(ground_truth)
