"""Resumable model deletes: `models.purged_at` marks a deleted model whose rows are all gone.

A model delete marks the model deleted, then removes its rows; until `purged_at` is set, the server (at
start and periodically) and `ckpt db gc` finish the job, so a process killed halfway leaves no rows
behind for good. Models deleted before this revision are checked once. Also indexes
`expired_cursors (model_id)`, which a model delete otherwise scanned.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

UNPURGED = sa.text("deleted_at IS NOT NULL AND purged_at IS NULL")


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("purged_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_models_unpurged", "models", ["id"], sqlite_where=UNPURGED, postgresql_where=UNPURGED
    )
    op.create_index("ix_expired_cursors_model", "expired_cursors", ["model_id"])


def downgrade() -> None:
    op.drop_index("ix_expired_cursors_model", "expired_cursors")
    op.drop_index("ix_models_unpurged", "models")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("purged_at")
