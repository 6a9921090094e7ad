"""The plan changes the stages make (runner.plan, "Changes the stages make"): what each sets and which
deviations it records. Pure plan arithmetic; the stage runs (golden curves, recorded-profile tests) reach
them all, these pin the contract."""

from __future__ import annotations

from registry.recipes import load_recipes
from runner import plan as plans


def _plan(recipe: str = "tulu3-8b", stage: str = "sft", profile: str = "smoke"):
    return plans.resolve(load_recipes(), recipe, stage, profile, {})


def _keys(plan) -> list[str]:
    return [d["key"] for d in plan.deviations]


def test_record_miniature_lists_each_shrunk_value_and_the_init_once():
    plan = _plan()
    shrunk = [{"key": "hidden_size", "recorded": 4096, "miniature": 64, "reason": "miniature"}]
    plans.record_miniature(plan, shrunk, "offline on CPU")
    plans.record_miniature(plan, shrunk, "offline on CPU")  # a stage that builds it again adds nothing
    assert _keys(plan).count("model.hidden_size") == 1 and _keys(plan).count("init") == 1
    init = [d for d in plan.deviations if d["key"] == "init"][0]
    assert (init["value"], init["reason"]) == ("random miniature init", "offline on CPU")


def test_pretraining_random_init_is_not_a_deviation():
    plan = _plan("smollm2-135m", "pretrain")
    plans.use_recorded_init_std(plan)
    assert plan.model["spec"]["initializer_range"] == plan.hp("init_std")
    plans.record_miniature(plan, [{"key": "initializer_range", "recorded": 0.02, "miniature": 0.04,
                                   "reason": "miniature"}], "random init, as recorded")
    plans.random_init_as_recorded(plan)
    assert "init" not in _keys(plan) and "model.initializer_range" not in _keys(plan)


def test_stop_early_keeps_the_planned_count_as_recorded_value():
    plan = _plan()
    plans.stop_early(plan, 40, 3)
    [d] = [d for d in plan.deviations if d["key"] == "optimizer_steps"]
    assert (d["recorded"], d["value"]) == (40, 3)


def test_inputs_from_the_hub_and_the_mirror():
    plan = _plan(profile="recorded")
    plan.inputs = {"init": {"checkpoint": "x"}}
    plans.input_on_hub(plan, "init", "org/model")
    assert plan.inputs["init"] == {"checkpoint": "x", "hub_id": "org/model", "revision": None}
    plans.input_in_mirror(plan, "init", "/m/org/model", "abc", None)
    assert plan.inputs["init"]["mirror"] == "/m/org/model" and plan.inputs["init"]["mirror_hash"] == "abc"


def test_model_loading_facts_go_to_extra():
    plan = _plan(profile="recorded")
    plans.record_attention(plan, "sdpa")
    plans.record_embedding_resize(plan, 128256, 128264, 128257)
    assert plan.extra["attn_implementation"] == "sdpa"
    assert plan.extra["embedding_resize"] == {"from": 128256, "to": 128264, "tokenizer": 128257}


def test_ray_actors_differ_from_the_recorded_layout_once():
    plan = _plan(stage="rlvr", profile="recorded")
    plans.record_ray_actors(plan)
    plans.record_ray_actors(plan)
    assert _keys(plan).count("actor_gpus") == 1 and _keys(plan).count("generation_engine") == 1
    plans.record_orchestration(plan, "ray: 1 learner actor, 1 generation-engine actor")
    assert plan.to_json()["extra"]["orchestration"].startswith("ray")
