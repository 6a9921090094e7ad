"""Dataset mixer semantics by code version (facts/tulu3.md §5.1)."""

import numpy as np
import pytest

from runner.data.mixer import (
    MIXER_ORDER_DEVIATION,
    head_select_indices,
    hf_shuffle_order,
    mix_head,
    mix_release_json,
    mix_release_list,
)

SOURCES = {"a": [{"id": f"a{i}", "messages": [], "extra": i} for i in range(10)],
           "b": [{"id": f"b{i}", "messages": [], "extra": i} for i in range(4)]}
load = SOURCES.__getitem__


def ids(rows):
    return [r["id"] for r in rows]


def test_shuffle_matches_hf_datasets():
    datasets = pytest.importorskip("datasets")
    for n in (1, 7, 100):
        d = datasets.Dataset.from_list([{"i": i} for i in range(n)]).shuffle(seed=42)
        assert [r["i"] for r in d] == hf_shuffle_order(n, 42)
    assert MIXER_ORDER_DEVIATION is None


def test_release_list_fractions():
    order_a = hf_shuffle_order(10)
    rows = mix_release_list([("a", "0.5"), ("b", "1")], load)  # "1" is a fraction: 100%
    assert ids(rows) == [f"a{i}" for i in order_a[:5]] + [f"b{i}" for i in hf_shuffle_order(4)]
    assert len(mix_release_list([("a", "0.25")], load)) == 2  # floor(2.5)
    assert len(mix_release_list([("a", "1.0"), ("b", "0.0")], load)) == 10


def test_release_list_counts_and_errors():
    rows = mix_release_list([("a", "3"), ("b", "1")], load)  # 3 > 1: all counts, so "1" is one row
    assert ids(rows) == [f"a{i}" for i in hf_shuffle_order(10)[:3]] + [f"b{hf_shuffle_order(4)[0]}"]
    with pytest.raises(ValueError, match="fractions and counts"):
        mix_release_list([("a", "3"), ("b", "0.5")], load)
    with pytest.raises(ValueError, match="source has 4"):
        mix_release_list([("b", "5")], load)
    with pytest.raises(ValueError):
        mix_release_list([("a", "x")], load)
    with pytest.raises(ValueError):
        mix_release_list([("a", "-1")], load)
    with pytest.raises(ValueError):
        mix_release_list([], load)


def test_release_list_columns():
    rows = mix_release_list([("b", "1.0")], load, columns=["messages"])
    assert all(set(r) == {"messages"} for r in rows)


def test_release_json():
    assert ids(mix_release_json({"a": 3}, load)) == ["a0", "a1", "a2"]  # > 1.0: first int(v) rows, no shuffle
    assert ids(mix_release_json({"a": 0.3, "b": 1.0}, load)) == ["a0", "a1", "a2", "b0", "b1", "b2", "b3"]
    assert ids(mix_release_json({"b": 1}, load)) == ["b0", "b1", "b2", "b3"]  # 1 is not > 1.0: 100%
    assert ids(mix_release_json({"a": 2}, load, shuffle=True)) == [f"a{i}" for i in hf_shuffle_order(10)[:2]]
    with pytest.raises(ValueError):
        mix_release_json({"b": 5}, load)
    with pytest.raises(ValueError):
        mix_release_json({"b": "1.0"}, load)


def test_head_semantics():
    # int = absolute count: "1" means one row
    assert len(mix_head([("a", "1")], load)) == 1
    # proportion > 1.0: full passes in order + seeded extras without replacement
    rows = mix_head([("b", "2.5")], load)
    extra = np.random.RandomState(42).choice(4, size=2, replace=False).tolist()
    assert ids(rows) == ["b0", "b1", "b2", "b3"] * 2 + [f"b{i}" for i in extra]
    assert len(set(ids(rows[8:]))) == 2
    assert len(mix_head([("a", "1.0")], load)) == 10
    assert ids(mix_head([("a", 1.0)], load)) == [f"a{i}" for i in range(10)]
    assert len(mix_head([("a", "0.3"), ("b", 2)], load)) == 5
    assert head_select_indices(3, 0) == []
    with pytest.raises(ValueError):
        head_select_indices(0, 2)
    with pytest.raises(ValueError):
        mix_head([("a", "-0.5")], load)
