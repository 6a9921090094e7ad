"""Direct preference optimisation, as the recorded code did it.

Tülu 3 (open-instruct dpo_tune.py / dpo_tune_cache.py @3dd7a07da): each side
encoded like SFT (only the assistant turn trains), chosen and rejected in one
concatenated forward, `dpo_norm` (each side's log-prob divided by its own
trainable-token count, policy and reference alike) with β = 5, mean over
pairs. The 8B run kept a live reference model (dpo_tune.py); the 70B/405B
runs cached reference log-probs before training (dpo_tune_cache.py). Both are
available here and give identical losses: the cache is computed over the very
pairs training will see, with the initial (= SFT) weights, one pair per forward.

SmolLM2 (alignment-handbook ae3f44f run_dpo.py + TRL DPOTrainer): the strings
the handbook built (ChatML), TRL tokenization (prompt keep-end at
max_prompt_length, EOS on each completion, whole sequence cut at max_length),
TRL's default sigmoid loss on summed log-probs with β = 0.5, live reference.
"""

from __future__ import annotations

import copy
from typing import Any

import torch

from runner import losses, switches
from runner.data import masking
from runner.data.tokenizer import stage_tokenizer
from runner.stages.kit import (
    StageContext,
    build_trainer,
    drive,
    init_model,
    input_path,
    load_causal_lm,
    load_rows,
    loop_config,
    on_device,
    save_checkpoint,
    set_determinism,
    train_rows,
    write_metrics_file,
)
from runner.trainer import epoch_order, micro_batches


def encode_pairs(plan, rows: list[dict[str, Any]], tokenizer) -> tuple[list[dict[str, list[int]]], int]:
    out, dropped = [], 0
    for row in rows:
        if plan.family == "tulu3":
            pair = masking.encode_preference_tulu(row["chosen"], row["rejected"], tokenizer,
                                                  plan.hp("max_seq_length"), plan.chat_template)
        else:
            texts = masking.alignment_handbook_dpo_texts(row["chosen"], row["rejected"], tokenizer.bos_token)
            pair = masking.encode_preference_trl(texts["prompt"], texts["chosen"], texts["rejected"], tokenizer,
                                                 plan.hp("max_seq_length"), plan.hp("max_prompt_length"))
        if pair is None:
            dropped += 1
        else:
            out.append(pair)
    return out, dropped


def trl012_width(prompt_lengths: list[int], completion_lengths: list[int], max_length: int | None) -> int:
    """Columns TRL 0.12's `concatenated_forward` keeps for a concatenated (chosen + rejected) batch.

    It left-pads prompts to P = max prompt length, right-pads completions to C = max completion length,
    flushes every row left, then cuts at the first all-padding column with an off-by-one
    (`[:, :first_empty_col - 1]`, huggingface/trl#2330, fixed in 0.13), then at max_length. An empty column
    exists only when the longest row L = max(p_i + c_i) is shorter than P + C, i.e. when the longest prompt
    and the longest completion belong to different pairs, so one pair per device never triggers it.
    Returns min(L − 1 if L < P + C else P + C, max_length).
    """
    full = max(prompt_lengths) + max(completion_lengths)
    longest = max(p + c for p, c in zip(prompt_lengths, completion_lengths))
    width = longest - 1 if longest < full else full
    return width if max_length is None else min(width, max_length)


