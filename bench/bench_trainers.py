"""Training throughput of the smoke SFT and DPO stages vs TRL's SFTTrainer / DPOTrainer, and cached vs live DPO.

Run: python bench/bench_trainers.py [--quick] [--steps N] [--reps R] [--recipe tulu3-8b]

Our side is the real stage code path: `runner.plan.resolve` + `runner.execute.execute(max_updates=N)` in a
scratch REPRO_HOME, so the record, the data order, the collate/loss code and the Trainer loop (including its
resumable-state saves every 10 updates) are what `repro run --profile smoke --max-steps N` runs. TRL's side gets
the same miniature (SFT: the same seeded fresh miniature; DPO: the SFT checkpoint our SFT run just wrote, policy
and a deep-copied live reference), the same already-tokenized examples fed in exactly our micro-batch order (a
sequential sampler over our order), the same per-device batch, accumulation, optimizer steps, float32 on CPU and
the same torch thread count (REPRO_TORCH_THREADS, 1 by default, as set_determinism does).

Tokens are counted identically on both sides: a forward pre-hook on the policy model adds the non-pad tokens
(attention_mask sum) of every forward run with gradients enabled, i.e. the training forwards (reference
forwards run under no_grad and are not counted, on either side). Time: our side from the end of data encoding to
the end of the update loop (so the cached reference pass is inside it), TRL from on_train_begin to on_train_end.

Targets: stage throughput >= 1.5x TRL; cached DPO >= 1.3x faster than live with identical per-step losses.

`--full-epochs [--epochs E] [--reps R]` measures the cache where it pays: the whole schedule over E epochs
(default: the 3 the SmolLM2 1.7B DPO records), live reference vs the cache as one forward per pair vs the
cache batched by padded width (runner/stages/dpo.py reference_cache), and prints the cached-vs-live ratio in
wall time and in the process's CPU time (one torch thread: CPU time hardly moves with the load other jobs put
on a shared machine, wall time does by tens of percent), and from the CPU times the ratio's ceiling (a cache
pass that cost nothing: 1 + the live reference's forwards / the policy's training, whatever the epochs) and
the largest cache pass the target allows. The `--steps` runs stop inside the first epoch, where a cache can
only cost: each pair's reference forward runs once either way.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
_SCRATCH = Path(tempfile.mkdtemp(prefix="bench-trainers-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["REPRO_HOME"] = str(_SCRATCH / "home")  # never the user's registry database
os.environ["REPRO_RUNS_DIR"] = str(_SCRATCH / "runs")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DISABLE_TQDM", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

TARGET_VS_TRL = 1.5
TARGET_CACHED = 1.3


# ---------------------------------------------------------------- token counting and timing hooks


class Counter:
    def __init__(self) -> None:
        self.tokens = 0

    def hook(self, _module, args, kwargs):
        if torch.is_grad_enabled():
            mask = kwargs.get("attention_mask")
            ids = kwargs.get("input_ids", args[0] if args else None)
            self.tokens += int(mask.sum()) if mask is not None else int(ids.numel())
        return None


def count_tokens(model, counter: Counter):
    model.register_forward_pre_hook(counter.hook, with_kwargs=True)
    return model


class Stamps:
    """Wall-clock marks the patched stage functions leave: data encoded, loop started, loop finished; and the
    process's CPU time at the same marks (with one torch thread, CPU time barely moves with the load other
    jobs put on a shared machine, which wall time does by tens of percent)."""

    def __init__(self) -> None:
        self.encoded = self.loop_start = self.loop_end = None
        self.cpu_encoded = self.cpu_loop_start = self.cpu_loop_end = None


def patch_stage(module, counter: Counter, stamps: Stamps):
    """Wrap what the stage module imported (model loaders, encoders, the driver) without changing its code."""
    import runner.stages.kit as kit

    saved = {}

    def wrap(owner, name, make):
        saved[(owner, name)] = getattr(owner, name)
        setattr(owner, name, make(getattr(owner, name)))

    def loader(fn):
        return lambda *a, **k: count_tokens(fn(*a, **k), counter)

    def encoder(fn):
        def inner(*a, **k):
            out = fn(*a, **k)
            stamps.encoded, stamps.cpu_encoded = time.perf_counter(), time.process_time()
            return out
        return inner

    def updates(fn):
        def inner(*a, **k):
            stamps.loop_start, stamps.cpu_loop_start = time.perf_counter(), time.process_time()
            yield from fn(*a, **k)
            stamps.loop_end, stamps.cpu_loop_end = time.perf_counter(), time.process_time()
        return inner

    for name in ("fresh_causal_lm", "load_causal_lm"):
        if hasattr(module, name):
            wrap(module, name, loader)
    wrap(module, "encode_pairs" if hasattr(module, "encode_pairs") else "encode", encoder)
    wrap(kit, "run_updates", updates)

    def restore() -> None:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)
    return restore


def run_stage(reg, recipe: str, stage: str, steps: int | None, overrides: dict[str, str] | None = None,
              reference_mode: str | None = None, sets: dict | None = None) -> dict:
    import importlib

    from runner.execute import execute, resolve_inputs
    from runner.plan import resolve

    module = importlib.import_module(f"runner.stages.{stage}")
    counter, stamps = Counter(), Stamps()
    restore = patch_stage(module, counter, stamps)
    try:
        plan = resolve(reg, recipe, stage, "smoke", sets or {})
        if reference_mode:
            plan.extra["reference_mode"] = reference_mode
        plan.inputs = resolve_inputs(reg, plan, overrides or {})
        record = execute(plan, plan.inputs, max_updates=steps)
    finally:
        restore()
    if record.status != "succeeded":
        raise RuntimeError(f"{recipe}:{stage} run {record.run_id} {record.status}")
    seconds = stamps.loop_end - stamps.encoded
    return {"seconds": seconds, "loop_seconds": stamps.loop_end - stamps.loop_start,
            "setup_seconds": stamps.loop_start - stamps.encoded, "tokens": counter.tokens,
            "cpu_seconds": stamps.cpu_loop_end - stamps.cpu_encoded,
            "cpu_setup_seconds": stamps.cpu_loop_start - stamps.cpu_encoded,
            "losses": [s["loss"] for s in record.steps], "steps": len(record.steps), "plan": plan,
            "checkpoint": record.checkpoint_dir}


# ---------------------------------------------------------------- TRL side


def _ordered(plan, n_examples: int, steps: int) -> list[int]:
    """Example indices in the order our loop consumes them over `steps` updates (one process)."""
    from runner.trainer import epoch_order, micro_batches

    pd, ga = plan.hp("per_device_batch_size", 1), plan.hp("gradient_accumulation_steps", 1)
    order = epoch_order(n_examples, plan.hp("seed", 0), int(plan.hp("epochs", 1)))
    out: list[int] = []
    for update in range(steps):
        for mb in micro_batches(order, update, pd, ga, 1, 0, n_examples):
            if len(mb) != pd:
                raise RuntimeError("a short last micro-batch; pick --steps inside the first epoch")
            out += mb
    return out


def _trl_common(plan, steps: int, out_dir: Path) -> dict:
    return dict(output_dir=str(out_dir), per_device_train_batch_size=plan.hp("per_device_batch_size", 1),
                gradient_accumulation_steps=plan.hp("gradient_accumulation_steps", 1), max_steps=steps,
                learning_rate=plan.hp("learning_rate"), weight_decay=plan.hp("weight_decay", 0.0),
                adam_beta1=plan.hp("adam_beta1", 0.9), adam_beta2=plan.hp("adam_beta2", 0.999),
                adam_epsilon=plan.hp("adam_epsilon", 1e-8), max_grad_norm=plan.hp("max_grad_norm", 1.0),
                lr_scheduler_type="linear", warmup_steps=0, seed=plan.hp("seed", 0), use_cpu=True, bf16=False,
                fp16=False, save_strategy="no", logging_strategy="no", report_to=[], disable_tqdm=True,
                dataloader_num_workers=0, remove_unused_columns=False)


def _timing_callback(box: dict):
    from transformers import TrainerCallback

    class Timing(TrainerCallback):
        def on_train_begin(self, *a, **k):
            box["start"] = time.perf_counter()

        def on_train_end(self, *a, **k):
            box["end"] = time.perf_counter()
    return Timing()


def _sequential(cls):
    class Sequential(cls):
        def _get_train_sampler(self, *a, **k):
            return torch.utils.data.SequentialSampler(self.train_dataset)
    Sequential.__name__ = cls.__name__
    return Sequential


def trl_sft(plan, steps: int) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from runner.data.tokenizer import fixture_tokenizer
    from runner.stages import sft
    from runner.stages.kit import fresh_causal_lm, set_determinism, train_rows

    set_determinism(plan.hp("seed", 0))  # same threads / deterministic algorithms as the stage
    tokenizer = fixture_tokenizer(plan)
    model = fresh_causal_lm(copy.deepcopy(plan), tokenizer, "bench")
    examples, _ = sft.encode(plan, train_rows(plan), tokenizer)
    data = Dataset.from_list([examples[i] for i in _ordered(plan, len(examples), steps)])
    counter, box = Counter(), {}
    count_tokens(model, counter)
    args = SFTConfig(**_trl_common(plan, steps, _SCRATCH / "trl-sft"), max_length=None, packing=False)
    trainer = _sequential(SFTTrainer)(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                                      callbacks=[_timing_callback(box)])
    with contextlib.redirect_stdout(io.StringIO()):  # the end-of-training metrics dict
        trainer.train()
    return {"seconds": box["end"] - box["start"], "tokens": counter.tokens}


def _trl_pair(pair: dict) -> dict:
    """Our encoded pair as TRL's tokenized preference row: the shared untrained prefix is the prompt."""
    def split(side: str) -> tuple[list[int], list[int]]:
        ids, labels = pair[f"{side}_input_ids"], pair[f"{side}_labels"]
        k = next(i for i, lab in enumerate(labels) if lab != -100)
        return ids[:k], ids[k:]
    pc, c = split("chosen")
    pr, r = split("rejected")
    k = 0
    while k < min(len(pc), len(pr)) and pc[k] == pr[k]:
        k += 1
    return {"prompt_ids": pc[:k], "chosen_ids": pc[k:] + c, "rejected_ids": pr[k:] + r}


