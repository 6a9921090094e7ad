"""RLVR orchestrated with Ray, as open-instruct's ppo_vllm_thread_ray_gtrl.py did.

Two actors: a learner (policy, value, reference and reward models, both optimizers; it scores and
trains) and a generation engine (the "vLLM engine": a copy of the policy that samples). After every
update the learner's policy weights go to the engine through the object store. The recorded run was
asynchronous: the engine generates step t+1's batch while the learner trains on step t, so the engine
always samples with the policy one update behind; that is exactly the in-process order in
runner/stages/rlvr.py, so with the same seed the reward trajectory is the same (every random draw is
seeded per step, and both actors run with one torch thread).

The math is rlvr.py's: both drivers use its `Learner` and `GenerationEngine`; only the orchestration
differs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from registry.errors import ReproError

ROOT = Path(__file__).resolve().parent.parent
CHECK_TIMEOUT_S = 5.0


def check_address(address: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Raise a one-line ReproError unless something answers at the Ray address within `timeout` seconds.

    Only a TCP connect to the GCS (or Ray Client) port: cheap, and it fails fast where `ray.init` would
    retry for a minute before giving up.
    """
    if address in ("auto", "local"):
        return
    target = address.split("://", 1)[-1].rstrip("/")
    host, sep, port_text = target.rpartition(":")
    if not sep:
        host, port_text = target, "10001" if address.startswith("ray://") else "6379"
    try:
        port = int(port_text)
    except ValueError:
        raise ReproError(f"invalid --ray-address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379)") from None
    if not host or not 0 < port < 65536:
        raise ReproError(f"invalid --ray-address {address!r}: expected HOST:PORT (e.g. 10.0.0.1:6379)")
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, socket.timeout) else (exc.strerror or type(exc).__name__)
        raise ReproError(f"Ray cluster at {address} does not answer ({reason} after at most {timeout:g} s); "
                         "start it with `ray start --head` or fix --ray-address") from None


def wants_ray(plan) -> bool:
    return bool(plan.extra.get("ray_address") or plan.extra.get("use_ray"))


# ---------------------------------------------------------------- the driver


def _connect(plan) -> bool:
    """Join the named cluster, or start a small local one; True when this call started Ray (and stops it)."""
    try:
        import ray
    except ImportError:
        raise ReproError("RLVR through Ray needs ray (pip install 'repro[ray]')") from None
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # The actors import runner from this source tree; the stage determinism needs one torch thread there too.
    env_vars = {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                "REPRO_TORCH_THREADS": os.environ.get("REPRO_TORCH_THREADS", "1"), "OMP_NUM_THREADS": "1"}
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "REPRO_HOME", "TOKENIZERS_PARALLELISM"):
        if key in os.environ:
            env_vars[key] = os.environ[key]
    address = plan.extra.get("ray_address")
    # log_to_driver=False: actor output would otherwise interleave with `--json` on stdout.
    if address:
        check_address(address)
        ray.init(address=address, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    elif on_gpus(plan):
        # The recorded launch on one node: a local instance with every GPU and CPU Ray detects.
        ray.init(include_dashboard=False, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=100_000_000, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    return True


def on_gpus(plan) -> bool:
    """The recorded profile on a CUDA machine: each actor holds a GPU (the smoke profile and --device cpu: CPUs)."""
    if plan.profile != "recorded" or plan.extra.get("device") == "cpu":
        return False
    import torch

    return torch.cuda.is_available()


def actor_resources(plan) -> dict[str, float]:
    return {"num_cpus": 1, "num_gpus": 1} if on_gpus(plan) else {"num_cpus": 1}


def record_actor_layout(plan) -> None:
    """This driver trains with one learner actor and one engine actor whatever the layout recorded: the
    difference from the recorded learner count (DeepSpeed ZeRO-3 over the actor GPUs) and from its vLLM
    engines is a deviation, recorded once."""
    layout = plan.layout
    if layout.get("actor_gpus") and layout["actor_gpus"] != 1:
        plan.deviate("actor_gpus", layout["actor_gpus"], 1, "runner.ray_rlvr trains with one learner actor")
    if layout.get("vllm_engines"):
        plan.deviate("generation_engine", f"{layout['vllm_engines']} vLLM engine(s), TP "
                     f"{layout.get('vllm_tensor_parallel_size') or 1}", "1 engine actor sampling with transformers",
                     "no vLLM engine in runner.ray_rlvr: the engine actor samples with the policy copy")


def run(ctx) -> dict[str, Any]:
    """The rlvr stage with a learner actor and a generation-engine actor (same math, same record)."""
    import ray

    from runner.stages.rlvr import GenerationEngine, Learner, finish, record_step, setup

    plan, hp = ctx.plan, ctx.plan.hp
    prep = setup(ctx)
    batch = hp("effective_batch_size")
    started_ray = _connect(plan)
    try:
        if plan.profile == "recorded":
            record_actor_layout(plan)
        resources = actor_resources(plan)
        learner = ray.remote(**resources)(Learner).remote(plan, prep.paths, prep.total_opt, prep.warmup)
        engine = ray.remote(**resources)(GenerationEngine).remote(plan, prep.paths["policy"])
        state_dir, saved = str(ctx.record.state_dir), ctx.record.artifacts.get("state")
        start = 0
        if ctx.resume and saved:
            start, engine_weights = ray.get(learner.load_state.remote(state_dir, saved))
            ray.get(engine.load_weights.remote(engine_weights))
            ctx.record.steps = [s for s in ctx.record.steps if s["step"] <= start]
        else:
            ctx.record.steps = []
        pending = learner.weights.remote()  # the weights the engine receives next
        upcoming = (engine.generate.remote([r["ids"] for r in prep.rows_for(start, batch)], start)
                    if start < prep.steps else None)
        for step in range(start, prep.steps):
            responses = upcoming
            # Async mode: the engine gets the weights of the last update and, while the learner trains on
            # this step's samples, already generates the next step's batch with them.
            engine.load_weights.remote(pending)
            upcoming = (engine.generate.remote([r["ids"] for r in prep.rows_for(step + 1, batch)], step + 1)
                        if step + 1 < prep.steps else None)
            metrics = ray.get(learner.train_step.remote(step, prep.rows_for(step, batch), responses))
            pending = learner.weights.remote()
            record_step(ctx, metrics, step, prep.steps,
                        lambda s: ray.get(learner.save_state.remote(state_dir, s, engine.weights.remote())))
        from runner.stagekit import load_causal_lm

        policy = load_causal_lm(Path(prep.paths["policy"]))
        policy.load_state_dict(ray.get(learner.weights.remote()))
    finally:
        if started_ray:
            ray.shutdown()
    plan.extra["orchestration"] = "ray: 1 learner actor, 1 generation-engine actor"
    return finish(ctx, prep, policy)
