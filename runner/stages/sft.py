"""Supervised fine-tuning, as the recorded code did it.

Tülu 3 (open-instruct finetune.py @3dd7a07da): the `tulu` template, only
assistant content + EOS trains (the `<|assistant|>\\n` header is masked, spans
from token counts of prefix renders), rows with nothing trainable dropped,
loss reduction `sum` over the micro-batch's trainable tokens, per-device 1,
linear schedule with int(T·ratio) warmup, AdamW torch defaults, clip 1.0.

SmolLM2 (alignment-handbook ae3f44f run_sft.py + TRL SFTTrainer): ChatML text
with an empty system turn inserted, packed into constant-length blocks where
every token trains, mean loss per micro-batch, cosine schedule with
ceil(T·ratio) warmup (HF Trainer).
"""

from __future__ import annotations

import random
from typing import Any

from runner import losses
from runner.data import masking
from runner.data.tokenizer import fixture_tokenizer, stage_tokenizer
from runner.stages.kit import (
    StageContext,
    build_trainer,
    fresh_causal_lm,
    init_model,
    input_path,
    load_causal_lm,
    on_device,
    run_loop,
    save_checkpoint,
    set_determinism,
    train_rows,
    write_metrics_file,
)


def encode(plan, rows: list[dict[str, Any]], tokenizer) -> tuple[list[dict[str, list[int]]], int]:
    """Encoded examples and the number of rows dropped (nothing left to train after truncation)."""
    max_len = plan.hp("max_seq_length")
    if plan.family == "tulu3":
        out, dropped = [], 0
        for row in rows:
            example = masking.encode_sft_example(row["messages"], tokenizer, plan.chat_template, max_len)
            if example is None:
                dropped += 1
            else:
                out.append(example)
        return out, dropped
    streams = [masking.encode_chatml_sft_text(row["messages"], tokenizer)["input_ids"] for row in rows]
    if not plan.hp("packing", False):
        return [{"input_ids": s[:max_len], "labels": s[:max_len], "attention_mask": [1] * len(s[:max_len])}
                for s in streams], 0
    # TRL's ConstantLengthDataset shuffles with Python's global RNG; a seeded local RNG keeps reruns identical.
    order = list(range(len(streams)))
    random.Random(plan.seed).shuffle(order)
    blocks = masking.pack_constant_length([streams[i] for i in order], max_len, tokenizer.eos_token_id)
    return [{"input_ids": b, "labels": list(b), "attention_mask": [1] * len(b)} for b in blocks], 0


def run(ctx: StageContext) -> dict[str, Any]:
    plan = ctx.plan
    set_determinism(plan.seed)
    parent = input_path(plan, "init")
    if plan.profile == "recorded":
        tokenizer, model = init_model(plan)  # --input, the mirror or the Hub, as recorded
    elif parent is not None:
        tokenizer = stage_tokenizer(plan, parent, foreign=True)  # a base model: it learns the plan's template
        model = load_causal_lm(parent)
    else:
        tokenizer = fixture_tokenizer(plan)
        model = fresh_causal_lm(plan, tokenizer, "the recorded base model cannot be loaded offline on CPU; "
                                "a randomly initialised miniature of the same architecture stands in")
    rows = train_rows(plan)
    examples, dropped = encode(plan, rows, tokenizer)
    reduction = plan.hp("loss_reduction", "mean")
    pad = tokenizer.pad_token_id

    trainer, total = build_trainer(ctx, {"model": model}, list(model.parameters()), len(examples))
    net = trainer.wrapped or model  # under DDP the forward must go through the wrapper

    def loss_fn(batch: list[dict[str, Any]], _index: int):
        tensors = on_device(masking.collate(batch, pad), net)
        logits = net(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
        loss = losses.sft_loss(logits, tensors["labels"], reduction)
        tokens = int((tensors["labels"][:, 1:] != losses.IGNORE_INDEX).sum())
        return loss, {"trainable_tokens": tokens}

    run_loop(ctx, trainer, examples, loss_fn)
    model.eval()
    final = {"train_loss_first": ctx.record.steps[0]["loss"] if ctx.record.steps else None,
             "train_loss_last": ctx.record.steps[-1]["loss"] if ctx.record.steps else None,
             "train_loss_last10_mean": _mean_tail(ctx.record.steps, "loss"),
             "examples": len(examples), "rows_dropped": dropped, "optimizer_steps": total}
    ctx.record.final_metrics.update(final)
    save_checkpoint(ctx, model, tokenizer, datasets=[d["dataset"] for d in plan.datasets],
                    base_model=plan.inputs.get("init", {}).get("checkpoint"))
    write_metrics_file(ctx)
    return final


def _mean_tail(steps: list[dict[str, Any]], key: str, n: int = 10) -> float | None:
    values = [s[key] for s in steps[-n:] if key in s]
    return sum(values) / len(values) if values else None
