"""GPU check: a recorded-architecture proxy through the SFT and DPO training code, one summary line.

    PYTHONPATH=. python bench/gpu_check.py            # 1B Llama proxy, sequence 4096, bf16, SDPA
    PYTHONPATH=. python bench/gpu_check.py --tiny     # a seconds-long CPU/GPU self-test of the script

The proxy is a ~1.2B Llama (Llama-3 shape: GQA 32/8 heads, SwiGLU, 128k vocabulary) standing in for the
recorded 8B at the recorded sequence length; each stage takes a few optimizer updates through
runner.trainer.Trainer (the loop every supervised stage uses) with runner.losses' SFT loss (`sum` over
trainable tokens, as Tülu 3) and DPO loss (sigmoid, live reference, chosen+rejected in one forward, as
runner/stages/dpo.py batches them). Data are random token ids: no tokenizer, dataset or network needed.

Runs on a bare box with torch, transformers and accelerate only: it imports nothing from runner that
needs the registry database (no sqlalchemy/pydantic), and the project need not be installed.
Prints one line: tokens/s, MFU and peak memory per stage. Exit 1 if a stage fails (OOM included).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the source tree, without installing it

import torch  # noqa: E402

# Dense bf16 peak per GPU (no sparsity), from the vendor datasheets; PCIe/NVL parts are lower.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H100 PCIe": 756.0, "A100": 312.0}


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    for key in sorted(PEAK_TFLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_TFLOPS[key]
    return None


def proxy_config(tiny: bool):  # noqa: ANN201
    from transformers import LlamaConfig

    if tiny:
        return LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                           rope_theta=500000.0, tie_word_embeddings=False)
    # Llama-3.2-1B's shape with untied embeddings: the 8B's layer structure at a size one GPU trains quickly.
    return LlamaConfig(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                       rope_theta=500000.0, tie_word_embeddings=False)


def build_model(config, device: torch.device, dtype: torch.dtype):  # noqa: ANN001, ANN201
    from transformers import LlamaForCausalLM

    config._attn_implementation = "sdpa"
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in bf16 directly on the device: no fp32 copy of 1B params on the host
    try:
        with device:
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def train_flops_per_token(config, seq: int) -> float:  # noqa: ANN001
    """6·N for the matmuls (forward + backward) + 12·L·d·s for attention scores (PaLM appendix B)."""
    n = sum([config.vocab_size * config.hidden_size * 2,  # embeddings + LM head
             config.num_hidden_layers * (
                 config.hidden_size * config.hidden_size * 2  # q, o
                 + config.hidden_size * (config.hidden_size // config.num_attention_heads)
                 * config.num_key_value_heads * 2  # k, v
                 + 3 * config.hidden_size * config.intermediate_size)])  # SwiGLU
    # The embedding lookup is not a matmul: count the LM head once.
    n -= config.vocab_size * config.hidden_size
    return 6 * n + 12 * config.num_hidden_layers * config.hidden_size * seq


def make_trainer(model, steps: int, state_dir: Path):  # noqa: ANN001, ANN201
    from runner.trainer import LoopConfig, Trainer

    cfg = LoopConfig(per_device=1, accumulation=1, learning_rate=1e-5, total_updates=steps, scheduler="linear",
                     warmup_steps=0, seed=0, max_grad_norm=1.0, checkpoint_every=10 ** 9)
    return Trainer(list(model.parameters()), cfg, state_dir, {"model": model})


def run_sft(config, args, device, dtype, state_dir: Path) -> dict[str, float]:  # noqa: ANN001
    from runner import losses

    model = build_model(config, device, dtype)
    trainer = make_trainer(model, args.steps + args.warmup, state_dir)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq), generator=gen).to(device)
    labels = ids.clone()
    labels[:, : args.seq // 4] = losses.IGNORE_INDEX  # a prompt part that does not train, as in SFT

    def loss_fn(_batch, _i):  # noqa: ANN001, ANN202
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        return losses.sft_loss(logits, labels, "sum"), {}

    return _timed(trainer, loss_fn, args, device, tokens_per_step=args.batch * args.seq,
                  flops_per_step=train_flops_per_token(config, args.seq) * args.batch * args.seq)


def run_dpo(config, args, device, dtype, state_dir: Path) -> dict[str, float]:  # noqa: ANN001
    from runner import losses

    policy = build_model(config, device, dtype)
    reference = build_model(config, device, dtype).eval()
    reference.load_state_dict(policy.state_dict())
    for p in reference.parameters():
        p.requires_grad_(False)
    trainer = make_trainer(policy, args.steps + args.warmup, state_dir)
    gen = torch.Generator().manual_seed(1)
    half = args.seq // 2
    prompt = torch.randint(0, config.vocab_size, (args.batch, half), generator=gen)
    chosen = torch.cat([prompt, torch.randint(0, config.vocab_size, (args.batch, args.seq - half), generator=gen)], 1)
    rejected = torch.cat([prompt, torch.randint(0, config.vocab_size, (args.batch, args.seq - half), generator=gen)], 1)
    ids = torch.cat([chosen, rejected], 0).to(device)  # chosen and rejected in one forward, as the DPO stage does
    labels = ids.clone()
    labels[:, :half] = losses.IGNORE_INDEX
    mask = torch.ones_like(ids)
    n = args.batch

    def logps(model):  # noqa: ANN001, ANN202
        out = losses.sequence_logps(model(input_ids=ids, attention_mask=mask).logits, labels)
        return out[:n], out[n:]

    def loss_fn(_batch, _i):  # noqa: ANN001, ANN202
        pc, pr = logps(policy)
        with torch.no_grad():
            rc, rr = logps(reference)
        per_pair, _, _ = losses.dpo_loss(pc, pr, rc, rr, beta=0.1, loss_type="sigmoid")
        return per_pair.mean(), {}

    # Policy forward + backward over 2·batch sequences, plus the reference forward (2·N per token).
    tokens = 2 * n * args.seq
    flops = tokens * (train_flops_per_token(config, args.seq) * (1 + 1 / 3))
    return _timed(trainer, loss_fn, args, device, tokens_per_step=tokens, flops_per_step=flops)


def _timed(trainer, loss_fn, args, device, *, tokens_per_step: int, flops_per_step: float) -> dict[str, float]:  # noqa: ANN001
    cuda = device.type == "cuda"
    for _ in range(args.warmup):
        trainer.step([[None]], loss_fn)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    losses_seen = []
    for _ in range(args.steps):
        losses_seen.append(trainer.step([[None]], loss_fn)["loss"])
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - started
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses_seen)):
        raise RuntimeError(f"non-finite loss: {losses_seen}")
    out = {"tokens_per_s": tokens_per_step * args.steps / elapsed, "step_s": elapsed / args.steps,
           "tflops": flops_per_step * args.steps / elapsed / 1e12, "loss_last": losses_seen[-1]}
    out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30 if cuda else float("nan")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 4096; --tiny 128)")
    parser.add_argument("--batch", type=int, default=1, help="sequences (pairs for DPO) per step")
    parser.add_argument("--steps", type=int, default=4, help="timed optimizer updates per stage")
    parser.add_argument("--warmup", type=int, default=1, help="untimed updates first (allocator, kernels)")
    parser.add_argument("--stages", default="sft,dpo")
    parser.add_argument("--tiny", action="store_true", help="a tiny model: checks the script, not the GPU")
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the device's bf16 peak")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of one line")
    args = parser.parse_args(argv)
    args.seq = args.seq or (128 if args.tiny else 4096)
    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        print("gpu_check: no CUDA device (use --tiny to self-test the script on CPU)", file=sys.stderr)
        return 2
    device = torch.device("cuda" if cuda else "cpu")
    dtype = torch.bfloat16 if cuda else torch.float32
    name = torch.cuda.get_device_name(0) if cuda else "cpu"
    peak = peak_tflops(name, args.peak_tflops) if cuda else None
    config = proxy_config(args.tiny)
    torch.manual_seed(0)
    results: dict[str, dict[str, float]] = {}
    started = time.perf_counter()
    runners = {"sft": run_sft, "dpo": run_dpo}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in [s for s in args.stages.split(",") if s]:
            try:
                results[stage] = runners[stage](config, args, device, dtype, Path(tmp) / stage)
            except torch.OutOfMemoryError as exc:
                print(f"gpu_check: {stage} ran out of GPU memory at seq {args.seq}: {str(exc).splitlines()[0]}",
                      file=sys.stderr)
                return 1
            if peak:
                results[stage]["mfu"] = results[stage]["tflops"] / peak
            if cuda:
                torch.cuda.empty_cache()
    summary = {"device": name, "model": "tiny" if args.tiny else "llama-1.2b-proxy", "seq": args.seq,
               "dtype": str(dtype).replace("torch.", ""), "attn": "sdpa", "torch": torch.__version__,
               "seconds": round(time.perf_counter() - started, 1), **results}
    if args.json:
        print(json.dumps(summary))
        return 0
    parts = [f"gpu_check device={name!r} model={summary['model']} seq={args.seq} dtype={summary['dtype']} sdpa"]
    for stage, r in results.items():
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
        parts.append(f"{stage}: tokens/s={r['tokens_per_s']:.0f} mfu={mfu} tflops={r['tflops']:.1f} "
                     f"peak_mem={r['peak_mem_gib']:.1f}GiB step={r['step_s']:.2f}s")
    parts.append(f"total={summary['seconds']}s")
    print(" | ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
