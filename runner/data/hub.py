"""The one data path of every stage and profile: `datasets.load_dataset`, from the Hub or a mirror.

Where a split comes from (`source_of`):

- the Hub: `load_dataset(hub_id, config, split=..., revision=<the recorded revision>)`;
- a mirror, `REPRO_HUB_MIRROR=DIR` or `repro run --hub-mirror DIR`: `DIR/<org>/<name>/` laid out as the
  Hub repository is (parquet or jsonl shards, config folders, the README's `configs:`), loaded with the
  same call on the folder. A mirror that is a git clone of the Hub repository proves its revision (the
  recorded commit must be its checked-out HEAD); a plain folder cannot, which the run records as a
  deviation, with the folder's content hash;
- the smoke profile's fixtures: each fixture file is the mirror of its dataset's split (the plan's
  `path`), loaded by the same `load_dataset` (the `json` builder over that one file).

Every row is checked against the schema of the dataset it claims to be (runner/data/fixtures.py), and
any failure (not found, gated, offline, unknown revision, a split the source lacks, a malformed row)
is one `ReproError` line naming the dataset, the revision and the fix. Nothing here writes outside the
`datasets` cache.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.errors import ReproError

if TYPE_CHECKING:
    from registry.recipes import Registry
    from runner.plan import RunPlan

MIRROR_ENV = "REPRO_HUB_MIRROR"
# Row schemas (runner/data/fixtures.FIXTURE_SCHEMAS) of the datasets whose columns differ from their
# registry schema's generic one: the UltraFeedback pairs carry prompt_id/messages/scores, no id/source.
ROW_SCHEMA = {"HuggingFaceH4/ultrafeedback_binarized": "ultrafeedback",
              "allenai/ultrafeedback_binarized_cleaned": "ultrafeedback"}
# Internal sets with a public counterpart the recording names (recipes.json notes); every other internal
# set's stand-in is the public data its stage's published command trains on (used_by_release false).
STAND_IN = {"ai2-adapt-dev/405b_preference_mix": ("allenai/llama-3.1-tulu-3-405b-preference-mixture",
                                                  "recipes.json: 'public counterpart probably ... [UNCERTAIN]'")}
_MEMO: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
# What datasets, huggingface_hub (HTTP and repo errors are OSErrors) and pyarrow (ArrowInvalid is a
# ValueError) raise for data that cannot be loaded.
LOAD_ERRORS = (OSError, ValueError, TypeError, KeyError, RuntimeError, ImportError, NotImplementedError)


class DataError(ReproError):
    """A dataset cannot be loaded as recorded (exit 2; the message is one line)."""


# ---------------------------------------------------------------- where data comes from


def mirror_root(flag: str | Path | None = None) -> Path | None:
    """The mirror directory (`--hub-mirror` wins over REPRO_HUB_MIRROR), or None for the Hub."""
    value = flag if flag is not None else os.environ.get(MIRROR_ENV)
    if not value:
        return None
    root = Path(value).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"hub mirror {root} is not a directory (it holds DIR/<org>/<name>/ as on the Hub)")
    return root


def folder_hash(folder: Path) -> str:
    """Hex SHA-256 over (relative path, file SHA-256) of every file of a mirror folder, .git excluded."""
    from runner.data.fixtures import file_sha256

    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".git" not in p.relative_to(folder).parts):
        h.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return h.hexdigest()


def git_head(folder: Path) -> str | None:
    """The checked-out commit of a mirror folder that is a git clone of its Hub repository, else None."""
    if not (folder / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def git_has(folder: Path, revision: str) -> bool:
    try:
        subprocess.run(["git", "-C", str(folder), "cat-file", "-e", f"{revision}^{{commit}}"], capture_output=True,
                       check=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return True


def mirror_entry(root: Path, hub_id: str, revision: str | None, what: str) -> dict[str, Any]:
    """What a mirror holds for one Hub repository: its folder, content hash and revision check.

    Raises DataError when the folder is missing, or is a git clone whose history lacks the recorded revision
    or has another commit checked out."""
    folder = root / hub_id
    if not folder.is_dir():
        raise DataError(f"{what} {hub_id}@{revision or 'unpinned'}: not in the hub mirror {root} (expected "
                        f"{folder}/ laid out as the Hub repository; copy it there, e.g. `git clone "
                        f"https://huggingface.co/{'datasets/' if what == 'dataset' else ''}{hub_id} {folder}`)")
    head = git_head(folder)
    out: dict[str, Any] = {"mirror": str(folder), "mirror_hash": folder_hash(folder), "mirror_head": head}
    if head is not None and revision:
        if not git_has(folder, revision):
            raise DataError(f"{what} {hub_id}: unknown revision {revision} in the mirror {folder} (its history "
                            f"lacks that commit; fetch it, or substitute with --input/--set)")
        if not head.startswith(revision) and not revision.startswith(head):
            raise DataError(f"{what} {hub_id}: the mirror {folder} has {head[:12]} checked out, not the recorded "
                            f"revision {revision[:12]}; run `git -C {folder} checkout {revision}`")
        out["revision_verified"] = True
    else:
        out["revision_verified"] = False
    return out


def data_sources(plan: RunPlan, registry: Registry, mirror: Path | None,
                 stand_in: bool = False) -> tuple[list[dict[str, Any]], list[str] | None]:
    """The source of every dataset of a recorded-profile plan: its Hub id, config and row schema, and the
    mirror folder when one is given. Internal sets are marked (preflight refuses them) or, with `stand_in`,
    replaced by their public stand-in. Returns (entries, the recorded training sets when a stand-in
    replaced them, else None) for runner.plan.use_data_sources; the plan itself is not changed here."""
    recorded_names = [d["dataset"] for d in plan.datasets if d["role"] == "train"]
    swapped: list[str] = []
    entries: list[dict[str, Any]] = []
    for entry in map(dict, plan.datasets):  # copies: the plan changes only in runner.plan.use_data_sources
        info = registry.model.datasets.get(entry["dataset"])
        if info is not None and not info.published and entry["role"] == "train":
            public = stand_in_for(registry, plan, entry["dataset"])
            if stand_in and public is not None:
                if public not in swapped:
                    swapped.append(public)
                    entries.append({**entry, "dataset": public, "weight": "1.0", "weight_semantics": "fraction",
                                    "revision": registry.model.datasets[public].revision,
                                    "stands_in_for": entry["dataset"]})
                continue
            entry["internal"] = True
            entry["stand_in"] = public
        entries.append(entry)
    for entry in entries:
        info = registry.model.datasets.get(entry["dataset"])
        if info is None:
            continue
        entry.update({"hub_id": info.hub_id, "config": info.config,
                      "schema": ROW_SCHEMA.get(entry["dataset"], info.schema_)})
        if mirror is not None and info.hub_id and not entry.get("internal"):
            entry.update(mirror_entry(mirror, info.hub_id, entry.get("revision"), "dataset"))
    return entries, (recorded_names if swapped else None)


def stand_in_for(registry: Registry, plan: RunPlan, name: str) -> str | None:
    if name in STAND_IN:
        return STAND_IN[name][0]
    stage = registry.stage(plan.recipe, plan.stage)
    public = [u.dataset for u in stage.datasets if u.used_by_release is False and u.role == "train"
              and registry.model.datasets[u.dataset].published]
    return public[0] if public else None


# ---------------------------------------------------------------- loading


def _quiet() -> None:
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def label(entry: dict[str, Any]) -> str:
    """How messages name a data source: the fixture file, else dataset@revision split S."""
    if entry.get("path"):
        return str(entry["path"])
    rev = entry.get("revision") or "unpinned"
    return f"{entry['dataset']}@{rev}" + (f" config {entry['config']}" if entry.get("config") else "") + \
        f" split {entry.get('split') or 'train'}"


def check_ground_truth(entry: dict[str, Any], index: int, row: dict[str, Any]) -> None:
    """The one ground-truth check of RLVR rows, shared by the preflight (before anything is written) and the
    RLVR stage (which reads its prompts again, also in launched processes and resumed runs, where no preflight
    ran): refuse row `index` (1-based) of the data source `entry` when its ground truth cannot be scored.

    An unknown verifier task raises ValueError in runner.verifiers; here it is bad data like any other, so
    both callers stop with the same one-line message (exit 2) instead of one of them crashing."""
    from runner import verifiers

    try:
        problem = verifiers.validate_ground_truth(row["dataset"], row["ground_truth"])
    except ValueError as exc:
        problem = str(exc)
    if problem:
        raise DataError(f"{label(entry)} row {index}: malformed ground truth: {problem}")


def _fix_hint(entry: dict[str, Any]) -> str:
    return (f"log in with `huggingface-cli login` (or HF_TOKEN) if it is gated, serve it from a mirror with "
            f"REPRO_HUB_MIRROR=DIR / --hub-mirror DIR holding DIR/{entry.get('hub_id') or entry['dataset']}/, "
            "or substitute the data with --set/--input")


def _load_dataset(entry: dict[str, Any]) -> Any:
    import datasets

    _quiet()
    split = entry.get("split") or "train"
    if entry.get("path"):
        return datasets.load_dataset("json", data_files={split: str(entry["path"])}, split=split)
    if entry.get("mirror"):
        return datasets.load_dataset(entry["mirror"], entry.get("config"), split=split)
    return datasets.load_dataset(entry["hub_id"], entry.get("config"), split=split, revision=entry.get("revision"))


def _explain(entry: dict[str, Any], exc: Exception) -> str:
    """One line for a load failure: what, where, and the fix."""
    name = type(exc).__name__
    text = " ".join(str(exc).split())
    where = label(entry)
    if entry.get("path"):
        problem = _jsonl_problem(Path(entry["path"]))
        if problem:
            return problem
        return f"{where}: cannot be read as a dataset split ({name}: {text[:200]})"
    if "Unknown split" in text or "split" in text.lower() and "should be one of" in text.lower():
        return (f"{where}: the {'mirror' if entry.get('mirror') else 'Hub repository'} has no split "
                f"{entry.get('split')!r} ({text[:160]}); add that split's shards, or substitute with --set/--input")
    if "Revision" in name or "revision" in text.lower() and "not" in text.lower():
        return (f"{where}: unknown revision {entry.get('revision')} ({text[:120]}); check the commit, or "
                f"{_fix_hint(entry)}")
    if "Gated" in name or "gated" in text.lower():
        return f"{where}: gated on the Hub and no token was given; {_fix_hint(entry)}"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        return (f"{where}: not available offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set, not cached); "
                f"{_fix_hint(entry)}")
    if "NotFound" in name or "doesn't exist" in text or "not found" in text.lower():
        return f"{where}: not found on the Hub ({text[:120]}); {_fix_hint(entry)}"
    return f"{where}: cannot be loaded ({name}: {text[:160]}); {_fix_hint(entry)}"


def _jsonl_problem(path: Path) -> str | None:
    """The fixture reader's one line for a file `datasets` could not parse (which row, what is wrong)."""
    from runner.data.fixtures import FixtureError, read_jsonl

    if not path.is_file():
        return f"data file not found: {path}"
    try:
        read_jsonl(path)
    except FixtureError as exc:
        return str(exc)
    return None


