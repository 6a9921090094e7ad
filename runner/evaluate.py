"""Evaluation suites: verifier tasks, preference accuracy, held-out loss.

Every metric carries its protocol, so `repro compare` can tell a like-for-like
comparison from a mismatched one:

    {harness: "repro", suite, task, data_path, data_sha256, n, shots: 0, cot, chat_template,
     generation: {temperature, max_new_tokens}, metric, settings, [published], [dataset]}

`settings` condenses what changes the number (shots, template, decoding, verifier
version) into one string, the field the registry's published protocols also carry.
With `profile="recorded"` each metric also names the published protocol it stands
for (`published`, from PUBLISHED_PROTOCOLS) and the dataset that protocol loads
(`dataset`); the fixtures stand in for that data offline.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from registry.errors import ReproError
from runner.data import fixtures
from runner.data.fixtures import file_sha256

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SUITES = ("verifiers", "gsm8k", "math", "ifeval", "preference", "heldout")
PROFILES = ("smoke", "recorded")
# task -> metric (= published benchmark name)
VERIFIER_TASKS = {"gsm8k": "GSM8K", "math": "MATH", "ifeval": "IFEval"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")

# What each suite stands for in the recorded profile: the published protocol (exactly the fields the
# registry's published metric states, minus the printed `settings` text) and the dataset it loads online.
# Tülu 3: OLMES `tulu_3_dev` task ids (facts/tulu3.md §7, "Eval harness and settings": open-instruct
#   scripts/eval/oe-eval.sh at 3dd7a07da; shots/CoT/metric as printed on the 8B/70B cards).
# SmolLM2: lighteval task strings (facts/smollm2.md §4.1: smollm2_base.txt / smollm2_instruct.txt at
#   the pinned lighteval commit; GSM8K 5-shot quasi-exact-match, IFEval "Average prompt/inst");
#   MATH is paper-only (4-shot, custom qem; no task string is published).
PUBLISHED_PROTOCOLS: dict[tuple[str, str], dict[str, Any]] = {
    ("tulu3", "gsm8k"): {"protocol": {"harness": "OLMES", "task": "gsm8k::tulu", "shots": 8, "cot": True},
                         "dataset": {"hub_id": "openai/gsm8k", "config": "main", "split": "test"},
                         "source": "facts/tulu3.md §7"},
    ("tulu3", "math"): {"protocol": {"harness": "OLMES", "task": "minerva_math::tulu", "shots": 4, "cot": True,
                                     "metric": "Flex"},
                        "dataset": {"hub_id": "EleutherAI/hendrycks_math", "config": None, "split": "test"},
                        "source": "facts/tulu3.md §7"},
    ("tulu3", "ifeval"): {"protocol": {"harness": "OLMES", "task": "ifeval::tulu", "metric": "prompt loose"},
                          "dataset": {"hub_id": "google/IFEval", "config": None, "split": "train"},
                          "source": "facts/tulu3.md §7"},
    ("smollm2", "gsm8k"): {"protocol": {"harness": "lighteval", "task": "custom|gsm8k|5|1", "shots": 5,
                                        "metric": "quasi-exact-match"},
                           "dataset": {"hub_id": "openai/gsm8k", "config": "main", "split": "test"},
                           "source": "facts/smollm2.md §4.1"},
    ("smollm2", "math"): {"protocol": {"harness": "lighteval", "shots": 4, "metric": "custom qem"},
                          "dataset": {"hub_id": "lighteval/MATH", "config": None, "split": "test"},
                          "source": "facts/smollm2.md §4.1 (PAPER only)"},
    ("smollm2", "ifeval"): {"protocol": {"harness": "lighteval", "task": "extended|ifeval|0|0", "shots": 0,
                                         "metric": "Average prompt/inst"},
                            "dataset": {"hub_id": "google/IFEval", "config": None, "split": "train"},
                            "source": "facts/smollm2.md §4.1"},
    ("smollm2", "dpo"): {"protocol": {"harness": "trl DPOTrainer eval",
                                      "task": "HuggingFaceH4/ultrafeedback_binarized:test_prefs",
                                      "metric": "rewards/accuracies"},
                         "dataset": {"hub_id": "HuggingFaceH4/ultrafeedback_binarized", "config": None,
                                     "split": "test_prefs"},
                         "source": "SmolLM2-Instruct Trainer card (recipes.json)"},
}

DEFAULT_DATA: dict[tuple[str, str], Path] = {
    # Not rlvr-eval.jsonl (the RLVR stage's held-out prompts): its IFEval rows are only the two kinds RLVR
    # trains on (upper case, at most N words), which an empty reply satisfies, so an untrained miniature
    # scored 100 on them. verifiers-eval.jsonl draws every IFEval kind (an empty reply scores 51).
    ("verifiers", "tulu3"): FIXTURES / "tulu3/verifiers-eval.jsonl",
    ("verifiers", "smollm2"): FIXTURES / "tulu3/verifiers-eval.jsonl",
    ("preference", "tulu3"): FIXTURES / "tulu3/ultrafeedback_binarized_cleaned-test_prefs.jsonl",
    ("preference", "smollm2"): FIXTURES / "smollm2/ultrafeedback_binarized-test_prefs.jsonl",
    ("heldout", "tulu3"): FIXTURES / "smollm2/pretrain/heldout.jsonl",
    ("heldout", "smollm2"): FIXTURES / "smollm2/pretrain/heldout.jsonl",
}


@dataclass
class EvalMetric:
    name: str
    value: float
    protocol: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EvalResult:
    suite: str
    metrics: list[EvalMetric]
    data_path: str
    data_sha256: str
    details: list[dict[str, Any]] = field(default_factory=list)  # per example (responses, scores)

    def to_json(self, with_details: bool = False) -> dict[str, Any]:
        out = {"suite": self.suite, "data_path": self.data_path, "data_sha256": self.data_sha256,
               "metrics": [m.to_json() for m in self.metrics]}
        if with_details:
            out["details"] = self.details
        return out


# ---------------------------------------------------------------- checkpoints


def check_model_dir(path: str | Path) -> Path:
    """A local HF checkpoint directory (config.json + weights), else ReproError (one line, exit 2)."""
    path = Path(path)
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ReproError(f"{path} is not a model directory (no config.json)")
    if not any((path / name).exists() for name in WEIGHT_FILES) and not list(path.glob("*.safetensors")):
        raise ReproError(f"{path} is not a model directory (config.json but no weights: "
                         f"expected model.safetensors or pytorch_model.bin)")
    return path


def model_kind(path: str | Path) -> str:
    """"reward_model" (a sequence classifier with one label), "causal_lm", or ReproError."""
    try:
        config = json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ReproError(f"{path}/config.json is unreadable: {exc}") from None
    archs = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        return "reward_model"
    if any(a.endswith("ForCausalLM") for a in archs):
        return "causal_lm"
    raise ReproError(f"{path}: unsupported architecture {archs or 'none'} (expected *ForCausalLM or "
                     "*ForSequenceClassification)")


def load_tokenizer(path: Path, chat_template: str | None = None, fallback_template: str | None = None):
    """The checkpoint's tokenizer (runner/data/tokenizer.load_tokenizer, local files only, EOS pads where it
    has no pad token); `chat_template` replaces its template, `fallback_template` only fills a missing one
    (a run's plan names the template its stage trained with)."""
    from runner.data import tokenizer as tokenizers

    try:
        return tokenizers.load_tokenizer(path, template=chat_template, template_if_missing=fallback_template)
    except (OSError, ValueError) as exc:
        raise ReproError(f"{path}: no tokenizer saved with the model ({str(exc).splitlines()[0]})") from None


def template_name(tokenizer) -> str | None:
    """The registry name of the tokenizer's chat template, `custom:<sha8>` for others, None if unset."""
    from runner.data.templates import TEMPLATES

    jinja = getattr(tokenizer, "chat_template", None)
    if not jinja:
        return None
    for name, text in TEMPLATES.items():
        if text == jinja:
            return name
    return "custom:" + hashlib.sha256(jinja.encode()).hexdigest()[:8]


def guess_family(tokenizer) -> str:
    # Fixture and real tokenizers share their special tokens with the family they mimic.
    return "smollm2" if tokenizer.eos_token == "<|im_end|>" else "tulu3"


def _load_causal_lm(path: Path):
    from runner.generation import load_for_generation

    return load_for_generation(path)


def _load_reward_model(path: Path):
    import torch
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    return AutoModelForSequenceClassification.from_pretrained(str(path), dtype=torch.float32,
                                                              local_files_only=True).eval()


# ---------------------------------------------------------------- data


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Eval data rows (JSON objects, blank lines skipped); a bad row is bad input naming the row."""
    path = Path(path)
    if not path.is_file():
        raise ReproError(f"eval data {path} does not exist")
    try:
        rows = fixtures.read_jsonl(path, skip_blank=True)
    except fixtures.FixtureError as exc:
        raise ReproError(str(exc)) from None
    for n, row in rows:
        if not isinstance(row, dict):
            raise ReproError(f"{path} row {n}: expected a JSON object")
    return [row for _, row in rows]


def _messages_ok(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


# ---------------------------------------------------------------- protocol


def _protocol(suite: str, task: str, data: Path, sha: str, n: int, metric: str, *, template: str | None,
              generation: dict[str, Any] | None, profile: str, family: str, published_key: str | None,
              extra: dict[str, Any] | None = None, info: dict[str, Any] | None = None) -> dict[str, Any]:
    # `extra` changes the number, so it joins `settings` (fingerprinted); `info` is recorded only.
    gen = generation or {}
    parts = ["0-shot", f"chat template {template or 'none'}"]
    if gen:
        decoding = "greedy" if gen.get("temperature", 0) == 0 else f"temperature {gen['temperature']}"
        parts += [decoding, f"max_new_tokens {gen.get('max_new_tokens')}"]
    for key, value in sorted((extra or {}).items()):
        parts.append(f"{key} {value}")
    protocol: dict[str, Any] = {
        "harness": "repro", "suite": suite, "task": task, "data_path": str(data), "data_sha256": sha, "n": n,
        "shots": 0, "cot": None, "chat_template": template, "generation": gen or None, "metric": metric,
        "settings": "; ".join(parts), **(extra or {}), **(info or {}),
    }
    if profile == "recorded" and published_key:
        entry = PUBLISHED_PROTOCOLS.get((family, published_key))
        if entry:
            protocol["published"] = dict(entry["protocol"])
            protocol["dataset"] = dict(entry["dataset"])
            protocol["published_source"] = entry["source"]
    return protocol


# ---------------------------------------------------------------- suites


def run_suite(suite: str, model_dir: str | Path, *, data: str | Path | None = None,
              reference_dir: str | Path | None = None, profile: str = "smoke", family: str | None = None,
              chat_template: str | None = None, fallback_template: str | None = None, dpo_loss_type: str = "dpo",
              verifier_version: str = "release-2024-11",
              max_new_tokens: int | None = None, batch_size: int = 16, limit: int | None = None,
              seed: int = 0) -> EvalResult:
    """Run one suite on a local checkpoint and return its metrics (nothing is recorded here)."""
    if suite not in SUITES:
        from registry.errors import unknown

        raise unknown("eval suite", suite, SUITES)
    if profile not in PROFILES:
        from registry.errors import unknown

        raise unknown("eval profile", profile, PROFILES)
    model_dir = check_model_dir(model_dir)
    kind = model_kind(model_dir)
    tokenizer = load_tokenizer(model_dir, chat_template, fallback_template)
    family = family or guess_family(tokenizer)
    if data is None:
        if profile == "recorded":
            raise ReproError(f"the recorded profile of suite {suite!r} evaluates on the published datasets, which "
                             "are not available offline; pass --data FILE, or run the published protocols on "
                             "real benchmark data with --suite published")
        data = DEFAULT_DATA[("verifiers" if suite in VERIFIER_TASKS else suite, family)]
    data = Path(data).resolve()
    rows = read_jsonl(data)
    if limit is not None:
        rows = rows[:max(1, limit)]
    sha = file_sha256(data)
    common = dict(profile=profile, family=family)
    if suite == "preference":
        return _preference(model_dir, kind, tokenizer, rows, data, sha, reference_dir, dpo_loss_type, batch_size,
                           **common)
    if kind != "causal_lm":
        raise ReproError(f"suite {suite!r} needs a causal language model; {model_dir} is a reward model "
                         "(use --suite preference)")
    if suite == "heldout":
        return _heldout(model_dir, tokenizer, rows, data, sha, batch_size, **common)
    tasks = list(VERIFIER_TASKS) if suite == "verifiers" else [suite]
    if max_new_tokens is None:
        max_new_tokens = 32 if profile == "smoke" else 512
    return _verifiers(model_dir, tokenizer, rows, data, sha, tasks, verifier_version, max_new_tokens, batch_size,
                      seed, suite=suite, **common)


def _verifiers(model_dir: Path, tokenizer, rows, data: Path, sha: str, tasks: list[str], version: str,
               max_new_tokens: int, batch_size: int, seed: int, *, suite: str, profile: str,
               family: str) -> EvalResult:
    from runner import verifiers
    from runner.generation import generate

    if version not in verifiers.VERSIONS:
        from registry.errors import unknown

        raise unknown("verifier version", version, verifiers.VERSIONS)
    template = template_name(tokenizer)
    if template is None:
        raise ReproError(f"{model_dir}: the tokenizer has no chat template; pass --chat-template tulu|chatml")
    picked: list[tuple[int, dict[str, Any], str]] = []
    for n, row in enumerate(rows, 1):
        if (not _messages_ok(row.get("messages")) or "ground_truth" not in row
                or not isinstance(row.get("dataset"), str)):
            raise ReproError(f"{data} row {n}: expected RLVR rows with 'messages', 'ground_truth' and 'dataset'")
        task = row["dataset"].lower()
        if task not in VERIFIER_TASKS:
            raise ReproError(f"{data} row {n}: unknown verifier task {row['dataset']!r} (valid: gsm8k, MATH, ifeval)")
        if task not in tasks:
            continue
        problem = verifiers.validate_ground_truth(task, row["ground_truth"])
        if problem:
            raise ReproError(f"{data} row {n}: {problem}")
        picked.append((n, row, task))
    if not picked:
        raise ReproError(f"{data} has no {'/'.join(tasks)} rows for suite {suite!r}")
    prompts = [tokenizer.apply_chat_template(row["messages"], tokenize=False, add_generation_prompt=True)
               for _, row, _ in picked]
    completions = generate(_load_causal_lm(model_dir), tokenizer, prompts, max_new_tokens=max_new_tokens,
                           temperature=0.0, seed=seed, batch_size=batch_size)
    scores: dict[str, list[float]] = {t: [] for t in tasks}
    details = []
    for (n, row, task), c in zip(picked, completions):
        s = verifiers.score(task, c.text, row["ground_truth"], version)
        scores[task].append(s)
        details.append({"row": n, "task": task, "response": c.text, "finished": c.finished, "score": s})
    generation = {"temperature": 0.0, "max_new_tokens": max_new_tokens}
    metrics = [EvalMetric(VERIFIER_TASKS[t], 100.0 * sum(v) / len(v),
                          _protocol(suite, t, data, sha, len(v), f"accuracy (verifier {version})", template=template,
                                    generation=generation, published_key=t, profile=profile, family=family,
                                    extra={"verifier_version": version}))
               for t, v in scores.items() if v]
    return EvalResult(suite, metrics, str(data), sha, details)


def _pairs(rows, data: Path) -> list[tuple[int, list, list]]:
    out = []
    for n, row in enumerate(rows, 1):
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if not (_messages_ok(chosen) and _messages_ok(rejected)):
            raise ReproError(f"{data} row {n} has no chosen/rejected message pairs; preference accuracy needs "
                             "preference data (rows with 'chosen' and 'rejected' conversations)")
        out.append((n, chosen, rejected))
    return out


def _encode_pair_side(tokenizer, messages: list, max_len: int) -> tuple[list[int], int]:
    """(ids, prompt_length): prompt = everything before the last assistant turn, rendered with the generation
    prompt; tokenized apart from the completion so the boundary is exact."""
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        prompt = ""
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    c_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
    ids = (p_ids + c_ids)[-max_len:]
    return ids, max(0, len(p_ids) - (len(p_ids) + len(c_ids) - len(ids)))


def _max_len(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 2048) or 2048)


def _right_pad(seqs: list[list[int]], pad_id: int):
    import torch

    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return ids, mask


def _preference(model_dir: Path, kind: str, tokenizer, rows, data: Path, sha: str, reference_dir,
                loss_type: str, batch_size: int, *, profile: str, family: str) -> EvalResult:
    import torch

    from runner.losses import IGNORE_INDEX, gather_at, sequence_logps

    if kind == "causal_lm" and reference_dir is None and loss_type != "simpo":
        raise ReproError(f"preference accuracy on a causal LM ({model_dir}) needs a reference model for DPO "
                         "implicit rewards (--reference RUN|CHECKPOINT|PATH), or evaluate a reward-model checkpoint")
    pairs = _pairs(rows, data)
    template = template_name(tokenizer)
    if template is None:
        raise ReproError(f"{model_dir}: the tokenizer has no chat template; pass --chat-template tulu|chatml")
    pad = tokenizer.pad_token_id
    details: list[dict[str, Any]] = []
    if kind == "reward_model":
        model = _load_reward_model(model_dir)
        max_len = _max_len(model)
        base = getattr(model, model.base_model_prefix)

        def scores(convs: list[list]) -> list[float]:
            ids, mask = _right_pad([_encode_pair_side(tokenizer, c, max_len)[0] for c in convs], pad)
            hidden = base(input_ids=ids, attention_mask=mask).last_hidden_state
            logits = model.score(hidden).squeeze(-1)
            # Right padding: the score is read at the last real token (open-instruct's get_reward reads the
            # token before the first pad, the same position when pad is not also a content token).
            return gather_at(logits, mask.sum(-1) - 1).tolist()

        with torch.inference_mode():
            for start in range(0, len(pairs), batch_size):
                chunk = pairs[start:start + batch_size]
                sc, sr = scores([c for _, c, _ in chunk]), scores([r for _, _, r in chunk])
                details += [{"row": n, "chosen": a, "rejected": b, "correct": a > b}
                            for (n, _, _), a, b in zip(chunk, sc, sr)]
        value = 100.0 * sum(d["correct"] for d in details) / len(details)
        metric = EvalMetric("preference accuracy", value, _protocol(
            "preference", "reward-model pairs", data, sha, len(details), "fraction of pairs with "
            "score(chosen) > score(rejected), percent (ties count wrong)", template=template, generation=None,
            published_key=None, profile=profile, family=family, extra={"scorer": "reward model"}))
        return EvalResult("preference", [metric], str(data), sha, details)

    policy = _load_causal_lm(model_dir)
    reference = None
    if loss_type != "simpo":
        reference_dir = check_model_dir(reference_dir)
        if model_kind(reference_dir) != "causal_lm":
            raise ReproError(f"reference {reference_dir} is not a causal language model")
        reference = _load_causal_lm(reference_dir)
    max_len = _max_len(policy)
    average = loss_type in ("dpo_norm", "simpo")  # length-normalised log-probs, as those losses use them

    def logps(model, convs: list[list]):
        encoded = [_encode_pair_side(tokenizer, c, max_len) for c in convs]
        ids, mask = _right_pad([e[0] for e in encoded], pad)
        labels = ids.clone()
        labels[mask == 0] = IGNORE_INDEX
        for i, (_, plen) in enumerate(encoded):
            labels[i, :plen] = IGNORE_INDEX
        logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
        return sequence_logps(logits.float().cpu(), labels, average=average)

    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start:start + batch_size]
            chosen, rejected = [c for _, c, _ in chunk], [r for _, _, r in chunk]
            rc, rr = logps(policy, chosen), logps(policy, rejected)
            if reference is not None:
                rc, rr = rc - logps(reference, chosen), rr - logps(reference, rejected)
            details += [{"row": n, "chosen_reward": a, "rejected_reward": b, "correct": a > b}
                        for (n, _, _), a, b in zip(chunk, rc.tolist(), rr.tolist())]
    value = sum(d["correct"] for d in details) / len(details)
    metric = EvalMetric("DPO eval rewards/accuracies", value, _protocol(
        "preference", "dpo implicit reward", data, sha, len(details),
        "rewards/accuracies: fraction of pairs with implicit reward(chosen) > reward(rejected)", template=template,
        generation=None, published_key="dpo", profile=profile, family=family,
        extra={"dpo_loss_type": loss_type},
        info={"scale": 1.0, "reference": str(reference_dir) if reference_dir else None}))
    return EvalResult("preference", [metric], str(data), sha, details)


def _heldout(model_dir: Path, tokenizer, rows, data: Path, sha: str, batch_size: int, *, profile: str,
             family: str) -> EvalResult:
    import torch

    from runner.losses import IGNORE_INDEX, token_logps

    model = _load_causal_lm(model_dir)
    max_len = _max_len(model)
    template = template_name(tokenizer)
    seqs: list[list[int]] = []
    for n, row in enumerate(rows, 1):
        if isinstance(row.get("text"), str) and row["text"].strip():
            # Pretraining documents: the tokenizer's own specials (BOS for the tulu tokenizer) plus EOS.
            ids = tokenizer(row["text"])["input_ids"] + [tokenizer.eos_token_id]
        elif _messages_ok(row.get("messages")):
            if template is None:
                raise ReproError(f"{model_dir}: the tokenizer has no chat template for 'messages' rows; "
                                 "pass --chat-template tulu|chatml")
            ids = tokenizer(tokenizer.apply_chat_template(row["messages"], tokenize=False),
                            add_special_tokens=False)["input_ids"]
        else:
            raise ReproError(f"{data} row {n}: held-out loss needs a 'text' or a 'messages' field")
        seqs.append(ids[:max_len])
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(seqs), batch_size):
            ids, mask = _right_pad(seqs[start:start + batch_size], tokenizer.pad_token_id)
            labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
            logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits
            lp, m = token_logps(logits.float().cpu(), labels)
            total -= float(lp[m].double().sum())
            count += int(m.sum())
    if count == 0:
        raise ReproError(f"{data}: no tokens to score")
    loss = total / count
    proto = dict(template=template, generation=None, published_key=None, profile=profile, family=family,
                 extra={"max_length": max_len}, info={"tokens": count})
    metrics = [
        EvalMetric("heldout loss", loss, _protocol("heldout", "heldout", data, sha, len(seqs),
                                                   "token-level mean negative log-likelihood (nats)", **proto)),
        EvalMetric("heldout perplexity", math.exp(loss), _protocol("heldout", "heldout", data, sha, len(seqs),
                                                                   "exp(token-level mean NLL)", **proto)),
    ]
    return EvalResult("heldout", metrics, str(data), sha, [{"tokens": count, "nll": total}])


__all__ = ["SUITES", "PROFILES", "VERIFIER_TASKS", "PUBLISHED_PROTOCOLS", "DEFAULT_DATA", "EvalMetric", "EvalResult",
           "check_model_dir", "model_kind", "load_tokenizer", "template_name", "guess_family", "read_jsonl",
           "run_suite"]
