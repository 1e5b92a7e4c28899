"""Repositories: all SQL of the index. Each takes a session; the caller commits."""

from .batches import ACTIVE_ITEM_STATES, FINAL_ITEM_STATES, BatchRepository, ExportRow
from .controls import Control, ControlRepository
from .exports import ExportRepository
from .instances import InstanceRepository, decide
from .jobs import JobRepository
from .notifications import NotificationRepository
from .queries import (
    INSTANCE_MATCHING_KEYS,
    RELATIONAL_INSTANCE_KEYS,
    RELATIONAL_SERIES_KEYS,
    SERIES_MATCHING_KEYS,
    STUDY_MATCHING_KEYS,
    InstanceMatch,
    QueryRepository,
    SeriesMatch,
    StudyMatch,
)
from .stats import DeliveredJob, IndexStats, StatsRepository
from .studies import StudyListing, StudyRepository
from .tokens import TOKEN_PREFIX, TokenInfo, TokenRepository
from .worklist import (
    WORK_STATES,
    DeliveryCount,
    DestinationHealth,
    FailedJob,
    ProducedInstance,
    StudyHistory,
    WorklistFilter,
    WorklistRepository,
    WorklistRow,
)

__all__ = [
    "ACTIVE_ITEM_STATES",
    "FINAL_ITEM_STATES",
    "BatchRepository",
    "ExportRow",
    "INSTANCE_MATCHING_KEYS",
    "RELATIONAL_INSTANCE_KEYS",
    "RELATIONAL_SERIES_KEYS",
    "SERIES_MATCHING_KEYS",
    "STUDY_MATCHING_KEYS",
    "TOKEN_PREFIX",
    "WORK_STATES",
    "Control",
    "ControlRepository",
    "DeliveryCount",
    "DestinationHealth",
    "FailedJob",
    "ProducedInstance",
    "StudyHistory",
    "WorklistFilter",
    "WorklistRepository",
    "WorklistRow",
    "DeliveredJob",
    "ExportRepository",
    "InstanceMatch",
    "IndexStats",
    "InstanceRepository",
    "JobRepository",
    "NotificationRepository",
    "QueryRepository",
    "SeriesMatch",
    "StatsRepository",
    "StudyListing",
    "StudyMatch",
    "StudyRepository",
    "TokenInfo",
    "TokenRepository",
    "decide",
]
