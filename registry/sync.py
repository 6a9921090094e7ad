"""Index recipes.json into the database, idempotently and by content hash.

Each recipe, stage, dataset and checkpoint row stores the hash of its JSON; a
sync rewrites exactly the rows whose hash changed (and the lineage edges of
changed stages) and reports them. Runs and run-made rows are never touched.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from registry.models import (
    CheckpointRow,
    DatasetRow,
    DatasetVersionRow,
    LineageEdgeRow,
    PublishedMetricRow,
    RecipeRow,
    StageRow,
    SyncState,
)
from registry.recipes import Registry, content_hash

FILE_HASH_KEY = "recipes_file_hash"


def protocol_fingerprint(protocol: dict[str, Any]) -> str:
    return content_hash({k: protocol.get(k) for k in sorted(protocol)})[:16]


def _lock(session: Session) -> None:
    # SQLite already holds the write lock (BEGIN IMMEDIATE); PostgreSQL needs an explicit one so
    # that concurrent syncs do not race on the same unique rows.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(7312)"))


def is_current(session: Session, registry: Registry) -> bool:
    """Whether the database already indexes this recipes file (a read: read commands check this and
    sync only when it is stale)."""
    # Core, not session.get: a read command's first ORM query would configure every mapper (~40 ms).
    table = SyncState.__table__
    stored = session.execute(select(table.c.value).where(table.c.key == FILE_HASH_KEY)).scalar()
    return stored is not None and stored == content_hash(registry.raw)


def sync(session: Session, registry: Registry) -> list[str]:
    """Returns the changes made, e.g. ["updated stage tulu3-8b:sft"]; [] when already in sync."""
    _lock(session)
    store_walk_statements(session)
    file_hash = content_hash(registry.raw)
    state = session.get(SyncState, FILE_HASH_KEY)
    if state is not None and state.value == file_hash:
        return []
    changes: list[str] = []
    changes += _sync_datasets(session, registry.raw["datasets"])
    changes += _sync_checkpoints(session, registry.raw["checkpoints"])
    changes += _sync_recipes(session, registry.raw["recipes"], registry.raw["datasets"])
    if state is None:
        session.add(SyncState(key=FILE_HASH_KEY, value=file_hash))
    else:
        state.value = file_hash
    return changes


def store_walk_statements(session: Session) -> None:
    """The lineage walks compiled for this database's dialect, for the cold read path (light_db)."""
    import json

    from registry.light_db import statements_key
    from registry.lineage import compiled_statements

    _lock(session)  # concurrent first connections (a brand-new database) would insert the same key
    dialect = session.get_bind().dialect
    value = json.dumps(compiled_statements(dialect), sort_keys=True)
    key = statements_key(dialect.name)
    row = session.get(SyncState, key)
    if row is None:
        session.add(SyncState(key=key, value=value))
    elif row.value != value:
        row.value = value


def _sync_datasets(session: Session, datasets: dict[str, Any]) -> list[str]:
    changes = []
    rows = {r.name: r for r in session.scalars(select(DatasetRow))}
    for name, body in datasets.items():
        digest = content_hash(body)
        row = rows.pop(name, None)
        if row is not None and row.content_hash == digest:
            continue
        if row is None:
            row = DatasetRow(name=name, content_hash=digest, body=body)
            session.add(row)
            changes.append(f"added dataset {name}")
        else:
            changes.append(f"updated dataset {name}")
        row.hub_id, row.published, row.content_hash, row.body = (
            body.get("hub_id"), body.get("published", True), digest, body)
        session.flush()
        revision = body.get("revision") or ""
        exists = session.scalar(select(DatasetVersionRow.id).where(
            DatasetVersionRow.dataset_id == row.id, DatasetVersionRow.revision == revision,
            DatasetVersionRow.content_hash == ""))
        if not exists:
            size = (body.get("size") or {}).get("value")
            session.add(DatasetVersionRow(dataset_id=row.id, revision=revision, content_hash="",
                                          rows=size if isinstance(size, int) else None))
    for name, row in rows.items():
        session.delete(row)
        changes.append(f"removed dataset {name}")
    return changes


