"""Repositories: all SQL of the index. Each takes a session; the caller commits."""

from .exports import ExportRepository
from .instances import InstanceRepository, decide
from .jobs import JobRepository
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
from .studies import StudyListing, StudyRepository

__all__ = [
    "INSTANCE_MATCHING_KEYS",
    "RELATIONAL_INSTANCE_KEYS",
    "RELATIONAL_SERIES_KEYS",
    "SERIES_MATCHING_KEYS",
    "STUDY_MATCHING_KEYS",
    "ExportRepository",
    "InstanceMatch",
    "InstanceRepository",
    "JobRepository",
    "QueryRepository",
    "SeriesMatch",
    "StudyListing",
    "StudyMatch",
    "StudyRepository",
    "decide",
]
