"""The one validation layer for canonical hyperparameter values.

Every value a run can receive passes through `check_value`: recipes.json (at every load, so `repro validate`
too), `--set` on the command line, and the plan the runner resolves. A value is refused before anything is
written, with one line naming the key, the value and what would be valid. `check_stage_key` refuses a key
that does not apply to the stage (a `dpo_beta` on an SFT stage would otherwise be carried along unused).

Bounds are what the code that consumes the value can run with, not guesses of good settings: a learning
rate must be positive and finite, Adam's betas lie in [0, 1), a warmup ratio in [0, 1]. Counts are integers
of at most 2**31 − 1, so that no size computed from them overflows a tensor index.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any

MAX_COUNT = 2**31 - 1
MAX_SEED = 2**32 - 1  # numpy's and torch's seeding both accept [0, 2**32)

ALL_STAGES = ("pretrain", "sft", "dpo", "rm", "rlvr")
TUNING = ("sft", "dpo", "rm", "rlvr")


@dataclass(frozen=True)
class Spec:
    kind: str  # "int", "float", "bool", "choice"
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself is excluded
    high_open: bool = False  # high itself is excluded
    choices: tuple[str, ...] = ()
    stages: tuple[str, ...] = ALL_STAGES

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(self.choices)
        if self.kind == "bool":
            return "true or false"
        noun = "an integer" if self.kind == "int" else "a finite number"
        if self.kind == "int" and self.low in (0, 1) and not self.low_open:
            noun = "a positive integer" if self.low == 1 else "a non-negative integer"
            return noun + (f" (at most {_num(self.high)})" if self.high is not None else "")
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{noun} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{noun} {'>' if self.low_open else '≥'} {_num(self.low)}"
        return noun


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


def _count(low: int = 1, stages: tuple[str, ...] = ALL_STAGES) -> Spec:
    return Spec("int", low, MAX_COUNT, stages=stages)


_POSITIVE = Spec("float", 0, None, low_open=True)
_NON_NEGATIVE = Spec("float", 0, None)
_UNIT = Spec("float", 0, 1)
_FINITE = Spec("float")

SPECS: dict[str, Spec] = {
    "learning_rate": _POSITIVE,
    "lr_scheduler": Spec("choice", choices=("linear", "cosine", "constant", "wsd")),
    "warmup_ratio": _UNIT,
    "warmup_steps": _count(0),
    "decay_fraction": Spec("float", 0, 1, stages=("pretrain",)),
    "decay_style": Spec("choice", choices=("linear", "1-sqrt", "cosine"), stages=("pretrain",)),
    "decay_start_step": _count(0, ("pretrain",)),
    "decay_steps": _count(0, ("pretrain",)),
    "min_learning_rate": Spec("float", 0, None, stages=("pretrain",)),
    "weight_decay": _NON_NEGATIVE,
    "adam_beta1": Spec("float", 0, 1, high_open=True),
    "adam_beta2": Spec("float", 0, 1, high_open=True),
    "adam_epsilon": _POSITIVE,
    "max_grad_norm": _NON_NEGATIVE,  # 0 turns clipping off
    "epochs": _count(1, ("sft", "dpo", "rm")),
    "max_seq_length": _count(),
    "max_prompt_length": _count(1, ("dpo", "rm", "rlvr")),
    "per_device_batch_size": _count(),
    "gradient_accumulation_steps": _count(),
    "num_processes": _count(),
    "num_machines": _count(),
    "effective_batch_size": _count(),
    "batch_tokens": _count(1, ("pretrain",)),
    "train_tokens": Spec("int", 1, None, stages=("pretrain",)),  # trillions: beyond 2**31 by design
    "train_steps": _count(1, ("pretrain",)),
    "seed": Spec("int", 0, MAX_SEED),
    "loss_reduction": Spec("choice", choices=("sum", "mean"), stages=("sft",)),
    "dpo_loss_type": Spec("choice", choices=("dpo", "dpo_norm", "sigmoid", "simpo"), stages=("dpo",)),
    "dpo_beta": Spec("float", 0, None, low_open=True, stages=("dpo",)),
    "label_smoothing": Spec("float", 0, 0.5, high_open=True, stages=("dpo",)),
    "kl_beta": Spec("float", 0, None, stages=("rlvr",)),
    "kl_estimator": Spec("choice", choices=("kl1", "kl2", "kl3"), stages=("rlvr",)),
    "response_length": _count(1, ("rlvr",)),
    "temperature": Spec("float", 0, None, low_open=True, stages=("rlvr",)),
    "total_episodes": _count(1, ("rlvr",)),
    "num_ppo_epochs": _count(1, ("rlvr",)),
    "num_mini_batches": _count(1, ("rlvr",)),
    "samples_per_prompt": _count(1, ("rlvr",)),
    "gamma": Spec("float", 0, 1, stages=("rlvr",)),
    "lam": Spec("float", 0, 1, stages=("rlvr",)),
    "cliprange": Spec("float", 0, None, low_open=True, stages=("rlvr",)),
    "cliprange_value": Spec("float", 0, None, low_open=True, stages=("rlvr",)),
    "vf_coef": Spec("float", 0, None, stages=("rlvr",)),
    "verifier_reward": Spec("float", stages=("rlvr",)),
    "non_stop_penalty": Spec("bool", stages=("rlvr",)),
    "penalty_reward_value": Spec("float", stages=("rlvr",)),
    "reward_model_multiplier": Spec("float", 0, None, stages=("rlvr",)),
    "chat_template": Spec("choice", choices=("tulu", "chatml"), stages=TUNING),
    "packing": Spec("bool", stages=("sft",)),
    "gradient_checkpointing": Spec("bool"),
    "precision": Spec("choice", choices=("bf16", "fp16", "fp32")),
    "init_std": Spec("float", 0, None, low_open=True, stages=("pretrain",)),
}


def problem(key: str, value: Any, *, descriptive: bool = False) -> str | None:
    """What is wrong with `value` for `key`, or None when it is valid.

    `descriptive`: the value is another source's statement (a recipes.json alternative), not something a run
    uses: its type and range are still checked, but a choice key may hold free text ("chatml with default
    system prompt") there.
    """
    spec = SPECS.get(key)
    if spec is None:
        guess = difflib.get_close_matches(key, SPECS, n=1)
        return "not a canonical hyperparameter key" + (f"; did you mean {guess[0]!r}?" if guess else "")
    if value is None:
        return None
    if spec.kind == "bool":
        return None if isinstance(value, bool) else f"must be {spec.describe()}"
    if spec.kind == "choice":
        if not isinstance(value, str):
            return f"must be {spec.describe()}"
        if value in spec.choices or descriptive:
            return None
        guess = difflib.get_close_matches(value, spec.choices, n=1, cutoff=0.0)
        return f"must be {spec.describe()}" + (f"; did you mean {guess[0]!r}?" if guess else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be {spec.describe()}"
    if spec.kind == "int" and not isinstance(value, int):
        return f"must be {spec.describe()}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"must be {spec.describe()}"
    if spec.low is not None and (value < spec.low or (spec.low_open and value == spec.low)):
        return f"must be {spec.describe()}"
    if spec.high is not None and (value > spec.high or (spec.high_open and value == spec.high)):
        return f"must be {spec.describe()}"
    return None


def stage_problem(key: str, stage: str) -> str | None:
    """Why `key` does not apply to `stage`, naming the keys that do; None when it applies."""
    spec = SPECS.get(key)
    if spec is None or stage in spec.stages:
        return None
    return f"does not apply to the {stage} stage (valid keys: {', '.join(keys_for(stage))})"


def keys_for(stage: str) -> list[str]:
    return [k for k, s in SPECS.items() if stage in s.stages]


def check_value(key: str, value: Any, stage: str | None = None) -> None:
    """Raise ValueError(one line) when `value` is not valid for `key` (on `stage`, when given)."""
    issue = problem(key, value) or (stage_problem(key, stage) if stage else None)
    if issue:
        raise ValueError(f"{key}={_show(value)}: {issue}")


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."
