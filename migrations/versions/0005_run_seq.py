"""Run metrics refer to their run by an integer: runs.seq, a surrogate number of each run; and the
lineage edges' unique index leads with the child.

On a team database a run cost 2.6 KB on PostgreSQL, 0.8 KB of it in run_metrics: each of a run's
3-4 metric rows repeated the 30-60 byte run id in its heap tuple and again in the (run_id, kind,
name) index, beside an id primary key and a created_at nothing reads. Now a row is (run_seq,
position, kind, name, value, step, protocol) with primary key (run_seq, position): one small index
that also finds a run's rows, and `position` keeps the order the rows were written in (readers
let a later eval value of a name replace an earlier one, and list names in that order).

The edges' unique (parent_id, child_id, relation) index grew in the middle of the table (a new
run's edges hang under old parents) and its pages stayed half full; keyed (child_id, parent_id,
relation) it grows at its end, as runs are recorded, and also serves the upstream walks, so the
separate child_id index goes and a parent_id index (short, and deduplicated by PostgreSQL, since a
few stage and code nodes parent most edges) serves the downstream walks. On PostgreSQL the indexes
whose keys only grow fill their pages (fillfactor 100).

Nothing is lost but run_metrics.created_at, which no command ever read: each run gets its seq in
the order it was created (created_at, then id); each metric row keeps its run, kind, name, value,
step and protocol, and its order within its run (`position` numbers the rows of a run in id order).
The downgrade gives back ids in that order and created_at from the run (finished_at, else created_at).

runs.seq is nullable only because SQLite cannot add a NOT NULL column to a table that others refer
to without rebuilding it (a rebuild would cascade-delete their rows); every writer sets it (the
ORM in registry.models, PostgreSQL's default from runs_seq_seq for other inserts).

Revision ID: 0005_run_seq
Revises: 0004_lineage_nodes
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_run_seq"
down_revision = "0004_lineage_nodes"
branch_labels = None
depends_on = None


APPEND_ONLY_INDEXES = ("pk_lineage_edges", "pk_lineage_nodes", "pk_run_metrics",
                       "uq_lineage_edges_child_id_parent_id_relation")


def _postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    op.add_column("runs", sa.Column("seq", sa.Integer(), nullable=True))  # plain ALTER on both: no rebuild
    op.execute("UPDATE runs SET seq = o.n FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n "
               "FROM runs) AS o WHERE runs.id = o.id")
    op.create_index("ix_runs_seq", "runs", ["seq"], unique=True)
    if _postgres():
        op.execute("CREATE SEQUENCE runs_seq_seq OWNED BY runs.seq")
        op.execute("SELECT setval('runs_seq_seq', COALESCE((SELECT MAX(seq) FROM runs), 0) + 1, false)")
        op.execute("ALTER TABLE runs ALTER COLUMN seq SET DEFAULT nextval('runs_seq_seq')")

    # run_metrics is built anew and filled in one statement (so PostgreSQL keeps no dead row versions).
    op.drop_index("ix_run_metrics_lookup", table_name="run_metrics")
    op.rename_table("run_metrics", "run_metrics_0004")
    if _postgres():  # index names are global there; the new table's primary key takes this one
        op.execute("ALTER TABLE run_metrics_0004 RENAME CONSTRAINT pk_run_metrics TO pk_run_metrics_0004")
    op.create_table(
        "run_metrics",
        sa.Column("run_seq", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("protocol", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["run_seq"], ["runs.seq"], name=op.f("fk_run_metrics_run_seq_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_seq", "position", name=op.f("pk_run_metrics")),
    )
    op.execute("INSERT INTO run_metrics (run_seq, position, kind, name, value, step, protocol) "
               "SELECT r.seq, row_number() OVER (PARTITION BY m.run_id ORDER BY m.id) - 1, m.kind, m.name, "
               "m.value, m.step, m.protocol FROM run_metrics_0004 m JOIN runs r ON r.id = m.run_id")
    op.drop_table("run_metrics_0004")

    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_lineage_edges_parent_id_child_id_relation"), type_="unique")
        batch_op.drop_index("ix_lineage_edges_child_id")
        batch_op.create_unique_constraint(op.f("uq_lineage_edges_child_id_parent_id_relation"),
                                          ["child_id", "parent_id", "relation"])
        batch_op.create_index("ix_lineage_edges_parent_id", ["parent_id"], unique=False)

    if _postgres():
        # These keys only grow (serial ids; a new run's edges and metric rows go at the end), so a leaf
        # split there need not keep the default 10% free for inserts into the middle that rarely come.
        # (It applies to later splits: existing pages stay as filled until a REINDEX.)
        for index in APPEND_ONLY_INDEXES:
            op.execute(f"ALTER INDEX {index} SET (fillfactor = 100)")


def downgrade() -> None:
    if _postgres():
        for index in ("pk_lineage_edges", "pk_lineage_nodes"):  # the other two are rebuilt below
            op.execute(f"ALTER INDEX {index} RESET (fillfactor)")
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.drop_index("ix_lineage_edges_parent_id")
        batch_op.drop_constraint(op.f("uq_lineage_edges_child_id_parent_id_relation"), type_="unique")
        batch_op.create_unique_constraint(op.f("uq_lineage_edges_parent_id_child_id_relation"),
                                          ["parent_id", "child_id", "relation"])
        batch_op.create_index("ix_lineage_edges_child_id", ["child_id"], unique=False)

    op.rename_table("run_metrics", "run_metrics_0005")
    if _postgres():
        op.execute("ALTER TABLE run_metrics_0005 RENAME CONSTRAINT pk_run_metrics TO pk_run_metrics_0005")
    op.create_table(
        "run_metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("protocol", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_run_metrics_run_id_runs"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_metrics")),
    )
    op.execute("INSERT INTO run_metrics (id, run_id, name, value, step, kind, protocol, created_at) "
               "SELECT row_number() OVER (ORDER BY m.run_seq, m.position), r.id, m.name, m.value, m.step, m.kind, "
               "m.protocol, COALESCE(r.finished_at, r.created_at) FROM run_metrics_0005 m "
               "JOIN runs r ON r.seq = m.run_seq")
    if _postgres():  # the ids were given explicitly: the serial's sequence continues after them
        op.execute("SELECT setval(pg_get_serial_sequence('run_metrics', 'id'), "
                   "COALESCE((SELECT MAX(id) FROM run_metrics), 0) + 1, false)")
    op.drop_table("run_metrics_0005")
    op.create_index("ix_run_metrics_lookup", "run_metrics", ["run_id", "kind", "name"], unique=False)

    op.drop_index("ix_runs_seq", table_name="runs")
    if _postgres():
        op.execute("ALTER TABLE runs ALTER COLUMN seq DROP DEFAULT")
    # In place on both (SQLite ≥ 3.35): a batch rebuild of runs would cascade-delete the rows that refer to it.
    # On PostgreSQL runs_seq_seq, owned by the column, goes with it.
    op.execute("ALTER TABLE runs DROP COLUMN seq")
