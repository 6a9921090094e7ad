"""Stage wiring of the recorded-code semantics (issue 14 items 1-4): what each stage logs and how it sizes
its schedule, checked on hand-made inputs without training a model."""

from types import SimpleNamespace

import pytest
import torch

from runner.stages import kit, rlvr
from runner.stages.dpo import reward_metrics


def test_dpo_tulu3_logs_accuracy_of_micro_batch_means():
    # Rewards β(p − r) per pair: chosen (3, −0.5, −0.5), rejected 0. Per pair 1/3 are right; the mean
    # chosen reward 2/3 beats the mean rejected 0, so open-instruct logs 1.0 (docs/semantics.md quirk 10).
    chosen, rejected = torch.tensor([3.0, -0.5, -0.5]), torch.zeros(3)
    tulu = reward_metrics(chosen, rejected, "tulu3")
    assert tulu["rewards_accuracy"] == 1.0
    assert tulu["rewards_average"] == pytest.approx((2 / 3 + 0) / 2)
    assert tulu["rewards_margin"] == pytest.approx(2 / 3)
    # TRL (SmolLM2) logs the per-pair accuracy, and no average
    smol = reward_metrics(chosen, rejected, "smollm2")
    assert smol["rewards_accuracy"] == pytest.approx(1 / 3)
    assert "rewards_average" not in smol


def test_rlvr_stage_passes_min_response_length():
    hp = {"verifier_reward": 10, "reward_model_multiplier": 0.0, "non_stop_penalty": True,
          "penalty_reward_value": -1.0, "min_response_length": 3}
    scores = rlvr.final_scores(lambda k, d=None: hp.get(k, d), torch.tensor([1.0]), torch.tensor([0.5]),
                               torch.tensor([True]), torch.tensor([1]))
    assert scores.tolist() == [-1.0]


def _ctx(family: str, stage: str, world: int, **hps):
    plan = SimpleNamespace(family=family, stage=stage, deviations=[], hp=lambda k, d=None: hps.get(k, d),
                           seed=hps.get("seed", 1))
    return SimpleNamespace(plan=plan, world=world, max_updates=None)


def test_tulu3_sft_schedule_sized_from_the_unsharded_data():
    ctx = _ctx("tulu3", "sft", 64, per_device_batch_size=1, gradient_accumulation_steps=2, epochs=2,
               warmup_ratio=0.03, learning_rate=5e-6, lr_scheduler="linear")
    cfg = kit.loop_config(ctx, 939_344)
    assert cfg.total_updates == 14_678  # what 64 processes actually run
    assert cfg.schedule_length == 939_344  # what the scheduler was built with (not 14,678·64 = 939,392)
    assert cfg.warmup_steps == 28_180
    assert cfg.steps_per_update == 64


def test_smollm2_and_single_process_schedules_unchanged():
    ctx = _ctx("smollm2", "sft", 1, per_device_batch_size=4, gradient_accumulation_steps=2, epochs=1,
               warmup_ratio=0.1, learning_rate=1e-3, lr_scheduler="cosine")
    cfg = kit.loop_config(ctx, 101)
    assert (cfg.total_updates, cfg.schedule_length, cfg.steps_per_update, cfg.warmup_steps) == (13, 13, 1, 2)


def test_wsd_stage_without_min_lr_keeps_the_peak():
    ctx = _ctx("smollm2", "pretrain", 1, learning_rate=1e-3, lr_scheduler="wsd")
    cfg = kit.loop_config(ctx, None, total_updates=30)
    assert cfg.wsd["min_lr"] is None  # → the peak inside build_schedule (nanotron's default)


# ---------------------------------------------------------------- TRL 0.12 padding (huggingface/trl#2330) --

def test_trl012_width_by_hand():
    # pair A: prompt 5, completions 2 (chosen) and 1; pair B: prompt 3, completions 4 and 3 (rows ordered
    # chosen A, chosen B, rejected A, rejected B). Padded width P + C = 5 + 4 = 9, longest row 7 < 9:
    # an empty column exists and the cut keeps 7 − 1 = 6 columns.
    from runner.stages.dpo import trl012_width

    assert trl012_width([5, 3, 5, 3], [2, 4, 1, 3], None) == 6
    assert trl012_width([5, 3, 5, 3], [2, 4, 1, 3], 5) == 5  # then the max_length cut
    # one pair per device: the same prompt on both rows, so the longest row fills the width; nothing cut
    assert trl012_width([4, 4], [3, 1], None) == 7
    # the longest prompt also has the longest completion: no empty column
    assert trl012_width([5, 3, 5, 3], [4, 2, 1, 3], None) == 9


