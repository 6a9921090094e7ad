"""The smoke profile: what a CPU miniature of each recorded stage changes, and why.

Everything not listed here is kept as recorded: loss and reduction, masking,
chat template, schedule shape, optimizer settings, clipping, seed and the
batch semantics (per-device size where the loss reduction depends on it).
Each entry becomes a deviation in the run record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.data.fixtures import FIXTURE_FILES, FIXTURES_ROOT

FIXTURES = FIXTURES_ROOT  # runner/data/fixtures.py owns the root (and REPRO_FIXTURES) and each file's schema

SMALL_DATA = "fixture data is small; the miniature needs more signal per step"
LR_REASON = "a ~300k-parameter miniature does not move at the recorded LR within a one-minute run"
ONE_PROCESS = "miniature runs as one CPU process (the layout is kept by `repro plan` and --launcher accelerate)"
SHORT_SEQ = "fixture examples are short; a small context keeps the miniature fast"

# (family, stage) -> canonical key -> (smoke value, reason)
OVERRIDES: dict[tuple[str, str], dict[str, tuple[Any, str]]] = {
    ("tulu3", "sft"): {
        "num_processes": (1, ONE_PROCESS), "num_machines": (1, ONE_PROCESS),
        "gradient_accumulation_steps": (8, "effective batch 8 from 1 process with per-device 1 kept (sum loss)"),
        "learning_rate": (2e-3, LR_REASON),
        "max_seq_length": (96, SHORT_SEQ),
    },
    ("tulu3", "dpo"): {
        "num_processes": (1, ONE_PROCESS), "num_machines": (1, ONE_PROCESS),
        "gradient_accumulation_steps": (8, "effective batch 8 pairs from 1 process, per-device 1 kept"),
        "learning_rate": (1e-3, LR_REASON),
        "max_seq_length": (96, SHORT_SEQ),
        "epochs": (2, SMALL_DATA),
    },
    ("tulu3", "rm"): {
        "num_processes": (1, ONE_PROCESS), "num_machines": (1, ONE_PROCESS),
        "gradient_accumulation_steps": (8, "effective batch 8 pairs from 1 process, per-device 1 kept"),
        "learning_rate": (1e-3, LR_REASON),
        "max_seq_length": (96, SHORT_SEQ), "max_prompt_length": (96, SHORT_SEQ),
        "epochs": (6, SMALL_DATA),
    },
    ("tulu3", "rlvr"): {
        "learning_rate": (3e-4, LR_REASON),
        "response_length": (24, "fixture answers are a few tokens; short rollouts keep CPU generation fast"),
        "max_seq_length": (160, SHORT_SEQ), "max_prompt_length": (128, SHORT_SEQ),
        "total_episodes": (1600, "100 PPO steps of 16 prompts: about a minute on CPU"),
        "per_device_batch_size": (4, "micro-batches of 4 rollouts (the recorded 2 or 1 only changes memory use)"),
        "warmup_ratio": (0.0, "kept"),
    },
    ("smollm2", "pretrain"): {
        "num_processes": (1, ONE_PROCESS),
        "per_device_batch_size": (8, "8 sequences per step"),
        "max_seq_length": (64, SHORT_SEQ),
        "train_steps": (240, "a miniature run; WSD shape kept at the same proportions"),
        "warmup_steps": (12, "warmup keeps its place at the start; 2000 steps would exceed the miniature run"),
    },
    ("smollm2", "sft"): {
        "num_processes": (1, ONE_PROCESS), "num_machines": (1, ONE_PROCESS),
        "per_device_batch_size": (4, "kept"),
        "gradient_accumulation_steps": (2, "effective batch 8 from 1 process"),
        "max_seq_length": (96, SHORT_SEQ),
    },
    ("smollm2", "dpo"): {
        "num_processes": (1, ONE_PROCESS), "num_machines": (1, ONE_PROCESS),
        "gradient_accumulation_steps": (4, "effective batch 8 pairs from 1 process"),
        "learning_rate": (5e-4, LR_REASON),
        "max_seq_length": (96, SHORT_SEQ), "max_prompt_length": (48, SHORT_SEQ),
    },
}



def _fixture(rel: str) -> tuple[str, str]:
    return rel, FIXTURE_FILES[rel]


# Fixture files standing in for each published dataset (same schema, tiny and learnable).
FIXTURE_FOR: dict[str, tuple[str, str]] = {
    "allenai/tulu-3-sft-mixture": _fixture("tulu3/tulu-3-sft-mixture.jsonl"),
    "allenai/llama-3.1-tulu-3-8b-preference-mixture": _fixture("tulu3/tulu-3-8b-preference-mixture.jsonl"),
    "allenai/llama-3.1-tulu-3-70b-preference-mixture": _fixture("tulu3/tulu-3-8b-preference-mixture.jsonl"),
    "allenai/llama-3.1-tulu-3-405b-preference-mixture": _fixture("tulu3/tulu-3-8b-preference-mixture.jsonl"),
    "allenai/RLVR-GSM-MATH-IF-Mixed-Constraints": _fixture("tulu3/rlvr-gsm-math-if.jsonl"),
    "allenai/RLVR-MATH": _fixture("tulu3/rlvr-gsm-math-if.jsonl"),
    "allenai/ultrafeedback_binarized_cleaned": _fixture("tulu3/ultrafeedback_binarized_cleaned-test_prefs.jsonl"),
    "HuggingFaceTB/smoltalk": _fixture("smollm2/smoltalk.jsonl"),
    "HuggingFaceTB/smol-smoltalk": _fixture("smollm2/smoltalk.jsonl"),
    "HuggingFaceH4/ultrafeedback_binarized": _fixture("smollm2/ultrafeedback_binarized-train_prefs.jsonl"),
}
HELDOUT_FOR: dict[tuple[str, str], tuple[str, str]] = {
    ("tulu3", "rm"): _fixture("tulu3/ultrafeedback_binarized_cleaned-test_prefs.jsonl"),
    ("tulu3", "rlvr"): _fixture("tulu3/rlvr-eval.jsonl"),
    ("smollm2", "dpo"): _fixture("smollm2/ultrafeedback_binarized-test_prefs.jsonl"),
    ("smollm2", "pretrain"): _fixture("smollm2/pretrain/heldout.jsonl"),
}
PRETRAIN_COMPONENTS = ("web", "code", "math", "cosmopedia", "long")

MINIATURE = {"hidden_size": 64, "num_layers": 4}
TOKENIZER_VOCAB = 384


def fixture_paths() -> dict[str, Path]:
    """dataset name -> the fixture file (or directory) standing in for it; recorded as dataset versions."""
    out = {name: FIXTURES / rel for name, (rel, _schema) in FIXTURE_FOR.items()}
    out["smollm2-corpus"] = FIXTURES / "smollm2" / "pretrain"  # the unreleased corpus: the component files
    return out
