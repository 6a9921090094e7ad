"""Dataset-mixer semantics of open-instruct, by code version (facts/tulu3.md §5.1).

Three behaviours share the same literal syntax but mean different things, so a
recipe records which one it used:

- `mix_release_list`: release era `--dataset_mixer_list name v ...`
  (`utils.get_datasets`, finetune.py / dpo_tune.py at 3dd7a07da).
- `mix_release_json`: release era `--dataset_mixer '{...}'` for RM/PPO
  (`utils.combine_dataset`, shuffle=False by default).
- `mix_head`: HEAD `dataset_transformation.load_dataset_configs` (proportions may
  exceed 1.0; ints are absolute counts).

Row order: upstream shuffles with HF datasets' `Dataset.shuffle(seed=42)`, which is
`numpy.random.default_rng(seed).permutation(len)` applied as an index mapping. We
compute that permutation directly with numpy, so the order matches HF datasets
exactly without building an Arrow table (tests compare against `datasets` when it
is installed). Hence no deviation: MIXER_ORDER_DEVIATION is None.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np

Rows = list[dict]
Loader = Callable[[str], Rows]
MIXER_ORDER_DEVIATION: str | None = None


def hf_shuffle_order(n: int, seed: int = 42) -> list[int]:
    """Index order of `datasets.Dataset.shuffle(seed=seed)` on n rows."""
    return np.random.default_rng(seed).permutation(n).tolist()


def _keep(rows: Rows, columns: Sequence[str] | None) -> Rows:
    # Upstream removes every column not in columns_to_keep (so schemas concatenate).
    if columns is None:
        return [dict(r) for r in rows]
    return [{k: r[k] for k in columns if k in r} for r in rows]


def parse_release_value(literal: str | int | float) -> int | float:
    """Release-era list literal: a "." makes it a float fraction, otherwise an int."""
    text = str(literal).strip()
    try:
        return float(text) if "." in text else int(text)
    except ValueError:
        raise ValueError(f"dataset mixer value {literal!r} is neither an int nor a float") from None


def mix_release_list(pairs: Sequence[tuple[str, str]], load: Loader, seed: int = 42,
                     columns: Sequence[str] | None = None) -> Rows:
    """`--dataset_mixer_list` as open-instruct 3dd7a07da read it.

    If any value is > 1, every value is a row count and all must be ints (upstream
    raises NotImplementedError otherwise; here ValueError); else every value is a
    fraction, so "1" means 100%. Each source is shuffled (seed 42) and its first
    count / int(frac * len) rows are taken; the train parts are concatenated in the
    order given, without a further shuffle.
    """
    if not pairs:
        raise ValueError("dataset mixer list is empty")
    values = [parse_release_value(v) for _, v in pairs]
    if any(v < 0 for v in values):
        raise ValueError("dataset mixer values cannot be negative")
    is_count = any(v > 1 for v in values)
    if is_count and not all(isinstance(v, int) for v in values):
        bad = [f"{n}={v}" for (n, v), p in zip(pairs, values) if not isinstance(p, int)]
        raise ValueError(f"cannot mix fractions and counts (a value > 1 makes all values counts): {', '.join(bad)}")
    out: Rows = []
    for (name, _), v in zip(pairs, values):
        rows = load(name)
        shuffled = [rows[i] for i in hf_shuffle_order(len(rows), seed)]
        n = v if is_count else int(v * len(rows))
        if n > len(rows):
            # HF `select(range(n))` fails on an index past the end; say so plainly.
            raise ValueError(f"{name}: asked for {n} rows but the source has {len(rows)}")
        out.extend(_keep(shuffled[:n], columns))
    return out


def mix_release_json(mapping: Mapping[str, float | int], load: Loader, shuffle: bool = False,
                     seed: int = 42, columns: Sequence[str] | None = None) -> Rows:
    """`--dataset_mixer '{...}'` (utils.combine_dataset): v > 1.0 -> the first int(v)
    rows, else the first int(v * len) rows; no shuffle unless asked (upstream default)."""
    if not mapping:
        raise ValueError("dataset mixer is empty")
    out: Rows = []
    for name, v in mapping.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
            raise ValueError(f"{name}: mixer value must be a non-negative number, got {v!r}")
        rows = load(name)
        if shuffle:
            rows = [rows[i] for i in hf_shuffle_order(len(rows), seed)]
        n = int(v) if v > 1.0 else int(v * len(rows))
        if n > len(rows):
            raise ValueError(f"{name}: asked for {n} rows but the source has {len(rows)}")
        out.extend(_keep(rows[:n], columns))
    return out


def head_target_size(value: str | int | float, n_rows: int) -> int:
    """HEAD rule: a float (literal with ".") is a proportion of n_rows and may exceed
    1.0; an int is an absolute count, so "1" is one row (not 100%)."""
    v = parse_release_value(value) if isinstance(value, str) else value
    if v < 0:
        raise ValueError(f"mixer value cannot be negative: {value!r}")
    return int(v * n_rows) if isinstance(v, float) else int(v)


def head_select_indices(n_rows: int, target: int, seed: int = 42) -> list[int]:
    """HEAD `select_samples`: full passes in order, then target % n extra rows drawn
    without replacement by `np.random.RandomState(seed).choice` (no pre-shuffle)."""
    if n_rows == 0:
        if target:
            raise ValueError(f"cannot take {target} rows from an empty source")
        return []
    full, extra = divmod(target, n_rows)
    idx = list(range(n_rows)) * full
    if extra:
        idx += np.random.RandomState(seed).choice(n_rows, size=extra, replace=False).tolist()
    return idx


def mix_head(pairs: Sequence[tuple[str, str | int | float]], load: Loader, seed: int = 42,
             columns: Sequence[str] | None = None) -> Rows:
    """HEAD mixer: each source up/down-sampled to its target size, concatenated in order."""
    if not pairs:
        raise ValueError("dataset mixer list is empty")
    out: Rows = []
    for name, v in pairs:
        rows = load(name)
        idx = head_select_indices(len(rows), head_target_size(v, len(rows)), seed)
        out.extend(_keep([rows[i] for i in idx], columns))
    return out


__all__ = ["mix_release_list", "mix_release_json", "mix_head", "hf_shuffle_order", "parse_release_value",
           "head_target_size", "head_select_indices", "MIXER_ORDER_DEVIATION"]
