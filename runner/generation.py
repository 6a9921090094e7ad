"""The runner's one generation path, shared by evaluation and RLVR rollouts.

`generate()` takes token-id or text prompts and returns one `Completion` per prompt,
in the input order. Two backends behind the same interface:

- "hf" (default, CPU and GPU): `model.generate` on left-padded batches with the KV
  cache. Greedy when temperature == 0; otherwise plain sampling at `temperature`
  with top_p = 1 and top_k disabled, i.e. the full softmax as vLLM samples it (HF's
  own default top_k = 50 would silently truncate the distribution). Sampling is
  deterministic for a seed: the global RNG is forked and seeded for the call, so
  the caller's RNG stream is left as it was.
- "vllm": used only when `vllm` imports AND CUDA is available AND the model is
  given as a checkpoint directory (vLLM loads weights itself; a live torch module
  would need a weight-sync hook, which belongs to the RLVR trainer, not here).
  Imported lazily; not exercised by the CPU tests.

Why prompts are sorted by length inside the call: batches of similar length waste
less compute on padding. Greedy results do not depend on the batch a prompt lands
in (up to float noise), and sampled results stay a deterministic function of
(prompts, seed, batch_size).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

BACKENDS = ("auto", "hf", "vllm")


@dataclass
class Completion:
    prompt_ids: list[int]
    response_ids: list[int]  # generated tokens, up to and including the stop token when one was hit
    text: str  # the response decoded without the stop token and without special tokens
    finished: bool  # True when generation ended on EOS / a stop token (not on the length limit)
    extra: dict[str, Any] = field(default_factory=dict)


def _stop_ids(tokenizer, stop_token_ids: Sequence[int] | None) -> list[int]:
    ids: list[int] = []
    eos = tokenizer.eos_token_id
    for value in ([eos] if isinstance(eos, int) else list(eos or [])) + list(stop_token_ids or []):
        if value is not None and value not in ids:
            ids.append(int(value))
    if not ids:
        raise ValueError("generation needs an EOS token or stop_token_ids to know where a response ends")
    return ids


def _encode(tokenizer, prompts: Sequence[Sequence[int]] | Sequence[str]) -> list[list[int]]:
    out: list[list[int]] = []
    for p in prompts:
        if isinstance(p, str):
            # Chat-template output already carries whatever BOS the template wants; adding
            # the tokenizer's specials again would double it (Llama-3 prepends BOS).
            out.append(list(tokenizer(p, add_special_tokens=False)["input_ids"]))
        else:
            out.append([int(t) for t in p])
        if not out[-1]:
            raise ValueError(f"prompt {len(out) - 1} is empty")
    return out


def _finish(tokenizer, prompt_ids: list[int], generated: list[int], stops: list[int], pad_id: int | None,
            max_new_tokens: int) -> Completion:
    cut = next((i for i, t in enumerate(generated) if t in stops), None)
    if cut is None:
        response = generated[:max_new_tokens]
        # A batch member that stopped early is padded by generate(); a row that never hit a stop
        # token cannot contain pads unless the model emitted the pad id itself (then pad ends it).
        if pad_id is not None and pad_id not in stops and pad_id in response:
            response = response[:response.index(pad_id)]
        body, finished = response, False
    else:
        response, body, finished = generated[:cut + 1], generated[:cut], True
    text = tokenizer.decode(body, skip_special_tokens=True)
    return Completion(prompt_ids=prompt_ids, response_ids=response, text=text, finished=finished)


def _use_vllm(model, backend: str) -> bool:
    if backend == "hf":
        return False
    wanted = backend == "vllm" or os.environ.get("REPRO_GENERATION_BACKEND") == "vllm"
    if backend == "auto" and os.environ.get("REPRO_GENERATION_BACKEND") == "hf":
        return False
    if not isinstance(model, (str, Path)):
        if wanted and backend == "vllm":
            raise ValueError("the vLLM backend needs a checkpoint directory, not an in-memory model")
        return False
    try:
        import importlib.util

        import torch

        available = importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()
    except ImportError:
        available = False
    if backend == "vllm" and not available:
        raise ValueError("the vLLM backend needs the `vllm` package and a CUDA device")
    return available


def load_for_generation(path: str | Path):
    """A causal LM from a local checkpoint directory, in eval mode (float32 on CPU)."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # `--json` runs keep stderr for the one-line errors
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model.eval()


