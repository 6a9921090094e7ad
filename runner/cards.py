"""The model card (README.md) written beside a run's checkpoint: what this run's weights are, and only that.

The YAML front matter uses keys the Hugging Face Hub validates (license, library_name, pipeline_tag,
base_model, datasets, tags) and names a Hub model or dataset only when the weights or the data really
came from it:

- `base_model` appears only when the init weights are a published checkpoint (the converted
  SmolLM2-135M-Instruct of runner/published.py). A random miniature init has none (the key is omitted:
  the Hub rejects free text there). A parent repro run is named in the body by its stage and content
  hash; it is no Hub repository.
- `datasets` lists only Hub datasets read as such. Fixture files standing in for them are named in the
  body, in the schema of the dataset they stand for.

The card holds no run id, time or absolute path: identical training must give identical checkpoint
bytes wherever it ran (DVC outs), so a parent run is identified by its checkpoint's content hash.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runner.plan import RunPlan

# Licenses of the published checkpoints whose weights a run can start from (their Hub model cards).
PUBLISHED_LICENSES = {"HuggingFaceTB/SmolLM2-135M-Instruct": "apache-2.0"}
# A miniature initialised at random and trained on this project's fixtures holds no published weights or
# data, so no published license applies to it.
MINIATURE_LICENSE = {"license": "other", "license_name": "repro-miniature"}
RANDOM_INIT = "random miniature init"


def init_origin(plan: RunPlan) -> dict[str, Any]:
    """Where the weights a stage trained came from: kind random | published | run | local."""
    ref = plan.inputs.get("init") or {}
    path = ref.get("path")
    if not path and ref.get("hub_id"):
        # The recorded profile loaded the recorded checkpoint itself: from the Hub, or a mirror folder that
        # is a git clone of it (its commit known); a plain mirror folder is named by its content hash only.
        proven = not ref.get("mirror") or ref.get("mirror_head") is not None
        return {"kind": "hub" if proven else "mirror", "checkpoint": ref["hub_id"], "recorded": ref.get("checkpoint"),
                "revision": ref.get("mirror_head") or ref.get("revision"), "content_hash": ref.get("mirror_hash")}
    if not path:
        return {"kind": "random", "recorded": ref.get("checkpoint")}
    folder = Path(path)
    conversion = folder / "repro-conversion.json"
    if conversion.is_file():  # runner/published.py: a real published checkpoint, converted losslessly
        converted = json.loads(conversion.read_text())
        return {"kind": "published", "checkpoint": converted.get("checkpoint"), "recorded": ref.get("checkpoint"),
                "content_hash": ref.get("content_hash"), "quantization": converted.get("quantization")}
    record = folder.parent / "run.json"
    if record.is_file():
        doc = json.loads(record.read_text())
        return {"kind": "run", "stage": f"{doc.get('recipe')}:{doc.get('stage')}", "profile": doc.get("profile"),
                "recorded": ref.get("checkpoint"), "content_hash": ref.get("content_hash"),
                "card": _front_matter(folder / "README.md")}
    return {"kind": "local", "recorded": ref.get("checkpoint"), "content_hash": ref.get("content_hash"),
            "card": _front_matter(folder / "README.md")}


def _front_matter(readme: Path) -> dict[str, Any]:
    """The few keys a child card inherits from its parent's (flat `key: "value"` lines, as written here)."""
    if not readme.is_file():
        return {}
    text = readme.read_text()
    if not text.startswith("---\n") or "\n---\n" not in text[4:]:
        return {}
    out: dict[str, Any] = {}
    for line in text[4:text.index("\n---\n", 4)].splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in ("license", "license_name", "base_model"):
            try:
                out[key] = json.loads(value)
            except json.JSONDecodeError:
                out[key] = value.strip()
    return out


def card_metadata(plan: RunPlan, origin: dict[str, Any]) -> dict[str, Any]:
    """Front matter as an ordered mapping of Hub-validated keys."""
    meta: dict[str, Any] = {}
    if origin["kind"] in ("published", "hub", "mirror"):
        # A checkpoint's license is its Hub card's; one not listed here is "other" rather than a guess.
        meta["license"] = PUBLISHED_LICENSES.get(origin["checkpoint"], "other")
    elif origin["kind"] in ("run", "local") and origin["card"].get("license"):
        meta.update({k: origin["card"][k] for k in ("license", "license_name") if k in origin["card"]})
    else:
        meta.update(MINIATURE_LICENSE)
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-classification" if plan.stage == "rm" else "text-generation"
    if origin["kind"] in ("published", "hub"):
        meta["base_model"] = origin["checkpoint"]
        meta["base_model_relation"] = "finetune"
    elif origin["kind"] in ("run", "local") and origin["card"].get("base_model"):
        meta["base_model"] = origin["card"]["base_model"]  # the published weights the parent started from
        meta["base_model_relation"] = "finetune"
    # Hub datasets read from the Hub or a git-verified mirror; a plain mirror folder is named in the body.
    hub_data = sorted({d["dataset"] for d in plan.datasets if d.get("role") == "train" and not d.get("path")
                       and (not d.get("mirror") or d.get("revision_verified"))})
    if hub_data:
        meta["datasets"] = hub_data
    meta["tags"] = ["repro", plan.recipe, plan.stage, f"{plan.profile}-profile"]
    if plan.model.get("kind") == "miniature":
        meta["tags"].append("miniature")
    return meta


