"""Miniature models: what they keep, what they change, deterministic builds, sizes."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM, LlamaForSequenceClassification

from runner.models import (
    LLAMA31_8B,
    SMOLLM2_1_7B,
    SMOLLM2_135M,
    SMOLLM2_360M,
    ArchitectureSpec,
    build_model,
    build_reward_model,
    count_parameters,
    miniature,
    recorded_config,
)

SPECS = {"smollm2-135m": SMOLLM2_135M, "smollm2-360m": SMOLLM2_360M, "smollm2-1.7b": SMOLLM2_1_7B,
         "llama-3.1-8b": LLAMA31_8B}


def test_recorded_smollm2_135m_parameter_count_from_shapes():
    config = recorded_config(SMOLLM2_135M)
    assert count_parameters(config) == 134_515_008
    assert config.rope_parameters["rope_theta"] == 100000.0 and config.tie_word_embeddings


@pytest.mark.parametrize("spec, expected", [
    (SMOLLM2_360M, 361_821_120), (SMOLLM2_1_7B, 1_711_376_384), (LLAMA31_8B, 8_030_261_248)])
def test_recorded_parameter_counts(spec, expected):
    assert count_parameters(recorded_config(spec)) == expected


def test_formula_matches_instantiated_model():
    config, _ = miniature(LLAMA31_8B, vocab_size=392)
    assert count_parameters(config) == count_parameters(build_model(config, 0))
    with torch.device("meta"):
        meta = LlamaForCausalLM(recorded_config(SMOLLM2_135M))
    assert count_parameters(meta) == 134_515_008


@pytest.mark.parametrize("name", sorted(SPECS))
def test_miniature_keeps_architecture(name):
    spec = SPECS[name]
    config, deviations = miniature(spec, vocab_size=384, pad_token_id=2)
    assert config.num_attention_heads // config.num_key_value_heads == spec.gqa_ratio
    assert config.num_attention_heads % config.num_key_value_heads == 0
    assert config.num_attention_heads * config.head_dim == config.hidden_size
    assert config.head_dim % 2 == 0  # RoPE
    assert config.tie_word_embeddings == spec.tie_word_embeddings
    assert config.rope_parameters["rope_theta"] == spec.rope_theta
    assert (config.rms_norm_eps, config.hidden_act) == (spec.rms_norm_eps, "silu")
    assert config.pad_token_id == 2 and config.vocab_size == 384

    by_key = {d["key"]: d for d in deviations}
    for d in deviations:
        assert set(d) == {"key", "recorded", "miniature", "reason"} and d["reason"]
        assert d["recorded"] != d["miniature"]
        assert getattr(config, d["key"]) == d["miniature"]
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size", "max_position_embeddings"):
        assert by_key[key]["recorded"] == getattr(spec, key)
    # Nothing that defines the architecture is listed as changed.
    assert not {"rope_theta", "tie_word_embeddings", "rms_norm_eps", "hidden_act"} & set(by_key)
    # Every recorded value that differs is listed.
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "head_dim", "vocab_size", "max_position_embeddings"):
        recorded = spec.resolved_head_dim if key == "head_dim" else getattr(spec, key)
        assert (key in by_key) == (recorded != getattr(config, key))

    model = build_model(config, seed=0)
    assert 100_000 <= count_parameters(model) <= 400_000
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == spec.tie_word_embeddings


def test_miniature_layouts():
    c135, _ = miniature(SMOLLM2_135M, 384)
    assert (c135.num_attention_heads, c135.num_key_value_heads, c135.head_dim) == (9, 3, 8)
    c17, d17 = miniature(SMOLLM2_1_7B, 384)
    assert c17.num_attention_heads == c17.num_key_value_heads == 4 and c17.hidden_size == 64  # MHA stays MHA
    assert not any(d["key"] == "hidden_size" and "target" in d["reason"] for d in d17)
    c8, _ = miniature(LLAMA31_8B, 392)
    assert (c8.num_attention_heads, c8.num_key_value_heads, c8.hidden_size) == (4, 1, 64)
    bigger, _ = miniature(SMOLLM2_135M, 384, hidden_size=96, num_layers=4, intermediate_size=256)
    assert bigger.num_hidden_layers == 4 and bigger.intermediate_size == 256
    assert bigger.num_attention_heads // bigger.num_key_value_heads == 3


def test_spec_from_registry_style_mapping():
    spec = ArchitectureSpec.from_mapping({
        "model_type": {"value": "llama", "source": "x"}, "hidden_size": {"value": 576, "source": "x"},
        "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "vocab_size": 49152, "rope_theta": 100000.0, "tie_word_embeddings": True,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "hidden_act": "silu", "head_dim": None})
    assert spec == SMOLLM2_135M.__class__(**{**SMOLLM2_135M.__dict__, "head_dim": None})
    assert spec.resolved_head_dim == 64
    with pytest.raises(ValueError, match="not a multiple"):
        ArchitectureSpec(64, 128, 2, 4, 3, 100, 1e4, True, 128, 1e-5)


def test_build_model_is_deterministic_and_leaves_global_rng_alone():
    config, _ = miniature(SMOLLM2_135M, 384)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_model(config, seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_model(config, seed=7)
    c = build_model(config, seed=8)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["model.embed_tokens.weight"], c.state_dict()["model.embed_tokens.weight"])


def test_save_pretrained_roundtrip(tmp_path):
    config, _ = miniature(SMOLLM2_135M, 384, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = build_model(config, seed=3)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, local_files_only=True)
    assert type(loaded) is LlamaForCausalLM
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    ids = torch.tensor([[1, 5, 9, 42, 7, 2]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded.config.num_key_value_heads == config.num_key_value_heads
    assert loaded.config.rope_parameters["rope_theta"] == 100000.0


def test_reward_model_head_and_dropout():
    config, _ = miniature(LLAMA31_8B, 392, pad_token_id=391)
    before = config.to_dict()
    rm = build_reward_model(config, seed=1)
    assert config.to_dict() == before  # the caller's config is left alone
    assert isinstance(rm, LlamaForSequenceClassification) and rm.config.num_labels == 1
    assert rm.score.weight.shape == (1, config.hidden_size) and rm.score.bias is None
    # N(0, 1/sqrt(hidden + 1)): 64 draws, so only a loose check of the scale
    std = rm.score.weight.std().item()
    assert 0.5 / math.sqrt(65) < std < 1.5 / math.sqrt(65)
    assert all(m.p == 0.0 for m in rm.modules() if isinstance(m, torch.nn.Dropout))
    assert rm.config.attention_dropout == 0.0
    again = build_reward_model(config, seed=1)
    assert torch.equal(rm.score.weight, again.score.weight)
    ids = torch.tensor([[5, 6, 7, 391, 391], [5, 6, 7, 8, 9]])
    with torch.no_grad():
        scores = rm(input_ids=ids).logits
    assert scores.shape == (2, 1)
    assert count_parameters(rm) == count_parameters(config) - 392 * 64 + 64
