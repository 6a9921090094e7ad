"""The named plan changes of runner.plan: what each one sets, which deviations it records, what it refuses.

Pure plan arithmetic (no model, no database): `repro run` reaches all of them, and the CLI tests check them
there; these pin the contract the command and the launchers rely on."""

from __future__ import annotations

import pytest

from registry.errors import ReproError
from registry.recipes import load_recipes
from runner import plan as plans


def _plan(recipe: str = "tulu3-8b", stage: str = "sft", profile: str = "recorded"):
    return plans.resolve(load_recipes(), recipe, stage, profile, {})


def _deviation(plan, key: str) -> dict:
    found = [d for d in plan.deviations if d["key"] == key]
    assert len(found) == 1, plan.deviations
    return found[0]


def test_limit_updates_is_the_one_carrier_and_none_clears_it():
    plan = _plan()
    assert plans.max_updates(plan) is None
    plans.limit_updates(plan, 3)
    assert plans.max_updates(plan) == 3 and plan.to_json()["extra"]["max_updates"] == 3  # it is in run.json
    plans.limit_updates(plan, None)  # a resume without --max-steps runs to the end
    assert plans.max_updates(plan) is None and "max_updates" not in plan.extra


def test_spread_over_processes_keeps_the_effective_batch_and_records_it():
    plan = _plan(profile="smoke")
    micro = (plan.hp("num_processes", 1) or 1) * plan.hp("gradient_accumulation_steps", 1)
    plans.spread_over_processes(plan, 2)
    assert plan.hp("num_processes") == 2
    assert plan.hp("num_processes") * plan.hp("gradient_accumulation_steps") == micro
    assert _deviation(plan, "num_processes")["value"] == 2
    assert _deviation(plan, "gradient_accumulation_steps")["value"] == micro // 2


def test_spread_over_processes_refuses_a_count_that_changes_the_batch():
    plan = _plan(profile="smoke")
    micro = (plan.hp("num_processes", 1) or 1) * plan.hp("gradient_accumulation_steps", 1)
    before = [dict(d) for d in plan.deviations]
    with pytest.raises(ReproError, match="do not divide over"):
        plans.spread_over_processes(plan, micro + 1)
    assert plan.deviations == before  # refused before anything changed


def test_attach_inputs_records_only_substitutes():
    plan = _plan()
    plans.attach_inputs(plan, {"init": {"checkpoint": "base", "path": "/m", "substituted": True, "substitutes": "base"},
                               "reference": {"checkpoint": "base", "path": "/r"}})
    assert set(plan.inputs) == {"init", "reference"}
    assert _deviation(plan, "input.init")["value"] == "/m"
    assert not [d for d in plan.deviations if d["key"] == "input.reference"]


def test_use_ray_with_and_without_an_address():
    plan = _plan("tulu3-8b", "rlvr")
    plans.use_ray(plan)
    assert plan.extra["use_ray"] is True and "ray_address" not in plan.extra
    plans.use_ray(plan, "10.0.0.1:6379")
    assert plan.extra["ray_address"] == "10.0.0.1:6379"


def test_recorded_options_refuse_the_smoke_profile_and_unknown_values():
    reg = load_recipes()
    with pytest.raises(ReproError, match="--precision applies to the recorded profile"):
        plans.apply_recorded_options(_plan(profile="smoke"), reg, None, "fp32", None, False, "local")
    with pytest.raises(ReproError, match="unknown --precision 'fp8'"):
        plans.apply_recorded_options(_plan(), reg, None, "fp8", None, False, "local")
    with pytest.raises(ReproError, match="unknown --device 'tpu'"):
        plans.apply_recorded_options(_plan(), reg, None, None, "tpu", False, "local")


def test_device_cpu_folds_the_processes_into_accumulation(monkeypatch):
    monkeypatch.delenv("REPRO_HUB_MIRROR", raising=False)
    plan = _plan()
    procs, ga = plan.hp("num_processes"), plan.hp("gradient_accumulation_steps", 1)
    assert procs > 1  # the recorded Tülu SFT runs on several processes
    plans.apply_recorded_options(plan, load_recipes(), None, "fp32", "cpu", False, "local")
    assert plan.extra["device"] == "cpu" and plan.hp("precision") == "fp32"
    assert plan.hp("num_processes") == 1 and plan.hp("gradient_accumulation_steps") == ga * procs
    keys = {d["key"] for d in plan.deviations}
    assert {"device", "precision", "num_processes", "gradient_accumulation_steps"} <= keys
