"""The registry's tables as SQLAlchemy metadata: the source the migrations are checked against.

Runtime queries are plain SQL in each backend; this metadata exists for Alembic. Live checkpoints and
their tombstones are separate tables so that the hot listing scan never steps over deleted rows.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

Id = sa.Uuid(as_uuid=False)
Timestamp = sa.DateTime(timezone=True)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("key_hash", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("revoked_at", Timestamp, nullable=True),
    sa.Column("read_only", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Index("ix_api_keys_key_hash", "key_hash", unique=True),
)

models = sa.Table(
    "models",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("project", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("base_model", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("deleted_at", Timestamp, nullable=True),
    # Set once a deleted model's rows are all gone; until then a purge finishes the delete.
    sa.Column("purged_at", Timestamp, nullable=True),
    sa.Index(
        "ux_models_live_name",
        "entity",
        "project",
        "name",
        unique=True,
        sqlite_where=sa.text("deleted_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NULL"),
    ),
    sa.Index("ix_models_entity_created", "entity", "created_at", "id"),
    sa.Index(
        "ix_models_unpurged",
        "id",
        sqlite_where=sa.text("deleted_at IS NOT NULL AND purged_at IS NULL"),
        postgresql_where=sa.text("deleted_at IS NOT NULL AND purged_at IS NULL"),
    ),
)

# Clustered on the listing key: SQLite WITHOUT ROWID stores rows in primary-key order.
checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("model_id", Id, primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("id", Id, primary_key=True),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Index("ux_checkpoints_id", "id", unique=True),
    sa.Index("ux_checkpoints_model_step", "model_id", "step", unique=True),
    sqlite_with_rowid=False,
)

# A deleted checkpoint's position, so a cursor naming it keeps the walk going.
checkpoint_tombstones = sa.Table(
    "checkpoint_tombstones",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("model_id", Id, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("deleted_at", Timestamp, nullable=False),
    sa.Index("ix_checkpoint_tombstones_deleted_at", "deleted_at"),
    # A page of deleted steps reads the model's in step order, from the index alone.
    sa.Index("ix_checkpoint_tombstones_model_step", "model_id", "step", "deleted_at"),
    sqlite_with_rowid=False,
)

# Ids of purged tombstones, so such a cursor is reported as expired rather than unknown.
expired_cursors = sa.Table(
    "expired_cursors",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("model_id", Id, nullable=False),
    sa.Column("purged_at", Timestamp, nullable=False),
    sa.Index("ix_expired_cursors_purged_at", "purged_at"),
    sa.Index("ix_expired_cursors_model", "model_id"),
    sqlite_with_rowid=False,
)

# Text that sorts in byte order (paths in the files list, metric names in theirs) on both databases:
# SQLite compares text as bytes; PostgreSQL needs the "C" collation for that.
ByteOrderedText = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")

# One row per (checkpoint, metric): "best by metric" reads an index instead of every JSON document, and
# the model's metric names are read from the primary key one name at a time.
checkpoint_metrics = sa.Table(
    "checkpoint_metrics",
    metadata,
    sa.Column("model_id", Id, primary_key=True),
    sa.Column("name", ByteOrderedText, primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("value", sa.Float(precision=53), nullable=False),
    sa.Index("ix_checkpoint_metrics_best", "model_id", "name", "value", "step"),
    sqlite_with_rowid=False,
)

# Contents the registry holds, by sha256 (lowercase hex). A row exists while its blob may be in the blob
# store. `touched_at` is set by every upload just before its blob becomes visible, and by every file that
# starts referencing it: the collector removes only blobs no file references and untouched for a grace
# period, and removes the object while it holds the row (docs/files.md).
blobs = sa.Table(
    "blobs",
    metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("touched_at", Timestamp, nullable=False),
    sa.Index("ix_blobs_touched_at", "touched_at"),
    sqlite_with_rowid=False,
)

# The files of live checkpoints: (checkpoint, path) -> content. `entity` is the model's (it never
# changes), so "which of these contents does this entity hold" and usage are index reads.
checkpoint_files = sa.Table(
    "checkpoint_files",
    metadata,
    sa.Column("checkpoint_id", Id, primary_key=True),
    sa.Column("path", ByteOrderedText, primary_key=True),
    sa.Column("model_id", Id, nullable=False),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("sha256", sa.Text, nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_checkpoint_files_model", "model_id"),
    sa.Index("ix_checkpoint_files_entity_sha256", "entity", "sha256"),
    sa.Index("ix_checkpoint_files_sha256", "sha256"),
    sqlite_with_rowid=False,
)

# Resumable uploads in progress: the staged bytes are the blob store's, under the same id.
uploads = sa.Table(
    "uploads",
    metadata,
    sa.Column("id", Id, primary_key=True),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("model_id", Id, nullable=False),
    sa.Column("checkpoint_id", Id, nullable=False),
    sa.Column("path", ByteOrderedText, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_uploads_created_at", "created_at"),
    sa.Index("ix_uploads_checkpoint", "checkpoint_id"),
)
