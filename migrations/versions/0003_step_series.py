"""Per-step training values move from run_metrics rows to run_series (one row per run and metric);
run plans and deviation lists move to run_documents (one row per distinct content); runs and
lineage edges get the indexes that bounded reads need.

A smoke run logged ~1,085 run_metrics rows, one per value per step, so a team database held ~10^8
of them. Each (run, train metric) series becomes one run_series row holding its steps and values as
two JSON arrays, in the order the rows were written (by id), duplicates included, so nothing is
lost; the downgrade writes the rows back. Final and eval metrics stay rows: compare and diff
query them one by one. A train row that carries a protocol is not a plain series point and stays.

Each run stored its plan (~4.5 KB of JSON, deviations included) and its deviations (~1.5 KB again),
though every run of one recipe stage with the same settings has the same ones. They become
run_documents rows keyed by the sha256 of their canonical JSON (registry.models.document_digest), and
runs keep the two digests.

Indexes: runs (created_at, id) and (recipe, created_at, id) for newest-first pages, runs (status)
for the stale-run sweep. Indexes that are a prefix of another are dropped (runs created_at and
recipe, lineage_edges parent, run_metrics run_id): they only cost bytes.

Revision ID: 0003_step_series
Revises: 0002_run_metric_lookup
Create Date: 2026-12-01
"""
from __future__ import annotations

import hashlib
import json
import math

import sqlalchemy as sa
from alembic import op

revision = "0003_step_series"
down_revision = "0002_run_metric_lookup"
branch_labels = None
depends_on = None

BATCH = 1000

# The tables as this revision sees them (not the models, which later revisions may change).
_meta = sa.MetaData()
run_metrics = sa.Table("run_metrics", _meta, sa.Column("id", sa.Integer, primary_key=True),
                       sa.Column("run_id", sa.String(64)), sa.Column("name", sa.String(128)),
                       sa.Column("value", sa.Float), sa.Column("step", sa.Integer), sa.Column("kind", sa.String(16)),
                       sa.Column("protocol", sa.JSON), sa.Column("created_at", sa.DateTime(timezone=True)))
run_series = sa.Table("run_series", _meta, sa.Column("id", sa.Integer, primary_key=True),
                      sa.Column("run_id", sa.String(64)), sa.Column("name", sa.String(128)),
                      sa.Column("kind", sa.String(16)), sa.Column("points", sa.Integer),
                      sa.Column("steps", sa.JSON), sa.Column("values", sa.JSON),
                      sa.Column("created_at", sa.DateTime(timezone=True)))

run_documents = sa.Table("run_documents", _meta, sa.Column("digest", sa.String(32), primary_key=True),
                         sa.Column("body", sa.JSON))
runs_before = sa.Table("runs", sa.MetaData(), sa.Column("id", sa.String(64), primary_key=True),
                       sa.Column("plan", sa.JSON), sa.Column("deviations", sa.JSON),
                       sa.Column("plan_digest", sa.String(32)), sa.Column("deviations_digest", sa.String(32)))


def digest(body) -> str:
    """registry.models.document_digest, frozen here as this revision wrote it."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def encode(value: float) -> float | str:
    """JSON has no NaN/Infinity (PostgreSQL refuses them): store those as strings."""
    return value if math.isfinite(value) else str(value)


def decode(value: float | str | None) -> float | None:
    return float(value) if isinstance(value, str) else value


def upgrade() -> None:
    op.create_table(
        "run_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.Column("steps", sa.JSON(), nullable=False),
        sa.Column("values", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_series_run_id_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_series")),
        sa.UniqueConstraint("run_id", "kind", "name", name=op.f("uq_run_series_run_id_kind_name")),
    )
    _move_train_rows_to_series(op.get_bind())
    op.create_table(
        "run_documents",
        sa.Column("digest", sa.String(length=32), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("digest", name=op.f("pk_run_documents")),
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan_digest", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("deviations_digest", sa.String(length=32), nullable=True))
    _move_documents(op.get_bind())
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("plan")
        batch_op.drop_column("deviations")
        batch_op.alter_column("plan_digest", existing_type=sa.String(length=32), nullable=False)
        batch_op.alter_column("deviations_digest", existing_type=sa.String(length=32), nullable=False)
        batch_op.create_foreign_key(op.f("fk_runs_plan_digest_run_documents"), "run_documents", ["plan_digest"],
                                    ["digest"])
        batch_op.create_foreign_key(op.f("fk_runs_deviations_digest_run_documents"), "run_documents",
                                    ["deviations_digest"], ["digest"])
        batch_op.drop_index("ix_runs_created_at")
        batch_op.drop_index("ix_runs_recipe")
        batch_op.create_index("ix_runs_newest", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_runs_recipe_newest", ["recipe", "created_at", "id"], unique=False)
        batch_op.create_index("ix_runs_status", ["status"], unique=False)
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.drop_index("ix_lineage_edges_parent")  # a prefix of the unique (parent, child, relation) index
    with op.batch_alter_table("run_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_run_metrics_run_id")  # a prefix of ix_run_metrics_lookup


def _move_train_rows_to_series(conn) -> None:
    """Run by run (each read on the (run_id, kind, name) index), so memory holds one run's rows."""
    is_point = sa.and_(run_metrics.c.kind == "train", run_metrics.c.step.is_not(None))
    run_ids = conn.execute(sa.select(run_metrics.c.run_id).where(is_point).distinct()).scalars().all()
    for run_id in run_ids:
        rows = conn.execute(sa.select(run_metrics.c.id, run_metrics.c.name, run_metrics.c.step, run_metrics.c.value,
                                      run_metrics.c.protocol, run_metrics.c.created_at)
                            .where(is_point, run_metrics.c.run_id == run_id)
                            .order_by(run_metrics.c.name, run_metrics.c.id)).all()
        series: dict[str, dict] = {}
        moved: list[int] = []
        for row in rows:
            if row.protocol is not None:
                continue  # not a plain series point; it stays a row
            entry = series.setdefault(row.name, {"run_id": run_id, "name": row.name, "kind": "train", "points": 0,
                                                 "steps": [], "values": [], "created_at": row.created_at})
            entry["steps"].append(row.step)
            entry["values"].append(encode(row.value))
            entry["points"] += 1
            moved.append(row.id)
        if series:
            conn.execute(run_series.insert(), list(series.values()))
        for start in range(0, len(moved), BATCH):
            conn.execute(run_metrics.delete().where(run_metrics.c.id.in_(moved[start:start + BATCH])))


