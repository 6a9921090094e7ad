"""Stage wiring of the recorded-code semantics (issue 14 items 1-4): what each stage logs and how it sizes
its schedule, checked on hand-made inputs without training a model."""

from types import SimpleNamespace

import pytest
import torch

from runner.stages import common, rlvr
from runner.stages.dpo import reward_metrics


def test_dpo_tulu3_logs_accuracy_of_micro_batch_means():
    # Rewards β(p − r) per pair: chosen (3, −0.5, −0.5), rejected 0. Per pair 1/3 are right; the mean
    # chosen reward 2/3 beats the mean rejected 0, so open-instruct logs 1.0 (semantics.md quirk 10).
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
    plan = SimpleNamespace(family=family, stage=stage, deviations=[], hp=lambda k, d=None: hps.get(k, d))
    return SimpleNamespace(plan=plan, world=world, max_updates=None)


def test_tulu3_sft_schedule_sized_from_the_unsharded_data():
    ctx = _ctx("tulu3", "sft", 64, per_device_batch_size=1, gradient_accumulation_steps=2, epochs=2,
               warmup_ratio=0.03, learning_rate=5e-6, lr_scheduler="linear")
    cfg = common.loop_config(ctx, 939_344)
    assert cfg.total_updates == 14_678  # what 64 processes actually run
    assert cfg.schedule_length == 939_344  # what the scheduler was built with (not 14,678·64 = 939,392)
    assert cfg.warmup_steps == 28_180
    assert cfg.steps_per_update == 64


def test_smollm2_and_single_process_schedules_unchanged():
    ctx = _ctx("smollm2", "sft", 1, per_device_batch_size=4, gradient_accumulation_steps=2, epochs=1,
               warmup_ratio=0.1, learning_rate=1e-3, lr_scheduler="cosine")
    cfg = common.loop_config(ctx, 101)
    assert (cfg.total_updates, cfg.schedule_length, cfg.steps_per_update, cfg.warmup_steps) == (13, 13, 1, 2)


def test_wsd_stage_without_min_lr_keeps_the_peak():
    ctx = _ctx("smollm2", "pretrain", 1, learning_rate=1e-3, lr_scheduler="wsd")
    cfg = common.loop_config(ctx, None, total_updates=30)
    assert cfg.wsd["min_lr"] is None  # → the peak inside build_schedule (nanotron's default)
