"""RLVR orchestrated with Ray, as open-instruct's ppo_vllm_thread_ray_gtrl.py did.

Two actors: a learner (policy, value, reference and reward models, both optimizers; it scores and
trains) and a generation engine (the "vLLM engine": a copy of the policy that samples). After every
update the learner's policy weights go to the engine through the object store. The recorded run was
asynchronous: the engine generates step t+1's batch while the learner trains on step t, so the engine
always samples with the policy one update behind; that is exactly the in-process order in
runner/stages/rlvr.py, so with the same seed the reward trajectory is the same (every random draw is
seeded per step, and both actors run with one torch thread).

The math is rlvr.py's: its helpers are imported; `_ppo_update` below is its loop body, kept line for
line (see the report to the lead for the refactor that would let both paths call one function).
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path
from typing import Any

import torch

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


def wants_ray(plan) -> bool:  # noqa: ANN001
    return bool(plan.extra.get("ray_address") or plan.extra.get("use_ray"))


# ---------------------------------------------------------------- the actors (plain classes; Ray wraps them)


def _actor_setup(seed: int) -> None:
    from runner.stagekit import set_determinism

    set_determinism(seed)  # one torch thread, seeded: what makes the actors reproduce the in-process run


class GenerationEngine:
    """Holds the sampling copy of the policy; receives the learner's weights after each update."""

    def __init__(self, plan, policy_path: str) -> None:  # noqa: ANN001
        from runner.stagekit import load_causal_lm, load_tokenizer

        _actor_setup(plan.hp("seed", 0))
        self.plan = plan
        self.tokenizer = load_tokenizer(Path(policy_path), plan)
        self.model = load_causal_lm(Path(policy_path)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def generate(self, prompts: list[list[int]], step: int) -> list[list[int]]:
        from runner.generation import generate

        hp, seed = self.plan.hp, self.plan.hp("seed", 0)
        comps = generate(self.model, self.tokenizer, prompts, max_new_tokens=hp("response_length"),
                         temperature=hp("temperature", 1.0), seed=seed * 100003 + step, batch_size=len(prompts))
        return [c.response_ids for c in comps]

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}


class Learner:
    """Policy + value training, reference and reward models, scoring: everything but sampling."""

    def __init__(self, plan, paths: dict[str, str], total_opt: int, warmup: int) -> None:  # noqa: ANN001
        from runner import schedules
        from runner.stagekit import load_causal_lm, load_tokenizer
        from runner.stages.rlvr import _load_trained_head
        from runner.stages.rm import load_reward_model

        hp = plan.hp
        seed = hp("seed", 0)
        _actor_setup(seed)
        self.plan = plan
        # Same load order as rlvr.run: load_reward_model draws from its own seeded generator, but keeping
        # the order keeps any global-RNG use identical too.
        self.tokenizer = load_tokenizer(Path(paths["policy"]), plan)
        self.policy = load_causal_lm(Path(paths["policy"]))
        self.reference = load_causal_lm(Path(paths["reference"])).eval()
        self.value_model = load_reward_model(Path(paths["value"]), seed)
        _load_trained_head(self.value_model, Path(paths["value"]))
        self.reward_model = load_reward_model(Path(paths["rm"]), seed).eval()
        _load_trained_head(self.reward_model, Path(paths["rm"]))
        for frozen in (self.reference, self.reward_model):
            for p in frozen.parameters():
                p.requires_grad_(False)
        opt_kwargs = dict(lr=hp("learning_rate"), betas=(hp("adam_beta1", 0.9), hp("adam_beta2", 0.999)),
                          eps=hp("adam_epsilon", 1e-8), weight_decay=hp("weight_decay", 0.01))
        self.policy_opt = torch.optim.AdamW(self.policy.parameters(), **opt_kwargs)
        self.value_opt = torch.optim.AdamW(self.value_model.parameters(), **opt_kwargs)
        schedule = schedules.build_schedule(hp("lr_scheduler", "linear"), total_opt, warmup)
        self.policy_sched = torch.optim.lr_scheduler.LambdaLR(self.policy_opt, schedule)
        self.value_sched = torch.optim.lr_scheduler.LambdaLR(self.value_opt, schedule)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.policy.state_dict().items()}

    def load_state(self, path: str) -> int:
        state = torch.load(path, weights_only=False)
        for module, key in ((self.policy, "policy"), (self.value_model, "value")):
            module.load_state_dict(state[key])
        for obj, key in ((self.policy_opt, "policy_opt"), (self.value_opt, "value_opt"),
                         (self.policy_sched, "policy_sched"), (self.value_sched, "value_sched")):
            obj.load_state_dict(state[key])
        torch.set_rng_state(state["rng"])
        return state["step"]

    def save_state(self, path: str, step: int, generator: dict[str, torch.Tensor]) -> None:
        """The same file rlvr._save_state writes, so either path can resume the other's run."""
        objects = {"policy": self.policy, "value": self.value_model, "policy_opt": self.policy_opt,
                   "value_opt": self.value_opt, "policy_sched": self.policy_sched, "value_sched": self.value_sched}
        state = {k: o.state_dict() for k, o in objects.items()}
        state.update({"generator": generator, "step": step, "rng": torch.get_rng_state(),
                      "python_rng": random.getstate()})
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)

    def train_step(self, step: int, rows: list[dict[str, Any]], responses: list[list[int]]) -> dict[str, float]:
        return _ppo_update(self, step, rows, responses)


