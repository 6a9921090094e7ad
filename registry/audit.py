"""What does not add up in a recipe: conflicting sources, unpublished inputs, batch arithmetic."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from registry import derive
from registry.recipes import Registry
from registry.schema import Sourced


@dataclass
class Finding:
    kind: str  # conflict | unpublished | arithmetic | doc-bug | quirk | info
    where: str
    message: str
    sources: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _conflict(where: str, item: Sourced) -> Finding:
    others = "; ".join(f"{a.value!r} ({a.source}{': ' + a.note if a.note else ''})" for a in item.alternatives)
    used = "recorded run used" if item.release_value_known else "which value the release used is unknown; primary"
    note = f" — {item.note}" if item.note else ""
    return Finding("conflict", where, f"{used} {item.value!r} ({item.source}); also stated: {others}{note}",
                   [item.source] + [a.source for a in item.alternatives])


def audit(registry: Registry, recipe_name: str) -> list[Finding]:
    recipe = registry.recipe(recipe_name)
    model = registry.model
    findings: list[Finding] = []
    for field_name, item in recipe.architecture:
        if isinstance(item, Sourced) and item.alternatives:
            findings.append(_conflict(f"architecture.{field_name}", item))
    for note in recipe.notes:
        findings.append(Finding(note.kind, recipe_name, note.text, [note.source]))

    checkpoints_seen: set[str] = {recipe.base_model}
    for stage in recipe.stages:
        where = f"{recipe_name}:{stage.name}"
        for key, item in stage.hyperparameters.items():
            if item.alternatives:
                findings.append(_conflict(f"{where} {key}", item))
        for note in stage.notes:
            findings.append(Finding(note.kind, where, note.text, [note.source]))
        for use in stage.datasets:
            ds = model.datasets[use.dataset]
            if use.used_by_release is False:
                findings.append(Finding("conflict", f"{where} datasets", f"{use.dataset} is in the published command "
                                        f"but not what the recorded run used{': ' + use.note if use.note else ''}",
                                        [use.source]))
            elif not ds.published:
                findings.append(Finding("unpublished", f"{where} datasets",
                                        f"{use.dataset} ({use.role}) is not public", [ds.source]))
            if ds.size and ds.size.alternatives:
                findings.append(_conflict(f"{where} dataset {use.dataset} size", ds.size))
            if use.weight is None and use.role == "train":
                findings.append(Finding("doc-bug", f"{where} datasets", f"{use.dataset} has no mixing weight in "
                                        f"the published command{': ' + use.note if use.note else ''}", [use.source]))
        for ref in stage.inputs:
            ckpt = model.checkpoints[ref.checkpoint]
            checkpoints_seen.add(ref.checkpoint)
            if not ckpt.published:
                findings.append(Finding("unpublished", f"{where} inputs.{ref.role}",
                                        f"{ref.checkpoint} is not published"
                                        f"{' (produced by ' + ckpt.produced_by + ')' if ckpt.produced_by else ''}"
                                        f"{': ' + ckpt.note if ckpt.note else ''}", [ref.source]))
        for out in stage.outputs:
            checkpoints_seen.add(out.checkpoint)
        findings += _arithmetic(where, stage)
        if stage.command is None:
            findings.append(Finding("unpublished", f"{where} command", "no launch command is published", []))

    for name in sorted(checkpoints_seen):
        for metric in model.checkpoints[name].metrics:
            if metric.alternatives:
                others = "; ".join(f"{a.value} ({a.source})" for a in metric.alternatives)
                findings.append(Finding("conflict", f"{name} {metric.benchmark}",
                                        f"{metric.value} ({metric.source}); also stated: {others}",
                                        [metric.source] + [a.source for a in metric.alternatives]))
    return findings


def _arithmetic(where: str, stage) -> list[Finding]:
    out: list[Finding] = []
    stated = derive.hp(stage, "effective_batch_size")
    product = derive.layout_product(stage)
    unit = stage.layout.unit
    if stage.name == "rlvr":
        formula = "local_rollout_batch_size × actor GPUs"
    else:
        formula = "num_processes × per_device_batch_size × gradient_accumulation_steps"
    if stated is not None and product is not None and stated != product:
        out.append(Finding("arithmetic", f"{where} layout", f"{formula} = {product} {unit}, but the stated "
                           f"effective batch is {stated}", [stage.hyperparameters['effective_batch_size'].source]))
    elif stated is not None and product is None and stage.name not in ("pretrain",):
        out.append(Finding("info", f"{where} layout", f"effective batch {stated} {unit} cannot be checked: the "
                           "layout is incomplete", [stage.hyperparameters["effective_batch_size"].source]))
    procs = derive.hp(stage, "num_processes")
    if stage.name != "rlvr" and procs and stage.layout.gpus and procs != stage.layout.gpus:
        out.append(Finding("arithmetic", f"{where} layout", f"num_processes {procs} differs from the layout's "
                           f"{stage.layout.gpus} GPUs", [stage.layout.source]))
    if stage.name == "pretrain":
        seqs, seq_len, tokens = product, derive.hp(stage, "max_seq_length"), derive.hp(stage, "batch_tokens")
        if seqs and seq_len and tokens and seqs * seq_len != tokens:
            out.append(Finding("arithmetic", f"{where} layout", f"{seqs} sequences × {seq_len} tokens = "
                               f"{seqs * seq_len}, but batch_tokens is {tokens}", [stage.layout.source]))
        steps, total = derive.hp(stage, "train_steps"), derive.hp(stage, "train_tokens")
        if steps and tokens and total and abs(steps * tokens - total) / total > 0.01:
            out.append(Finding("arithmetic", f"{where}", f"train_steps × batch_tokens = {steps * tokens:,}, "
                               f"train_tokens says {total:,}", [stage.layout.source]))
    if stage.name == "rlvr" and stage.layout.actor_gpus_per_node and stage.layout.actor_gpus:
        if sum(stage.layout.actor_gpus_per_node) != stage.layout.actor_gpus:
            out.append(Finding("arithmetic", f"{where} layout", f"actor GPUs per node sum to "
                               f"{sum(stage.layout.actor_gpus_per_node)}, not {stage.layout.actor_gpus}",
                               [stage.layout.source]))
    return out
