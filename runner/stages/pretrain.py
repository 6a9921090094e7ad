"""SmolLM2 pretraining: causal LM on packed token streams under nanotron's WSD schedule.

As recorded (smollm2.md §1–2, docs/semantics.md): AdamW β = (0.9, 0.95), eps 1e-8,
weight decay 0.01 on every parameter, clipping 1.0, batch counted in tokens,
init std from the config, mean token loss. WSD as nanotron steps it: linear
warmup from 0 (update k uses λ(k−1), so the first update runs at lr 0),
constant, then linear decay to the minimum over the last decay fraction.

The 1.7B's four data phases switch the mixture at the recorded token
positions, scaled to the miniature's own total tokens; the 135M/360M train
single-stage (their mixture is unpublished). Documents are tokenized, joined
with EOS and cut into fixed-length sequences per component; each sequence of
a step is drawn from a component with the phase's weights (seeded), and each
component is read in order, cycling, as a blended dataset does.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from runner import losses
from runner import plan as plans
from runner.data.tokenizer import fixture_tokenizer, stage_tokenizer
from runner.stages.kit import (
    StageContext,
    build_trainer,
    drive,
    fresh_causal_lm,
    input_path,
    load_causal_lm,
    load_rows,
    on_device,
    save_checkpoint,
    set_determinism,
    write_metrics_file,
)

FIXTURE_COMPONENT = "fixture:pretrain/"  # the smoke plan's names for the fixture components


def component_blocks(plan, tokenizer, seq_len: int) -> dict[str, list[list[int]]]:
    """Each component's documents tokenized, joined with EOS and cut into sequences (read through the one
    data path, runner/data/hub.py)."""
    blocks = {}
    for entry in [d for d in plan.datasets if d["role"] == "train"]:
        name = entry["dataset"].removeprefix(FIXTURE_COMPONENT)
        rows = load_rows(entry)
        stream: list[int] = []
        for row in rows:
            stream += tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        blocks[name] = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    return blocks


def phase_at(phases: list[dict[str, Any]], tokens: int) -> int:
    for i, phase in enumerate(phases):
        if phase["start_tokens"] <= tokens < phase["end_tokens"]:
            return i
    return len(phases) - 1


def schedule_data(phases: list[dict[str, Any]], blocks: dict[str, list[list[int]]], updates: int, seqs: int,
                  seq_len: int, seed: int) -> list[list[tuple[str, int, int]]]:
    """(component, block index, phase) for every sequence of every update: a pure function of the seed,
    so a resumed run reads exactly the data an uninterrupted one would."""
    gen = torch.Generator().manual_seed(seed)
    cursor = {name: 0 for name in blocks}
    plan: list[list[tuple[str, int, int]]] = []
    for update in range(updates):
        index = phase_at(phases, update * seqs * seq_len)
        mixture = phases[index]["mixture"]
        names = [n for n in mixture if blocks.get(n)]
        weights = torch.tensor([mixture[n] for n in names], dtype=torch.float64)
        picks = torch.multinomial(weights, seqs, replacement=True, generator=gen).tolist()
        row = []
        for p in picks:
            name = names[p]
            row.append((name, cursor[name] % len(blocks[name]), index))
            cursor[name] += 1
        plan.append(row)
    return plan


def run(ctx: StageContext) -> dict[str, Any]:
    plan = ctx.plan
    seed = plan.seed
    set_determinism(seed)
    seq_len = plan.hp("max_seq_length")
    parent = input_path(plan, "init")
    if parent is not None:
        tokenizer, model = stage_tokenizer(plan, parent), load_causal_lm(parent)
    else:
        tokenizer = fixture_tokenizer(plan)
        plans.use_recorded_init_std(plan)
        model = fresh_causal_lm(plan, tokenizer, "pretraining starts from a random init, as recorded")
        plans.random_init_as_recorded(plan)
    blocks = component_blocks(plan, tokenizer, seq_len)
    phases = plan.phases
    updates = plan.hp("train_steps")
    pd, ga = plan.hp("per_device_batch_size"), plan.hp("gradient_accumulation_steps", 1)
    seqs = pd * ga * ctx.world
    data = schedule_data(phases, blocks, updates, seqs, seq_len, seed)
    trainer, total = build_trainer(ctx, {"model": model}, list(model.parameters()), None, total_updates=updates)
    net = trainer.wrapped or model

    def batches_for(update: int) -> list[list[tuple[str, int, int]]]:
        picks = data[update]
        mine = picks[ctx.rank::ctx.world]  # each process takes its share of the step's sequences
        return [mine[i * pd:(i + 1) * pd] for i in range(ga)]

    def loss_fn(batch: list[tuple[str, int, int]], _index: int):
        ids = on_device({"ids": torch.tensor([blocks[name][i] for name, i, _ in batch])}, net)["ids"]
        logits = net(input_ids=ids).logits
        loss = losses.sft_loss(logits, ids, "mean")
        with torch.no_grad():  # per-component loss makes phase switches visible in the record
            logps, mask = losses.token_logps(logits.detach(), ids)
            per_seq = -(logps * mask).sum(-1) / mask.sum(-1)
        metrics: dict[str, float] = {"phase": float(batch[0][2]),
                                     "tokens": float((trainer.update + 1) * seqs * seq_len)}
        for name in {b[0] for b in batch}:
            chosen = [j for j, b in enumerate(batch) if b[0] == name]
            metrics[f"loss_{name}"] = float(per_seq[chosen].mean())
        return loss, metrics

    drive(ctx, trainer, loss_fn, batches_for)
    model.eval()
    ctx.record.events += _phase_events(ctx.record.steps, phases)
    steps = ctx.record.steps
    final: dict[str, Any] = {"train_loss_first": steps[0]["loss"] if steps else None,
                             "train_loss_last": steps[-1]["loss"] if steps else None,
                             "optimizer_steps": total, "tokens": total * seqs * seq_len, "phases": len(phases)}
    if plan.heldout:
        final.update(heldout_loss(model, tokenizer, plan.heldout, seq_len))
    ctx.record.final_metrics.update(final)
    save_checkpoint(ctx, model, tokenizer, datasets=sorted({n for p in phases for n in p["mixture"]}), base_model=None)
    write_metrics_file(ctx)
    return final


def _phase_events(steps: list[dict[str, Any]], phases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    events, last = [], None
    for step in steps:
        index = int(step.get("phase", 0))
        if index != last:
            events.append({"event": "phase", "name": phases[index]["name"], "step": step["step"],
                           "tokens": step.get("tokens"), "mixture": phases[index]["mixture"]})
            last = index
    return events


@torch.no_grad()
def heldout_loss(model, tokenizer, entry: dict[str, Any], seq_len: int) -> dict[str, float]:
    stream: list[int] = []
    for row in load_rows(entry):
        stream += tokenizer(row["text"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    blocks = [stream[i:i + seq_len] for i in range(0, len(stream) - seq_len + 1, seq_len)]
    total, count = 0.0, 0
    for i in range(0, len(blocks), 16):
        ids = on_device({"ids": torch.tensor(blocks[i:i + 16])}, model)["ids"]
        logps, mask = losses.token_logps(model(input_ids=ids).logits, ids)
        total += float(-(logps * mask).sum())
        count += int(mask.sum())
    loss = total / max(count, 1)
    return {"heldout_loss": loss, "heldout_perplexity": math.exp(loss), "heldout_tokens": count}
