"""RLVR through Ray: a learner actor and a generation-engine actor on a local 2-CPU cluster.

Same seed, same reward trajectory as the in-process stage: every random draw in the loop is seeded per
step (sampling: seed·100003 + step; PPO permutations: seed·7919 + step), both actors run one torch
thread, and the engine receives the weights in the recorded async order (one update behind), so the
metrics are not just close but identical.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from registry.errors import ReproError

STEPS = 3


def test_check_address_refuses_a_dead_address_quickly():
    from runner.stages.rlvr_ray import check_address

    started = time.monotonic()
    with pytest.raises(ReproError) as info:
        check_address("127.0.0.1:1")
    assert time.monotonic() - started < 6
    message = str(info.value)
    assert "127.0.0.1:1" in message and "\n" not in message


def test_check_address_rejects_malformed():
    from runner.stages.rlvr_ray import check_address

    with pytest.raises(ReproError, match="HOST:PORT"):
        check_address("127.0.0.1:notaport")


def test_cli_dead_ray_address_is_one_line_exit_2(cli):
    code, out, err = cli("run", "tulu3-8b", "--stage", "rlvr", "--profile", "smoke", "--ray-address", "127.0.0.1:1")
    assert code == 2
    assert "does not answer" in err and len(err.strip().splitlines()) == 1


def _run(cli, *args: str) -> dict:
    code, out, err = cli("run", "tulu3-8b", *args, "--profile", "smoke", "--json")
    assert code == 0, err
    return json.loads((Path(json.loads(out)["run_dir"]) / "run.json").read_text())


@pytest.mark.slow
def test_ray_rlvr_reproduces_in_process_trajectory(cli, monkeypatch):
    ray = pytest.importorskip("ray")
    import runner.stages.rlvr_ray as rlvr_ray

    for stage in ("sft", "dpo", "rm"):  # the inputs of the rlvr stage, as short as they can be
        _run(cli, "--stage", stage, "--max-steps", "2")
    local = _run(cli, "--stage", "rlvr", "--max-steps", str(STEPS))

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(rlvr_ray.ROOT), os.environ.get("PYTHONPATH")])))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=100_000_000,
             log_to_driver=False, runtime_env={"env_vars": {"REPRO_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1",
                                                            "HF_HUB_OFFLINE": "1"}})
    try:
        remote = _run(cli, "--stage", "rlvr", "--max-steps", str(STEPS), "--ray")
    finally:
        ray.shutdown()
    assert remote["status"] == "succeeded"
    assert remote["plan"]["extra"]["orchestration"].startswith("ray")
    assert [s["reward_mean"] for s in remote["steps"]] == [s["reward_mean"] for s in local["steps"]]
    assert remote["steps"] == local["steps"]  # every metric, exactly
    assert remote["final_metrics"] == local["final_metrics"]