def _ppo_update(self: Learner, step: int, rows: list[dict[str, Any]], response_ids: list[list[int]]) -> dict[str, float]:
    """rlvr.run's loop body from the sampled responses on (the generation and weight sync are the driver's)."""
    from runner import losses, verifiers
    from runner.stages.rlvr import response_logps, rm_scores, token_values

    plan, hp, tokenizer = self.plan, self.plan.hp, self.tokenizer
    policy, value_model = self.policy, self.value_model
    seed = hp("seed", 0)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    temperature, length = hp("temperature", 1.0), hp("response_length")
    version = plan.extra.get("verifier_version") or "release-2024-11"
    batch, samples, ppo_epochs = hp("effective_batch_size"), hp("samples_per_prompt", 1), hp("num_ppo_epochs", 4)

    context = max(len(r["ids"]) for r in rows)
    responses = torch.full((len(rows), length), pad, dtype=torch.long)
    queries = torch.full((len(rows), context), pad, dtype=torch.long)
    for b, (row, comp) in enumerate(zip(rows, response_ids)):
        queries[b, context - len(row["ids"]):] = torch.tensor(row["ids"])
        responses[b, :len(comp)] = torch.tensor(comp[:length])
    responses, last, has_eos = losses.first_eos_truncation(responses, eos, pad)
    query_response = torch.cat([queries, responses], 1)
    with torch.no_grad():
        old_logp = response_logps(policy, query_response, context, pad, temperature)
        ref_logp = response_logps(self.reference, query_response, context, pad, temperature)
        old_values = token_values(value_model, query_response, context, pad)
        rm = rm_scores(self.reward_model, query_response, pad)
    texts = [tokenizer.decode(responses[b, :int(last[b]) + 1], skip_special_tokens=True) for b in range(len(rows))]
    verified = torch.tensor([verifiers.score(r["dataset"], t, r["ground_truth"], version)
                             for r, t in zip(rows, texts)])
    scores = hp("verifier_reward", 10) * verified + hp("reward_model_multiplier", 0.0) * rm
    if hp("non_stop_penalty", True):
        scores = losses.apply_non_stop_penalty(scores, has_eos, hp("penalty_reward_value", -10.0), last_index=last)
    policy_mask, value_mask = losses.ppo_masks(last, length)
    kl = losses.kl_per_token(old_logp, ref_logp, hp("kl_estimator", "kl1"))
    rewards = losses.ppo_rewards(kl, scores, last, hp("kl_beta"))
    old_values = torch.where(value_mask, old_values, torch.zeros_like(old_values))
    advantages, returns = losses.gae(rewards, old_values, hp("gamma", 1.0), hp("lam", 0.95))
    advantages = losses.whiten_advantages(advantages, policy_mask)

    pd = hp("per_device_batch_size")
    stats: dict[str, float] = {"pg_loss": 0.0, "vf_loss": 0.0, "pg_clipfrac": 0.0, "approxkl": 0.0}
    lr = self.policy_opt.param_groups[0]["lr"]
    generator_rng = torch.Generator().manual_seed(seed * 7919 + step)
    for _epoch in range(ppo_epochs):
        perm = torch.randperm(len(rows), generator=generator_rng).tolist()
        micro = [perm[i:i + pd] for i in range(0, len(perm), pd)]
        for mb in micro:
            new_logp = response_logps(policy, query_response[mb], context, pad, temperature)
            pg_loss, clipfrac, approxkl = losses.ppo_policy_loss(new_logp, old_logp[mb], advantages[mb],
                                                                  policy_mask[mb], hp("cliprange", 0.2))
            values = token_values(value_model, query_response[mb], context, pad)
            vf_loss, _ = losses.ppo_value_loss(values, old_values[mb], returns[mb], value_mask[mb],
                                               hp("cliprange_value", 0.2))
            (pg_loss / len(micro)).backward()
            (hp("vf_coef", 0.1) * vf_loss / len(micro)).backward()
            for key, value in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("pg_clipfrac", clipfrac),
                               ("approxkl", approxkl)):
                stats[key] += float(value.detach()) / (len(micro) * ppo_epochs)
        torch.nn.utils.clip_grad_norm_(policy.parameters(), hp("max_grad_norm", 1.0))
        torch.nn.utils.clip_grad_norm_(value_model.parameters(), hp("max_grad_norm", 1.0))
        self.policy_opt.step(), self.value_opt.step()
        self.policy_sched.step(), self.value_sched.step()
        self.policy_opt.zero_grad(set_to_none=True), self.value_opt.zero_grad(set_to_none=True)
    lengths = (last + 1).float()
    return {
        "step": step + 1, "episode": (step + 1) * batch * samples, "lr": lr,
        "reward_mean": float(verified.mean() * hp("verifier_reward", 10)),
        "verified_rate": float(verified.mean()), "score_mean": float(scores.mean()),
        "rm_score_mean": float(rm.mean()), "non_stop_rate": float((~has_eos).float().mean()),
        "response_length": float(lengths.mean()),
        "kl": float((kl * policy_mask).sum(1).mean()), **stats,
    }


