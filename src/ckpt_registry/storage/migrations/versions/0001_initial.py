"""Initial schema: keys, models, checkpoints clustered on (model_id, step, id), tombstones, metrics.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.Uuid(as_uuid=False)
Timestamp = sa.DateTime(timezone=True)
LIVE = sa.text("deleted_at IS NULL")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", Id, primary_key=True),
        sa.Column("entity", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("revoked_at", Timestamp, nullable=True),
    )
    op.create_index("ix_api_keys_key_hash", "api_keys", ["key_hash"], unique=True)

    op.create_table(
        "models",
        sa.Column("id", Id, primary_key=True),
        sa.Column("entity", sa.Text, nullable=False),
        sa.Column("project", sa.Text, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("base_model", sa.Text, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("deleted_at", Timestamp, nullable=True),
    )
    op.create_index(
        "ux_models_live_name",
        "models",
        ["entity", "project", "name"],
        unique=True,
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )
    op.create_index("ix_models_entity_created", "models", ["entity", "created_at", "id"])

    op.create_table(
        "checkpoints",
        sa.Column("model_id", Id, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("id", Id, nullable=False),
        sa.Column("metrics", sa.Text, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("model_id", "step", "id"),
        sqlite_with_rowid=False,
    )
    op.create_index("ux_checkpoints_id", "checkpoints", ["id"], unique=True)
    op.create_index("ux_checkpoints_model_step", "checkpoints", ["model_id", "step"], unique=True)

    op.create_table(
        "checkpoint_tombstones",
        sa.Column("id", Id, primary_key=True),
        sa.Column("model_id", Id, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("deleted_at", Timestamp, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_checkpoint_tombstones_deleted_at", "checkpoint_tombstones", ["deleted_at"])
    op.create_index("ix_checkpoint_tombstones_model", "checkpoint_tombstones", ["model_id"])

    op.create_table(
        "expired_cursors",
        sa.Column("id", Id, primary_key=True),
        sa.Column("model_id", Id, nullable=False),
        sa.Column("purged_at", Timestamp, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_expired_cursors_purged_at", "expired_cursors", ["purged_at"])

    op.create_table(
        "checkpoint_metrics",
        sa.Column("model_id", Id, nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False, autoincrement=False),
        sa.Column("value", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("model_id", "name", "step"),
        sqlite_with_rowid=False,
    )
    op.create_index(
        "ix_checkpoint_metrics_best", "checkpoint_metrics", ["model_id", "name", "value", "step"]
    )


def downgrade() -> None:
    op.drop_table("checkpoint_metrics")
    op.drop_table("expired_cursors")
    op.drop_table("checkpoint_tombstones")
    op.drop_table("checkpoints")
    op.drop_table("models")
    op.drop_table("api_keys")