def _move_documents(conn) -> None:
    """Keyset pages of runs (by id), so memory holds one page; each distinct document inserted once."""
    last = None
    while True:
        query = sa.select(runs_before.c.id, runs_before.c.plan, runs_before.c.deviations).order_by(runs_before.c.id)
        if last is not None:
            query = query.where(runs_before.c.id > last)
        page = conn.execute(query.limit(BATCH)).all()
        if not page:
            return
        documents: dict[str, object] = {}
        updates = []
        for run_id, plan, deviations in page:
            plan = {} if plan is None else plan
            deviations = [] if deviations is None else deviations
            keys = digest(plan), digest(deviations)
            documents[keys[0]], documents[keys[1]] = plan, deviations
            updates.append({"run": run_id, "p": keys[0], "d": keys[1]})
        have = set(conn.execute(sa.select(run_documents.c.digest)
                                .where(run_documents.c.digest.in_(list(documents)))).scalars())
        new = [{"digest": k, "body": v} for k, v in documents.items() if k not in have]
        if new:
            conn.execute(run_documents.insert(), new)
        conn.execute(runs_before.update().where(runs_before.c.id == sa.bindparam("run"))
                     .values(plan_digest=sa.bindparam("p"), deviations_digest=sa.bindparam("d")), updates)
        last = page[-1].id


def _restore_documents(conn) -> None:
    bodies = dict(conn.execute(sa.select(run_documents.c.digest, run_documents.c.body)).all())
    rows = conn.execute(sa.select(runs_before.c.id, runs_before.c.plan_digest, runs_before.c.deviations_digest)).all()
    updates = [{"run": r.id, "p": bodies[r.plan_digest], "d": bodies[r.deviations_digest]} for r in rows]
    for start in range(0, len(updates), BATCH):
        conn.execute(runs_before.update().where(runs_before.c.id == sa.bindparam("run"))
                     .values(plan=sa.bindparam("p"), deviations=sa.bindparam("d")), updates[start:start + BATCH])


def downgrade() -> None:
    conn = op.get_bind()
    rows = []
    for s in conn.execute(sa.select(run_series).order_by(run_series.c.id)).all():
        rows += [{"run_id": s.run_id, "name": s.name, "value": decode(v), "step": step, "kind": s.kind,
                  "protocol": None, "created_at": s.created_at} for step, v in zip(s.steps, s.values)]
    for start in range(0, len(rows), BATCH):
        conn.execute(run_metrics.insert(), rows[start:start + BATCH])
    with op.batch_alter_table("run_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_run_metrics_run_id", ["run_id"], unique=False)
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.create_index("ix_lineage_edges_parent", ["parent"], unique=False)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_status")
        batch_op.drop_index("ix_runs_recipe_newest")
        batch_op.drop_index("ix_runs_newest")
        batch_op.create_index("ix_runs_recipe", ["recipe"], unique=False)
        batch_op.create_index("ix_runs_created_at", ["created_at"], unique=False)
        batch_op.add_column(sa.Column("plan", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("deviations", sa.JSON(), nullable=True))
    _restore_documents(conn)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.alter_column("plan", existing_type=sa.JSON(), nullable=False)
        batch_op.alter_column("deviations", existing_type=sa.JSON(), nullable=False)
        batch_op.drop_constraint(op.f("fk_runs_plan_digest_run_documents"), type_="foreignkey")
        batch_op.drop_constraint(op.f("fk_runs_deviations_digest_run_documents"), type_="foreignkey")
        batch_op.drop_column("plan_digest")
        batch_op.drop_column("deviations_digest")
    op.drop_table("run_documents")
    op.drop_table("run_series")