class _Bigram(torch.nn.Module):
    """logits[t] = table[ids[t]]: a model whose log-probs are a fixed function of the previous token."""

    def __init__(self, vocab: int = 11) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0),
                                                    dtype=torch.float64))

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.table[input_ids])


def _pair(prompt: list[int], chosen: list[int], rejected: list[int]) -> dict:
    out = {}
    for side, comp in (("chosen", chosen), ("rejected", rejected)):
        out[f"{side}_input_ids"] = prompt + comp
        out[f"{side}_labels"] = [-100] * len(prompt) + comp
        out[f"{side}_attention_mask"] = [1] * (len(prompt) + len(comp))
        out[f"{side}_prompt_length"], out[f"{side}_completion_length"] = len(prompt), len(comp)
    return out


def test_trl012_padding_drops_the_longest_rows_last_token():
    from runner.stages.dpo import concatenated_logps

    model = _Bigram()
    a = _pair([1, 2, 3, 4, 5], [6, 7], [8])
    b = _pair([1, 2, 3], [6, 7, 8, 9], [9, 8, 7])
    pc, pr = concatenated_logps(model, [a, b], 0, False, None)
    full_c, full_r = concatenated_logps(model, [a, b], 0, False)
    logp = torch.log_softmax(model.table, -1)
    # chosen A (length 7) loses its last token 7 (predicted from 6); chosen B (length 7) loses 9 (from 8)
    assert float(pc[0]) == pytest.approx(float(full_c[0] - logp[6, 7]))
    assert float(pc[1]) == pytest.approx(float(full_c[1] - logp[8, 9]))
    assert torch.equal(pr, full_r)  # the shorter rows (6 tokens) are untouched
    # one pair per device: nothing changes
    one_c, one_r = concatenated_logps(model, [b], 0, False, None)
    assert torch.equal(one_c, full_c[1:]) and torch.equal(one_r, full_r[1:])


def test_trl_padding_switch_is_recorded_and_switchable():
    from runner import switches

    assert switches.resolve("smollm2", "dpo", "") == {"trl_2330_padding": True}
    assert switches.resolve("smollm2", "dpo", "trl_2330_padding=off") == {"trl_2330_padding": False}
    assert "trl_2330_padding" not in switches.resolve("tulu3", "dpo", "")
    assert switches.resolve("tulu3", "rlvr", "checker_error_scores_0=off") == {
        "empty_ground_truth_scores_0": True, "checker_error_scores_0": False}
    from registry.errors import ReproError

    with pytest.raises(ReproError, match="unknown switch"):
        switches.resolve("smollm2", "dpo", "trl_padding=off")


# ---------------------------------------------------------------- logged metrics in real smoke runs --

def test_smoke_runs_log_the_recorded_metrics(in_smoke_home):
    """Issue 14 item 1: the keys each recorded trainer logged reach the run's steps."""
    steps = {key: record["steps"] for key, record in in_smoke_home.items()}
    tulu_dpo, smol_dpo = steps[("tulu3-8b", "dpo")], steps[("smollm2-135m", "dpo")]
    assert all("rewards_average" in s and 0.0 <= s["rewards_accuracy"] <= 1.0 for s in tulu_dpo)
    assert all("rewards_average" not in s for s in smol_dpo)
    assert all("reward_margin" in s for s in steps[("tulu3-8b", "rm")])
    rlvr_steps = steps[("tulu3-8b", "rlvr")]
    assert all("ratio" in s and "rlhf_reward" in s for s in rlvr_steps)
    # ρ is exactly 1 on the first PPO epoch's padding and near 1 elsewhere: a diluted mean near 1
    assert all(0.5 < s["ratio"] < 2.0 for s in rlvr_steps)
    # rlhf_reward = score − β·Σ kl per sequence, averaged: it equals score_mean − β·kl
    beta = 0.05
    for s in rlvr_steps:
        assert abs(s["rlhf_reward"] - (s["score_mean"] - beta * s["kl"])) < 1e-4 * max(1.0, abs(s["rlhf_reward"]))
