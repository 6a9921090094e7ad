"""Index run metrics by (run, kind, name): compare and plot read one series at a time.

Revision ID: 0002_run_metric_lookup
Revises: 0001_initial
Create Date: 2026-11-27
"""
from __future__ import annotations

from alembic import op

revision = "0002_run_metric_lookup"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("run_metrics", schema=None) as batch_op:
        batch_op.create_index("ix_run_metrics_lookup", ["run_id", "kind", "name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_metrics", schema=None) as batch_op:
        batch_op.drop_index("ix_run_metrics_lookup")
