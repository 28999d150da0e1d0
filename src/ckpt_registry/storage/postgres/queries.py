"""The PostgreSQL backend's SQL: one statement per list page, deletes by primary key, best from an index."""

from __future__ import annotations

from ..base import Order

MODEL_COLUMNS = "id, entity, project, name, base_model, created_at"
CHECKPOINT_COLUMNS = "id, step, metrics, created_at, updated_at"
KEY_COLUMNS = "id, entity, name, created_at, revoked_at, read_only"
LIVE_MODEL = "SELECT 1 FROM models WHERE id = $1::uuid AND entity = $2 AND deleted_at IS NULL"


def file_totals(table: str) -> str:
    """A checkpoint's file count and total size, as columns `files` and `size_bytes` (a seek on the
    files' primary key; `table` names the checkpoints row the query reads)."""
    return (
        f"(SELECT count(*) FROM checkpoint_files f WHERE f.checkpoint_id = {table}.id) AS files, "
        "(SELECT coalesce(sum(f.size_bytes), 0) FROM checkpoint_files f "
        f"WHERE f.checkpoint_id = {table}.id) AS size_bytes"
    )


def _page_query(order: Order, *, with_cursor: bool) -> str:
    """The whole list request in one round trip: model check, cursor position and the page.

    Always yields at least one row: `found` (the model is live and the caller's), the cursor state,
    then the page's columns (NULL on an empty page). $1 model, $2 entity, then `after` (if any) and
    the limit + 1.
    """
    comparison, direction = (">", "") if order == "asc" else ("<", " DESC")
    limit = "$4" if with_cursor else "$3"
    if with_cursor:
        cursor = """
    , position AS (
        SELECT step, id, false AS expired
          FROM checkpoints WHERE id = $3::uuid AND model_id = $1::uuid
        UNION ALL
        SELECT step, id, false
          FROM checkpoint_tombstones WHERE id = $3::uuid AND model_id = $1::uuid
        UNION ALL
        SELECT NULL, NULL, true FROM expired_cursors WHERE id = $3::uuid AND model_id = $1::uuid
        LIMIT 1
    )"""
        cursor_join = "LEFT JOIN position ON true"
        cursor_columns = "position.step IS NOT NULL AS positioned, position.expired"
        seek = (
            "AND position.step IS NOT NULL "
            f"AND (c.step, c.id) {comparison} (position.step, position.id)"
        )
    else:
        cursor, cursor_join, cursor_columns, seek = (
            "",
            "",
            "true AS positioned, false AS expired",
            "",
        )
    return f"""
    WITH model AS (
        SELECT EXISTS (
            SELECT 1 FROM models WHERE id = $1::uuid AND entity = $2 AND deleted_at IS NULL
        ) AS found
    ){cursor}
    SELECT model.found, {cursor_columns}, page.id::text AS id, page.step, page.metrics
      FROM model
      {cursor_join}
      LEFT JOIN LATERAL (
          SELECT c.id, c.step, c.metrics FROM checkpoints c
           WHERE model.found AND c.model_id = $1::uuid {seek}
           ORDER BY c.step{direction}, c.id{direction}
           LIMIT {limit}
      ) page ON true
     ORDER BY page.step{direction}, page.id{direction}
    """


PAGE_QUERIES = {
    (order, with_cursor): _page_query(order, with_cursor=with_cursor)
    for order in ("asc", "desc")
    for with_cursor in (False, True)
}

# Move the live checkpoints of $1 at steps $2 to the tombstones; their metrics go with
# DELETE_METRICS.
DELETE_STEPS = """
    WITH gone AS (
        DELETE FROM checkpoints WHERE model_id = $1::uuid AND step = ANY($2::bigint[])
        RETURNING id, model_id, step, metrics
    ), tombstones AS (
        INSERT INTO checkpoint_tombstones (id, model_id, step, deleted_at)
        SELECT id, model_id, step, now() FROM gone
    )
    SELECT step, metrics, id FROM gone
"""

# By primary key, from the names in each deleted checkpoint's metrics (the JSON and the rows change
# together): `checkpoint_metrics` has no index on (model_id, step), and scanning all of a model's
# metric rows for a few steps took 18 ms at 100,000 checkpoints.
DELETE_METRICS = """
    DELETE FROM checkpoint_metrics m
     USING unnest($2::bigint[], $3::text[]) AS d(step, name)
     WHERE m.model_id = $1::uuid AND m.step = d.step AND m.name = d.name
"""


UPSERT_METRICS = """
    INSERT INTO checkpoint_metrics (model_id, name, step, value)
    SELECT $1::uuid, name, $2::bigint, value
      FROM unnest($3::text[], $4::float8[]) AS m(name, value)
    ON CONFLICT (model_id, name, step) DO UPDATE SET value = EXCLUDED.value
"""

# Ties go to the later step. The index (model_id, name, value, step) serves `max` directly; for one
# best under `min`, the smallest value comes first and then the latest step holding it, so neither
# sorts the metric's rows (retention's top k under `min` sorts only ties, incrementally).
BEST_STEPS = {
    "max": """
        SELECT step FROM checkpoint_metrics WHERE model_id = $1::uuid AND name = $2
         ORDER BY value DESC, step DESC LIMIT $3
    """,
    "min": """
        SELECT step FROM checkpoint_metrics WHERE model_id = $1::uuid AND name = $2
         ORDER BY value, step DESC LIMIT $3
    """,
}
BEST_ONE = {
    "max": f"""
        SELECT {CHECKPOINT_COLUMNS}, {file_totals("checkpoints")} FROM checkpoints
         WHERE model_id = $1::uuid AND step = (
             SELECT step FROM checkpoint_metrics WHERE model_id = $1::uuid AND name = $2
              ORDER BY value DESC, step DESC LIMIT 1)
    """,
    "min": f"""
        SELECT {CHECKPOINT_COLUMNS}, {file_totals("checkpoints")} FROM checkpoints
         WHERE model_id = $1::uuid AND step = (
             SELECT max(step) FROM checkpoint_metrics
              WHERE model_id = $1::uuid AND name = $2 AND value = (
                  SELECT min(value) FROM checkpoint_metrics
                   WHERE model_id = $1::uuid AND name = $2))
    """,
}

