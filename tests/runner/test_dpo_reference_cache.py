"""The cached DPO reference, batched by padded width, has the live reference's bits (#14 item 17)."""

from __future__ import annotations

import pytest
import torch

from registry.recipes import load_recipes
from runner.plan import resolve


@pytest.fixture(scope="module")
def tulu_pairs():
    from runner.data.tokenizer import fixture_tokenizer
    from runner.stages.dpo import encode_pairs
    from runner.stages.kit import fresh_causal_lm, set_determinism, train_rows

    plan = resolve(load_recipes(), "tulu3-8b", "dpo", "smoke")
    set_determinism(0)
    tokenizer = fixture_tokenizer(plan)
    model = fresh_causal_lm(plan, tokenizer, "test").eval()
    pairs, _ = encode_pairs(plan, train_rows(plan)[:96], tokenizer)
    return model, pairs, tokenizer.pad_token_id


def _per_pair(model, pairs, pad):
    from runner.stages.dpo import concatenated_logps

    out = {}
    for j, p in enumerate(pairs):
        c, r = concatenated_logps(model, [p], pad, True)
        out[j] = (c[0], r[0])
    return out


@torch.no_grad()
def test_batched_cache_equals_one_pair_per_forward_bit_for_bit(tulu_pairs):
    from runner.stages import dpo

    model, pairs, pad = tulu_pairs
    widths = {max(len(p["chosen_input_ids"]), len(p["rejected_input_ids"])) for p in pairs}
    assert len(widths) < len(pairs)  # some forwards really batch several pairs
    calls = []
    real = dpo.concatenated_logps

    def counting(model, batch, *a, **k):
        calls.append(len(batch))
        return real(model, batch, *a, **k)

    dpo.concatenated_logps = counting
    try:
        cache = dpo.reference_cache(model, pairs, list(range(len(pairs))), pad, True)
    finally:
        dpo.concatenated_logps = real
    expected = _per_pair(model, pairs, pad)
    assert sorted(cache) == sorted(expected)
    for j in expected:
        assert torch.equal(cache[j][0], expected[j][0]) and torch.equal(cache[j][1], expected[j][1]), j
    assert max(calls) > 1 and len(calls) < 2 * len(pairs)  # batched, not a forward per pair


@torch.no_grad()
def test_a_batch_size_dependent_kernel_falls_back_to_single_pairs(tulu_pairs, monkeypatch):
    """Where batching changes the bits (simulated), the group is recomputed one pair per forward."""
    from runner.stages import dpo

    model, pairs, pad = tulu_pairs
    real = dpo.concatenated_logps

    def skewed(model, batch, *a, **k):
        c, r = real(model, batch, *a, **k)
        return (c + 1e-3, r) if len(batch) > 1 else (c, r)

    monkeypatch.setattr(dpo, "concatenated_logps", skewed)
    cache = dpo.reference_cache(model, pairs, list(range(len(pairs))), pad, True)
    monkeypatch.setattr(dpo, "concatenated_logps", real)
    expected = _per_pair(model, pairs, pad)
    assert all(torch.equal(cache[j][0], expected[j][0]) for j in expected)