# ---------------------------------------------------------------- the driver


def _connect(plan) -> bool:  # noqa: ANN001
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
    else:
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 object_store_memory=100_000_000, runtime_env={"env_vars": env_vars}, log_to_driver=False)
    return True


def run(ctx) -> dict[str, Any]:  # noqa: ANN001
    """The rlvr stage with a learner actor and a generation-engine actor (same record, same metrics)."""
    import ray

    from runner import schedules
    from runner.records import heartbeat
    from runner.stagekit import input_path, load_causal_lm, load_tokenizer, save_checkpoint, set_determinism, \
        write_metrics_file
    from runner.stages.rlvr import evaluate_prompts, prompt_rows
    from runner.trainer import epoch_order, fault_injection

    plan = ctx.plan
    hp = plan.hp
    seed = hp("seed", 0)
    set_determinism(seed)
    policy_path, rm_path = input_path(plan, "init"), input_path(plan, "reward_model")
    value_path = input_path(plan, "value_model") or rm_path
    if rm_path is None:
        raise ReproError(f"{plan.recipe}:rlvr needs its reward model; run `repro run {plan.recipe} --stage rm "
                         f"--profile smoke` first (the 70B/405B recipes use the 8B RM)")
    tokenizer = load_tokenizer(policy_path, plan)
    prompts, filtered = prompt_rows(plan, tokenizer)
    if not prompts:
        raise ReproError(f"all {filtered} prompts exceed max_prompt_length {hp('max_prompt_length')} "
                         f"(or max_seq_length {hp('max_seq_length')} with the response)")
    batch = hp("effective_batch_size")
    samples = hp("samples_per_prompt", 1)
    steps = hp("total_episodes") // (batch * samples)
    if ctx.max_updates is not None:
        steps = min(steps, ctx.max_updates)
    ppo_epochs, minibatches = hp("num_ppo_epochs", 4), hp("num_mini_batches", 1)
    total_opt = hp("total_episodes") // (batch * samples) * ppo_epochs * minibatches
    warmup = schedules.warmup_steps_for(total_opt, hp("warmup_ratio", 0.0), "open-instruct")
    order = epoch_order(len(prompts), seed, steps * batch // max(len(prompts), 1) + 1)

    started_ray = _connect(plan)
    try:
        paths = {"policy": str(policy_path), "reference": str(input_path(plan, "reference") or policy_path),
                 "value": str(value_path), "rm": str(rm_path)}
        learner = ray.remote(num_cpus=1)(Learner).remote(plan, paths, total_opt, warmup)
        engine = ray.remote(num_cpus=1)(GenerationEngine).remote(plan, str(policy_path))
        state_file = ctx.record.state_dir / "latest.pt"
        start = 0
        if ctx.resume and state_file.exists():
            start = ray.get(learner.load_state.remote(str(state_file)))
            generator = torch.load(state_file, weights_only=False)["generator"]
            ray.get(engine.load_weights.remote(generator))
            ctx.record.steps = [s for s in ctx.record.steps if s["step"] <= start]
        else:
            ctx.record.steps = []

        def rows_for(step: int) -> list[dict[str, Any]]:
            return [prompts[i] for i in order[step * batch:(step + 1) * batch]]

        pending = learner.weights.remote()  # the weights the engine receives next
        completions = engine.generate.remote([r["ids"] for r in rows_for(start)], start) if start < steps else None
        for step in range(start, steps):
            rows = rows_for(step)
            # Async mode: the engine now gets the weights of the last update and, while the learner trains on
            # this step's samples, already generates the next step's batch with them.
            engine.load_weights.remote(pending)
            upcoming = (engine.generate.remote([r["ids"] for r in rows_for(step + 1)], step + 1)
                        if step + 1 < steps else None)
            metrics = ray.get(learner.train_step.remote(step, rows, completions))
            pending = learner.weights.remote()  # pushed to the engine at the top of the next step
            completions = upcoming
            ctx.record.steps.append(metrics)
            if ctx.progress:
                ctx.progress(metrics)
            if (step + 1) % 5 == 0 or step + 1 == steps:
                ray.get(learner.save_state.remote(str(state_file), step + 1, engine.weights.remote()))
                ctx.record.save()
                heartbeat(ctx.record)
            fault_injection(step + 1)
        policy = load_causal_lm(policy_path)
        policy.load_state_dict(ray.get(learner.weights.remote()))
        policy.eval()
    finally:
        if started_ray:
            ray.shutdown()

    version = plan.extra.get("verifier_version") or "release-2024-11"
    rewards_seen = [s["reward_mean"] for s in ctx.record.steps]
    k = max(1, len(rewards_seen) // 4)
    final = {"reward_mean_first": sum(rewards_seen[:k]) / k, "reward_mean_last": sum(rewards_seen[-k:]) / k,
             "reward_mean_last10": sum(rewards_seen[-10:]) / min(10, len(rewards_seen)),
             "non_stop_rate_last": ctx.record.steps[-1]["non_stop_rate"], "training_steps": steps,
             "optimizer_steps": steps * ppo_epochs * minibatches, "prompts": len(prompts),
             "prompts_filtered": filtered, "episodes": steps * batch * samples}
    plan.extra["orchestration"] = "ray: 1 learner actor, 1 generation-engine actor"
    if plan.heldout:
        final.update(evaluate_prompts(policy, tokenizer, plan, version))
    ctx.record.final_metrics.update(final)
    save_checkpoint(ctx, policy, tokenizer, datasets=[d["dataset"] for d in plan.datasets],
                    base_model=plan.inputs.get("init", {}).get("checkpoint"))
    write_metrics_file(ctx)
    return final