# Every statement that locks several checkpoint rows locks them in step order, so two transactions
# never hold some of each other's rows (delete by steps and retention took them in different orders,
# and 16 clients mixing them met ~10 deadlocks in 12 s).
LOCK_STEPS = """
    SELECT step FROM checkpoints WHERE model_id = $1::uuid AND step = ANY($2::bigint[])
     ORDER BY step FOR UPDATE
"""
LOCK_ALL_STEPS = """
    SELECT step, id::text FROM checkpoints WHERE model_id = $1::uuid ORDER BY step FOR UPDATE
"""
LIVE_STEPS = "SELECT step, id::text FROM checkpoints WHERE model_id = $1::uuid ORDER BY step"


CHECKPOINT_DETAIL = f"{CHECKPOINT_COLUMNS}, {file_totals('checkpoints')}"

LIVE_CHECKPOINT = """
    SELECT 1 FROM checkpoints c JOIN models m ON m.id = c.model_id
     WHERE c.id = $3::uuid AND c.model_id = $1::uuid AND m.entity = $2 AND m.deleted_at IS NULL
"""

TOUCH_BLOB = """
    INSERT INTO blobs (sha256, size_bytes, touched_at) VALUES ($1, $2, now())
    ON CONFLICT (sha256) DO UPDATE SET touched_at = now()
"""

# The files of the checkpoints $1 go; the stored bytes no file of the entity $2 holds any more.
DROP_FILES = """
    WITH gone AS (
        DELETE FROM checkpoint_files WHERE checkpoint_id = ANY($1::uuid[]) RETURNING sha256
    )
    SELECT coalesce(sum(b.size_bytes), 0) FROM blobs b
     WHERE b.sha256 IN (SELECT sha256 FROM gone)
       AND NOT EXISTS (
           SELECT 1 FROM checkpoint_files f
            WHERE f.entity = $2 AND f.sha256 = b.sha256 AND f.checkpoint_id <> ALL($1::uuid[]))
"""

# What DROP_FILES would answer for these checkpoints, changing nothing (a retention dry run). The
# NOT IN subquery is hashed once, where `<> ALL` compares each file with the whole array.
FREED_BY = """
    SELECT coalesce(sum(d.size_bytes), 0) FROM (
        SELECT DISTINCT sha256, size_bytes FROM checkpoint_files
         WHERE checkpoint_id = ANY($1::uuid[])
    ) d
     WHERE NOT EXISTS (
           SELECT 1 FROM checkpoint_files f
            WHERE f.entity = $2 AND f.sha256 = d.sha256
              AND f.checkpoint_id NOT IN (SELECT unnest($1::uuid[])))
"""

MODEL_SUMMARY = """
    SELECT c.checkpoints, c.latest_step, c.last_update, f.files, f.logical_bytes, s.stored_bytes
      FROM (SELECT count(*) AS checkpoints, max(step) AS latest_step, max(updated_at) AS last_update
              FROM checkpoints WHERE model_id = $1::uuid) c,
           (SELECT count(*) AS files, coalesce(sum(size_bytes), 0) AS logical_bytes
              FROM checkpoint_files WHERE model_id = $1::uuid) f,
           (SELECT coalesce(sum(size_bytes), 0) AS stored_bytes
              FROM (SELECT DISTINCT sha256, size_bytes FROM checkpoint_files
                     WHERE model_id = $1::uuid) d) s
"""

METRIC_SERIES = """
    SELECT step, value FROM checkpoint_metrics
     WHERE model_id = $1::uuid AND name = $2 AND step BETWEEN $3 AND $4
     ORDER BY step
"""

# A model's metric names after $2, at most $3 + 1 of them: one index seek per name in the primary key
# (model_id, name, step), a loose index scan, so the cost is the number of names, not of metric rows
# (0.14 ms for 5 names of 100,000 checkpoints, where DISTINCT read every row: 136 ms). `name` is in the
# "C" collation (migration 0005): byte order, as on SQLite. Every name has a character: `''` is first.
METRIC_NAMES = """
    WITH RECURSIVE names(name, n) AS (
        SELECT (SELECT min(name) FROM checkpoint_metrics WHERE model_id = $1::uuid AND name > $2), 1
        UNION ALL
        SELECT (SELECT min(m.name) FROM checkpoint_metrics AS m
                 WHERE m.model_id = $1::uuid AND m.name > names.name), n + 1
          FROM names WHERE names.name IS NOT NULL AND n <= $3
    )
    SELECT name FROM names WHERE name IS NOT NULL
"""

# A model's deleted steps above $2: a tombstone and no live checkpoint at that step (a step deleted,
# registered again and deleted again has several tombstones: the last deletion counts).
DELETED_STEPS = """
    SELECT t.step, MAX(t.deleted_at)
      FROM checkpoint_tombstones AS t
     WHERE t.model_id = $1::uuid AND t.step > $2
       AND NOT EXISTS (SELECT 1 FROM checkpoints AS c WHERE c.model_id = t.model_id AND c.step = t.step)
     GROUP BY t.step ORDER BY t.step LIMIT $3
"""
