"""Loss functions of the recorded Tülu 3 / SmolLM2 training code, as pure tensor functions.

Semantics follow docs/semantics.md (open-instruct 3dd7a07da, release era; quirks cited by number).
Every function is pure: no module state, no in-place writes on its inputs. Reductions
across micro-batches / ranks are the caller's job unless a docstring says otherwise.

Notation: B = batch, T = sequence length, L = response length, ℓ = index of the last kept
response token (after first-EOS truncation), mask = bool tensor of positions that count.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100  # label value that marks a non-trainable position (HF / open-instruct)


# --------------------------------------------------------------------------------------
# Token / sequence log-probabilities, SFT
# --------------------------------------------------------------------------------------


def _upcast(logits: Tensor) -> Tensor:
    # log-softmax over a 128k vocab in bf16 loses ~3 significant digits; upstream upcasts
    # to float32. float64 inputs (tests) are left alone so hand-computed numbers match.
    if logits.dtype in (torch.float32, torch.float64):
        return logits
    return logits.float()


def token_logps(logits: Tensor, labels: Tensor, *, temperature: float | None = None) -> tuple[Tensor, Tensor]:
    """Next-token log-probabilities with the causal shift.

    logps[b, t] = log softmax(logits[b, t] / τ')[labels[b, t+1]],  mask[b, t] = labels[b, t+1] != -100,
    for t = 0..T-2; masked positions hold 0. τ' = temperature + 1e-7 when a temperature is
    given (the PPO trainer rescales logits that way), else 1.
    Returns (logps[B, T-1] in ≥float32, mask[B, T-1] bool).
    """
    shifted_logits = _upcast(logits[:, :-1])
    shifted_labels = labels[:, 1:]
    if temperature is not None:
        shifted_logits = shifted_logits / (temperature + 1e-7)
    mask = shifted_labels != IGNORE_INDEX
    # -100 is not a valid gather index; any in-range id works since the value is masked out.
    safe_labels = torch.where(mask, shifted_labels, torch.zeros_like(shifted_labels))
    logps = torch.log_softmax(shifted_logits, dim=-1).gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    logps = torch.where(mask, logps, torch.zeros_like(logps))
    return logps, mask


def sft_loss(logits: Tensor, labels: Tensor, reduction: str = "mean") -> Tensor:
    """SFT cross-entropy of one micro-batch.

    sum:  L = Σ_{(b,t) trainable} −log p(x_{t+1} | x_≤t)       (Tülu 3, `--reduce_loss sum`)
    mean: L = (that sum) / n_mb, n_mb = trainable-token count of this micro-batch; n_mb = 0 → 0.

    Gradient accumulation (tulu3.md §2.1): the applied gradient is the mean of the N·GA
    micro-batch losses, so `sum` gives (pd/B)·Σ_{global tokens} ∇CE_t and `mean` gives the
    mean of micro-batch means (equal token weight only when every micro-batch has the same n_mb).
    """
    logps, mask = token_logps(logits, labels)
    total = -logps.sum()
    if reduction == "sum":
        return total
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}")
    # clamp: with zero trainable tokens the numerator is exactly 0, so the loss is 0, not NaN.
    count = mask.sum().clamp(min=1)
    return total / count


def sequence_logps(logits: Tensor, labels: Tensor, average: bool = False) -> Tensor:
    """Per-sequence log-probability of the trainable tokens.

    s[b] = Σ_t logps[b, t]·mask[b, t];  average=True: ŝ[b] = s[b] / Σ_t mask[b, t]
    (dpo_norm / simpo; each sequence is normalised by its own count). A sequence without
    trainable tokens yields 0; upstream drops such pairs before the loss (dpo_tune.py).
    """
    logps, mask = token_logps(logits, labels)
    total = logps.sum(-1)
    if not average:
        return total
    return total / mask.sum(-1).clamp(min=1)


# --------------------------------------------------------------------------------------
# Preference losses
# --------------------------------------------------------------------------------------

DPO_LOSS_TYPES = ("dpo", "dpo_norm", "sigmoid", "simpo")


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    reference_chosen: Tensor | None,
    reference_rejected: Tensor | None,
    *,
    beta: float,
    loss_type: str = "dpo",
    label_smoothing: float = 0.0,
    gamma_beta_ratio: float = 0.3,
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO-family loss per pair (no reduction).

    dpo / sigmoid / dpo_norm: z = (pc − pr) − (rc − rr)   (dpo_norm: caller passes ŝ, the
        length-averaged log-probs, for all four inputs; "sigmoid" is TRL's name for "dpo")
    simpo:                    z = p̂c − p̂r − γ/β           (γ/β = gamma_beta_ratio; no reference)
    loss = −(1−ε)·log σ(βz) − ε·log σ(−βz),  ε = label_smoothing
    rewards: β(p − r) for chosen / rejected; simpo: β·p̂. Rewards are detached (logging only).
    Returns (losses[B], chosen_rewards[B], rejected_rewards[B]).
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {DPO_LOSS_TYPES}")
    if loss_type == "simpo":
        z = (policy_chosen - policy_rejected) - gamma_beta_ratio
        chosen_rewards = beta * policy_chosen.detach()
        rejected_rewards = beta * policy_rejected.detach()
    else:
        if reference_chosen is None or reference_rejected is None:
            raise ValueError(f"loss_type {loss_type!r} needs reference log-probs")
        # Same grouping as upstream (policy ratio minus reference ratio) for bitwise-close logits.
        z = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
        chosen_rewards = beta * (policy_chosen - reference_chosen).detach()
        rejected_rewards = beta * (policy_rejected - reference_rejected).detach()
    losses = -F.logsigmoid(beta * z) * (1 - label_smoothing) - F.logsigmoid(-beta * z) * label_smoothing
    return losses, chosen_rewards, rejected_rewards


def bradley_terry_loss(chosen_scores: Tensor, rejected_scores: Tensor) -> tuple[Tensor, Tensor]:
    """Reward-model loss: L = −mean_b log σ(r_w − r_l); accuracy = mean_b 1[r_w > r_l] (ties wrong)."""
    loss = -F.logsigmoid(chosen_scores - rejected_scores).mean()
    accuracy = (chosen_scores > rejected_scores).float().mean()
    return loss, accuracy


def _first_true_index(bools: Tensor) -> Tensor:
    """Index of the first True along the last dim; the row length when there is none."""
    length = bools.shape[-1]
    positions = torch.arange(length, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, torch.full_like(positions, length)).min(dim=-1).values


def last_nonpad_index(input_ids: Tensor, pad_token_id: int, context_length: int = 0) -> Tensor:
    """Index of the token before the first pad at or after `context_length`; T−1 if none.

    i[b] = min{t ≥ c : ids[b, t] = pad} − 1  (c = context_length; the PPO trainer scores
    left-padded query+response with c = query length, the RM trainer uses c = 0).
    If the first token after the context is pad the result is c − 1 (−1 for c = 0), which
    `gather_at` wraps to the last position, as upstream's advanced indexing does.
    """
    first_pad = _first_true_index(input_ids[:, context_length:] == pad_token_id)
    return first_pad - 1 + context_length


def gather_at(values: Tensor, index: Tensor) -> Tensor:
    """out[b] = values[b, index[b]] (negative indices wrap, like Python indexing)."""
    return values[torch.arange(values.shape[0], device=values.device), index]


# --------------------------------------------------------------------------------------
# PPO (open-instruct ppo_vllm_thread_ray_gtrl.py, release era)
# --------------------------------------------------------------------------------------


def kl_per_token(logp: Tensor, ref_logp: Tensor, estimator: str = "kl1") -> Tensor:
    """Per-token KL estimate with k = logp − ref_logp.

    kl1 = k;  kl2 = k²/2;  kl3 = (e^{−k} − 1) + k   (written as upstream writes it, not expm1)
    """
    k = logp - ref_logp
    if estimator == "kl1":
        return k
    if estimator == "kl2":
        return k**2 / 2
    if estimator == "kl3":
        return (-k).exp() - 1 + k
    raise ValueError(f"unknown kl estimator {estimator!r}")


def first_eos_truncation(responses: Tensor, eos_id: int, pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Truncate sampled responses after their first EOS.

    truncated[b, t] = pad for t > e_b (e_b = first EOS index, L if none), else responses[b, t]
    ℓ[b] = (first pad index of truncated[b], L if none) − 1   — so a pad the sampler emitted
           before any EOS also ends the response, and ℓ = −1 when the first token is pad
    contains_eos[b] = any_t truncated[b, t] = eos
    Returns (truncated[B, L], ℓ[B], contains_eos[B]).
    """
    first_eos = _first_true_index(responses == eos_id)
    positions = torch.arange(responses.shape[1], device=responses.device)
    after_eos = positions.unsqueeze(0) > first_eos.unsqueeze(1)
    truncated = torch.where(after_eos, torch.full_like(responses, pad_id), responses)
    last_index = _first_true_index(truncated == pad_id) - 1
    contains_eos = (truncated == eos_id).any(dim=-1)
    return truncated, last_index, contains_eos


def ppo_masks(last_index: Tensor, length: int) -> tuple[Tensor, Tensor]:
    """Masks from ℓ: policy_mask[b, t] = t ≤ ℓ_b (policy loss, whitening);
    value_mask[b, t] = t ≤ ℓ_b + 1 (value loss; V is zeroed beyond it, semantics quirk 11)."""
    positions = torch.arange(length, device=last_index.device).unsqueeze(0)
    policy_mask = positions <= last_index.unsqueeze(1)
    value_mask = positions <= (last_index + 1).unsqueeze(1)
    return policy_mask, value_mask


def apply_non_stop_penalty(
    scores: Tensor,
    contains_eos: Tensor,
    penalty_value: float,
    *,
    last_index: Tensor | None = None,
    min_response_length: int = 0,
) -> Tensor:
    """s'_b = s_b if the response stopped (has EOS and ℓ_b ≥ min_response_length) else penalty.

    The penalty **replaces** the score (it is not added). With the default
    min_response_length = 0 the length condition only fails for ℓ = −1.
    """
    stopped = contains_eos
    if last_index is not None:
        stopped = stopped & (last_index >= min_response_length)
    return torch.where(stopped, scores, torch.full_like(scores, penalty_value))


def rlvr_scores(
    verified: Tensor,
    rm_scores: Tensor,
    contains_eos: Tensor,
    last_index: Tensor,
    *,
    verifier_reward: float,
    rm_multiplier: float,
    non_stop_penalty: bool,
    penalty_value: float,
    min_response_length: int = 0,
) -> Tensor:
    """Sequence score of a rollout: s_b = verifier_reward·v_b + rm_multiplier·rm_b, replaced by the
    penalty when non_stop_penalty is on and the response did not stop (no EOS, or ℓ_b < min_response_length:
    ppo_vllm_thread_ray_gtrl.py folds the length test into `contain_stop_token` before the penalty)."""
    scores = verifier_reward * verified + rm_multiplier * rm_scores
    if not non_stop_penalty:
        return scores
    return apply_non_stop_penalty(scores, contains_eos, penalty_value, last_index=last_index,
                                  min_response_length=min_response_length)


def rlhf_reward(scores: Tensor, kl: Tensor, policy_mask: Tensor, beta: float) -> Tensor:
    """Logged `objective/rlhf_reward` per sequence: s_b − β·Σ_{t ≤ ℓ_b} kl[b, t] (scores after the penalty)."""
    non_score = torch.where(policy_mask.bool(), -beta * kl, torch.zeros_like(kl))
    return scores + non_score.sum(1)


def ppo_ratio_mean(new_logp: Tensor, old_logp: Tensor, mask: Tensor) -> Tensor:
    """Logged `val/ratio` of one micro-batch: mean over **all** B·L positions of ρ = exp(new − old).

    Upstream fills both log-probs with the same constant beyond ℓ, so padding contributes ρ = 1 and
    dilutes the value (quirk P2, like approxkl). The logged figure is the mean over micro-batches.
    """
    diff = torch.where(mask.bool(), new_logp - old_logp, torch.zeros_like(new_logp))
    return torch.exp(diff).mean()


def ppo_rewards(kl: Tensor, scores: Tensor, last_index: Tensor, beta: float) -> Tensor:
    """Per-token PPO reward.

    r[b, t] = −β·kl[b, t] for t ≤ ℓ_b, 0 for t > ℓ_b;  then r[b, e_b] += s_b with
    e_b = ℓ_b + 1 if ℓ_b + 1 < L else ℓ_b  (the score lands on the first pad position).
    """
    length = kl.shape[1]
    policy_mask, _ = ppo_masks(last_index, length)
    # Upstream masks logp and ref_logp with the same constant beyond ℓ, so kl is 0 there;
    # masking kl directly gives the same rewards for any caller-provided kl.
    non_score = torch.where(policy_mask, -beta * kl, torch.zeros_like(kl))
    score_at = torch.where(last_index + 1 < length, last_index + 1, last_index)
    rows = torch.arange(kl.shape[0], device=kl.device)
    bonus = torch.zeros_like(non_score).index_put((rows, score_at), scores.to(non_score.dtype))
    return non_score + bonus


def gae(rewards: Tensor, values: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over response positions.

    δ_t = r_t + γ·V_{t+1} − V_t,  A_t = δ_t + γλ·A_{t+1},  with V_L = A_L = 0;  R_t = A_t + V_t.
    The caller zeroes V beyond ℓ+1 first (values.masked_fill(~value_mask, 0)), as upstream does.
    Returns (advantages[B, L], returns[B, L]), both un-whitened.
    """
    length = rewards.shape[1]
    last_gae = torch.zeros_like(rewards[:, 0])
    reversed_adv = []
    for t in reversed(range(length)):
        next_value = values[:, t + 1] if t < length - 1 else torch.zeros_like(values[:, t])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = delta + gamma * lam * last_gae
        reversed_adv.append(last_gae)
    advantages = torch.stack(reversed_adv[::-1], dim=1)
    return advantages, advantages + values


def masked_mean(values: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Σ values·mask / Σ mask over all elements (dim=None) or along `dim`."""
    mask = mask.bool()
    kept = torch.where(mask, values, torch.zeros_like(values))
    if dim is None:
        return kept.sum() / mask.sum()
    return kept.sum(dim) / mask.sum(dim)


def masked_var(values: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Var = masked_mean((x − μ)², mask), μ = masked_mean(x, mask); unbiased: × n/(n−1).

    n = Σ mask. n = 0 raises ValueError (upstream quirk P3). The Bessel factor is an integer
    tensor division, so it is computed in torch's default dtype, as upstream does (quirk P4).
    """
    mask = mask.bool()
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        if n == 0:
            raise ValueError("masked_var: the mask selects no element (every row has ℓ = −1?)")
        variance = variance * (n / (n - 1))
    return variance


def masked_whiten(values: Tensor, mask: Tensor, shift_mean: bool = True) -> Tensor:
    """x̃ = (x − μ)·(σ² + 1e-8)^{−1/2} with masked μ and unbiased σ² (all rows pooled);
    shift_mean=False adds μ back. Applies to every position; the caller zeroes masked ones."""
    mean = masked_mean(values, mask)
    var = masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened


def whiten_advantages(advantages: Tensor, policy_mask: Tensor) -> Tensor:
    """PPO advantage post-processing: masked_whiten over t ≤ ℓ, then 0 for t > ℓ."""
    whitened = masked_whiten(advantages, policy_mask)
    return torch.where(policy_mask.bool(), whitened, torch.zeros_like(whitened))


def _clipped_pg(new_logp: Tensor, old_logp: Tensor, advantages: Tensor, cliprange: float):
    """ρ = exp(new − old); returns (max(−Aρ, −A·clip(ρ, 1−c, 1+c)), clipped indicator, ρ)."""
    ratio = torch.exp(new_logp - old_logp)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    return torch.max(unclipped, clipped), (clipped > unclipped), ratio


def ppo_policy_loss(
    new_logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, cliprange: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Clipped surrogate.

    L_pg = masked_mean_{t ≤ ℓ} max(−A_t ρ_t, −A_t clip(ρ_t, 1−c, 1+c)),  ρ = exp(new − old)
    clipfrac = masked_mean(1[clipped term > unclipped term]) (float32 indicators)
    approxkl = 0.5 · mean over **all** B·L positions of d², d = new − old set to 0 outside the
               mask — upstream fills both log-probs with a constant there, so the logged value
               is diluted by padding (quirk P2).
    Returns (loss, clipfrac, approxkl); only `loss` carries gradient.
    """
    mask = mask.bool()
    loss_per_token, clipped, _ = _clipped_pg(new_logp, old_logp, advantages, cliprange)
    loss = masked_mean(loss_per_token, mask)
    with torch.no_grad():
        clipfrac = masked_mean(clipped.float(), mask)
        diff = torch.where(mask, new_logp - old_logp, torch.zeros_like(new_logp))
        approxkl = 0.5 * (diff**2).mean()
    return loss, clipfrac, approxkl


def ppo_value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, cliprange_value: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss (caller multiplies by vf_coef = 0.1).

    L_v = 0.5 · masked_mean_{t ≤ ℓ+1} max((V − R)², (clip(V, V_old − c, V_old + c) − R)²)
    clipfrac = masked_mean(1[clipped square > unclipped square]).  mask = value_mask (t ≤ ℓ+1).
    """
    mask = mask.bool()
    clipped_values = torch.clamp(values, old_values - cliprange_value, old_values + cliprange_value)
    unclipped_sq = (values - returns) ** 2
    clipped_sq = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.max(unclipped_sq, clipped_sq), mask)
    with torch.no_grad():
        clipfrac = masked_mean((clipped_sq > unclipped_sq).float(), mask)
    return loss, clipfrac