def trl_dpo(plan, checkpoint: Path, steps: int) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from runner.data.tokenizer import stage_tokenizer
    from runner.stages import dpo
    from runner.stages.kit import load_causal_lm, set_determinism, train_rows

    set_determinism(plan.hp("seed", 0))
    tokenizer = stage_tokenizer(plan, checkpoint)
    model = load_causal_lm(checkpoint)
    reference = copy.deepcopy(model).eval()
    pairs, _ = dpo.encode_pairs(plan, train_rows(plan), tokenizer)
    data = Dataset.from_list([_trl_pair(pairs[i]) for i in _ordered(plan, len(pairs), steps)])
    counter, box = Counter(), {}
    count_tokens(model, counter)
    # Our loss types map onto TRL's: dpo_norm (length-normalised log-probs) = sigmoid_norm, sigmoid = sigmoid.
    loss = {"dpo_norm": "sigmoid_norm", "sigmoid": "sigmoid"}.get(plan.hp("dpo_loss_type", "sigmoid"), "sigmoid")
    args = DPOConfig(**_trl_common(plan, steps, _SCRATCH / "trl-dpo"), beta=plan.hp("dpo_beta"), loss_type=[loss],
                     max_length=None, precompute_ref_log_probs=False)

    class PreTokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, *a, **k):
            return dataset  # already prompt_ids / chosen_ids / rejected_ids, from our encoding

    trainer = _sequential(PreTokenized)(model=model, ref_model=reference, args=args, train_dataset=data,
                                        processing_class=tokenizer, callbacks=[_timing_callback(box)])
    with contextlib.redirect_stdout(io.StringIO()):  # the end-of-training metrics dict
        trainer.train()
    return {"seconds": box["end"] - box["start"], "tokens": counter.tokens}


