"""Tülu 3 SFT's recorded semantics, end to end on a tiny Llama built from config (issue 12).

The tulu3-8b SFT stage runs through runner.execute (the smoke profile: fixture rows, the fixture
tokenizer, a 4-layer miniature Llama from config, the recorded `sum` loss, per-device 1). The test then
redoes the first update by hand from the rules of open-instruct finetune.py @3dd7a07 (docs/semantics.md,
"The formulas"), with its own template renderer, its own masking and its own loss arithmetic, and compares
the encoded examples, the logged loss, the trainable-token count and the gradient norm.
"""

from __future__ import annotations

import math

import pytest
import torch

IGNORE = -100


def tulu_text(messages: list[dict], eos: str, generation_prompt: bool = False) -> str:
    """<|role|>\\n{content}\\n for system/user, <|assistant|>\\n{content}{eos} (+ \\n unless last), other roles
    nothing; the generation prompt appends <|assistant|>\\n. No BOS."""
    out = []
    for i, m in enumerate(messages):
        if m["role"] in ("system", "user"):
            out.append(f"<|{m['role']}|>\n{m['content']}\n")
        elif m["role"] == "assistant":
            out.append(f"<|assistant|>\n{m['content']}{eos}" + ("" if i == len(messages) - 1 else "\n"))
    if generation_prompt:
        out.append("<|assistant|>\n")
    return "".join(out)


def hand_encode(messages: list[dict], tok, max_len: int) -> dict | None:
    """Mask [|tok(render(m[:i]))|, |tok(render(m[:i+1], gen = m[i+1] is assistant))|) for each non-assistant
    turn i, on the full render cut at max_len; stop after the first span that reaches max_len; None when
    nothing trains."""
    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    ids = tok(tulu_text(messages, tok.eos_token), add_special_tokens=False)["input_ids"][:max_len]
    labels = list(ids)
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            continue
        start = count(tulu_text(messages[:i], tok.eos_token)) if i else 0
        nxt_is_assistant = i + 1 < len(messages) and messages[i + 1]["role"] == "assistant"
        end = count(tulu_text(messages[:i + 1], tok.eos_token, generation_prompt=nxt_is_assistant))
        for t in range(start, min(end, max_len)):
            labels[t] = IGNORE
        if end >= max_len:
            break
    if all(x == IGNORE for x in labels[1:]):
        return None
    return {"input_ids": ids, "labels": labels}


@pytest.mark.slow
def test_tulu3_sft_first_update_equals_hand_computed_sum_loss():
    from registry.recipes import load_recipes
    from runner.data.tokenizer import fixture_tokenizer
    from runner.execute import execute, resolve_inputs
    from runner.models import build_model
    from runner.plan import resolve
    from runner.stages import sft
    from runner.stages.kit import miniature_config, train_rows
    from runner.trainer import epoch_order, micro_batches

    reg = load_recipes()
    plan = resolve(reg, "tulu3-8b", "sft", "smoke")
    assert (plan.hp("loss_reduction"), plan.chat_template, plan.hp("per_device_batch_size")) == ("sum", "tulu", 1)
    plan.inputs = resolve_inputs(reg, plan, {})
    plan.heldout = None
    tok = fixture_tokenizer(plan)
    max_len = plan.hp("max_seq_length")
    rows = train_rows(plan)

    # 1. The stage's examples are the hand-encoded ones, row for row (drops included).
    hand = [e for e in (hand_encode(r["messages"], tok, max_len) for r in rows) if e is not None]
    stage_examples, dropped = sft.encode(plan, rows, tok)
    assert len(hand) == len(stage_examples) == len(rows) - dropped
    assert [(e["input_ids"], e["labels"]) for e in stage_examples] == [(e["input_ids"], e["labels"]) for e in hand]

    # The initial weights, as the stage builds them (a random miniature from config, seeded).
    config, _ = miniature_config(plan, tok)
    model = build_model(config, seed=plan.hp("seed", 0))
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    model.train()

    record = execute(plan, plan.inputs, max_updates=1)
    logged = record.steps[0]

    # 2. By hand: each micro-batch (one example) loses Σ −log p(next token) over its trainable positions;
    # the update's gradient is the mean of the GA micro-batch losses.
    ga = plan.hp("gradient_accumulation_steps")
    order = epoch_order(len(hand), plan.hp("seed", 0), int(plan.hp("epochs", 1)))
    mbs = micro_batches(order, 0, 1, ga, 1, 0, len(hand))
    assert len(mbs) == ga
    losses, counts, tokens = [], [], 0
    for [j] in mbs:
        ids = torch.tensor([hand[j]["input_ids"]])
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0].double()
        total = torch.zeros((), dtype=torch.float64)
        for t in range(1, ids.shape[1]):
            target = hand[j]["labels"][t]
            if target == IGNORE:
                continue
            row = logits[t - 1]
            total = total - (row[target] - torch.logsumexp(row, 0))
            tokens += 1
        counts.append(sum(1 for x in hand[j]["labels"][1:] if x != IGNORE))
        losses.append(total)
    loss = torch.stack(losses).mean()
    loss.backward()
    value = float(loss.detach())
    norm = math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in model.parameters() if p.grad is not None))

    assert logged["loss"] == pytest.approx(value, rel=1e-5)
    assert logged["trainable_tokens"] == pytest.approx(tokens / ga)  # logged per micro-batch, averaged
    assert logged["grad_norm"] == pytest.approx(norm, rel=1e-5)
    # `sum`, not `mean`: the per-token reduction would log a value near ln 384 ≈ 5.95 at this random init
    per_token = sum(float(x.detach()) / n for x, n in zip(losses, counts)) / ga
    assert abs(logged["loss"] - per_token) > 1.0
