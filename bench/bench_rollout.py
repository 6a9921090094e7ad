"""Rollout throughput of runner.generation.generate vs a plain model.generate loop, and one PPO step's time split.

Run: python bench/bench_rollout.py [--quick] [--prompts N] [--steps S]

Part 1, generation: the same tiny policy (the tulu3-8b RLVR smoke miniature, random init, float32, CPU), the same
RLVR fixture prompts (rendered with the generation prompt by runner.stages.rlvr.prompt_rows), batch 16 and the
smoke response length, greedy and sampled at T = 1. "Plain" is the minimal loop: prompts in input order, left
padded by hand, `model.generate(..., use_cache=True)` per batch. Tokens = generated tokens up to and including the
first stop token, counted the same way on both sides.

Part 2, PPO step split: the real stage (`runner.execute.execute` on tulu3-8b:rlvr, smoke profile, `max_updates=S`)
with its inputs substituted by freshly saved miniatures (policy/reference, and a reward model that is also the
value model), so no earlier stage has to run. The stage module's `generate`, `response_logps`, `token_values` and
`rm_scores` are wrapped with timers: generation = `generate`; scoring = the no-grad forwards (π_old, reference,
values, RM); training forwards = the same functions with gradients on (PPO epochs); the rest of the step is
backward passes, optimizer steps, verifiers, GAE and bookkeeping. Steps are delimited by the progress callback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
_SCRATCH = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["REPRO_HOME"] = str(_SCRATCH / "home")
os.environ["REPRO_RUNS_DIR"] = str(_SCRATCH / "runs")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

RECIPE = "tulu3-8b"


def miniatures(plan) -> tuple[Path, Path]:
    """Save a policy LM and a reward model (same miniature config) with the fixture tokenizer."""
    from runner.data.tokenizer import fixture_tokenizer
    from runner.models import build_model, build_reward_model
    from runner.stages.kit import miniature_config, quiet_libraries

    quiet_libraries()
    tok = fixture_tokenizer(plan)
    config, _ = miniature_config(plan, tok)
    seed = plan.hp("seed", 0)
    policy_dir, rm_dir = _SCRATCH / "policy", _SCRATCH / "rm"
    build_model(config, seed).save_pretrained(policy_dir, safe_serialization=True)
    build_reward_model(config, seed).save_pretrained(rm_dir, safe_serialization=True)
    for d in (policy_dir, rm_dir):
        tok.save_pretrained(d)
    return policy_dir, rm_dir


def plain_generate(model, encoded: list[list[int]], pad: int, eos: int, max_new: int, temperature: float,
                   batch: int, seed: int) -> list[list[int]]:
    out: list[list[int]] = []
    torch.manual_seed(seed)
    sample = temperature > 0
    extra = {"temperature": temperature, "top_k": 0, "top_p": 1.0} if sample else {}
    with torch.inference_mode():
        for start in range(0, len(encoded), batch):
            chunk = encoded[start:start + batch]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            gen = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=sample,
                                 use_cache=True, num_beams=1, pad_token_id=pad, eos_token_id=eos, **extra)
            for row in gen[:, width:].tolist():
                cut = row.index(eos) + 1 if eos in row else len(row)
                out.append(row[:cut])
    return out


def bench_generation(policy_dir: Path, plan, n_prompts: int, reps: int) -> list[tuple[str, float, float]]:
    from runner.data.tokenizer import stage_tokenizer
    from runner.generation import generate
    from runner.stages.kit import load_causal_lm, set_determinism
    from runner.stages.rlvr import prompt_rows

    set_determinism(plan.hp("seed", 0))
    tok = stage_tokenizer(plan, policy_dir)
    model = load_causal_lm(policy_dir).eval()
    rows, _ = prompt_rows(plan, tok)
    encoded = [r["ids"] for r in (rows * (n_prompts // max(len(rows), 1) + 1))[:n_prompts]]
    max_new, batch = plan.hp("response_length"), 16
    results = []
    print(f"generation: {len(encoded)} prompts ({min(map(len, encoded))}-{max(map(len, encoded))} tokens), batch "
          f"{batch}, max_new_tokens {max_new}, median of {reps}")
    print(f"{'mode':10} {'path':28} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}")
    generate(model, tok, encoded[:batch], max_new_tokens=max_new, batch_size=batch, backend="hf")  # warm-up
    plain_generate(model, encoded[:batch], tok.pad_token_id, tok.eos_token_id, max_new, 0.0, batch, 0)
    for label, temperature in (("greedy", 0.0), ("T=1", 1.0)):
        times = {"runner": [], "plain": []}
        tokens = {}
        for rep in range(reps):
            for side in (("runner", "plain") if rep % 2 == 0 else ("plain", "runner")):
                start = time.perf_counter()
                if side == "runner":
                    comps = generate(model, tok, encoded, max_new_tokens=max_new, temperature=temperature, seed=rep,
                                     batch_size=batch, backend="hf")
                    responses = [c.response_ids for c in comps]
                else:
                    responses = plain_generate(model, encoded, tok.pad_token_id, tok.eos_token_id, max_new,
                                               temperature, batch, rep)
                times[side].append(time.perf_counter() - start)
                tokens[side] = sum(map(len, responses))
                if side == "runner":
                    runner_greedy = responses
                else:
                    plain_greedy = responses
        same = sum(a == b for a, b in zip(runner_greedy, plain_greedy)) if temperature == 0 else None
        for side, name in (("runner", "runner.generation.generate"), ("plain", "plain model.generate loop")):
            secs = statistics.median(times[side])
            print(f"{label:10} {name:28} {secs:8.3f} {tokens[side]:7d} {tokens[side] / secs:9.0f}")
        ratio = ((tokens["runner"] / statistics.median(times["runner"]))
                 / (tokens["plain"] / statistics.median(times["plain"])))
        note = f"; greedy responses identical for {same}/{len(encoded)} prompts" if same is not None else ""
        print(f"{label:10} runner / plain tokens/s = {ratio:.2f}x{note}")
        results.append((label, ratio, tokens["runner"] / statistics.median(times["runner"])))
    return results


def bench_ppo_step(policy_dir: Path, rm_dir: Path, steps: int) -> dict[str, float]:
    import runner.stages.rlvr as rlvr
    from registry.recipes import load_recipes
    from runner.execute import execute, resolve_inputs
    from runner.plan import resolve

    reg = load_recipes()
    plan = resolve(reg, RECIPE, "rlvr", "smoke")
    plan.inputs = resolve_inputs(reg, plan, {"init": str(policy_dir), "reference": str(policy_dir),
                                             "reward_model": str(rm_dir), "value_model": str(rm_dir)})
    spent = {"generation": 0.0, "scoring": 0.0, "train_forward": 0.0}
    per_step: list[dict[str, float]] = []
    marks = {"last": None}

    def timed(fn, kind):
        def inner(*a, **k):
            if marks["last"] is None:
                marks["last"] = time.perf_counter()  # the first step starts at its first rollout
            start = time.perf_counter()
            out = fn(*a, **k)
            key = kind if kind else ("train_forward" if torch.is_grad_enabled() else "scoring")
            spent[key] += time.perf_counter() - start
            return out
        return inner

    def progress(_metrics) -> None:
        now = time.perf_counter()
        per_step.append({"total": now - marks["last"], **spent})
        for k in spent:
            spent[k] = 0.0
        marks["last"] = now

    saved = {n: getattr(rlvr, n) for n in ("generate", "response_logps", "token_values", "rm_scores")}
    rlvr.generate = timed(saved["generate"], "generation")
    for n in ("response_logps", "token_values", "rm_scores"):
        setattr(rlvr, n, timed(saved[n], None))
    try:
        record = execute(plan, plan.inputs, max_updates=steps, progress=progress)
    finally:
        for n, fn in saved.items():
            setattr(rlvr, n, fn)
    if record.status != "succeeded":
        raise RuntimeError(f"rlvr run {record.status}")
    keep = per_step[1:] if len(per_step) > 1 else per_step  # the first step pays one-off warm-up
    split = {k: statistics.median(s[k] for s in keep) for k in ("total", "generation", "scoring", "train_forward")}
    split["backward_optimizer_rest"] = split["total"] - split["generation"] - split["scoring"] - split["train_forward"]
    split["response_length"] = statistics.mean(s["response_length"] for s in record.steps)
    split["batch"] = plan.hp("effective_batch_size")
    split["ppo_epochs"] = plan.hp("num_ppo_epochs", 4)
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 prompts, 1 repetition, 3 PPO steps")
    parser.add_argument("--prompts", type=int, default=None, help="prompts to generate for (default 128)")
    parser.add_argument("--reps", type=int, default=None, help="generation repetitions (default 3)")
    parser.add_argument("--steps", type=int, default=None, help="PPO steps to time (default 6; the first is dropped)")
    args = parser.parse_args()
    n_prompts = args.prompts or (32 if args.quick else 128)
    reps = args.reps or (1 if args.quick else 3)
    steps = args.steps or (3 if args.quick else 6)
    try:
        from registry.recipes import load_recipes
        from runner.plan import resolve

        plan = resolve(load_recipes(), RECIPE, "rlvr", "smoke")
        policy_dir, rm_dir = miniatures(plan)
        print(f"{RECIPE}:rlvr smoke miniature, CPU float32, {os.environ.get('REPRO_TORCH_THREADS', '1')} torch "
              f"thread(s), {os.cpu_count()} CPUs\n")
        gen = bench_generation(policy_dir, plan, n_prompts, reps)
        split = bench_ppo_step(policy_dir, rm_dir, steps)
        total = split["total"]
        print(f"\nPPO step split (median over steps 2..{steps}; {split['batch']} prompts, mean response "
              f"{split['response_length']:.1f} tokens, {split['ppo_epochs']} PPO epochs):")
        for key, label in (("generation", "generation (runner.generation.generate)"),
                           ("scoring", "scoring forwards, no grad (pi_old, ref, values, RM)"),
                           ("train_forward", "training forwards (policy logps, values)"),
                           ("backward_optimizer_rest", "backward + optimizer + verifiers/GAE/rest")):
            print(f"  {label:54} {split[key]:7.3f} s  {100 * split[key] / total:5.1f}%")
        print(f"  {'total step':54} {total:7.3f} s")
        train = total - split["generation"]
        greedy, sampled = gen[0][1], gen[1][1]
        print(f"\nSUMMARY runner generate vs plain model.generate: greedy {greedy:.2f}x, T=1 {sampled:.2f}x "
              f"({gen[1][2]:.0f} tok/s sampled); PPO step {total:.3f} s = generation {split['generation']:.3f} s "
              f"({100 * split['generation'] / total:.0f}%) + training side {train:.3f} s "
              f"({100 * train / total:.0f}%)")
    finally:
        shutil.rmtree(_SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