# ---------------------------------------------------------------- main


def recorded_dpo_epochs(reg) -> int:
    """The SmolLM2 1.7B DPO's recorded epochs: where a cached reference is reused, it is reused this often."""
    return int(reg.stage("smollm2-1.7b", "dpo").hyperparameters["epochs"].value)


def full_epochs(reg, recipe: str, epochs: int, reps: int) -> None:
    """Cached vs live reference DPO over whole epochs, where the cache pays: each pair's reference forward
    runs once instead of once per epoch. Three variants of the real stage, alternated per repetition:
    live reference, the cache as one forward per pair (as before), the cache batched by padded width."""
    from runner.stages import dpo

    sft = run_stage(reg, recipe, "sft", 8)  # any SFT checkpoint: the reference pass costs the same
    sets = {"epochs": epochs}
    rows: dict[str, list[dict]] = {"live": [], "cached_per_pair": [], "cached": []}
    for rep in range(reps):
        names = list(rows) if rep % 2 == 0 else list(rows)[::-1]
        for name in names:
            saved = dpo.CACHE_PAIRS_PER_FORWARD
            if name == "cached_per_pair":
                dpo.CACHE_PAIRS_PER_FORWARD = 1  # one pair per forward: the cache before width batching
            try:
                out = run_stage(reg, recipe, "dpo", None, {"init": str(sft["checkpoint"])},
                                reference_mode="live" if name == "live" else "cached", sets=sets)
            finally:
                dpo.CACHE_PAIRS_PER_FORWARD = saved
            rows[name].append(out)
    live = rows["live"][0]
    print(f"\nfull epochs: {recipe} smoke DPO, {epochs} epochs ({live['steps']} optimizer steps), median of {reps}")
    print(f"{'run':36} {'wall s':>8} {'cache s':>8} {'CPU s':>8} {'cache CPU s':>11} {'tokens/s':>9}")
    med, cpu = {}, {}
    for name, label in (("live", "live reference"), ("cached_per_pair", "cached, one pair per forward"),
                        ("cached", "cached, batched by padded width")):
        secs = statistics.median(r["seconds"] for r in rows[name])
        setup = statistics.median(r["setup_seconds"] for r in rows[name])
        med[name] = secs
        cpu[name] = (statistics.median(r["cpu_seconds"] for r in rows[name]),
                     statistics.median(r["cpu_setup_seconds"] for r in rows[name]))
        print(f"{label:36} {secs:8.3f} {setup:8.3f} {cpu[name][0]:8.3f} {cpu[name][1]:11.3f} "
              f"{rows[name][0]['tokens'] / secs:9.0f}")
    for name in ("cached_per_pair", "cached"):
        identical = all(r["losses"] == live["losses"] for r in rows[name])
        assert len(rows[name][0]["losses"]) == len(live["losses"])
        print(f"  {name}: per-step losses {'bit-identical to' if identical else 'DIFFER from'} live over "
              f"{len(live['losses'])} steps")
    ratio, before = med["live"] / med["cached"], med["live"] / med["cached_per_pair"]
    cpu_ratio = cpu["live"][0] / cpu["cached"][0]
    # Where the ratio can go (CPU time, the load-independent measure): the cached run minus its cache pass
    # is the policy's training alone, and live minus that is what the live reference's forwards cost over
    # the E epochs. A free cache would give live / training alone; the target needs the cache pass to cost
    # at most live / target - training.
    training = cpu["cached"][0] - cpu["cached"][1]
    per_epoch = (cpu["live"][0] - training) / epochs
    budget = cpu["live"][0] / TARGET_CACHED - training
    print(f"  CPU time: live reference forwards ≈ {per_epoch:.3f} s per epoch; cache pass {cpu['cached'][1]:.3f} s "
          f"({cpu['cached'][1] / per_epoch:.2f} of one epoch's); ceiling with a free cache "
          f"{cpu['live'][0] / training:.2f}x; {TARGET_CACHED}x needs a cache pass ≤ {budget:.3f} s")
    print(f"SUMMARY full epochs ({epochs}): cached vs live {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time (target >= "
          f"{TARGET_CACHED}x: {'MET' if min(ratio, cpu_ratio) >= TARGET_CACHED else 'MISSED'}); "
          f"one-pair-per-forward cache {before:.2f}x wall, {cpu['live'][0] / cpu['cached_per_pair'][0]:.2f}x CPU; "
          f"ceiling {cpu['live'][0] / training:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 steps, 1 repetition")
    parser.add_argument("--full-epochs", action="store_true",
                        help="only cached vs live DPO, over whole epochs (no --steps cap)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs for --full-epochs (default: the SmolLM2 1.7B DPO's recorded count)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 24)")
    parser.add_argument("--reps", type=int, default=None, help="repetitions, median kept (default 3)")
    parser.add_argument("--recipe", default="tulu3-8b")
    args = parser.parse_args()
    steps = args.steps or (8 if args.quick else 24)
    reps = args.reps or (1 if args.quick else 3)

    from registry.recipes import load_recipes

    reg = load_recipes()
    threads = os.environ.get("REPRO_TORCH_THREADS", "1")
    if args.full_epochs:
        print(f"{threads} torch thread(s), {os.cpu_count()} CPUs, CPU float32")
        try:
            full_epochs(reg, args.recipe, args.epochs or recorded_dpo_epochs(reg), args.reps or 3)
        finally:
            shutil.rmtree(_SCRATCH, ignore_errors=True)
        return
    print(f"{args.recipe} smoke miniature, {steps} optimizer steps per run, median of {reps}, CPU float32, "
          f"{threads} torch thread(s), {os.cpu_count()} CPUs")
    try:
        rows = {k: [] for k in ("sft", "trl_sft", "dpo_live", "dpo_cached", "trl_dpo")}
        checkpoint = None
        losses: dict[str, list[float]] = {}
        for rep in range(reps):
            # Alternate which side goes first so drift in machine load does not favour one side.
            sft_runs = [("sft", None), ("trl_sft", None)]
            for name, _ in (sft_runs if rep % 2 == 0 else sft_runs[::-1]):
                if name == "sft":
                    out = run_stage(reg, args.recipe, "sft", steps)
                    checkpoint = checkpoint or out["checkpoint"]
                    plan_sft = out["plan"]
                else:
                    from runner.plan import resolve
                    out = trl_sft(resolve(reg, args.recipe, "sft", "smoke"), steps)
                rows[name].append(out)
            dpo_runs = ["dpo_live", "dpo_cached", "trl_dpo"]
            for name in (dpo_runs if rep % 2 == 0 else dpo_runs[::-1]):
                if name == "trl_dpo":
                    from runner.plan import resolve
                    out = trl_dpo(resolve(reg, args.recipe, "dpo", "smoke"), Path(checkpoint), steps)
                else:
                    mode = name.split("_")[1]
                    out = run_stage(reg, args.recipe, "dpo", steps, {"init": str(checkpoint)}, reference_mode=mode)
                    if rep == 0:
                        losses[mode] = out["losses"]
                rows[name].append(out)
        del plan_sft

        def med(name: str) -> tuple[float, int]:
            secs = statistics.median(r["seconds"] for r in rows[name])
            return secs, rows[name][0]["tokens"]

        table = {}
        print(f"\n{'run':44} {'seconds':>8} {'tokens':>8} {'tokens/s':>9}")
        labels = {"sft": "repro sft stage", "trl_sft": "TRL SFTTrainer",
                  "dpo_live": "repro dpo stage, live reference",
                  "dpo_cached": "repro dpo stage, cached reference (incl. cache)",
                  "trl_dpo": "TRL DPOTrainer (live ref)"}
        for name, label in labels.items():
            secs, tokens = med(name)
            table[name] = tokens / secs
            print(f"{label:44} {secs:8.3f} {tokens:8d} {tokens / secs:9.0f}")
        for a, b in (("sft", "trl_sft"), ("dpo_live", "trl_dpo"), ("dpo_cached", "dpo_live")):
            if rows[a][0]["tokens"] != rows[b][0]["tokens"]:
                print(f"WARNING: token counts differ between {a} and {b}: "
                      f"{rows[a][0]['tokens']} vs {rows[b][0]['tokens']}")
        cached_setup = statistics.median(r["setup_seconds"] for r in rows["dpo_cached"])
        live_setup = statistics.median(r["setup_seconds"] for r in rows["dpo_live"])
        print(f"(dpo: reference copy + cache before the loop: cached {cached_setup:.3f} s, live {live_setup:.3f} s)")

        live, cached = losses["live"], losses["cached"]
        diff = max(abs(a - b) for a, b in zip(live, cached)) if live else float("nan")
        identical = len(live) == len(cached) and diff == 0.0
        assert len(live) == len(cached) and diff <= 1e-6, f"cached vs live DPO losses differ by {diff}"
        sft_x = table["sft"] / table["trl_sft"]
        dpo_x = table["dpo_live"] / table["trl_dpo"]
        cache_x = table["dpo_cached"] / table["dpo_live"]
        print(f"\nsft vs TRL SFTTrainer: {sft_x:.2f}x   dpo (live) vs TRL DPOTrainer (live): {dpo_x:.2f}x   "
              f"cached vs live: {cache_x:.2f}x; per-step losses over {len(live)} steps "
              f"{'bit-identical' if identical else f'max |diff| {diff:.2e}'}")

        def verdict(ok: bool) -> str:
            return "MET" if ok else "MISSED"
        print(f"SUMMARY sft {sft_x:.2f}x TRL (target >= {TARGET_VS_TRL}x: {verdict(sft_x >= TARGET_VS_TRL)}), "
              f"dpo {dpo_x:.2f}x TRL ({verdict(dpo_x >= TARGET_VS_TRL)}), cached DPO {cache_x:.2f}x live "
              f"(target >= {TARGET_CACHED}x: {verdict(cache_x >= TARGET_CACHED)}), losses "
              f"{'identical' if identical else f'within {diff:.1e}'}")
    finally:
        shutil.rmtree(_SCRATCH, ignore_errors=True)


if __name__ == "__main__":
    main()
