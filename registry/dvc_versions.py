"""Dataset versions from DVC hashes: the fixture files that stand in for each published dataset.

The fixtures are DVC pipeline dependencies (dvc.yaml), so `dvc status` and the
registry hash them the same way (`registry.hashing.dvc_hash`: a file's md5, or a
directory's `.dir` tree digest). Each stand-in becomes a `DatasetVersionRow` with an
empty revision (it is not a hub revision) and that content hash; recording the same
content twice adds nothing, and edited content adds a new version beside the old one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from registry.hashing import dvc_hash
from registry.models import DatasetRow, DatasetVersionRow

PROJECT_ROOT = Path(__file__).resolve().parent.parent

def _rows(path: Path) -> int | None:
    if path.is_file() and path.suffix == ".jsonl":
        with open(path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    return None


def _display_path(path: Path) -> str:
    try:
        return path.resolve().relative_to(PROJECT_ROOT).as_posix()
    except ValueError:
        return str(path.resolve())


def record_fixture_versions(session: Session, paths_by_dataset: Mapping[str, str | Path]) -> list[DatasetVersionRow]:
    """Add a version (revision "", content_hash = DVC hash) for each dataset's stand-in path; idempotent.

    `paths_by_dataset` maps a dataset name (or hub id) to a file or directory (the runner knows which
    fixture stands in for which dataset: `runner.smoke.fixture_paths()`). Datasets the database does not
    know (recipes.json not synced, or a name it lacks) and paths that do not exist are skipped. Returns
    the version rows for the given datasets, existing or new, in input order.
    """
    out: list[DatasetVersionRow] = []
    for name, raw_path in paths_by_dataset.items():
        path = Path(raw_path)
        if not path.exists():
            continue
        dataset = session.scalar(select(DatasetRow).where(or_(DatasetRow.name == name, DatasetRow.hub_id == name))
                                 .order_by(DatasetRow.name != name).limit(1))
        if dataset is None:
            continue
        digest = dvc_hash(path)
        version = session.scalar(select(DatasetVersionRow).where(DatasetVersionRow.dataset_id == dataset.id,
                                                                 DatasetVersionRow.revision == "",
                                                                 DatasetVersionRow.content_hash == digest))
        if version is None:
            version = DatasetVersionRow(dataset_id=dataset.id, revision="", content_hash=digest,
                                        path=_display_path(path), rows=_rows(path))
            session.add(version)
            session.flush()
        out.append(version)
    return out
