"""Checks for runner/schedules.py against the recorded stepping semantics."""

import math

import pytest
import torch

from runner import schedules as S

# SmolLM2-135M (smollm2.md §2.1): peak 3e-3, min 0, W 2000, decay 1.6M → 2.0M, linear.
P, W, START, D, T = 3e-3, 2000, 1_600_000, 400_000, 2_000_000


@pytest.fixture
def smol():
    return S.wsd(P, 0.0, W, START, D, "linear")


@pytest.mark.parametrize(
    "step, lr",
    [
        (0, 0.0),  # warmup starts at 0
        (1, P * 1 / 2000),  # 1.5e-6
        (2000, P),  # warmup is inclusive (s ≤ W): peak first reached at step W
        (2001, P),
        (1_599_999, P),
        (1_600_000, P),  # decay: m + (p−m)·(D − 0)/D = p
        (1_999_999, P * 1 / 400_000),  # (D − (D−1))/D = 1/D → 7.5e-9
        (2_000_000, 0.0),  # after S+D: min_lr
    ],
)
def test_smollm2_135m_wsd(smol, step, lr):
    # LambdaLR: lr = p · (v/p)
    assert P * smol(step) == pytest.approx(lr, rel=1e-12, abs=0.0)


def test_smollm2_last_update_lr(smol):
    # nanotron steps the scheduler after optimizer.step(): update k uses λ(k−1)
    assert S.lr_at_update(smol, 1, base_lr=P) == 0.0  # first update at lr 0
    assert S.lr_at_update(smol, 2000, base_lr=P) == pytest.approx(P * 1999 / 2000)
    assert S.lr_at_update(smol, 2001, base_lr=P) == pytest.approx(P)  # peak first used at W+1
    # last update k = T uses λ(T−1) = 3e-3 / 400,000 = 7.5e-9, not 0
    assert S.lr_at_update(smol, T, base_lr=P) == pytest.approx(7.5e-9, rel=1e-12)


def test_wsd_torch_scheduler_matches_lambda():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=P)
    # SmolLM2's configs set min_decay_lr: 0 (unset, nanotron would hold the peak)
    sched = S.build_scheduler(opt, "wsd", T, W, decay_start=START, decay_steps=D, min_lr=0.0)
    seen = []
    for _ in range(3):
        seen.append(opt.param_groups[0]["lr"])  # lr used by this update
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.0, P / 2000, 2 * P / 2000], rel=1e-12)
    assert P * sched.lr_lambdas[0](1_999_999) == pytest.approx(7.5e-9, rel=1e-12)


def test_nanotron_default_decay_resolution():
    # quirk 2: decay_steps omitted → T − W − S when both are set
    assert S.nanotron_wsd_phases(T, W, START, None) == (START, T - W - START)
    # decay_start omitted → S = W, D = T − W
    assert S.nanotron_wsd_phases(T, W, None, None) == (W, T - W)
    assert S.nanotron_wsd_phases(T, W, START, D) == (START, D)


def test_wsd_decay_styles():
    # p = 1, m = 0.1, W = 10, S = 20, D = 100; at s = 45, x = (45−20)/100 = 0.25
    kw = dict(peak=1.0, min_lr=0.1, warmup_steps=10, decay_start=20, decay_steps=100)
    lin = S.wsd(decay_style="linear", **kw)
    cos = S.wsd(decay_style="cosine", **kw)
    sq = S.wsd(decay_style="1-sqrt", **kw)
    assert lin(45) == pytest.approx(0.1 + 0.9 * 0.75)  # 1 − x
    assert cos(45) == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2)
    assert sq(45) == pytest.approx(0.1 + 0.9 * 0.5)  # 1 − √0.25
    for f in (lin, cos, sq):
        assert f(5) == pytest.approx(0.5)  # warmup 5/10
        assert f(15) == 1.0  # stable
        assert f(20) == pytest.approx(1.0)  # decay start
        assert f(120) == pytest.approx(0.1)  # min after S+D
    with pytest.raises(ValueError):
        S.wsd(decay_style="exp", **kw)


def test_wsd_factor_is_value_over_peak():
    f = S.wsd(0.5, 0.1, 0, 0, 10, "linear")
    # W = 0: step 0 still falls in the inclusive warmup branch → p·0/max(0,1) = 0
    assert f(0) == 0.0
    assert f(5) == pytest.approx((0.1 + 0.4 * 5 / 10) / 0.5)
    assert f(10) == pytest.approx(0.1 / 0.5)


def test_wsd_lr_squared_bug():
    # quirk 3: W = 0 and D = 0 → lambda returns p itself → effective lr p²
    f = S.wsd(0.1, 0.0, 0, 0, 0)
    assert 0.1 * f(7) == pytest.approx(0.01)
    g = S.wsd(0.1, 0.0, 0, 0, 0, reproduce_lr_squared_bug=False)
    assert 0.1 * g(7) == pytest.approx(0.1)


