"""Reward model, as open-instruct reward_modeling.py @3dd7a07da trained Llama-3.1-Tulu-3-8B-RM.

The SFT model loaded as a sequence classifier with one label and its score
head re-initialised N(0, 1/√(hidden+1)); dropout off; each side of a pair is
the whole conversation in the `tulu` template; pairs longer than the token
limit are filtered out (not truncated); chosen and rejected go through one
forward; the reward is the score at the last non-pad token; Bradley–Terry
loss −mean log σ(r_w − r_l); accuracy counts ties as wrong. AdamW with
eps 1e-5 and torch's default weight decay 0.01; linear schedule, no warmup.
Evaluation on ultrafeedback_binarized_cleaned test_prefs (the code keeps
at most 100 rows).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from runner import losses
from runner.data import masking
from runner.data.templates import render
from runner.data.tokenizer import stage_tokenizer
from runner.stages.kit import (
    StageContext,
    build_trainer,
    input_path,
    load_recorded,
    load_rows,
    model_source,
    on_device,
    run_loop,
    save_checkpoint,
    set_determinism,
    train_rows,
    write_metrics_file,
)

EVAL_ROWS = 100  # reward_modeling.py truncates its eval set to sanity_check_max_samples


def load_reward_model(path, seed: int, plan=None, tokenizer=None, revision: str | None = None):
    from transformers import AutoModelForSequenceClassification

    from runner.models import disable_dropout

    if plan is not None and plan.profile == "recorded":
        model = load_recorded(AutoModelForSequenceClassification, path, plan, tokenizer, revision, num_labels=1)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, torch_dtype=torch.float32)
    disable_dropout(model)
    gen = torch.Generator().manual_seed(seed)
    std = 1 / math.sqrt(model.config.hidden_size + 1)
    weight = model.score.weight
    gathered = contextlib.nullcontext()
    if hasattr(weight, "ds_id"):  # loaded under ZeRO-3 init (the RM's accelerate YAML): a write needs the whole
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters([weight], modifier_rank=0)
    with gathered, torch.no_grad():
        weight.copy_(torch.randn(weight.shape, generator=gen) * std)
    return model


def token_limit(plan) -> int:
    """reward_modeling.py filters pairs longer than this (max_token_length, capped by the prompt limit)."""
    return min(plan.hp("max_seq_length", 2048), plan.hp("max_prompt_length", 2048) or 2048)


def encode_pairs(rows: list[dict[str, Any]], tokenizer, template: str, max_tokens: int) -> tuple[list[dict], int]:
    out, filtered = [], 0
    for row in rows:
        sides = {}
        for side in ("chosen", "rejected"):
            text = render(row[side], template, tokenizer.eos_token)
            sides[side] = tokenizer(text, add_special_tokens=False)["input_ids"]
        if max(len(sides["chosen"]), len(sides["rejected"])) > max_tokens:
            filtered += 1  # upstream filters over-long pairs instead of truncating them
            continue
        out.append(sides)
    return out, filtered


class PairScorer(torch.nn.Module):
    """The reward model's score of each row as one module: open-instruct's score at the last non-pad token
    (the token before the first pad; right padding), from the backbone and the linear head.

    It is this module that accelerate wraps (DDP or a DeepSpeed engine), so the whole scoring runs through the
    wrapper's forward: calling the backbone and the head around the wrapper trained each process on its own
    gradient under DDP and left ZeRO-3's partitioned parameters to the hooks of a module it never entered.
    """

    def __init__(self, model: torch.nn.Module, pad: int) -> None:
        super().__init__()
        self.model = model
        self.pad = pad

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.model.model(input_ids=input_ids, attention_mask=(input_ids != self.pad).long()).last_hidden_state
        return losses.gather_at(self.model.score(hidden).squeeze(-1), losses.last_nonpad_index(input_ids, self.pad))


def pair_scores(scorer: torch.nn.Module, batch: list[dict[str, list[int]]], pad: int) -> tuple[torch.Tensor,
                                                                                                torch.Tensor]:
    """(chosen scores, rejected scores) of a micro-batch, scored in one forward of `scorer` (a PairScorer,
    or the wrapper accelerate made of it)."""
    rows = [{"input_ids": ex[side]} for side in ("chosen", "rejected") for ex in batch]
    ids = on_device(masking.collate(rows, pad), scorer)["input_ids"]
    scores = scorer(ids)
    n = len(batch)
    return scores[:n], scores[n:]


def run(ctx: StageContext) -> dict[str, Any]:
    plan = ctx.plan
    seed = plan.seed
    set_determinism(seed)
    parent = input_path(plan, "init")
    if plan.profile == "recorded":  # --input, the mirror or the Hub, as recorded
        source, revision = model_source(plan)
        tokenizer = stage_tokenizer(plan, source, revision)
        model = load_reward_model(source, seed, plan, tokenizer, revision)
    else:
        tokenizer = stage_tokenizer(plan, parent)
        model = load_reward_model(parent, seed)
    model.config.pad_token_id = tokenizer.pad_token_id
    pad = tokenizer.pad_token_id
    limit = token_limit(plan)
    pairs, filtered = encode_pairs(train_rows(plan), tokenizer, plan.chat_template, limit)
    scorer = PairScorer(model, pad)
    trainer, total = build_trainer(ctx, {"model": model}, list(model.parameters()), len(pairs), forward=scorer)
    net = trainer.wrapped or scorer

    def loss_fn(batch: list[dict[str, list[int]]], _index: int):
        chosen, rejected = pair_scores(net, batch, pad)
        loss, accuracy = losses.bradley_terry_loss(chosen, rejected)
        # reward_modeling.py logs train/rm/reward_margin = mean(r_w − r_l) beside the accuracy and both means.
        return loss, {"accuracy": float(accuracy.detach()), "chosen_score": float(chosen.detach().mean()),
                      "rejected_score": float(rejected.detach().mean()),
                      "reward_margin": float((chosen - rejected).detach().mean())}

    run_loop(ctx, trainer, pairs, loss_fn)
    model.eval()
    steps = ctx.record.steps
    final: dict[str, Any] = {"train_loss_first": steps[0]["loss"] if steps else None,
                             "train_loss_last": steps[-1]["loss"] if steps else None,
                             "pairs": len(pairs), "pairs_filtered": filtered, "optimizer_steps": total}
    if plan.heldout:
        held, held_filtered = encode_pairs(load_rows(plan.heldout)[:EVAL_ROWS], tokenizer, plan.chat_template, limit)
        with torch.no_grad():
            chosen, rejected = pair_scores(scorer, held, pad)
            loss, accuracy = losses.bradley_terry_loss(chosen, rejected)
        final.update({"heldout_accuracy": float(accuracy), "heldout_loss": float(loss), "heldout_pairs": len(held)})
    ctx.record.final_metrics.update(final)
    save_checkpoint(ctx, model, tokenizer, datasets=[d["dataset"] for d in plan.datasets],
                    base_model=plan.inputs.get("init", {}).get("checkpoint"))
    write_metrics_file(ctx)
    return final