def render_front_matter(meta: dict[str, Any]) -> str:
    # JSON strings are YAML scalars: quoting every value keeps names with ':' or '#' valid YAML.
    lines = ["---"]
    for key, value in meta.items():
        if isinstance(value, list):
            lines.append(f"{key}:")
            lines += [f"- {json.dumps(v, ensure_ascii=False)}" for v in value]
        else:
            lines.append(f"{key}: {json.dumps(value, ensure_ascii=False)}")
    lines.append("---")
    return "\n".join(lines)


def _weights_sentence(origin: dict[str, Any], recorded_base: str | None) -> str:
    recorded = origin.get("recorded") or recorded_base
    if origin["kind"] == "random":
        if recorded:
            return (f"Weights: {RANDOM_INIT}. The recorded stage starts from `{recorded}`; this run did not load "
                    "it.")
        return f"Weights: {RANDOM_INIT}, as the recorded stage starts from a random init too."
    if origin["kind"] == "published":
        return (f"Weights: initialised from the published `{origin['checkpoint']}` ({origin.get('quantization')} "
                f"file, dequantized to float32; content hash `{origin.get('content_hash')}`).")
    if origin["kind"] == "hub":
        return (f"Weights: initialised from `{origin['checkpoint']}` (revision {origin.get('revision') or 'main'}), "
                "the recorded stage's own init.")
    if origin["kind"] == "mirror":
        return (f"Weights: initialised from a mirror folder said to hold `{origin['checkpoint']}` (content sha256 "
                f"`{origin.get('content_hash')}`; its revision could not be verified).")
    if origin["kind"] == "run":
        return (f"Weights: initialised from the checkpoint of a repro {origin.get('profile')} run of "
                f"`{origin['stage']}` (content hash `{origin.get('content_hash')}`), standing in for the recorded "
                f"`{recorded}`.")
    return f"Weights: initialised from a local checkpoint (content hash `{origin.get('content_hash')}`)."


def _data_lines(plan: RunPlan, recorded_datasets: list[str] | None) -> list[str]:
    from runner.plan import _display_path

    used = [d for d in plan.datasets if d.get("role") == "train"]
    lines = ["Training data:"]
    for d in used:
        if d.get("path"):
            stands_for = "" if str(d["dataset"]).startswith("fixture:") else \
                f" (in the schema of `{d['dataset']}`, not that dataset)"
            lines.append(f"- fixture `{_display_path(d['path'])}`{stands_for}")
        elif d.get("mirror") and not d.get("revision_verified"):
            lines.append(f"- a mirror folder said to hold `{d['dataset']}`" + (f" split {d['split']}" if d.get("split")
                         else "") + f" (content sha256 `{d.get('mirror_hash')}`; revision not verified)")
        else:
            lines.append(f"- `{d['dataset']}`" + (f" split {d['split']}" if d.get("split") else "")
                         + (f" (stand-in for the unreleased `{d['stands_in_for']}`)" if d.get("stands_in_for") else ""))
    stood_in = [n for n in dict.fromkeys(recorded_datasets or []) if any(d["dataset"] == n and d.get("path")
                                                                         for d in used)]
    if stood_in:
        lines.append("The recorded stage trained on " + ", ".join(f"`{n}`" for n in stood_in) + " (not read here).")
    return lines


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 160 else text[:157] + "..."


def model_card(plan: RunPlan, *, recorded_base: str | None = None, recorded_datasets: list[str] | None = None,
               notes: str = "") -> str:
    origin = init_origin(plan)
    code = plan.extra.get("code", {})
    precision = plan.hp("precision", "recorded precision")
    lines = [
        render_front_matter(card_metadata(plan, origin)), "",
        f"# {plan.recipe}:{plan.stage} ({plan.profile} profile)", "",
    ]
    if plan.model.get("kind") == "miniature":
        lines += [f"A CPU miniature ({plan.model.get('num_layers')} layers, hidden size "
                  f"{plan.model.get('hidden_size')}) of the recorded {plan.recipe} architecture, trained to check "
                  f"the {plan.stage} stage's code path. "
                  "It is not the published model and says nothing about its quality.", ""]
    lines += [_weights_sentence(origin, recorded_base), "", *_data_lines(plan, recorded_datasets), "",
              f"Precision: {precision}.", "",
              # No run id or time here: identical training must give identical checkpoint bytes (DVC outs).
              f"Produced by `repro run {plan.recipe} --stage {plan.stage} --profile {plan.profile}`; its run.json "
              f"beside this folder has the full record. Code pin of the recorded stage: "
              f"{code.get('repository')}@{str(code.get('commit'))[:12]}.", "",
              f"## Deviations from the recording ({len(plan.deviations)})", ""]
    for d in plan.deviations:
        value = d["value"]
        if d["key"].startswith("input.") and isinstance(value, str) and Path(value).is_absolute():
            role = d["key"].split(".", 1)[1]
            value = f"checkpoint {plan.inputs.get(role, {}).get('content_hash')}"  # no absolute path in the card
        lines.append(f"- `{d['key']}`: recorded {_shown(d['recorded'])} → {_shown(value)} ({d['reason']})")
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"
