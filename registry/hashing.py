"""Content hashes of files and directories, computed the way DVC computes them.

A file's hash is the md5 of its bytes; a directory's is the md5 of the JSON list
of its files' {md5, relpath} sorted by relpath, suffixed ".dir" (DVC's tree
digest). Run records keep these, so `repro lineage --verify` and `dvc status`
agree on what changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_hash(path: str | Path) -> str:
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if not path.is_dir():
        raise FileNotFoundError(str(path))
    entries = [{"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()}
               for p in sorted(path.rglob("*")) if p.is_file()]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"


def runs_root() -> Path:
    """Where runs live: the same rule as runner.plan.runs_root (the registry imports no runner)."""
    return Path(os.environ.get("REPRO_RUNS_DIR", "runs")).resolve()


PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _bases() -> dict[str, Path]:
    return {"runs": runs_root(), "project": PROJECT_ROOT}


def edge_note(path: str | Path) -> str:
    """The note of a hashed edge: the file's path relative to the runs root (or, for the project's own
    fixtures, to the checkout), so a moved runs directory or checkout still verifies; the absolute
    path is kept as a hint for files outside both."""
    path = Path(path).absolute()
    for base, root in _bases().items():
        try:
            return json.dumps({"relpath": path.relative_to(root).as_posix(), "base": base, "path": str(path)})
        except ValueError:
            continue
    return json.dumps({"path": str(path)})


def note_path(note: str | None) -> Path | None:
    """The file an edge's note names: its relative path under today's base when that exists there,
    else the absolute hint (notes written before relative paths hold only that)."""
    try:
        data = json.loads(note or "{}")
    except json.JSONDecodeError:
        return None
    hint = Path(data["path"]) if data.get("path") else None
    base = _bases().get(data.get("base") or "")
    if base is not None and data.get("relpath"):
        relative = base / data["relpath"]
        if relative.exists() or hint is None or not hint.exists():
            return relative
    return hint


def verify_files(subject_edges: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    """{node, status ok|modified|missing, detail} per (subject, edge), each file hashed once."""
    results = []
    hashed: dict[Path, str] = {}
    for subject, edge in subject_edges:
        path = note_path(edge.note)
        if path is None:
            continue
        if not path.exists():
            results.append({"node": subject, "status": "missing", "detail": f"{path} no longer exists"})
            continue
        if path not in hashed:
            hashed[path] = dvc_hash(path)
        now = hashed[path]
        if now != edge.content_hash:
            results.append({"node": subject, "status": "modified",
                            "detail": f"{path}: recorded {edge.content_hash[:12]}, now {now[:12]}"})
        else:
            results.append({"node": subject, "status": "ok", "detail": str(path)})
    return results
