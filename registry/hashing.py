"""Content hashes of files and directories, computed the way DVC computes them.

A file's hash is the md5 of its bytes; a directory's is the md5 of the JSON list
of its files' {md5, relpath} sorted by relpath, suffixed ".dir" (DVC's tree
digest). Run records keep these, so `repro lineage --verify` and `dvc status`
agree on what changed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.db import LineageEdgeRow


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


def edge_note(path: str | Path) -> str:
    return json.dumps({"path": str(path)})


def verify_edges(session: Session, node: str) -> list[dict[str, Any]]:
    """Re-hash the files behind every hashed edge touching `node` (and upstream run edges)."""
    from registry.queries import reachable

    nodes = {node, *reachable(session, node, downstream=False)}
    results = []
    for edge in session.scalars(select(LineageEdgeRow).where(LineageEdgeRow.content_hash.is_not(None))):
        if edge.parent not in nodes and edge.child not in nodes:
            continue
        try:
            path = json.loads(edge.note or "{}").get("path")
        except json.JSONDecodeError:
            path = None
        # The hashed file belongs to the checkpoint an edge leads to (a run's output, a converted copy),
        # otherwise to the input it comes from (a dataset file, a parent run's checkpoint).
        subject = edge.child if edge.child.startswith("checkpoint:") else edge.parent
        if not path:
            continue
        if not Path(path).exists():
            results.append({"node": subject, "status": "missing", "detail": f"{path} no longer exists"})
            continue
        now = dvc_hash(path)
        if now != edge.content_hash:
            results.append({"node": subject, "status": "modified",
                            "detail": f"{path}: recorded {edge.content_hash[:12]}, now {now[:12]}"})
        else:
            results.append({"node": subject, "status": "ok", "detail": path})
    return results
