"""Per-step training values move from run_metrics rows to run_series (one row per run and metric);
runs and lineage edges get the indexes that bounded reads need.

A smoke run logged ~1,085 run_metrics rows, one per value per step, so a team database held ~10^8
of them. Each (run, train metric) series becomes one run_series row holding its steps and values as
two JSON arrays, in the order the rows were written (by id), duplicates included, so nothing is
lost; the downgrade writes the rows back. Final and eval metrics stay rows: compare and diff
query them one by one. A train row that carries a protocol is not a plain series point and stays.

Indexes: runs (created_at, id) and (recipe, created_at, id) for newest-first pages, runs (status)
for the stale-run sweep; lineage_edges (child, parent) for upstream walks. The old single-column
indexes are prefixes of these (or of the unique (parent, child, relation) index) and are dropped.

Revision ID: 0003_step_series
Revises: 0002_run_metric_lookup
Create Date: 2026-12-01
"""
from __future__ import annotations

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
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_created_at")
        batch_op.drop_index("ix_runs_recipe")
        batch_op.create_index("ix_runs_newest", ["created_at", "id"], unique=False)
        batch_op.create_index("ix_runs_recipe_newest", ["recipe", "created_at", "id"], unique=False)
        batch_op.create_index("ix_runs_status", ["status"], unique=False)
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.drop_index("ix_lineage_edges_child")
        batch_op.drop_index("ix_lineage_edges_parent")
        batch_op.create_index("ix_lineage_edges_upstream", ["child", "parent"], unique=False)


def _move_train_rows_to_series(conn) -> None:  # noqa: ANN001
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


def downgrade() -> None:
    conn = op.get_bind()
    rows = []
    for s in conn.execute(sa.select(run_series).order_by(run_series.c.id)).all():
        rows += [{"run_id": s.run_id, "name": s.name, "value": decode(v), "step": step, "kind": s.kind,
                  "protocol": None, "created_at": s.created_at} for step, v in zip(s.steps, s.values)]
    for start in range(0, len(rows), BATCH):
        conn.execute(run_metrics.insert(), rows[start:start + BATCH])
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.drop_index("ix_lineage_edges_upstream")
        batch_op.create_index("ix_lineage_edges_parent", ["parent"], unique=False)
        batch_op.create_index("ix_lineage_edges_child", ["child"], unique=False)
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_status")
        batch_op.drop_index("ix_runs_recipe_newest")
        batch_op.drop_index("ix_runs_newest")
        batch_op.create_index("ix_runs_recipe", ["recipe"], unique=False)
        batch_op.create_index("ix_runs_created_at", ["created_at"], unique=False)
    op.drop_table("run_series")