def generate(model, tokenizer, prompts: Sequence[Sequence[int]] | Sequence[str], *, max_new_tokens: int,
             temperature: float = 0.0, seed: int = 0, batch_size: int = 16,
             stop_token_ids: Sequence[int] | None = None, backend: str = "auto") -> list[Completion]:
    """Complete every prompt; returns Completions in the order of `prompts`.

    `model` is a causal LM module or a checkpoint directory. `temperature == 0` is greedy.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown generation backend {backend!r} (valid: {', '.join(BACKENDS)})")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encoded = _encode(tokenizer, prompts)
    if not encoded:
        return []
    stops = _stop_ids(tokenizer, stop_token_ids)
    if _use_vllm(model, backend):
        return _generate_vllm(str(model), tokenizer, encoded, max_new_tokens=max_new_tokens,
                              temperature=temperature, seed=seed, stops=stops)
    if isinstance(model, (str, Path)):
        model = load_for_generation(model)
    return _generate_hf(model, tokenizer, encoded, max_new_tokens=max_new_tokens, temperature=temperature,
                        seed=seed, batch_size=batch_size, stops=stops)


def _generate_hf(model, tokenizer, encoded: list[list[int]], *, max_new_tokens: int, temperature: float,
                 seed: int, batch_size: int, stops: list[int]) -> list[Completion]:
    import torch
    from transformers import GenerationConfig

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    sample = temperature > 0
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sample, num_beams=1, use_cache=True,
        eos_token_id=stops, pad_token_id=pad_id,
        **({"temperature": float(temperature), "top_p": 1.0, "top_k": 0} if sample else {}),
    )
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
    results: list[Completion | None] = [None] * len(encoded)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.inference_mode():
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                width = max(len(encoded[i]) for i in idx)
                # Left padding: every row's last prompt token sits at the same column, so the new
                # tokens line up; positions come from the attention mask inside generate().
                ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    n = len(encoded[i])
                    ids[row, width - n:] = torch.tensor(encoded[i], dtype=torch.long)
                    mask[row, width - n:] = 1
                out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                     generation_config=config)
                new = out[:, width:].tolist()
                for row, i in enumerate(idx):
                    results[i] = _finish(tokenizer, encoded[i], new[row], stops, pad_id, max_new_tokens)
    finally:
        if was_training:
            model.train()
    return results  # type: ignore[return-value]


_VLLM_ENGINES: dict[str, Any] = {}


def _generate_vllm(path: str, tokenizer, encoded: list[list[int]], *, max_new_tokens: int, temperature: float,
                   seed: int, stops: list[int]) -> list[Completion]:
    from vllm import LLM, SamplingParams  # lazy: heavy, GPU-only

    engine = _VLLM_ENGINES.get(path)
    if engine is None:
        engine = _VLLM_ENGINES[path] = LLM(model=path, seed=seed, enforce_eager=False)
    params = SamplingParams(temperature=float(temperature), top_p=1.0, top_k=-1, max_tokens=max_new_tokens,
                            stop_token_ids=stops, seed=seed, skip_special_tokens=True)
    outputs = engine.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
    pad_id = tokenizer.pad_token_id
    return [_finish(tokenizer, ids, list(o.outputs[0].token_ids), stops, pad_id, max_new_tokens)
            for ids, o in zip(encoded, outputs)]


__all__ = ["Completion", "generate", "load_for_generation", "BACKENDS"]
