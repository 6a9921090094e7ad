"""The SmolLM2 evaluation protocols, as lighteval @ea46419 ran them with huggingface/smollm's tasks.py.

Sources (facts/smollm2.md §4.1, read from the pinned code):
- task configs and prompt functions: huggingface/smollm `text/evaluation/smollm2/tasks.py`
  (hellaswag, piqa via lighteval's `piqa_harness`, arc:easy / arc:challenge via `arc`,
  mmlu cloze, gsm8k via `gsm8k`, winogrande, openbook_qa, commonsense_qa);
- lighteval @ea46419a93fb390e8f694f7c6c64c1e684487c9d:
  * `tasks/lighteval_task.py::create_requests_from_tasks`: the eval docs are shuffled with
    `random.Random(42)` and the first `max_samples` taken; the same Random object then draws
    the few-shot examples (`random_sampling_from_train`: `sampler.sample(train_docs, k)` per doc);
  * `tasks/prompt_manager.py::get_examples`: with `--use_chat_template` every few-shot example is a
    user turn (its query) and an assistant turn (its gold continuation), the evaluated query is the
    last user turn, the task instruction is prefixed to the first turn, and the template is applied
    with `add_generation_prompt=True`; without it, examples are joined with "\\n\\n";
  * `models/abstract_model.py::tok_encode_pair` (non-pairwise, as the vLLM config defaults): trailing
    whitespace of the context moves to the continuation, the continuation's tokens are those of
    `tok(context + continuation)` after `len(tok(context))`;
  * `models/vllm_model.py`: with the chat template generation stops at EOS only (the task's stop
    sequences are not passed); inputs are left-truncated to `max_model_length` (2048 in the
    SmolLM2 runs) minus the generation size;
  * `metrics/normalizations.py`: `loglikelihood_acc_norm_nospace` divides each choice's summed
    log-probability by its character length without the leading space; `quasi_exact_match_gsm8k`
    compares the first `#### <number>` of prediction and gold, commas removed;
  * `tasks/extended/ifeval/main.py` (`extended|ifeval|0|0`): run by ifeval_run.py with the official
    checkers of ifeval_checkers.py.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

LIGHTEVAL_COMMIT = "ea46419a93fb390e8f694f7c6c64c1e684487c9d"
TASKS_PY = "huggingface/smollm text/evaluation/smollm2/tasks.py"
MAX_MODEL_LENGTH = 2048  # `max_model_length=2048` in the smollm2 README's lighteval command
SHUFFLE_SEED = 42  # create_requests_from_tasks: rnd.seed(42); rnd.shuffle(task_docs)


@dataclass
class Doc:
    query: str
    choices: list[str]
    gold: int
    instruction: str = ""


# ---------------------------------------------------------------- prompt functions (tasks.py / default_prompts.py)


def _hellaswag_preprocess(text: str) -> str:
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def prompt_hellaswag(line: dict[str, Any]) -> Doc:
    ctx = f"{line['ctx_a']} {line['ctx_b'].capitalize()} "
    return Doc(query=_hellaswag_preprocess(line["activity_label"] + ": " + ctx),
               choices=[" " + _hellaswag_preprocess(e) for e in line["endings"]],
               gold=int(line["label"]) if line["label"] != "" else -1)


def prompt_piqa(line: dict[str, Any]) -> Doc:  # lighteval default_prompts.piqa_harness
    return Doc(query=f"Question: {line['goal']}\nAnswer:", choices=[f" {line['sol1']}", f" {line['sol2']}"],
               gold=int(line["label"]))


def prompt_arc(line: dict[str, Any]) -> Doc:  # lighteval default_prompts.arc
    if "query" in line:  # an OLMES request document: query "Question: {question}\nAnswer:", raw choices, gold
        question = line["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        choices, gold = list(line["choices"]), int(line["gold"])
    else:
        question, choices = line["question"], list(line["choices"]["text"])
        gold = line["choices"]["label"].index(line["answerKey"])
    return Doc(query=f"Question: {question}\nAnswer:", choices=[f" {c}" for c in choices], gold=gold)


def prompt_mmlu_cloze(line: dict[str, Any]) -> Doc:  # tasks.py mmlu_cloze_prompt
    topic = line["subject"].replace("_", " ")
    return Doc(query=f"The following are questions about {topic}.\nQuestion: " + line["question"] + "\nAnswer:",
               choices=[f" {c}" for c in line["choices"]], gold=int(line["answer"]),
               instruction=f"The following are questions about {topic}.\n")


def prompt_gsm8k(line: dict[str, Any]) -> Doc:  # lighteval default_prompts.gsm8k
    return Doc(query=f"Question: {line['question']}\nAnswer:", choices=[f" {line['answer']}"], gold=0)


def prompt_winogrande(line: dict[str, Any]) -> Doc:  # lighteval default_prompts.winogrande
    query, end_of_target = line["sentence"].split("_")
    end_of_target = end_of_target.strip()
    return Doc(query=query, choices=[f"{line['option1']} {end_of_target}", f"{line['option2']} {end_of_target}"],
               gold=int(line["answer"]) - 1 if line["answer"] != "" else -1)


def prompt_openbookqa(line: dict[str, Any]) -> Doc:  # lighteval default_prompts.openbookqa
    return Doc(query=f"{line['question_stem']}", choices=[f" {c}" for c in line["choices"]["text"]],
               gold=["A", "B", "C", "D", "E"].index(line["answerKey"].strip()))


def prompt_commonsense_qa(line: dict[str, Any]) -> Doc:  # tasks.py prompt_commonsense_qa
    return Doc(query=line["question"], choices=[f" {c}" for c in line["choices"]["text"]],
               gold=line["choices"]["label"].index(line["answerKey"].strip()))


def prompt_ifeval(line: dict[str, Any]) -> Doc:  # lighteval extended/ifeval/main.py ifeval_prompt
    return Doc(query=line["prompt"], choices=[""], gold=0)


# ---------------------------------------------------------------- metrics


def acc_norm_nospace(logprobs: list[float], choices: list[str], gold: int) -> int:
    normed = [lp / (len(c) - 1 if c[0] == " " else len(c)) for lp, c in zip(logprobs, choices)]
    return int(int(np.argmax(normed)) == gold)


_GSM8K_ANS = re.compile(r"#### (\-?[0-9\.\,]+)")


def gsm8k_normalizer(text: str) -> str:
    match = _GSM8K_ANS.search(text)
    return match.group(1).strip().replace(",", "") if match else "[invalid]"


def quasi_exact_match_gsm8k(prediction: str, gold: str) -> int:
    if not prediction:
        return 0
    return int(gsm8k_normalizer(gold.strip()) == gsm8k_normalizer(prediction.strip()))


# ---------------------------------------------------------------- task table


@dataclass(frozen=True)
class Part:
    name: str  # lighteval task name, e.g. "arc:easy"
    source: str  # runner.evaltasks.data source of the evaluated split
    hub_revision: str | None  # the dataset revision tasks.py pins (None: the task config pins none)
    published_split: str  # the split tasks.py evaluates


@dataclass(frozen=True)
class LightevalTask:
    name: str  # ours: what --tasks takes
    benchmark: str  # the published metric's name in recipes.json
    task: str  # lighteval task string from smollm2_{base,instruct}.txt
    parts: tuple[Part, ...]  # several parts are averaged (custom:arc:_average)
    prompt: Callable[[dict[str, Any]], Doc]
    kind: str  # "loglikelihood" | "generation"
    metric: str
    shots: int = 0
    generation_size: int | None = None
    stop_sequence: tuple[str, ...] = ()
    few_shot_split: str | None = None  # the split lighteval draws few-shot examples from
    notes: tuple[str, ...] = field(default_factory=tuple)
    card_metric: str | None = None  # the metric as the card / recipes.json names it, where the name differs

    def protocol(self) -> dict[str, Any]:
        """The fields a published metric states (recipes.json), for the comparison."""
        return {"harness": "lighteval", "task": self.task, "shots": self.shots,
                "metric": self.card_metric or self.metric}


LL, GEN = "loglikelihood", "generation"
IFEVAL_METRIC = "ifeval_metric"  # lighteval's Metrics.ifeval_metric: the four IFEval accuracies
TASKS: dict[str, LightevalTask] = {t.name: t for t in (
    LightevalTask("hellaswag", "HellaSwag", "custom|hellaswag|0|1",
                  (Part("hellaswag", "hellaswag:validation", "6002345709e0801764318f06bf06ce1e7d1a1fe3",
                        "validation"),),
                  prompt_hellaswag, LL, "loglikelihood_acc_norm_nospace"),
    LightevalTask("piqa", "PIQA", "custom|piqa|0|1",
                  (Part("piqa", "piqa:validation", "2e8ac2dffd59bac8c3c6714948f4c551a0848bb0", "validation"),),
                  prompt_piqa, LL, "loglikelihood_acc_norm_nospace"),
    LightevalTask("arc", "ARC", "custom|arc|0|1",
                  (Part("arc:easy", "arc_easy:test", "210d026faf9955653af8916fad021475a3f00453", "test"),
                   Part("arc:challenge", "arc_challenge:test", "210d026faf9955653af8916fad021475a3f00453", "test")),
                  prompt_arc, LL, "loglikelihood_acc_norm_nospace",
                  notes=("ARC = mean of the ARC-Easy and ARC-Challenge accuracies (custom:arc:_average)",)),
    LightevalTask("mmlu_cloze", "MMLU", "custom|mmlu|0|1",
                  (Part("mmlu", "mmlu:test", "c30699e8356da336a370243923dbaf21066bb9fe", "test"),),
                  prompt_mmlu_cloze, LL, "loglikelihood_acc_norm_nospace",
                  notes=("cais/mmlu 'all' read as the 57 subjects' test splits concatenated in alphabetical order",)),
    LightevalTask("gsm8k", "GSM8K", "custom|gsm8k|5|1",
                  (Part("gsm8k", "gsm8k:test", "e53f048856ff4f594e959d75785d2c2d37b678ee", "test"),),
                  prompt_gsm8k, GEN, "quasi_exact_match_gsm8k", shots=5, generation_size=256,
                  stop_sequence=("Question:", "Question"), few_shot_split="train",
                  card_metric="quasi-exact-match"),
    LightevalTask("winogrande", "WinoGrande", "custom|winogrande|0|1",
                  (Part("winogrande", "winogrande:validation", "85ac5b5a3b7a930e22d590176e39460400d19e41",
                        "validation"),),
                  prompt_winogrande, LL, "loglikelihood_acc_norm_nospace"),
    LightevalTask("openbookqa", "OpenBookQA", "custom|openbook_qa|0|1",
                  (Part("openbook_qa", "openbookqa:validation", "388097ea7776314e93a529163e0fea805b8a6454",
                        "validation"),),
                  prompt_openbookqa, LL, "loglikelihood_acc_norm_nospace"),
    LightevalTask("commonsense_qa", "CommonsenseQA", "custom|commonsense_qa|0|1",
                  (Part("commonsense_qa", "commonsense_qa:validation", "94630fe30dad47192a8546eb75f094926d47e155",
                        "validation"),),
                  prompt_commonsense_qa, LL, "loglikelihood_acc_norm_nospace"),
    # extended/ifeval/main.py @ea46419: google/IFEval train (no revision), generation_size 1280, no stop
    # sequence; scored by the official checkers (runner/evaltasks/ifeval_run.py, ifeval_checkers.py).
    LightevalTask("ifeval", "IFEval", "extended|ifeval|0|0",
                  (Part("ifeval", "google/IFEval:train", None, "train"),),
                  prompt_ifeval, GEN, IFEVAL_METRIC, generation_size=1280, card_metric="Average prompt/inst"),
)}

# Named in the SmolLM2 task lists but not implemented here (yet); `repro eval` says so in one line.
NOT_IMPLEMENTED = {
    "mmlu_pro": "MMLU-Pro (MCF): TIGER-Lab/MMLU-Pro is not in the offline data mirror",
    "trivia_qa": "TriviaQA: the rc.nocontext split lighteval reads is not in the mirror (only rc.wikipedia.nocontext)",
    "bbh": "BBH 3-shot: lighteval/big_bench_hard is not in the offline data mirror",
}


# ---------------------------------------------------------------- contexts


def select(docs: list[Any], limit: int | None, seed: int = SHUFFLE_SEED) -> tuple[list[int], random.Random]:
    """Indices of the evaluated docs, as lighteval picks them: shuffle with Random(seed), first `limit`.
    Returns the Random object too: lighteval keeps drawing few-shot examples from it."""
    order = list(range(len(docs)))
    rnd = random.Random()
    rnd.seed(seed)
    rnd.shuffle(order)
    n = len(order) if not limit else min(limit, len(order))
    return order[:n], rnd


def context(doc: Doc, fewshot: list[Doc], tokenizer, use_chat_template: bool) -> str:
    """prompt_manager.get_examples (no system prompt)."""
    instruction = doc.instruction or ""
    if not doc.query.startswith(instruction):
        raise ValueError(f"query does not start with its instruction: {doc.query[:60]!r}")
    example = doc.query[len(instruction):]

    def text(d: Doc) -> str:
        return d.query[len(d.instruction or ""):]

    if use_chat_template:
        turns: list[dict[str, str]] = []
        for ex in fewshot:
            turns.append({"role": "user", "content": text(ex)})
            turns.append({"role": "assistant", "content": ex.choices[ex.gold]})
        turns.append({"role": "user", "content": example})
        turns[0]["content"] = instruction + turns[0]["content"]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    parts = [text(ex) + ex.choices[ex.gold] for ex in fewshot] + [example]
    out = instruction + "\n\n".join(parts)
    return "" if out == "\n\n" else out


def encode_pair(tokenizer, ctx: str, continuation: str) -> tuple[list[int], list[int]]:
    """abstract_model.tok_encode_pair with pairwise=False; special tokens as the vLLM config adds them."""
    n_spaces = len(ctx) - len(ctx.rstrip())
    if n_spaces > 0:
        continuation = ctx[-n_spaces:] + continuation
        ctx = ctx[:-n_spaces]
    whole = tokenizer.encode(ctx + continuation, add_special_tokens=True)
    ctx_enc = tokenizer.encode(ctx, add_special_tokens=True)
    n = len(ctx_enc)
    if n == len(whole):
        n -= 1
        ctx_enc = whole[:n]
    return ctx_enc, whole[n:]


def loglikelihood_group(tokenizer, ctx: str, choices: list[str]) -> tuple[list[int], list[list[int]]]:
    if ctx == "":  # vllm_model.loglikelihood: an empty context is the EOS token
        return [tokenizer.eos_token_id], [tokenizer.encode(c, add_special_tokens=True) for c in choices]
    pairs = [encode_pair(tokenizer, ctx, c) for c in choices]
    ctx_enc = pairs[0][0]
    if any(p[0] != ctx_enc for p in pairs):  # a continuation merged into the context's last token
        raise ValueError("choices disagree on the context's tokens")
    return ctx_enc, [p[1] for p in pairs]


__all__ = ["TASKS", "NOT_IMPLEMENTED", "LightevalTask", "Part", "Doc", "select", "context", "encode_pair",
           "loglikelihood_group", "acc_norm_nospace", "quasi_exact_match_gsm8k", "gsm8k_normalizer",
           "prompt_ifeval", "IFEVAL_METRIC", "LIGHTEVAL_COMMIT", "TASKS_PY", "MAX_MODEL_LENGTH"]
