"""A model's metric names and deleted steps are read from indexes, never from every row of the model.

- `checkpoint_tombstones (model_id, step, deleted_at)` replaces `(model_id)`: a page of deleted steps
  reads the model's tombstones in step order and stops after the page (it read and sorted them all:
  70 ms on PostgreSQL, 167 ms on SQLite for 99,000), and the index covers what the page returns.
- PostgreSQL: `checkpoint_metrics.name` in the "C" collation (byte order, as SQLite compares text), so
  the metric names list has one order on both databases, walked in the primary key `(model_id, name,
  step)` itself one name at a time. This rebuilds the table's two indexes under its lock: about 10 s
  a million metric rows (docs/postgresql.md).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_checkpoint_tombstones_model_step",
        "checkpoint_tombstones",
        ["model_id", "step", "deleted_at"],
    )
    op.drop_index("ix_checkpoint_tombstones_model", "checkpoint_tombstones")
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "checkpoint_metrics",
            "name",
            type_=sa.Text(collation="C"),
            existing_type=sa.Text(),
            existing_nullable=False,
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column(
            "checkpoint_metrics",
            "name",
            type_=sa.Text(),
            existing_type=sa.Text(collation="C"),
            existing_nullable=False,
        )
    op.create_index("ix_checkpoint_tombstones_model", "checkpoint_tombstones", ["model_id"])
    op.drop_index("ix_checkpoint_tombstones_model_step", "checkpoint_tombstones")
