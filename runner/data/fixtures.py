"""Load and validate the fixture datasets (JSONL that mimics the real datasets' schemas).

Every row is checked against its schema; the first bad row raises `FixtureError`
with one line: the file, the 1-based row number and what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable

# The one fixture root: REPRO_FIXTURES points every reader (the smoke profile, the fixture tokenizers, the dataset
# versions) at another copy of the fixture files, with the same names and schemas.
FIXTURES_ROOT = Path(os.environ.get("REPRO_FIXTURES") or Path(__file__).resolve().parents[2] / "fixtures").resolve()
ROLES = ("system", "user", "assistant")
RLVR_DATASETS = ("gsm8k", "MATH", "ifeval")

# Schema name -> {key: (type or tuple of types, required)}. "messages" values are
# lists of {"role", "content"} dicts and are checked further by `_check_messages`.
_STR, _NUM, _LIST, _NONE = str, (int, float), list, type(None)
FIXTURE_SCHEMAS: dict[str, dict[str, tuple[Any, bool]]] = {
    # allenai/tulu-3-sft-mixture, HuggingFaceTB/smol-smoltalk (no "id" there)
    "messages": {"messages": (_LIST, True), "id": (_STR, False), "source": (_STR, False)},
    # allenai/llama-3.1-tulu-3-8b-preference-mixture
    "preference": {"id": (_STR, True), "source": (_STR, True), "prompt": (_STR, True),
                   "chosen": (_LIST, True), "rejected": (_LIST, True)},
    # HuggingFaceH4/ultrafeedback_binarized, allenai/ultrafeedback_binarized_cleaned (+ "source")
    "ultrafeedback": {"prompt": (_STR, True), "prompt_id": (_STR, True), "chosen": (_LIST, True),
                      "rejected": (_LIST, True), "messages": (_LIST, True), "score_chosen": (_NUM, True),
                      "score_rejected": (_NUM, True), "source": (_STR, False)},
    # allenai/RLVR-GSM-MATH-IF-Mixed-Constraints
    "rlvr": {"messages": (_LIST, True), "ground_truth": (_STR, True), "dataset": (_STR, True),
             "constraint_type": ((_STR, _NONE), False), "constraint": ((_STR, _NONE), False)},
    # pretraining text
    "text": {"text": (_STR, True)},
}
_MESSAGE_KEYS = {"messages", "chosen", "rejected"}

# Every committed fixture file (relative to FIXTURES_ROOT) and its schema.
FIXTURE_FILES: dict[str, str] = {
    "tulu3/tulu-3-sft-mixture.jsonl": "messages",
    "tulu3/tulu-3-8b-preference-mixture.jsonl": "preference",
    "tulu3/rlvr-gsm-math-if.jsonl": "rlvr",
    "tulu3/rlvr-eval.jsonl": "rlvr",
    "tulu3/verifiers-eval.jsonl": "rlvr",
    "tulu3/ultrafeedback_binarized_cleaned-test_prefs.jsonl": "ultrafeedback",
    "smollm2/smoltalk.jsonl": "messages",
    "smollm2/ultrafeedback_binarized-train_prefs.jsonl": "ultrafeedback",
    "smollm2/ultrafeedback_binarized-test_prefs.jsonl": "ultrafeedback",
    **{f"smollm2/pretrain/{c}.jsonl": "text" for c in ("web", "code", "math", "cosmopedia", "long", "heldout")},
}


class FixtureError(ValueError):
    """A fixture file or row does not match its schema (the message is one line)."""


def _type_name(t: Any) -> str:
    names = [x.__name__ for x in (t if isinstance(t, tuple) else (t,))]
    return " or ".join("null" if n == "NoneType" else n for n in names)


def _check_messages(key: str, value: list, *, final_assistant: bool) -> str | None:
    if not value:
        return f"'{key}' is empty"
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict):
            return f"{key} message {i} is {type(m).__name__}, expected an object"
        for field in ("role", "content"):
            if field not in m:
                return f"{key} message {i} has no '{field}'"
        if m["role"] not in ROLES:
            return f"{key} message {i} has role {m['role']!r}; expected system/user/assistant"
        if not isinstance(m["content"], str):
            return f"{key} message {i} content is {type(m['content']).__name__}, expected str"
    if final_assistant and value[-1]["role"] != "assistant":
        return f"'{key}' does not end with an assistant message"
    return None


def _check_row(row: Any, schema: str) -> str | None:
    """What is wrong with one row, or None."""
    if not isinstance(row, dict):
        return f"row is {type(row).__name__}, expected a JSON object"
    for key, (typ, required) in FIXTURE_SCHEMAS[schema].items():
        if key not in row:
            if required:
                return f"'{key}' missing"
            continue
        if not isinstance(row[key], typ) or isinstance(row[key], bool):
            return f"'{key}' is {type(row[key]).__name__}, expected {_type_name(typ)}"
        if key in _MESSAGE_KEYS:
            problem = _check_messages(key, row[key], final_assistant=schema in ("preference", "ultrafeedback"))
            if problem:
                return problem
    if schema == "messages" and not any(m["role"] == "assistant" for m in row["messages"]):
        return "'messages' has no assistant message"
    if schema in ("preference", "ultrafeedback") and row["chosen"][:-1] != row["rejected"][:-1]:
        return "'chosen' and 'rejected' differ before the final assistant message"
    if schema == "rlvr":
        if row["dataset"] not in RLVR_DATASETS:
            return f"'dataset' is {row['dataset']!r}; expected gsm8k/MATH/ifeval"
        if row["dataset"] == "ifeval":
            try:
                truth = json.loads(row["ground_truth"])
            except ValueError:
                return "ifeval 'ground_truth' is not JSON"
            if not isinstance(truth, dict) or not isinstance(truth.get("func_name"), str):
                return "ifeval 'ground_truth' has no 'func_name'"
    if schema == "text" and not row["text"].strip():
        return "'text' is empty"
    return None


def read_jsonl(path: str | Path, skip_blank: bool = False) -> list[tuple[int, Any]]:
    """(1-based row number, parsed value) for every line; FixtureError names the first bad row."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FixtureError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise FixtureError(f"{path}: not UTF-8 text (byte {e.start}); JSONL rows must be UTF-8") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            if skip_blank:
                continue
            raise FixtureError(f"{path} row {n}: empty line")
        try:
            rows.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise FixtureError(f"{path} row {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise FixtureError(f"{path} row {n}: JSON nested too deeply to be a dataset row") from None
    if not rows:
        raise FixtureError(f"{path}: no rows")
    return rows


def load_fixture(path: str | Path, schema: str) -> list[dict]:
    """Read a JSONL fixture and validate every row against `FIXTURE_SCHEMAS[schema]`.

    Raises FixtureError("<path> row <n>: <what is wrong>") for the first bad row.
    """
    if schema not in FIXTURE_SCHEMAS:
        raise FixtureError(f"unknown fixture schema {schema!r}; expected one of {', '.join(FIXTURE_SCHEMAS)}")
    rows = []
    for n, row in read_jsonl(path):
        problem = _check_row(row, schema)
        if problem:
            raise FixtureError(f"{path} row {n}: {problem}")
        rows.append(row)
    return rows


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash_name(path: Path) -> str:
    try:
        return path.resolve().relative_to(FIXTURES_ROOT).as_posix()
    except ValueError:
        return path.name


def content_hash(paths: Iterable[str | Path]) -> str:
    """Hex SHA-256 over (name, file sha256) pairs, in sorted name order.

    The name is the path relative to FIXTURES_ROOT (the base name for files outside
    it), so the hash ignores the order of `paths` and where the checkout lives.
    """
    h = hashlib.sha256()
    for name, digest in sorted((_hash_name(Path(p)), file_sha256(p)) for p in paths):
        h.update(f"{name}\0{digest}\n".encode())
    return h.hexdigest()
