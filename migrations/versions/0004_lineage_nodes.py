"""Lineage edges refer to nodes by integer id: each node key (run:ID, stage:..., code:REPO@SHA, ...)
is stored once in lineage_nodes, and lineage_edges holds (parent_id, child_id, relation, ...).

Every edge stored both keys as text, and its two indexes ((parent, child, relation) and (child))
stored them again: ~1.3 KB per run of a team database for 4 edges, over half of what a run costs.
Integer ids make an edge and its index entries a few bytes each; a key's text is kept once, with
one unique index.

Nothing is lost: every distinct key of the old edges becomes a node (numbered in the order the
edges first used them), every edge keeps its id, relation, origin, hash and note, and the
downgrade writes the keys back.

The space is reclaimed only when the rows are rewritten: on PostgreSQL the dropped columns and the
updated rows' old versions stay in the table (a 100k-run database: 1,978 B/run of lineage_edges after
the upgrade, 744 after `VACUUM FULL lineage_edges`); on SQLite the table is rebuilt and the freed pages
are reused, and `VACUUM` shrinks the file. Neither can run inside the migration's transaction.
(Upgrading a 100k-run database, 400k edges: 9 s on SQLite, 23 s on PostgreSQL, on the shared machine.)

Revision ID: 0004_lineage_nodes
Revises: 0003_step_series
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_lineage_nodes"
down_revision = "0003_step_series"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lineage_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lineage_nodes")),
        sa.UniqueConstraint("key", name=op.f("uq_lineage_nodes_key")),
    )
    # In one statement each, so a 4M-edge database moves in the database, not through Python.
    # Parents are numbered before children of the same edge, keys in the order of their first edge.
    op.execute("INSERT INTO lineage_nodes (key) SELECT k FROM ("
               "SELECT parent AS k, 2 * id AS o FROM lineage_edges UNION ALL "
               "SELECT child AS k, 2 * id + 1 AS o FROM lineage_edges) AS keys GROUP BY k ORDER BY MIN(o)")
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("child_id", sa.Integer(), nullable=True))
    op.execute("UPDATE lineage_edges SET "
               "parent_id = (SELECT n.id FROM lineage_nodes n WHERE n.key = lineage_edges.parent), "
               "child_id = (SELECT n.id FROM lineage_nodes n WHERE n.key = lineage_edges.child)")
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("uq_lineage_edges_parent_child_relation"), type_="unique")
        batch_op.drop_index("ix_lineage_edges_child")
        batch_op.drop_column("parent")
        batch_op.drop_column("child")
        batch_op.alter_column("parent_id", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("child_id", existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key(op.f("fk_lineage_edges_parent_id_lineage_nodes"), "lineage_nodes",
                                    ["parent_id"], ["id"])
        batch_op.create_foreign_key(op.f("fk_lineage_edges_child_id_lineage_nodes"), "lineage_nodes",
                                    ["child_id"], ["id"])
        batch_op.create_unique_constraint(op.f("uq_lineage_edges_parent_id_child_id_relation"),
                                          ["parent_id", "child_id", "relation"])
        batch_op.create_index("ix_lineage_edges_child_id", ["child_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.add_column(sa.Column("parent", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("child", sa.String(length=512), nullable=True))
    op.execute("UPDATE lineage_edges SET "
               "parent = (SELECT n.key FROM lineage_nodes n WHERE n.id = lineage_edges.parent_id), "
               "child = (SELECT n.key FROM lineage_nodes n WHERE n.id = lineage_edges.child_id)")
    with op.batch_alter_table("lineage_edges", schema=None) as batch_op:
        batch_op.drop_index("ix_lineage_edges_child_id")
        batch_op.drop_constraint(op.f("uq_lineage_edges_parent_id_child_id_relation"), type_="unique")
        batch_op.drop_constraint(op.f("fk_lineage_edges_child_id_lineage_nodes"), type_="foreignkey")
        batch_op.drop_constraint(op.f("fk_lineage_edges_parent_id_lineage_nodes"), type_="foreignkey")
        batch_op.drop_column("parent_id")
        batch_op.drop_column("child_id")
        batch_op.alter_column("parent", existing_type=sa.String(length=512), nullable=False)
        batch_op.alter_column("child", existing_type=sa.String(length=512), nullable=False)
        batch_op.create_unique_constraint(op.f("uq_lineage_edges_parent_child_relation"),
                                          ["parent", "child", "relation"])
        batch_op.create_index("ix_lineage_edges_child", ["child"], unique=False)
    op.drop_table("lineage_nodes")
