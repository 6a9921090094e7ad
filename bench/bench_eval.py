"""Eval engine throughput against lm-evaluation-harness's HF backend, same model, same items, one run.

1. Log-likelihood scoring on PIQA (the SmolLM2 card protocol: chat-templated "Question: …\\nAnswer:"
   contexts, both solutions as continuations): items/s of repro's shared-prefix scorer vs
   `lm_eval.models.huggingface.HFLM.loglikelihood` on the identical (context, continuation) strings.
   The summed log-probabilities of the two engines are compared too (they must agree: both use the
   same whole-string tokenization split), and so are the accuracies.
2. Greedy generation on GSM8K 5-shot prompts (the card protocol): generated tokens/s of repro's
   batched `generate` vs `HFLM.generate_until`, up to --max-new-tokens each, stopping at <|im_end|>.

lm-eval is installed only for this benchmark (`pip install -e '.[bench]'`). The model is the
published SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI, dequantized, float32 on CPU).

    python bench/bench_eval.py --items 200 --gen-items 8 --threads 2 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def piqa_requests(tokenizer, n: int):
    from runner.evaltasks import data as D
    from runner.evaltasks import lighteval_tasks as lt

    docs = [lt.prompt_piqa(r) for r in D.load("piqa:validation").rows]
    picked, _ = lt.select(docs, n)
    return [(lt.context(docs[i], [], tokenizer, True), docs[i]) for i in picked]


def gsm8k_prompts(tokenizer, n: int) -> list[str]:
    from runner.evaltasks import data as D
    from runner.evaltasks import lighteval_tasks as lt

    docs = [lt.prompt_gsm8k(r) for r in D.load("gsm8k:test").rows]
    picked, rnd = lt.select(docs, n)
    out = []
    for i in picked:
        shots = [d for d in rnd.sample(docs, 6) if d is not docs[i]][:5]
        out.append(lt.context(docs[i], shots, tokenizer, True))
    return out


def bench_loglikelihood(model, tokenizer, items, batch_size: int, repeats: int = 1) -> dict:
    """Timed alternately (ours, theirs, ours, …), best of `repeats` each: on a shared machine the load
    drifts, and alternating keeps both engines under the same drift."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from runner.evaltasks import lighteval_tasks as lt
    from runner.evaltasks.engine import LoglikelihoodScorer

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu", max_length=2048)
    t_ours = t_theirs = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()  # tokenization included: it is part of the engine's work
        groups = [lt.loglikelihood_group(tokenizer, ctx, doc.choices) for ctx, doc in items]
        ours = LoglikelihoodScorer(model, max_length=lt.MAX_MODEL_LENGTH).score(groups)
        t_ours = min(t_ours, time.perf_counter() - t0)
        reqs = [Instance(request_type="loglikelihood", doc={}, arguments=(ctx, c), idx=k)
                for ctx, doc in items for k, c in enumerate(doc.choices)]
        t0 = time.perf_counter()
        res = lm.loglikelihood(reqs, disable_tqdm=True)
        t_theirs = min(t_theirs, time.perf_counter() - t0)
    theirs, at = [], 0
    for _, doc in items:
        theirs.append([r[0] for r in res[at:at + len(doc.choices)]])
        at += len(doc.choices)
    diff = max(abs(a - b) for x, y in zip(ours, theirs) for a, b in zip(x, y))
    acc = [sum(lt.acc_norm_nospace(s, d.choices, d.gold) for s, (_, d) in zip(rows, items)) / len(items)
           for rows in (ours, theirs)]
    n = len(items)
    return {"items": n, "repro_items_per_s": n / t_ours, "lm_eval_items_per_s": n / t_theirs,
            "lm_eval_batch_size": batch_size, "speedup": t_theirs / t_ours, "max_abs_logprob_diff": diff,
            "repro_acc_norm": 100 * acc[0], "lm_eval_acc_norm": 100 * acc[1]}


def bench_generation(model, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> dict:
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from runner.evaltasks.engine import Generator

    eos = sorted({tokenizer.eos_token_id, model.generation_config.eos_token_id} - {None})
    enc = [tokenizer.encode(p, add_special_tokens=True) for p in prompts]
    t0 = time.perf_counter()
    _, ours_tokens = Generator(model, tokenizer, batch_size=batch_size).generate(enc, max_new_tokens, eos)
    t_ours = time.perf_counter() - t0

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device="cpu", max_length=2048)
    reqs = [Instance(request_type="generate_until", doc={}, idx=0,
                     arguments=(p, {"until": [tokenizer.eos_token], "max_gen_toks": max_new_tokens,
                                    "do_sample": False}))
            for p in prompts]
    t0 = time.perf_counter()
    outs = lm.generate_until(reqs, disable_tqdm=True)
    t_theirs = time.perf_counter() - t0
    # lm-eval returns text; its token count is the re-tokenized text plus the EOS it stopped at, if any.
    theirs_tokens = sum(min(len(tokenizer.encode(o, add_special_tokens=False)) + 1, max_new_tokens) for o in outs)
    return {"prompts": len(prompts), "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "repro_tokens": ours_tokens, "repro_tokens_per_s": ours_tokens / t_ours,
            "lm_eval_tokens": theirs_tokens, "lm_eval_tokens_per_s": theirs_tokens / t_theirs,
            "speedup": (ours_tokens / t_ours) / (theirs_tokens / t_theirs)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--items", type=int, default=200, help="PIQA items (seeded subset)")
    ap.add_argument("--gen-items", type=int, default=8, help="GSM8K prompts")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="lm-eval's batch size (log-likelihood)")
    ap.add_argument("--gen-batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=2, help="alternating timings per engine, best kept")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        sys.stderr.write("lm-eval is not installed; pip install -e '.[bench]'\n")
        return 2
    import torch

    from runner.evaltasks.run import load_model
    from runner.published import ensure_smollm2_135m_instruct

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(ensure_smollm2_135m_instruct())
    out = {"model": "SmolLM2-135M-Instruct Q4_1 (dequantized, float32)", "threads": torch.get_num_threads()}
    out["loglikelihood_piqa"] = bench_loglikelihood(model, tokenizer, piqa_requests(tokenizer, args.items),
                                                    args.batch_size, args.repeats)
    print(json.dumps(out["loglikelihood_piqa"], indent=1), flush=True)
    if args.gen_items:
        out["generation_gsm8k"] = bench_generation(model, tokenizer, gsm8k_prompts(tokenizer, args.gen_items),
                                                   args.max_new_tokens, args.gen_batch_size)
        print(json.dumps(out["generation_gsm8k"], indent=1), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
