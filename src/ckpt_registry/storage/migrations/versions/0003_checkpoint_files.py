"""Checkpoint files: blobs by sha256, the files of each checkpoint, resumable uploads in progress.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Id = sa.Uuid(as_uuid=False)
Timestamp = sa.DateTime(timezone=True)
Path = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.Text, primary_key=True),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("touched_at", Timestamp, nullable=False),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_blobs_touched_at", "blobs", ["touched_at"])

    op.create_table(
        "checkpoint_files",
        sa.Column("checkpoint_id", Id, nullable=False),
        sa.Column("path", Path, nullable=False),
        sa.Column("model_id", Id, nullable=False),
        sa.Column("entity", sa.Text, nullable=False),
        sa.Column("sha256", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("checkpoint_id", "path"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_checkpoint_files_model", "checkpoint_files", ["model_id"])
    op.create_index("ix_checkpoint_files_entity_sha256", "checkpoint_files", ["entity", "sha256"])
    op.create_index("ix_checkpoint_files_sha256", "checkpoint_files", ["sha256"])

    op.create_table(
        "uploads",
        sa.Column("id", Id, primary_key=True),
        sa.Column("entity", sa.Text, nullable=False),
        sa.Column("model_id", Id, nullable=False),
        sa.Column("checkpoint_id", Id, nullable=False),
        sa.Column("path", Path, nullable=False),
        sa.Column("created_at", Timestamp, nullable=False),
    )
    op.create_index("ix_uploads_created_at", "uploads", ["created_at"])
    op.create_index("ix_uploads_checkpoint", "uploads", ["checkpoint_id"])


def downgrade() -> None:
    op.drop_table("uploads")
    op.drop_table("checkpoint_files")
    op.drop_table("blobs")