def concatenated_logps(model, batch: list[dict[str, list[int]]], pad: int, average: bool,
                       trl012_max_length: int | None | bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair log-probs of chosen and rejected from one forward over both (as upstream batches them).

    `trl012_max_length` (an int or None, the plan's max_length) applies TRL 0.12's padding cut (see
    `trl012_width`); False keeps every token.
    """
    rows = [{"input_ids": ex[f"{side}_input_ids"], "labels": ex[f"{side}_labels"],
             "attention_mask": ex[f"{side}_attention_mask"]} for side in ("chosen", "rejected") for ex in batch]
    if trl012_max_length is not False:
        width = trl012_width([ex[f"{side}_prompt_length"] for side in ("chosen", "rejected") for ex in batch],
                             [ex[f"{side}_completion_length"] for side in ("chosen", "rejected") for ex in batch],
                             trl012_max_length)
        rows = [{k: v[:width] for k, v in row.items()} for row in rows]
    tensors = on_device(masking.collate(rows, pad), model)
    logits = model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
    logps = losses.sequence_logps(logits, tensors["labels"], average=average)
    n = len(batch)
    return logps[:n], logps[n:]


CACHE_PAIRS_PER_FORWARD = 32


def reference_cache(model, pairs: list[dict[str, list[int]]], needed: list[int], pad: int,
                    average: bool) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Reference log-probs of the needed pairs, as the live reference computes them one pair per forward.

    The bits of a forward depend on its padded width (padding changes the shapes the attention and
    the matmuls reduce over): batching arbitrary pairs agreed with the per-pair values on only 62-74% of
    400 fixture pairs (bench/bench_trainers.py). So pairs are grouped by the width their live forward
    has, max(len chosen, len rejected), and each group runs as batched forwards in which every row is
    padded exactly as the live forward pads it; only the batch dimension grows, which left all 400
    bit-identical on the machine measured. A kernel whose reduction order depends on the batch size
    would break that, so each batched forward's first pair is recomputed alone and compared, and a
    group that differs falls back to one pair per forward."""
    groups: dict[int, list[int]] = {}
    for j in needed:
        p = pairs[j]
        groups.setdefault(max(len(p["chosen_input_ids"]), len(p["rejected_input_ids"])), []).append(j)
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for width in sorted(groups):
        members = groups[width]
        for start in range(0, len(members), CACHE_PAIRS_PER_FORWARD):
            chunk = members[start:start + CACHE_PAIRS_PER_FORWARD]
            rc, rr = concatenated_logps(model, [pairs[j] for j in chunk], pad, average)
            if len(chunk) > 1:
                sc, sr = concatenated_logps(model, [pairs[chunk[0]]], pad, average)
                if not (torch.equal(sc[0], rc[0]) and torch.equal(sr[0], rr[0])):
                    for j in chunk:
                        one_c, one_r = concatenated_logps(model, [pairs[j]], pad, average)
                        cache[j] = (one_c[0], one_r[0])
                    continue
            for j, c, r in zip(chunk, rc, rr):
                cache[j] = (c, r)
    return cache


def reward_metrics(chosen: torch.Tensor, rejected: torch.Tensor, family: str) -> dict[str, float]:
    """The reward statistics of one micro-batch, as the recorded trainer logged them.

    open-instruct (tulu3) reduces each side to its micro-batch mean first, so `rewards_accuracy` is
    1[mean chosen > mean rejected], an accuracy of means (docs/semantics.md quirk 10), and it also logs
    `rewards_average` = (mean chosen + mean rejected)/2. TRL (smollm2) logs the per-pair accuracy and no
    average. The trainer then averages each key over the update's micro-batches, as both upstreams do.
    """
    mean_c, mean_r = chosen.mean(), rejected.mean()
    out = {"rewards_chosen": float(mean_c), "rewards_rejected": float(mean_r),
           "rewards_margin": float((chosen - rejected).mean())}
    if family == "tulu3":
        out["rewards_accuracy"] = float((mean_c > mean_r).float())
        out["rewards_average"] = float((mean_c + mean_r) / 2)
    else:
        out["rewards_accuracy"] = float((chosen > rejected).float().mean())
    return out


def run(ctx: StageContext) -> dict[str, Any]:
    plan = ctx.plan
    set_determinism(plan.seed)
    parent = input_path(plan, "init")
    if plan.profile == "recorded":
        tokenizer, policy = init_model(plan)  # --input, the mirror or the Hub, as recorded
    else:
        tokenizer, policy = stage_tokenizer(plan, parent), load_causal_lm(parent)
    loss_type = plan.hp("dpo_loss_type", "sigmoid")
    beta = plan.hp("dpo_beta")
    smoothing = plan.hp("label_smoothing", 0.0)
    average = loss_type in ("dpo_norm", "simpo")
    pad = tokenizer.pad_token_id
    reference_mode = plan.extra.get("reference_mode") or "live"
    # TRL 0.12's padding cut, for the SmolLM2 runs it trained (a recorded switch, docs/semantics.md quirk 18)
    trl_cut = plan.hp("max_seq_length") if plan.family != "tulu3" and switches.is_on(plan.extra, "trl_2330_padding") \
        else False

    rows = train_rows(plan)
    pairs, dropped = encode_pairs(plan, rows, tokenizer)
    cfg = loop_config(ctx, len(pairs))
    order = epoch_order(len(pairs), cfg.seed, int(plan.hp("epochs", 1)))

    def batches_for(update: int) -> list[list[int]]:
        return micro_batches(order, update, cfg.per_device, cfg.accumulation, ctx.world, ctx.rank, len(pairs))

    reference = None
    cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    batch_cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
    if loss_type != "simpo" and reference_mode == "cached":
        # dpo_tune_cache.py: reference log-probs computed before training with the initial (= SFT)
        # weights. Each pair's value depends only on the pair, so it is computed once and reused in
        # every epoch, batched by padded width (reference_cache) with the live reference's bits at pd = 1.
        needed = sorted({j for u in range(cfg.run_updates) for mb in batches_for(u) for j in mb})
        micro = sorted({tuple(mb) for u in range(cfg.run_updates) for mb in batches_for(u)}) \
            if trl_cut is not False else []
        # Before its first update the policy holds exactly the reference's weights, so the cache is computed
        # with the policy itself in eval mode (the live reference is its deep copy in eval mode: same weights,
        # same kernels, same bits), with no copy of the model to make; inference mode skips autograd's
        # bookkeeping. Each module's train/eval flag is put back as it was.
        modes = [(m, m.training) for m in policy.modules()]
        policy.eval()
        with torch.inference_mode():
            if micro:
                # TRL 0.12's cut depends on the whole micro-batch, so a pair's reference log-probs do
                # too: cache per micro-batch, computed as the live reference computes it.
                computed = {mb: concatenated_logps(policy, [pairs[j] for j in mb], pad, average, trl_cut)
                            for mb in micro}
            else:
                computed = reference_cache(policy, pairs, needed, pad, average)
        for module, mode in modes:
            module.training = mode
        # Out of inference mode, as ordinary tensors: the loss may use them beside tensors autograd records.
        if micro:
            batch_cache = {mb: (c.clone(), r.clone()) for mb, (c, r) in computed.items()}
        else:
            cache = {j: (c.clone(), r.clone()) for j, (c, r) in computed.items()}
        del computed
    elif loss_type != "simpo":
        reference = copy.deepcopy(policy).eval()
        for p in reference.parameters():
            p.requires_grad_(False)

    trainer, total = build_trainer(ctx, {"model": policy}, list(policy.parameters()), len(pairs), cfg=cfg)
    net = trainer.wrapped or policy  # under DDP the forward must go through the wrapper

    def loss_fn(batch_ids: list[int], index: int):
        batch = [pairs[j] for j in batch_ids]
        pc, pr = concatenated_logps(net, batch, pad, average, trl_cut)
        if loss_type == "simpo":
            rc = rr = None
        elif reference is not None:
            with torch.no_grad():
                rc, rr = concatenated_logps(reference, batch, pad, average, trl_cut)
        elif batch_cache:
            rc, rr = batch_cache[tuple(batch_ids)]
        else:
            rc = torch.stack([cache[j][0] for j in batch_ids])
            rr = torch.stack([cache[j][1] for j in batch_ids])
        per_pair, chosen_r, rejected_r = losses.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type,
                                                         label_smoothing=smoothing)
        return per_pair.mean(), reward_metrics(chosen_r, rejected_r, plan.family)

    drive(ctx, trainer, loss_fn, batches_for)
    policy.eval()
    steps = ctx.record.steps
    final: dict[str, Any] = {
        "train_loss_first": steps[0]["loss"] if steps else None,
        "train_loss_last": steps[-1]["loss"] if steps else None,
        "accuracy_first10": _mean(steps[:10], "rewards_accuracy"),
        "accuracy_last10": _mean(steps[-10:], "rewards_accuracy"),
        "margin_first10": _mean(steps[:10], "rewards_margin"), "margin_last10": _mean(steps[-10:], "rewards_margin"),
        "pairs": len(pairs), "pairs_dropped": dropped, "optimizer_steps": total, "reference": reference_mode,
    }
    if plan.heldout and loss_type != "simpo":
        reference_copy = init_model(plan)[1] if plan.profile == "recorded" else load_causal_lm(parent)
        final.update(_heldout(plan, policy, reference_copy.eval(), tokenizer, beta, loss_type, average))
    ctx.record.final_metrics.update(final)
    save_checkpoint(ctx, policy, tokenizer, datasets=[d["dataset"] for d in plan.datasets],
                    base_model=plan.inputs.get("init", {}).get("checkpoint"))
    write_metrics_file(ctx)
    return final


@torch.no_grad()
def _heldout(plan, policy, reference, tokenizer, beta: float, loss_type: str, average: bool) -> dict[str, float]:
    pairs, _ = encode_pairs(plan, load_rows(plan.heldout), tokenizer)
    pad = tokenizer.pad_token_id
    correct, margins, total_loss = 0, 0.0, 0.0
    for ex in pairs:
        pc, pr = concatenated_logps(policy, [ex], pad, average)
        rc, rr = concatenated_logps(reference, [ex], pad, average)
        loss, cr, rr_ = losses.dpo_loss(pc, pr, rc, rr, beta=beta, loss_type=loss_type)
        correct += int(cr.item() > rr_.item())
        margins += float(cr - rr_)
        total_loss += float(loss)
    n = max(len(pairs), 1)
    return {"heldout_rewards_accuracy": correct / n, "heldout_rewards_margin": margins / n,
            "heldout_loss": total_loss / n, "heldout_pairs": len(pairs)}


def _mean(steps: list[dict[str, Any]], key: str) -> float | None:
    values = [s[key] for s in steps if key in s]
    return sum(values) / len(values) if values else None
