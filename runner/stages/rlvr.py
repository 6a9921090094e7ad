"""RLVR: PPO with verifiable rewards, as open-instruct ppo_vllm_thread_ray_gtrl.py @3dd7a07da ran it.

Per training step (tulu3.md §2.4, docs/semantics.md "PPO"):
1. Sample one response per prompt at temperature 1.0 from the generation
   engine, which holds the policy one update behind (async mode: the engine
   generates step t's batch while the learner trains on step t−1's).
2. Log-probs of the sampled tokens under the policy (π_old) and the frozen
   reference (the DPO checkpoint), both with logits / (T + 1e-7).
3. Truncate after the first EOS; ℓ = last kept index.
4. Score = verifier reward (10 × verified, one scoring function per task,
   release-era behaviour) + multiplier × RM score (0.0 as recorded; the RM
   forward still runs, as it did then); no EOS → the score is replaced by −10.
5. Per-token reward −β·kl (kl1) up to ℓ, the score added at ℓ+1.
6. Values from the value model (initialised from the reward model), zeroed
   beyond ℓ+1; GAE with γ = 1, λ = 0.95; advantages whitened over t ≤ ℓ.
7. 4 PPO epochs over the rollout batch (one mini-batch, a fresh permutation
   each epoch, micro-batches of the per-device size): clipped policy loss
   (0.2) and clipped value loss × 0.1, separate models and optimizers
   (AdamW, weight decay 0.01), each clipped to norm 1.0, one optimizer step
   per PPO epoch; linear LR over training steps × PPO epochs.

Two drivers run these steps with the same `Learner` and `GenerationEngine`: in one process
(`run_in_process`), or as two Ray actors (`run_with_ray`, `--ray`), as the recorded launch did. The
recorded run was asynchronous: the engine generates step t+1's batch while the learner trains on step t,
so the engine always samples with the policy one update behind. The in-process driver keeps that order,
so with the same seed both give the same trajectory (every random draw is seeded per step, and both
actors run with one torch thread). Resuming, recording a step and finishing are written once, here;
connecting to a Ray cluster is runner/stages/rlvr_ray.py.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from registry.errors import ReproError
from runner import losses, schedules, state, verifiers
from runner import plan as plans
from runner.data import hub
from runner.data.templates import render
from runner.data.tokenizer import stage_tokenizer
from runner.generation import generate
from runner.records import commit_state, heartbeat
from runner.stages.kit import (
    StageContext,
    input_path,
    keep_steps,
    load_causal_lm,
    load_rows,
    report_total,
    save_checkpoint,
    set_determinism,
    write_metrics_file,
)
from runner.stages.rm import load_reward_model
from runner.trainer import epoch_order, fault_injection, require_finite

LOGIT_EPS = 1e-7  # logits / (T + 1e-7), as the recorded trainer computed log-probs


def prompt_rows(plan, tokenizer) -> tuple[list[dict[str, Any]], int]:
    """Prompts in the RLVR schema, rendered with the generation prompt; over-long ones filtered and counted."""
    rows, filtered = [], 0
    max_prompt = plan.hp("max_prompt_length")
    max_total = plan.hp("max_seq_length")
    for entry in [d for d in plan.datasets if d["role"] == "train"]:
        for i, row in enumerate(load_rows(entry), start=1):
            hub.check_ground_truth(entry, i, row)
            messages = row["messages"][:-1] if len(row["messages"]) > 1 else row["messages"]
            ids = tokenizer(render(messages, plan.chat_template, tokenizer.eos_token, add_generation_prompt=True),
                            add_special_tokens=False)["input_ids"]
            if len(ids) > max_prompt or len(ids) + plan.hp("response_length") > max_total:
                filtered += 1
                continue
            rows.append({"ids": ids, "ground_truth": row["ground_truth"], "dataset": row["dataset"]})
    return rows, filtered


def _forward_positions(ids: torch.Tensor, pad: int) -> dict[str, torch.Tensor]:
    mask = (ids != pad).long()
    return {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(1) - mask).clamp(min=0)}


def response_logps(model, query_response: torch.Tensor, context: int, pad: int, temperature: float) -> torch.Tensor:
    logits = model(**_forward_positions(query_response, pad)).logits[:, context - 1:-1]
    logits = logits / (temperature + LOGIT_EPS)
    return torch.gather(torch.log_softmax(logits.float(), -1), 2, query_response[:, context:].unsqueeze(-1)).squeeze(-1)


def token_values(value_model, query_response: torch.Tensor, context: int, pad: int) -> torch.Tensor:
    backbone = getattr(value_model, "module", value_model)
    hidden = backbone.model(**_forward_positions(query_response, pad)).last_hidden_state
    return backbone.score(hidden).squeeze(-1)[:, context - 1:-1]


def rm_scores(reward_model, query_response: torch.Tensor, pad: int) -> torch.Tensor:
    hidden = reward_model.model(**_forward_positions(query_response, pad)).last_hidden_state
    scores = reward_model.score(hidden).squeeze(-1)
    # The last non-pad token: queries are left-padded, so look for the first pad after the context.
    nonpad = (query_response != pad).long()
    last = (nonpad * torch.arange(query_response.shape[1])).argmax(1)
    return losses.gather_at(scores, last)


class GenerationEngine:
    """The sampling copy of the policy (the recorded run's vLLM engine); gets the learner's weights after
    each update. A plain object in-process, a Ray actor under `run_with_ray`."""

    def __init__(self, plan, policy_path: str) -> None:
        set_determinism(plan.seed)
        self.plan = plan
        self.tokenizer = stage_tokenizer(plan, Path(policy_path))
        self.model = load_causal_lm(Path(policy_path)).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def generate(self, prompts: list[list[int]], step: int) -> list[list[int]]:
        hp, seed = self.plan.hp, self.plan.seed
        comps = generate(self.model, self.tokenizer, prompts, max_new_tokens=hp("response_length"),
                         temperature=hp("temperature", 1.0), seed=seed * 100003 + step, batch_size=len(prompts))
        return [c.response_ids for c in comps]

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.model.state_dict().items()}


class Learner:
    """Policy and value training, the frozen reference and reward models, scoring: all but sampling."""

    def __init__(self, plan, paths: dict[str, str], total_opt: int, warmup: int) -> None:
        hp = plan.hp
        seed = plan.seed
        set_determinism(seed)
        self.plan = plan
        self.tokenizer = stage_tokenizer(plan, Path(paths["policy"]))
        self.policy = load_causal_lm(Path(paths["policy"]))
        self.reference = load_causal_lm(Path(paths["reference"])).eval()
        # The value model starts from the trained reward model, head included (the 8B RM for 70B/405B too).
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

    def _stateful(self) -> dict[str, Any]:
        return {"policy": self.policy, "value": self.value_model, "policy_opt": self.policy_opt,
                "value_opt": self.value_opt, "policy_sched": self.policy_sched, "value_sched": self.value_sched}

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.policy.state_dict().items()}

    def save_state(self, state_dir: str, step: int, generator: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Write the resumable state (runner/state.py: safetensors + JSON, never a pickle); return its
        reference for the run record."""
        tree: dict[str, Any] = {k: o.state_dict() for k, o in self._stateful().items()}
        tree.update({"generator": generator, "step": step, "rng": torch.get_rng_state(),
                     "python_rng": random.getstate()})
        return state.save(Path(state_dir), step, tree)

    def load_state(self, state_dir: str, ref: dict[str, Any]) -> tuple[int, dict[str, torch.Tensor]]:
        """Restore the state the run record names; return (step, the engine's weights at that step)."""
        try:
            saved = state.load(Path(state_dir), ref)
        except state.StateError as exc:
            raise ReproError(f"cannot resume: {exc}; start a new run") from None
        for key, obj in self._stateful().items():
            obj.load_state_dict(saved[key])
        torch.set_rng_state(saved["rng"])
        random.setstate(saved["python_rng"])
        return saved["step"], saved["generator"]

    def train_step(self, step: int, rows: list[dict[str, Any]], response_ids: list[list[int]]) -> dict[str, float]:
        """Score the sampled responses and run the PPO epochs (steps 3-7 of the module docstring)."""
        hp, tokenizer = self.plan.hp, self.tokenizer
        policy, value_model = self.policy, self.value_model
        seed = self.plan.seed
        pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
        temperature, length = hp("temperature", 1.0), hp("response_length")
        version = self.plan.extra.get("verifier_version") or "release-2024-11"
        batch, samples, ppo_epochs = hp("effective_batch_size"), hp("samples_per_prompt", 1), hp("num_ppo_epochs", 4)

        context = max(len(r["ids"]) for r in rows)
        responses = torch.full((len(rows), length), pad, dtype=torch.long)
        queries = torch.full((len(rows), context), pad, dtype=torch.long)
        for b, (row, ids) in enumerate(zip(rows, response_ids)):
            queries[b, context - len(row["ids"]):] = torch.tensor(row["ids"])
            responses[b, :len(ids[:length])] = torch.tensor(ids[:length])
        responses, last, has_eos = losses.first_eos_truncation(responses, eos, pad)
        query_response = torch.cat([queries, responses], 1)
        with torch.no_grad():
            old_logp = response_logps(policy, query_response, context, pad, temperature)
            ref_logp = response_logps(self.reference, query_response, context, pad, temperature)
            old_values = token_values(value_model, query_response, context, pad)
            rm = rm_scores(self.reward_model, query_response, pad)  # still computed at multiplier 0, as then
        texts = [tokenizer.decode(responses[b, :int(last[b]) + 1], skip_special_tokens=True)
                 for b in range(len(rows))]
        switch_kw = verifiers.switch_kwargs(self.plan.extra)  # the recorded verifier deviations
        verified = torch.tensor([verifiers.score(r["dataset"], t, r["ground_truth"], version, **switch_kw)
                                 for r, t in zip(rows, texts)])
        scores = final_scores(hp, verified, rm, has_eos, last)
        policy_mask, value_mask = losses.ppo_masks(last, length)
        kl = losses.kl_per_token(old_logp, ref_logp, hp("kl_estimator", "kl1"))
        rewards = losses.ppo_rewards(kl, scores, last, hp("kl_beta"))
        old_values = torch.where(value_mask, old_values, torch.zeros_like(old_values))
        advantages, returns = losses.gae(rewards, old_values, hp("gamma", 1.0), hp("lam", 0.95))
        advantages = losses.whiten_advantages(advantages, policy_mask)

        pd = hp("per_device_batch_size")
        stats: dict[str, float] = {"pg_loss": 0.0, "vf_loss": 0.0, "pg_clipfrac": 0.0, "approxkl": 0.0, "ratio": 0.0}
        lr = self.policy_opt.param_groups[0]["lr"]
        permutations = torch.Generator().manual_seed(seed * 7919 + step)
        for _epoch in range(ppo_epochs):
            perm = torch.randperm(len(rows), generator=permutations).tolist()
            micro = [perm[i:i + pd] for i in range(0, len(perm), pd)]
            for mb in micro:
                new_logp = response_logps(policy, query_response[mb], context, pad, temperature)
                pg_loss, clipfrac, approxkl = losses.ppo_policy_loss(new_logp, old_logp[mb], advantages[mb],
                                                                      policy_mask[mb], hp("cliprange", 0.2))
                values = token_values(value_model, query_response[mb], context, pad)
                vf_loss, _ = losses.ppo_value_loss(values, old_values[mb], returns[mb], value_mask[mb],
                                                   hp("cliprange_value", 0.2))
                ratio = losses.ppo_ratio_mean(new_logp.detach(), old_logp[mb], policy_mask[mb])
                (pg_loss / len(micro)).backward()
                (hp("vf_coef", 0.1) * vf_loss / len(micro)).backward()
                for key, value in (("pg_loss", pg_loss), ("vf_loss", vf_loss), ("pg_clipfrac", clipfrac),
                                   ("approxkl", approxkl), ("ratio", ratio)):
                    stats[key] += float(value.detach()) / (len(micro) * ppo_epochs)
            # Separate engines upstream: each model is clipped and stepped on its own.
            torch.nn.utils.clip_grad_norm_(policy.parameters(), hp("max_grad_norm", 1.0))
            torch.nn.utils.clip_grad_norm_(value_model.parameters(), hp("max_grad_norm", 1.0))
            for opt, sched in ((self.policy_opt, self.policy_sched), (self.value_opt, self.value_sched)):
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
        return {
            "step": step + 1, "episode": (step + 1) * batch * samples, "lr": lr,
            "reward_mean": float(verified.mean() * hp("verifier_reward", 10)),
            "verified_rate": float(verified.mean()), "score_mean": float(scores.mean()),
            "rm_score_mean": float(rm.mean()), "non_stop_rate": float((~has_eos).float().mean()),
            "response_length": float((last + 1).float().mean()),
            "kl": float((kl * policy_mask).sum(1).mean()),
            "rlhf_reward": float(losses.rlhf_reward(scores, kl, policy_mask, hp("kl_beta")).mean()), **stats,
        }


def final_scores(hp, verified: torch.Tensor, rm: torch.Tensor, has_eos: torch.Tensor,
                 last: torch.Tensor) -> torch.Tensor:
    """Step 4 of the module docstring from the plan's settings; `min_response_length` (default 0, as
    recorded) joins the stop test exactly as upstream's `contain_stop_token` does."""
    return losses.rlvr_scores(verified, rm, has_eos, last, verifier_reward=hp("verifier_reward", 10),
                              rm_multiplier=hp("reward_model_multiplier", 0.0),
                              non_stop_penalty=hp("non_stop_penalty", True),
                              penalty_value=hp("penalty_reward_value", -10.0),
                              min_response_length=hp("min_response_length", 0))


@dataclass
class Setup:
    """What both drivers (in-process and Ray) derive from the plan before the first step."""

    prompts: list[dict[str, Any]]
    filtered: int
    steps: int
    total_opt: int
    warmup: int
    order: list[int]
    paths: dict[str, str]
    tokenizer: Any

    def rows_for(self, step: int, batch: int) -> list[dict[str, Any]]:
        return [self.prompts[i] for i in self.order[step * batch:(step + 1) * batch]]


def setup(ctx: StageContext) -> Setup:
    plan, hp = ctx.plan, ctx.plan.hp
    set_determinism(plan.seed)
    policy_path, rm_path = input_path(plan, "init"), input_path(plan, "reward_model")
    if rm_path is None:
        raise ReproError(f"{plan.recipe}:rlvr needs its reward model; run `repro run {plan.recipe} --stage rm "
                         f"--profile smoke` first (the 70B/405B recipes use the 8B RM)")
    tokenizer = stage_tokenizer(plan, policy_path)
    prompts, filtered = prompt_rows(plan, tokenizer)
    if not prompts:
        raise ReproError(f"all {filtered} prompts exceed max_prompt_length {hp('max_prompt_length')} "
                         f"(or max_seq_length {hp('max_seq_length')} with the response)")
    batch, samples = hp("effective_batch_size"), hp("samples_per_prompt", 1)
    planned = hp("total_episodes") // (batch * samples)  # training steps as the recorded code counts them
    steps = min(planned, ctx.max_updates) if ctx.max_updates is not None else planned
    # The LR schedule spans every optimizer step of the planned run: steps × PPO epochs × mini-batches.
    total_opt = planned * hp("num_ppo_epochs", 4) * hp("num_mini_batches", 1)
    warmup = schedules.warmup_steps_for(total_opt, hp("warmup_ratio", 0.0), "open-instruct")
    order = epoch_order(len(prompts), plan.seed, steps * batch // len(prompts) + 1)
    paths = {"policy": str(policy_path), "reference": str(input_path(plan, "reference") or policy_path),
             "value": str(input_path(plan, "value_model") or rm_path), "rm": str(rm_path)}
    return Setup(prompts, filtered, steps, total_opt, warmup, order, paths, tokenizer)


def wants_ray(plan) -> bool:
    return bool(plan.extra.get("ray_address") or plan.extra.get("use_ray"))


def run(ctx: StageContext) -> dict[str, Any]:
    return run_with_ray(ctx) if wants_ray(ctx.plan) else run_in_process(ctx)


def resume(ctx: StageContext, restore) -> int:
    """The step this run starts at: with --resume and a saved state, `restore(state_dir, ref)` puts the
    learner and the engine back as they were and returns the step; the record keeps the steps up to it."""
    saved = ctx.record.artifacts.get("state")
    start = restore(str(ctx.record.state_dir), saved) if ctx.resume and saved else None
    keep_steps(ctx, start)
    return start or 0


def run_in_process(ctx: StageContext) -> dict[str, Any]:
    plan, hp = ctx.plan, ctx.plan.hp
    prep = setup(ctx)
    learner = Learner(plan, prep.paths, prep.total_opt, prep.warmup)
    engine = GenerationEngine(plan, prep.paths["policy"])
    state_dir = str(ctx.record.state_dir)

    def restore(directory: str, ref: dict[str, Any]) -> int:
        step, engine_weights = learner.load_state(directory, ref)
        engine.load_weights(engine_weights)
        return step

    start = resume(ctx, restore)
    pending = learner.weights()  # the weights the engine receives next
    batch = hp("effective_batch_size")
    for step in range(start, prep.steps):
        rows = prep.rows_for(step, batch)
        responses = engine.generate([r["ids"] for r in rows], step)
        engine.load_weights(pending)  # async mode: the engine samples one update behind the learner
        metrics = learner.train_step(step, rows, responses)
        pending = learner.weights()
        record_step(ctx, metrics, step, prep.steps, lambda s: learner.save_state(state_dir, s, engine.weights()))
    return finish(ctx, prep, learner.policy)


def run_with_ray(ctx: StageContext) -> dict[str, Any]:
    """The same steps with a learner actor and a generation-engine actor (same math, same record); the
    weights go from the learner to the engine through Ray's object store after every update."""
    import ray

    from runner.stages import rlvr_ray

    plan, hp = ctx.plan, ctx.plan.hp
    prep = setup(ctx)
    batch = hp("effective_batch_size")
    started_ray = rlvr_ray.connect(plan)
    try:
        if plan.profile == "recorded":
            plans.record_ray_actors(plan)
        resources = rlvr_ray.actor_resources(plan)
        learner = ray.remote(**resources)(Learner).remote(plan, prep.paths, prep.total_opt, prep.warmup)
        engine = ray.remote(**resources)(GenerationEngine).remote(plan, prep.paths["policy"])
        state_dir = str(ctx.record.state_dir)

        def restore(directory: str, ref: dict[str, Any]) -> int:
            step, engine_weights = ray.get(learner.load_state.remote(directory, ref))
            ray.get(engine.load_weights.remote(engine_weights))
            return step

        start = resume(ctx, restore)
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
        policy = load_causal_lm(Path(prep.paths["policy"]))
        policy.load_state_dict(ray.get(learner.weights.remote()))
    finally:
        if started_ray:
            ray.shutdown()
    plans.record_orchestration(plan, "ray: 1 learner actor, 1 generation-engine actor")
    return finish(ctx, prep, policy)


STATE_EVERY = 5  # PPO steps between resumable-state saves


def record_step(ctx: StageContext, metrics: dict[str, float], step: int, steps: int, save) -> None:
    """Keep one PPO step's metrics; every 5 steps `save(step)` writes the state, which the record keeps."""
    require_finite(metrics)
    ctx.record.steps.append(metrics)
    if ctx.progress:
        report_total(ctx, steps)
        ctx.progress(metrics)
    if (step + 1) % STATE_EVERY == 0 or step + 1 == steps:
        commit_state(ctx.record, save(step + 1))
        heartbeat(ctx.record)
    fault_injection(step + 1)


def finish(ctx: StageContext, prep: Setup, policy) -> dict[str, Any]:
    plan, hp = ctx.plan, ctx.plan.hp
    batch, samples = hp("effective_batch_size"), hp("samples_per_prompt", 1)
    rewards = [s["reward_mean"] for s in ctx.record.steps]
    k = max(1, len(rewards) // 4)
    final = {"reward_mean_first": sum(rewards[:k]) / k, "reward_mean_last": sum(rewards[-k:]) / k,
             "reward_mean_last10": sum(rewards[-10:]) / min(10, len(rewards)),
             "non_stop_rate_last": ctx.record.steps[-1]["non_stop_rate"], "training_steps": prep.steps,
             "optimizer_steps": prep.steps * hp("num_ppo_epochs", 4) * hp("num_mini_batches", 1),
             "prompts": len(prep.prompts), "prompts_filtered": prep.filtered, "episodes": prep.steps * batch * samples}
    policy.eval()
    if plan.heldout:
        final.update(evaluate_prompts(policy, prep.tokenizer, plan, plan.extra.get("verifier_version")
                                      or "release-2024-11"))
    ctx.record.final_metrics.update(final)
    save_checkpoint(ctx, policy, prep.tokenizer, datasets=[d["dataset"] for d in plan.datasets],
                    base_model=plan.inputs.get("init", {}).get("checkpoint"))
    write_metrics_file(ctx)
    return final


def _load_trained_head(model, path) -> None:
    """load_reward_model re-initialises the score head (right for a new RM); value and reward models
    start from the trained RM, head included."""
    from safetensors.torch import load_file

    weights = load_file(str(path / "model.safetensors"))
    with torch.no_grad():
        model.score.weight.copy_(weights["score.weight"])


@torch.no_grad()
def evaluate_prompts(policy, tokenizer, plan, version: str) -> dict[str, float]:
    """Greedy accuracy on the held-out prompts (the in-loop eval of the recorded run)."""
    rows = load_rows(plan.heldout)
    prompts = [render(r["messages"][:1], plan.chat_template, tokenizer.eos_token, add_generation_prompt=True)
               for r in rows]
    comps = generate(policy, tokenizer, prompts, max_new_tokens=plan.hp("response_length"), temperature=0.0)
    hits = [verifiers.score(r["dataset"], c.text, r["ground_truth"], version) for r, c in zip(rows, comps)]
    return {"heldout_verified_rate": sum(hits) / max(len(hits), 1), "heldout_prompts": len(hits)}
