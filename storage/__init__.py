"""Where instances and results live: the file store and the SQL index.

Nothing is built at import time. An entry point does::

    engine = create_engine_for(url)      # SQLite (WAL) or PostgreSQL (psycopg 3)
    migrate(engine)                      # Alembic upgrade head; a no-op when up to date
    sessions = session_factory(engine)
    store = FileStore(data_dir / "instances")
    store.remove_temp_files()            # once, before the first write

and passes ``store`` and ``sessions`` down. The edges call :func:`ingest`; services use the
repositories inside a transaction they commit (:func:`run_write` does the retries).
Errors subclass :class:`StorageError` and carry their DIMSE and HTTP status.
"""

from ._db import run_write
from .encoding import EncodingSummary, check_encoding
from .engine import begin_write, create_engine_for, migrate, session_factory
from .errors import (
    InvalidInstance,
    InvalidQuery,
    InvalidUID,
    NotFound,
    OutOfResources,
    StorageError,
)
from .filestore import FileStore, StagedFile, StoredFile, WrittenFile
from .ingest import index_staged, ingest, ingest_many
from .meta import InstanceMeta, StoreOutcome
from .pixels import declared_pixels, too_large
from .redact import keep_values_out_of_logs
from .repositories import (
    INSTANCE_MATCHING_KEYS,
    RELATIONAL_INSTANCE_KEYS,
    RELATIONAL_SERIES_KEYS,
    SERIES_MATCHING_KEYS,
    STUDY_MATCHING_KEYS,
    BatchRepository,
    ExportRepository,
    InstanceMatch,
    InstanceRepository,
    JobRepository,
    NotificationRepository,
    QueryRepository,
    SeriesMatch,
    StudyListing,
    StudyMatch,
    StudyRepository,
    TokenInfo,
    TokenRepository,
)
from .schema import (
    ApiToken,
    Base,
    Batch,
    BatchItem,
    BatchState,
    Export,
    ExportState,
    Instance,
    InstanceSource,
    ItemState,
    Job,
    JobState,
    Notification,
    Patient,
    PriorityEvent,
    Result,
    ResultState,
    Series,
    Study,
    StudyState,
    TokenRole,
)
from .triage import (
    LANE_BATCH,
    LANE_LIVE,
    LANE_URGENT,
    PrioritySource,
    TriagePriority,
    floored,
    from_result,
    requested_urgency,
)
from .uids import MAX_UID_LENGTH, is_valid_uid, validate_uid

__all__ = [
    "INSTANCE_MATCHING_KEYS",
    "LANE_BATCH",
    "LANE_LIVE",
    "LANE_URGENT",
    "MAX_UID_LENGTH",
    "RELATIONAL_INSTANCE_KEYS",
    "RELATIONAL_SERIES_KEYS",
    "SERIES_MATCHING_KEYS",
    "STUDY_MATCHING_KEYS",
    "ApiToken",
    "Base",
    "Batch",
    "BatchItem",
    "BatchRepository",
    "BatchState",
    "ItemState",
    "EncodingSummary",
    "Export",
    "ExportRepository",
    "ExportState",
    "FileStore",
    "Instance",
    "InstanceMatch",
    "InstanceMeta",
    "InstanceRepository",
    "InstanceSource",
    "InvalidInstance",
    "InvalidQuery",
    "InvalidUID",
    "Job",
    "JobRepository",
    "Notification",
    "NotificationRepository",
    "JobState",
    "NotFound",
    "OutOfResources",
    "Patient",
    "PriorityEvent",
    "PrioritySource",
    "QueryRepository",
    "Result",
    "ResultState",
    "Series",
    "SeriesMatch",
    "StagedFile",
    "StorageError",
    "StoreOutcome",
    "StoredFile",
    "Study",
    "StudyListing",
    "StudyMatch",
    "StudyRepository",
    "StudyState",
    "TokenInfo",
    "TokenRepository",
    "TokenRole",
    "TriagePriority",
    "WrittenFile",
    "begin_write",
    "check_encoding",
    "create_engine_for",
    "declared_pixels",
    "floored",
    "from_result",
    "index_staged",
    "ingest",
    "ingest_many",
    "is_valid_uid",
    "keep_values_out_of_logs",
    "migrate",
    "requested_urgency",
    "run_write",
    "session_factory",
    "too_large",
    "validate_uid",
]