def _sync_checkpoints(session: Session, checkpoints: dict[str, Any]) -> list[str]:
    changes = []
    # Rows made by runs or conversions (they have a run or a local path) are not recipes.json's to remove.
    rows = {r.name: r for r in session.scalars(select(CheckpointRow).where(CheckpointRow.run_id.is_(None),
                                                                            CheckpointRow.path.is_(None)))}
    for name, body in checkpoints.items():
        digest = content_hash(body)
        row = rows.pop(name, None)
        if row is not None and row.content_hash == digest:
            continue
        if row is None:
            row = CheckpointRow(name=name, kind=body["kind"])
            session.add(row)
            changes.append(f"added checkpoint {name}")
        else:
            changes.append(f"updated checkpoint {name}")
            session.execute(delete(PublishedMetricRow).where(PublishedMetricRow.checkpoint_id == row.id))
        row.hub_id, row.kind, row.published = body.get("hub_id"), body["kind"], body["published"]
        row.produced_by, row.quantization = body.get("produced_by"), body.get("quantization")
        row.content_hash, row.body = digest, body
        session.flush()
        for metric in body.get("metrics", []):
            session.add(PublishedMetricRow(
                checkpoint_id=row.id, benchmark=metric["benchmark"], value=metric["value"],
                protocol=metric["protocol"], protocol_fingerprint=protocol_fingerprint(metric["protocol"]),
                source=metric["source"], body=metric))
    for name, row in rows.items():
        session.delete(row)
        changes.append(f"removed checkpoint {name}")
    return changes


def _stage_edges(recipe_name: str, stage: dict[str, Any], datasets: dict[str, Any]) -> list[LineageEdgeRow]:
    node = f"stage:{recipe_name}:{stage['name']}"
    edges = []
    for ref in stage.get("inputs", []):
        edges.append(LineageEdgeRow(parent=f"checkpoint:{ref['checkpoint']}", child=node, relation=ref["role"]))
    for use in stage.get("datasets", []):
        revision = (datasets.get(use["dataset"]) or {}).get("revision") or ""
        relation = use["role"] if use.get("used_by_release", True) is not False else f"{use['role']}-public-only"
        key = f"dataset:{use['dataset']}@{revision}" if revision else f"dataset:{use['dataset']}"
        edges.append(LineageEdgeRow(parent=key, child=node, relation=relation))
    code = stage["code"]
    edges.append(LineageEdgeRow(parent=f"code:{code['repository']}@{code['commit']}", child=node, relation="code"))
    for out in stage.get("outputs", []):
        edges.append(LineageEdgeRow(parent=node, child=f"checkpoint:{out['checkpoint']}", relation="produces"))
    # Deduplicate: a checkpoint may serve two roles (reward model and value model).
    unique = {(e.parent, e.child, e.relation): e for e in edges}
    return list(unique.values())


def _sync_recipes(session: Session, recipes: dict[str, Any], datasets: dict[str, Any]) -> list[str]:
    changes = []
    rows = {r.name: r for r in session.scalars(select(RecipeRow))}
    for name, body in recipes.items():
        head = {k: v for k, v in body.items() if k != "stages"}
        digest = content_hash(head)
        row = rows.pop(name, None)
        if row is None:
            row = RecipeRow(name=name, family=body["family"], size=body["size"], base_model=body["base_model"],
                            content_hash=digest, body=head)
            session.add(row)
            session.flush()
            changes.append(f"added recipe {name}")
        elif row.content_hash != digest:
            row.family, row.size, row.base_model, row.content_hash, row.body = (
                body["family"], body["size"], body["base_model"], digest, head)
            changes.append(f"updated recipe {name}")
        stage_rows = {s.name: s for s in row.stages}
        for position, stage in enumerate(body["stages"]):
            sdigest = content_hash(stage)
            srow = stage_rows.pop(stage["name"], None)
            node = f"stage:{name}:{stage['name']}"
            if srow is not None and srow.content_hash == sdigest and srow.position == position:
                continue
            if srow is None:
                row.stages.append(StageRow(name=stage["name"], position=position, content_hash=sdigest, body=stage))
                changes.append(f"added stage {name}:{stage['name']}")
            else:
                srow.position, srow.content_hash, srow.body = position, sdigest, stage
                changes.append(f"updated stage {name}:{stage['name']}")
            _replace_recipe_edges(session, node)
            session.add_all(_stage_edges(name, stage, datasets))
        for sname, srow in stage_rows.items():
            row.stages.remove(srow)
            _replace_recipe_edges(session, f"stage:{name}:{sname}")
            changes.append(f"removed stage {name}:{sname}")
    for name, row in rows.items():
        for srow in row.stages:
            _replace_recipe_edges(session, f"stage:{name}:{srow.name}")
        session.delete(row)
        changes.append(f"removed recipe {name}")
    return changes


def _replace_recipe_edges(session: Session, node: str) -> None:
    session.execute(delete(LineageEdgeRow).where(
        LineageEdgeRow.origin == "recipe", (LineageEdgeRow.child == node) | (LineageEdgeRow.parent == node)))
    session.flush()
