"""The API contract's constants (shared/CONTRACT.md): limits, defaults, formats and route paths.

One home for each: the schemas, the fast paths, both storage backends, the SDK defaults and the
benchmarks import them, so a limit or a prefix cannot change in one place and silently not in another.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# Steps are PostgreSQL bigints: 0 .. 2^63 - 1 (section 5).
MAX_STEP: Final = 2**63 - 1

# Names (`entity`, `project`, `name`, metric names) and `base_model`, in characters.
MAX_NAME_LENGTH: Final = 256
MAX_BASE_MODEL_LENGTH: Final = 512

# Metrics one checkpoint may hold, registered or merged (section 5).
MAX_METRICS: Final = 1000

# Steps one `DELETE .../checkpoints` may name (section 2).
MAX_DELETE_STEPS: Final = 10_000

# List endpoints: `limit` 1..100, default 20; `order` asc|desc, default asc (section 2).
LIST_LIMIT_MIN: Final = 1
LIST_LIMIT_MAX: Final = 100
LIST_LIMIT_DEFAULT: Final = 20
Order = Literal["asc", "desc"]
LIST_ORDERS: Final[tuple[Order, ...]] = get_args(Order)
LIST_ORDER_DEFAULT: Final[Order] = "asc"

# Deleted steps (GET .../checkpoints/deleted-steps): 1..10,000 per page, default 1,000; a page is
# a list of integers and a timestamp each, so a large one stays small.
DELETED_STEPS_LIMIT_MAX: Final = 10_000
DELETED_STEPS_LIMIT_DEFAULT: Final = 1000
# A metric's series (`GET .../checkpoints/series`): at most `points` of it, 4..10,000, default 1,000:
# enough for a chart a few thousand pixels wide, never a whole 100,000-checkpoint model.
SERIES_POINTS_MIN: Final = 4
SERIES_POINTS_MAX: Final = 10_000
SERIES_POINTS_DEFAULT: Final = 1000
# A model's metric names (`GET .../checkpoints/metrics`): 1..10,000 per page, default 1,000 (the most
# one checkpoint may hold), so a model whose checkpoints share their names answers in one page.
METRIC_NAMES_LIMIT_MAX: Final = 10_000
METRIC_NAMES_LIMIT_DEFAULT: Final = MAX_METRICS

# JSON request bodies over this many bytes are refused with 413 (section 5).
MAX_JSON_BODY_BYTES: Final = 1024 * 1024

# Timestamps: ISO 8601 in UTC with microseconds and a Z; as text they sort in time order.
TIMESTAMP_FORMAT: Final = "%Y-%m-%dT%H:%M:%S.%fZ"

# Route paths. FastAPI routers and the bare ASGI fast paths both build on these.
API_PREFIX: Final = "/v1"
MODELS_PATH: Final = API_PREFIX + "/preview/models"
CHECKPOINTS_PATH: Final = MODELS_PATH + "/{model_id}/checkpoints"
SERIES_PATH: Final = CHECKPOINTS_PATH + "/series"
METRIC_NAMES_PATH: Final = CHECKPOINTS_PATH + "/metrics"
MODEL_SUMMARY_PATH: Final = MODELS_PATH + "/{model_id}/summary"

# Checkpoint files (section 6): paths of 1..1024 UTF-8 bytes; files lists 1..1000 per page.
MAX_FILE_PATH_BYTES: Final = 1024
FILES_LIMIT_MAX: Final = 1000
FILES_LIMIT_DEFAULT: Final = 1000
UPLOADS_PATH: Final = API_PREFIX + "/preview/uploads"
USAGE_PATH: Final = API_PREFIX + "/preview/usage"
# The Hugging Face Hub's API (docs/hub.md): everything under `/api`, its repositories under
# `/api/models`; its file resolution is `/{repo}/resolve/...`. Commits come 50 to a page, as the Hub's.
HUB_PATH_PREFIX: Final = "/api"
HUB_API_PATH: Final = HUB_PATH_PREFIX + "/models"
HUB_WHOAMI_PATH: Final = HUB_PATH_PREFIX + "/whoami-v2"
HUB_COMMITS_PAGE: Final = 50
KEY_PATH: Final = API_PREFIX + "/preview/key"


def file_path_problem(path: str) -> str | None:
    """Why `path` is not a valid checkpoint file path (section 6), or None when it is.

    Segments separated by `/`; no empty, `.` or `..` segment (so no leading or trailing `/`), no
    backslash, no NUL or other control character, 1..1024 bytes of UTF-8: no path can name anything
    outside its checkpoint.
    """
    try:
        size = len(path.encode("utf-8"))
    except UnicodeEncodeError:
        return "the path must be valid UTF-8 text"
    if not 1 <= size <= MAX_FILE_PATH_BYTES:
        return f"the path must be 1 to {MAX_FILE_PATH_BYTES} bytes of UTF-8"
    if "\\" in path:
        return "the path must not contain a backslash"
    if any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in path):
        return "the path must not contain control characters"
    if any(segment in ("", ".", "..") for segment in path.split("/")):
        return "the path must not have empty, '.' or '..' segments, nor start or end with '/'"
    return None
