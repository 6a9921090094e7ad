"""GPU check: the recorded profile of smollm2-135m SFT on the real model, 50 updates in bf16, one summary line.

    PYTHONPATH=. python bench/gpu_check.py                  # one GPU: tokens/s, MFU, peak memory
    PYTHONPATH=. python bench/gpu_check.py --cpu-dry        # 2 small updates on CPU (fp32): checks the script

It runs what a user runs: `repro run smollm2-135m --stage sft` in the recorded profile (bf16, the recorded
packing, schedule and chat template), through the recorded launcher (accelerate + DeepSpeed ZeRO-3, here
rescaled by the planner to `--gpus 1`, which keeps the effective batch of 128 packed sequences), started
from the real SmolLM2-135M-Instruct weights (runner/published.py; a recorded deviation: the recorded init
is the base model) over a mirror of smol-smoltalk built from the fixture conversations, repeated until the
50 updates have data (throughput, not quality, is measured).

Sizing, from the recording: 50 updates × 128 sequences × 8192 tokens = 52M tokens. At the 30-40% MFU a
135M model reaches on an H100/H200 that is ~4-6 minutes of training; the launch, model load and the
tokenization of the mirror come on top. `--seq` / `--steps` shrink it (each a `--set` deviation).

Prints one line: tokens/s over the timed updates (all but the first), MFU (6·N + attention FLOPs per
token, PaLM appendix B, without the gradient-checkpointing recompute), peak GPU memory of rank 0.
Exit 1 if the run fails, 2 when the machine cannot run it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the source tree, without installing it

# Dense bf16 peak per GPU (no sparsity), from the vendor datasheets; PCIe/NVL parts are lower.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H100 PCIe": 756.0, "A100": 312.0}
RECIPE, STAGE = "smollm2-135m", "sft"
DATASET = ("HuggingFaceTB", "smol-smoltalk")


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key]
    return None


def train_flops_per_token(config: Any, seq: int) -> float:
    """6·N for the matmuls (forward + backward) + 12·L·d·s for attention scores (PaLM appendix B)."""
    head = config.hidden_size // config.num_attention_heads
    per_layer = (config.hidden_size * config.hidden_size * 2  # q, o
                 + config.hidden_size * head * config.num_key_value_heads * 2  # k, v
                 + 3 * config.hidden_size * config.intermediate_size)  # SwiGLU
    # The embedding lookup is not a matmul; the LM head is (tied or not, it is one vocab × d matmul).
    n = config.num_hidden_layers * per_layer + config.vocab_size * config.hidden_size
    return 6 * n + 12 * config.num_hidden_layers * config.hidden_size * seq


def build_mirror(root: Path, rows_needed: int) -> Path:
    """DIR/<org>/<name>/data/train-*.parquet as the Hub repo lays it out, from the fixture conversations.

    Each mirror row joins consecutive fixture conversations into one long one, so packing fills its
    8192-token sequences from fewer rows (the tokenizer's time stays small next to training)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from runner.data.fixtures import FIXTURES_ROOT

    source = [json.loads(line) for line in (FIXTURES_ROOT / "smollm2" / "smoltalk.jsonl").read_text().splitlines()]
    per_row = 64
    rows = []
    for i in range(rows_needed):
        messages = []
        for j in range(per_row):
            messages += source[(i * per_row + j) % len(source)]["messages"]
        rows.append({"messages": messages, "source": "gpu_check"})
    folder = root / DATASET[0] / DATASET[1] / "data"
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), folder / "train-00000-of-00001.parquet")
    return root


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    from registry.cli import run_app
    from runner.cli import app

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = run_app(app, argv)
    return code, out.getvalue(), err.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="optimizer updates (default 50)")
    parser.add_argument("--seq", type=int, default=None, help="max_seq_length instead of the recorded 8192")
    parser.add_argument("--init", type=Path, default=None, help="model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--cpu-dry", action="store_true", help="2 tiny updates on CPU in fp32: checks the script")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of one line")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu_dry:
        print("gpu_check: no CUDA device (use --cpu-dry to check the script on CPU)", file=sys.stderr)
        return 2
    from runner import published

    init = args.init or published.ensure_smollm2_135m_instruct()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        # A registry of its own: the check leaves no run in the user's database or runs folder.
        os.environ.update(REPRO_HOME=str(Path(tmp) / "home"), REPRO_RUNS_DIR=str(Path(tmp) / "runs"))
        os.environ.pop("REPRO_DATABASE_URL", None)
        sets: list[str] = []
        if args.cpu_dry:
            args.steps, args.seq = 2, args.seq or 256
            extra = ["--device", "cpu", "--precision", "fp32", "--set", "num_processes=1",
                     "--set", "per_device_batch_size=1", "--set", "gradient_accumulation_steps=1"]
        else:
            extra = ["--gpus", "1"]
        if args.seq:
            sets += ["--set", f"max_seq_length={args.seq}"]
        seq = args.seq or 8192
        mirror = build_mirror(Path(tmp) / "mirror", rows_needed=2 * args.steps * (4 if args.cpu_dry else 128))
        cmd = ["run", RECIPE, "--stage", STAGE, "--hub-mirror", str(mirror), "--input", f"init={init}",
               "--max-steps", str(args.steps), "--output-dir", str(Path(tmp) / "run"), *extra, *sets, "--json"]
        code, out, err = run_cli(cmd)
        if code != 0:
            print(f"gpu_check: repro {' '.join(cmd)} exited {code}: {err.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1 if code == 1 else 2
        run_dir = Path(json.loads(out)["run_dir"])
        record = json.loads((run_dir / "run.json").read_text())
    hp = record["plan"]["hyperparameters"]
    steps = record["steps"]
    timed = steps[1:] or steps  # the first update pays for allocation and kernel selection
    tokens_per_update = int(hp["num_processes"]) * int(hp["per_device_batch_size"]) * \
        int(hp["gradient_accumulation_steps"]) * int(hp["max_seq_length"])  # packed: full sequences
    seconds = sum(s["seconds"] for s in timed)
    from transformers import AutoConfig

    flops = train_flops_per_token(AutoConfig.from_pretrained(init), int(hp["max_seq_length"]))
    tokens_per_s = tokens_per_update * len(timed) / seconds
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = peak_tflops(name, args.peak_tflops) if cuda else None
    dist = record["plan"]["extra"].get("distributed") or {}
    summary = {"device": name, "recipe": f"{RECIPE}:{STAGE}", "profile": record["profile"],
               "precision": hp.get("precision"), "seq": seq, "updates": len(steps),
               "tokens_per_update": tokens_per_update, "tokens_per_s": round(tokens_per_s, 1),
               "tflops": round(tokens_per_s * flops / 1e12, 3),
               "mfu": round(tokens_per_s * flops / 1e12 / peak, 4) if peak else None,
               "peak_mem_gib": dist.get("peak_memory_gib"), "loss_last": steps[-1]["loss"],
               "launch": (record["plan"]["extra"].get("launch") or {}).get("commands"),
               "deviations": [d["key"] for d in record["plan"]["deviations"]],
               "seconds": round(time.perf_counter() - started, 1)}
    if args.json:
        print(json.dumps(summary))
        return 0
    mfu = f"{100 * summary['mfu']:.1f}%" if summary["mfu"] is not None else "n/a"
    mem = f"{summary['peak_mem_gib']:.1f}GiB" if summary["peak_mem_gib"] is not None else "n/a"
    print(f"gpu_check {summary['recipe']} recorded profile on {name!r} ({summary['precision']}, seq {seq}): "
          f"{len(steps)} updates, tokens/s={summary['tokens_per_s']:.0f} mfu={mfu} tflops={summary['tflops']:.1f} "
          f"peak_mem={mem} loss_last={summary['loss_last']:.4g} total={summary['seconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
