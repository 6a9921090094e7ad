"""runner.layouts: recorded batch semantics kept on other GPU counts, memory verdicts, named invariants."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from registry.errors import ReproError
from registry.recipes import load_recipes
from runner.layouts import PlannedLayout, memory_per_gpu, minimum_gpus, plan_layout


@pytest.fixture(scope="module")
def reg():
    return load_recipes()


def shape(result):
    lay = result.layout
    return lay.num_processes, lay.per_device_batch_size, lay.gradient_accumulation_steps


def test_tulu3_8b_sft_on_8_gpus_keeps_128_with_pd_1(reg):
    result = plan_layout(reg, "tulu3-8b", "sft", 8)
    assert shape(result) == (8, 1, 16)
    assert result.layout.effective_batch_size == 128 and result.layout.unit == "sequences"
    assert result.feasible and not result.recorded
    names = {i.name: i for i in result.invariants}
    assert names["per_device_one_for_sum_loss"].kept and names["effective_batch"].planned == 128
    assert (result.layout.zero_stage, result.layout.offload_optimizer) == (3, False)
    assert result.layout.deepspeed_config == "stage3_no_offloading_accelerate.conf"
    assert not result.layout.gradient_checkpointing  # not recorded, not needed


def test_tulu3_8b_sft_on_64_gpus_is_the_recorded_layout(reg):
    result = plan_layout(reg, "tulu3-8b", "sft", 64)
    assert shape(result) == (64, 1, 2)
    assert result.recorded and result.changes == []
    assert result.layout.num_machines == 8
    lay = result.layout
    assert (lay.zero_stage, lay.offload_optimizer, lay.offload_params) == (3, False, False)
    assert 10 < result.memory["total_gb"] < 80  # an 8B full fine-tune with ZeRO-3 over 64 GPUs fits


def test_tulu3_70b_rlvr_on_3_nodes_keeps_the_640_prompt_rollout(reg):
    result = plan_layout(reg, "tulu3-70b", "rlvr", 24, nodes=3)
    lay = result.layout
    assert result.feasible, result.broken
    assert lay.actor_gpus * lay.local_rollout_batch_size == 640 == lay.rollout_batch
    assert (lay.actor_gpus, lay.local_rollout_batch_size) == (20, 32)
    assert lay.vllm_tensor_parallel_size == 4 and lay.vllm_engines == 1
    assert lay.actor_gpus + lay.vllm_engines * lay.vllm_tensor_parallel_size <= 24
    assert lay.local_mini_batch_size == lay.local_rollout_batch_size  # one mini-batch
    assert lay.actor_gpus_per_node == [8, 8, 4] and lay.num_machines == 3
    changed = {c["key"] for c in result.changes}
    assert {"actor_gpus", "local_rollout_batch_size", "gradient_accumulation_steps"} <= changed
    assert result.memory["vllm"]["fits"]
    # 70B + reference + 8B value/reward on 20 GPUs needs the optimizer offloaded: named as a code change
    assert lay.offload_optimizer and any("adam_offload" in w for w in result.warnings)


def test_tulu3_70b_rlvr_recorded_count_gives_the_recorded_layout(reg):
    result = plan_layout(reg, "tulu3-70b", "rlvr", 48)
    assert result.recorded
    lay = result.layout
    assert (lay.actor_gpus, lay.local_rollout_batch_size, lay.vllm_tensor_parallel_size) == (40, 16, 4)


def test_tulu3_8b_dpo_on_one_gpu_fits_only_with_offload(reg):
    result = plan_layout(reg, "tulu3-8b", "dpo", 1)
    assert shape(result) == (1, 1, 128)
    assert result.feasible
    assert result.layout.offload_optimizer and result.layout.offload_params
    assert result.layout.deepspeed_config == "stage3_offloading_accelerate.conf"
    assert result.memory["host_offload_gb_per_node"] > 100  # the 8B states and the live reference sit on the host
    assert "CPU offload" in result.memory["verdict"]


@pytest.mark.parametrize("gpus, expected", [(8, (8, 4, 32)), (64, (64, 4, 4)), (256, (256, 4, 1))])
def test_smollm2_pretrain_keeps_tokens_per_step(reg, gpus, expected):
    result = plan_layout(reg, "smollm2-1.7b", "pretrain", gpus)
    assert shape(result) == expected
    assert result.layout.unit == "tokens"
    assert result.layout.effective_batch_size == 2_097_152 and result.layout.sequences_per_step == 1024
    assert result.layout.zero_stage == 0 and result.layout.deepspeed_config is None
    assert result.recorded == (gpus == 256)


def test_405b_on_8_gpus_names_the_minimum(reg):
    need = minimum_gpus(reg, "tulu3-405b", "sft")
    assert need is not None and need > 8
    with pytest.raises(ReproError, match=rf"tulu3-405b sft needs at least {need} GPUs of 80 GB even with CPU offload "
                                         r"\(asked for 8\)"):
        plan_layout(reg, "tulu3-405b", "sft", 8)


def test_405b_memory_does_not_fit_on_8_gpus_even_with_offload(reg):
    recipe = reg.recipe("tulu3-405b")
    stage = reg.stage("tulu3-405b", "dpo")
    lay = PlannedLayout(8, 1, 1, 32, 256, "pairs", 3, True, True, True, "stage3_offloading_accelerate.conf")
    mem = memory_per_gpu(recipe.architecture, stage, lay)
    assert not mem["fits"] and not mem["host_fits"]
    assert any("vocab_size" in a for a in mem["assumptions"])  # 405B lacks it: stated, not a crash
    assert 400e9 < mem["params"] < 410e9


def test_parameter_counts_from_shapes(reg):
    from runner.layouts import shape_of

    assert shape_of(reg.recipe("smollm2-1.7b").architecture)[0].params() == 1_711_376_384  # facts/smollm2.md §1
    assert 8.0e9 < shape_of(reg.recipe("tulu3-8b").architecture)[0].params() < 8.1e9
    assert 70.0e9 < shape_of(reg.recipe("tulu3-70b").architecture)[0].params() < 71.0e9


def test_broken_batch_is_named_with_alternatives(reg):
    result = plan_layout(reg, "tulu3-8b", "sft", 3)
    assert not result.feasible and result.broken == ["effective_batch"]
    assert result.layout.effective_batch_size in (126, 129)
    gpus = {a["gpus"] for a in result.alternatives}
    assert gpus == {2, 4}
    assert all(a["layout"]["effective_batch_size"] == 128 for a in result.alternatives)


def test_too_many_gpus_for_the_batch(reg):
    result = plan_layout(reg, "tulu3-8b", "sft", 256)
    assert "effective_batch" in result.broken
    assert result.alternatives[0]["gpus"] == 128


@pytest.mark.parametrize("kwargs, message", [
    ({"gpus": 0}, "--gpus must be a positive integer"),
    ({"gpus": 10, "nodes": 3}, "do not split evenly"),
])
def test_bad_input(reg, kwargs, message):
    with pytest.raises(ReproError, match=message):
        plan_layout(reg, "tulu3-8b", "sft", **kwargs)


def test_every_recorded_layout_is_reproduced_at_its_gpu_count(reg):
    from runner.layouts import _context, _recorded

    for name, recipe in reg.recipes.items():
        for stage in recipe.stage_names:
            rec = _recorded(_context(reg, name, stage, 80.0))
            if rec is None:
                continue
            result = plan_layout(reg, name, stage, rec[1])
            assert result.recorded and result.feasible, (name, stage, result.broken, result.changes)


# ---------------------------------------------------------------- the command


def test_cli_json_is_one_document(cli):
    code, out, err = cli("plan", "tulu3-8b", "--stage", "sft", "--gpus", "8", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert (doc["layout"]["num_processes"], doc["layout"]["per_device_batch_size"],
            doc["layout"]["gradient_accumulation_steps"]) == (8, 1, 16)
    assert doc["feasible"] and doc["broken"] == []


def test_cli_table_and_nodes(cli):
    code, out, _ = cli("plan", "tulu3-70b", "--stage", "rlvr", "--gpus", "24", "--nodes", "3")
    assert code == 0 and "rollout_batch" in out and "640" in out


@pytest.mark.parametrize("args, message", [
    (["tulu3-405b", "--stage", "sft", "--gpus", "8"], "needs at least"),
    (["tulu3-8b", "--stage", "sft", "--gpus", "0"], "--gpus must be a positive integer"),
    (["tulu3-8b", "--stage", "sfx", "--gpus", "8"], "did you mean 'sft'"),
    (["tulu-8b", "--stage", "sft", "--gpus", "8"], "did you mean 'tulu3-8b'"),
])
def test_cli_bad_input_exits_2_with_one_line(cli, args, message):
    code, out, err = cli("plan", *args, "--json")
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_planner_imports_no_torch():
    probe = ("import sys, runner.layouts, runner.commands.plan; "
             "print(','.join(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def test_cli_exits_1_when_no_layout_keeps_the_invariants(cli):
    # Line 120's case: 3 GPUs cannot keep the effective batch of 128 sequences.
    code, out, err = cli("plan", "tulu3-8b", "--stage", "sft", "--gpus", "3", "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["feasible"] and doc["broken"], err
