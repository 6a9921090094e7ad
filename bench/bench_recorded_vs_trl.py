"""repro's recorded-semantics training against TRL 0.12's trainers on the same model and batches (CPU).

One run does both sides on SmolLM2-135M-Instruct (the PyPI GGUF conversion, runner/published.py):
  * repro: the smollm2-135m DPO (or packed SFT) stage through runner.execute, recorded hyperparameters,
    `--steps` updates (runner/replay/compare.py);
  * TRL: DPOTrainer / SFTTrainer of TRL 0.12.2 with transformers 4.46.3 in the side venv
    (runner/replay/trl012.py), handed exactly the rows of those updates in the same order.
Both run with the same torch (2.13.0 CPU) and thread count. Seconds are per update, measured inside each
trainer (forwards, backwards, clipping, optimizer step; the first update is a warm-up and not counted when
there are more); tokens are the update's non-padding tokens, the same on both sides. The ratio is
repro tokens/s over TRL tokens/s (> 1: repro is faster). Sides alternate over `--repeats`; best kept.

    .venv/bin/python bench/bench_recorded_vs_trl.py --stage dpo --steps 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _seconds(steps: list[float]) -> float:
    kept = steps[1:] if len(steps) > 1 else steps
    return sum(kept) / len(kept)


class CpuClock:
    """Process CPU time between consecutive updates of repro's stage (the progress hook runs after each);
    update 1 (from the first call) and the last update (it also saves resumable state) are not counted."""

    def __init__(self) -> None:
        import time

        self.marks: list[float] = []
        self._now = time.process_time

    def __call__(self, _metrics: dict) -> None:
        self.marks.append(self._now())

    def per_update(self) -> float:
        diffs = [b - a for a, b in zip(self.marks, self.marks[1:])][:-1] or \
            [b - a for a, b in zip(self.marks, self.marks[1:])]
        return sum(diffs) / len(diffs)


def dpo_tokens(plan: Any, request: dict, steps: int) -> list[int]:
    from runner.data.tokenizer import stage_tokenizer
    from runner.stages import dpo
    from runner.stages.kit import train_rows

    tok = stage_tokenizer(plan, Path(request["model"]))
    pairs, _ = dpo.encode_pairs(plan, train_rows(plan), tok)
    per = len(request["picked"]) // steps
    return [sum(len(pairs[j]["chosen_input_ids"]) + len(pairs[j]["rejected_input_ids"])
                for j in request["picked"][u * per:(u + 1) * per]) for u in range(steps)]


def bench(stage: str, steps: int, accumulation: int, threads: int, repeats: int, length: int) -> dict:
    from runner import published
    from runner.data.tokenizer import stage_tokenizer
    from runner.replay import compare, trl012

    os.environ["REPRO_TORCH_THREADS"] = str(threads)
    folder = published.ensure_smollm2_135m_instruct()
    best_ours = best_trl = None
    cpu_ours: list[float] = []
    cpu_trl: list[float] = []
    tokens: list[int] = []
    for _ in range(repeats):
        home = tempfile.mkdtemp(prefix="repro-bench-trl-")
        try:
            os.environ["REPRO_HOME"], os.environ["REPRO_RUNS_DIR"] = home, os.path.join(home, "runs")
            from registry import db

            db._engine_for.cache_clear()
            if stage == "dpo":
                plan = compare.dpo_plan(folder, accumulation)
                request = compare.dpo_request(plan, folder, steps=steps, threads=threads)
                tokens = dpo_tokens(plan, request, steps)
            else:
                plan = compare.sft_plan(folder, accumulation, max_seq_length=length, per_device=4)
                request = compare.sft_request(plan, folder, stage_tokenizer(plan, folder), steps=steps, threads=threads)
                per = len(request["picked"]) // steps
                tokens = [per * length] * steps
            clock = CpuClock()
            from runner.execute import execute

            record = execute(plan, plan.inputs, max_updates=steps, progress=clock)
            ours = _seconds([s["seconds"] for s in record.steps])
            reply = trl012.run(request)
            theirs = _seconds([u["seconds"] for u in reply["updates"]])
            best_ours = ours if best_ours is None else min(best_ours, ours)
            best_trl = theirs if best_trl is None else min(best_trl, theirs)
            cpu_ours.append(clock.per_update())
            cpu_trl.append(_seconds([u["cpu_seconds"] for u in reply["updates"]][:-1] or
                                    [u["cpu_seconds"] for u in reply["updates"]]))
            loss_pairs = [(s["loss"], u["loss"]) for s, u in zip(record.steps, reply["updates"])]
        finally:
            # a run writes a checkpoint and resumable state (~2 GB); the scratch home goes with it
            shutil.rmtree(home, ignore_errors=True)

    tok = sum(tokens[1:]) / max(len(tokens) - 1, 1) if len(tokens) > 1 else tokens[0]
    return {"stage": stage, "steps": steps, "accumulation": accumulation, "threads": threads,
            "tokens_per_update": tok, "repro_s": best_ours, "trl_s": best_trl,
            "repro_tok_s": tok / best_ours, "trl_tok_s": tok / best_trl, "ratio": best_trl / best_ours,
            "cpu_repro_s": min(cpu_ours), "cpu_trl_s": min(cpu_trl), "cpu_ratio": min(cpu_trl) / min(cpu_ours),
            "losses": loss_pairs, "versions": reply["versions"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stage", choices=("dpo", "sft", "both"), default="both")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--accumulation", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--sft-length", type=int, default=256, help="packed block length (recorded: 8192)")
    ap.add_argument("--quick", action="store_true", help="2 updates, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats = 3, 1
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    stages = ("dpo", "sft") if args.stage == "both" else (args.stage,)
    summary = []
    for stage in stages:
        r = bench(stage, args.steps, args.accumulation, args.threads, args.repeats, args.sft_length)
        print(f"{stage}: {r['steps']} updates, GA {r['accumulation']}, {r['threads']} thread(s), "
              f"{r['tokens_per_update']:.0f} tokens/update | repro {r['repro_s']:.2f} s/update "
              f"{r['repro_tok_s']:.1f} tok/s | TRL {r['versions']['trl']} (transformers "
              f"{r['versions']['transformers']}) {r['trl_s']:.2f} s/update {r['trl_tok_s']:.1f} tok/s | "
              f"ratio {r['ratio']:.2f}x (wall) | CPU s/update repro {r['cpu_repro_s']:.2f} TRL {r['cpu_trl_s']:.2f} "
              f"ratio {r['cpu_ratio']:.2f}x (CPU)")
        # Update 1 agrees exactly (DPO) or up to transformers 4.46's (L-1)/L token count (SFT); later updates
        # follow the same schedule, so they agree as far as the float noise of different kernels allows.
        print("  losses (repro, TRL): " + ", ".join(f"({a:.6f}, {b:.6f})" for a, b in r["losses"]))
        summary.append(f"{stage} {r['ratio']:.2f}x wall / {r['cpu_ratio']:.2f}x CPU")
    print("SUMMARY repro/TRL 0.12 tokens/s (target >= 1.0x): " + ", ".join(summary))


if __name__ == "__main__":
    main()