def _clean(value: Any) -> Any:
    """Drop the nulls Arrow adds for keys a row lacks (schemas are unified over the split): a row reads
    back as it was written. Real nulls in nullable columns (RLVR constraints) stay."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _nullable(schema: str) -> set[str]:
    from runner.data.fixtures import FIXTURE_SCHEMAS

    spec = FIXTURE_SCHEMAS.get(schema, {})
    return {k for k, (typ, _req) in spec.items() if isinstance(typ, tuple) and type(None) in typ}


def load_split(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every row of one dataset split, validated against its schema; DataError (one line) otherwise."""
    from runner.data.fixtures import FIXTURE_SCHEMAS, _check_row

    if entry.get("internal"):
        public = entry.get("stand_in")
        raise DataError(f"{entry['dataset']}: an internal set the recorded run used and nobody released; "
                        + (f"its public stand-in is {public}: pass --public-stand-in to train on it (recorded as "
                           "a deviation)" if public else
                           "no public stand-in is recorded; substitute with --set/--input"))
    if not entry.get("path") and not entry.get("hub_id"):
        raise DataError(f"{entry['dataset']}: no Hub id or file is recorded for it; substitute with --set/--input")
    key = (entry.get("path"), entry.get("mirror"), entry.get("mirror_hash"), entry.get("hub_id"),
           entry.get("config"), entry.get("split"), entry.get("revision"),
           _file_stamp(entry.get("path")))
    if key in _MEMO:
        return _MEMO[key]
    try:
        ds = _load_dataset(entry)
    except DataError:
        raise
    except LOAD_ERRORS as exc:  # datasets / huggingface_hub / pyarrow raise many types; each becomes one line
        raise DataError(_explain(entry, exc)) from None
    schema = entry.get("schema")
    nullable = _nullable(schema) if schema else set()
    rows = []
    for i, raw in enumerate(ds, start=1):
        row = {k: (v if k in nullable else _clean(v)) for k, v in raw.items() if v is not None or k in nullable}
        if schema in FIXTURE_SCHEMAS:
            problem = _check_row(row, schema)
            if problem:
                raise DataError(f"{label(entry)} row {i}: {problem}" + ("" if entry.get("path") else
                                "; fix the shard, or substitute with --set/--input"))
        rows.append(row)
    if not rows:
        raise DataError(f"{label(entry)}: no rows")
    _MEMO[key] = rows
    return rows