def test_warmup_rounding_conventions():
    assert S.warmup_steps_for(1000, 0.03, "open-instruct") == 30
    assert S.warmup_steps_for(1000, 0.03, "hf-trainer") == 30
    # 1001·0.03 = 30.03: floor vs ceil
    assert S.warmup_steps_for(1001, 0.03, "open-instruct") == 30
    assert S.warmup_steps_for(1001, 0.03, "hf-trainer") == 31
    # float artefact kept on purpose: 100·0.07 = 7.000000000000001 → HF Trainer warms up 8 steps
    assert S.warmup_steps_for(100, 0.07, "open-instruct") == 7
    assert S.warmup_steps_for(100, 0.07, "hf-trainer") == 8
    with pytest.raises(ValueError):
        S.warmup_steps_for(100, 0.1, "deepspeed")


def test_linear_endpoints():
    f = S.linear_warmup_decay(100, 10)
    assert [f(0), f(5), f(10), f(55), f(100), f(120)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0, 0.0])
    g = S.linear_warmup_decay(100, 0)
    assert g(0) == 1.0 and g(100) == 0.0


def test_cosine_endpoints():
    f = S.cosine_warmup(100, 10)
    assert [f(0), f(5), f(10), f(55), f(100)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0], abs=1e-12)


def test_constant():
    assert S.constant()(0) == 1.0
    f = S.constant(4)
    assert [f(0), f(2), f(4), f(10**6)] == [0.0, 0.5, 1.0, 1.0]


def test_lr_at_update_accelerate_n8():
    # open-instruct under accelerate with 8 processes: T = 800 counted on the un-sharded loader,
    # warmup int(800·0.1) = 80; update k uses sched((k−1)·8)
    f = S.linear_warmup_decay(800, S.warmup_steps_for(800, 0.1))
    assert S.lr_at_update(f, 1, 8) == 0.0
    assert S.lr_at_update(f, 2, 8) == pytest.approx(8 / 80)
    assert S.lr_at_update(f, 11, 8) == pytest.approx(1.0)  # sched(80): peak
    assert S.lr_at_update(f, 100, 8, base_lr=2e-5) == pytest.approx(2e-5 * (800 - 792) / 720)
    curve = S.lr_curve(f, 100, 8, base_lr=2e-5)
    assert len(curve) == 100 and curve[0] == 0.0
    assert curve[99] == pytest.approx(S.lr_at_update(f, 100, 8, base_lr=2e-5))
    with pytest.raises(ValueError):
        S.lr_at_update(f, 0)


def test_build_scheduler_linear_and_cosine():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([w], lr=1.0)
    sched = S.build_scheduler(opt, "linear", 10, 2)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.0, 0.5, 1.0, 7 / 8])
    opt2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    assert isinstance(S.build_scheduler(opt2, "cosine", 10, 0), torch.optim.lr_scheduler.LambdaLR)
    with pytest.raises(ValueError):
        S.build_scheduler(opt2, "poly", 10, 0)


def test_matches_transformers_schedules():
    """Cross-check against the installed transformers implementation, step by step."""
    tr = pytest.importorskip("transformers.optimization")

    def factors(make, steps, *args):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return [make(opt, *args).lr_lambdas[0](s) for s in steps]

    steps = range(0, 131)
    for total, warm in ((120, 0), (120, 7), (100, 100)):
        assert factors(tr.get_linear_schedule_with_warmup, steps, warm, total) == [
            S.linear_warmup_decay(total, warm)(s) for s in steps
        ]
        assert factors(tr.get_cosine_schedule_with_warmup, steps, warm, total) == [
            S.cosine_warmup(total, warm)(s) for s in steps
        ]
        assert factors(tr.get_constant_schedule_with_warmup, steps, warm) == [
            S.constant(warm)(s) for s in steps
        ]


def test_wsd_min_lr_defaults_to_the_peak():
    # nanotron LRSchedulerArgs: min_decay_lr unset → the learning rate, so the "decay" stays at the peak.
    fn = S.build_schedule("wsd", 30, 5, peak=1e-3)
    assert 1e-3 * fn(10) == pytest.approx(1e-3, rel=1e-12)
    assert 1e-3 * fn(29) == pytest.approx(1e-3, rel=1e-12)
    # an explicit 0 (the SmolLM2 configs) still decays: (25 − 5)/25 of the peak at step 10
    assert 1e-3 * S.build_schedule("wsd", 30, 5, peak=1e-3, min_lr=0.0)(10) == pytest.approx(8e-4, rel=1e-12)


def test_open_instruct_schedule_length_from_the_unsharded_dataloader():
    # Tülu 3 SFT: 939,344 examples, pd 1, GA 2, 64 processes, 2 epochs (quirk 5).
    T, n = S.open_instruct_schedule("sft", 939_344, 1, 2, 64, 2)
    assert (T, n) == (939_344, 64)
    assert S.warmup_steps_for(T, 0.03) == 28_180
    # the sharded update count, for contrast: 2·⌈⌈939,344/64⌉/2⌉ = 14,678 updates, 64 scheduler steps each
    assert 14_678 * 64 == 939_392
    # reward_modeling.py: total_episodes // batch_size, times the epochs once more; one step per update
    assert S.open_instruct_schedule("rm", 1000, 2, 4, 8, 1) == (1000 // 64, 1)
    assert S.open_instruct_schedule("rm", 1000, 2, 4, 8, 2) == ((2000 // 64) * 2, 1)