def _file_stamp(path: str | None) -> tuple[int, int] | None:
    # A file rewritten in place (tests edit fixtures) must not be served from the memo.
    if not path:
        return None
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def load_rows(entry: dict[str, Any]) -> list[dict[str, Any]]:
    return load_split(entry)


def preflight(plan: RunPlan) -> None:
    """Load and check every dataset of the plan before anything is written (bad data is bad input)."""
    entries = list(plan.datasets) + ([plan.heldout] if plan.heldout else [])
    for entry in entries:
        rows = load_split(entry)
        if entry.get("schema") == "rlvr":
            for i, row in enumerate(rows, start=1):
                check_ground_truth(entry, i, row)


def train_rows(plan: RunPlan) -> list[dict[str, Any]]:
    """Rows of the training mixture, mixed with the recorded code's semantics.

    Tülu SFT/DPO: open-instruct's release `--dataset_mixer_list` (fractions or counts, each source shuffled
    with seed 42). Tülu RM/RLVR: the release JSON `--dataset_mixer` (first rows, no shuffle). SmolLM2: the
    sources in the recorded order (no mixer weight is recorded)."""
    from runner.data import mixer

    train = [d for d in plan.datasets if d["role"] == "train"]
    if not train:
        raise ReproError(f"{plan.recipe}:{plan.stage} has no training data in its plan")
    by_name = {d["dataset"]: d for d in train}
    if plan.family == "tulu3" and plan.stage in ("sft", "dpo"):
        pairs = [(d["dataset"], d["weight"] or "1.0") for d in train]
        return mixer.mix_release_list(pairs, lambda name: load_split(by_name[name]), seed=42)
    if plan.family == "tulu3" and plan.stage in ("rm", "rlvr"):
        mapping = {d["dataset"]: float(mixer.parse_release_value(d["weight"] or "1.0")) for d in train}
        return mixer.mix_release_json(mapping, lambda name: load_split(by_name[name]))
    rows: list[dict[str, Any]] = []
    for d in train:
        rows += load_split(d)
    return rows
