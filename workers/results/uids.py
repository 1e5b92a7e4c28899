"""Deterministic UIDs for result objects.

A retried job must re-send the same objects, not duplicates, so every UID the result writers
assign is derived from the job key: ``2.25.`` followed by the decimal form of a name-based
UUID (RFC 4122 version 5, PS3.5 §B.2). Nothing here uses another project's UID root.
"""

from __future__ import annotations

import json
import uuid

from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "algorithm_device_uid",
    "result_uid",
]

#: Name-space of every pacs-node derived UID (itself a fixed version 5 UUID).
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:pacs-node:dicom-uid")


def _derived_uid(kind: str, *parts: str) -> UID:
    # JSON keeps the parts apart: ("a", "bc") and ("ab", "c") name different UIDs.
    name = json.dumps([kind, *parts], ensure_ascii=False, separators=(",", ":"))
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


#: Implementation Class UID written in the File Meta of every object pacs-node creates.
IMPLEMENTATION_CLASS_UID = _derived_uid("implementation", "pacs-node")
IMPLEMENTATION_VERSION_NAME = "PACSNODE_0_1"


def result_uid(job_key: str, *parts: str) -> UID:
    """The UID named by ``job_key`` and ``parts``: the same inputs give the same UID.

    Returns ``2.25.<decimal UUID>`` (at most 44 characters). Raises ``TypeError`` when an
    argument is not a ``str`` and ``ValueError`` when ``job_key`` is empty.
    """
    for value in (job_key, *parts):
        if not isinstance(value, str):
            raise TypeError(f"UID parts must be str, got {type(value).__name__}")
    if not job_key:
        raise ValueError("job_key must not be empty")
    return _derived_uid("job", job_key, *parts)


def algorithm_device_uid(manufacturer: str, name: str, version: str) -> UID:
    """Device Observer UID / Device UID of one algorithm version (stable across jobs)."""
    return _derived_uid("algorithm", manufacturer, name, version)


def set_implementation(file_meta: FileMetaDataset) -> None:
    """Name pacs-node (not the library that built the dataset) as the implementation."""
    file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    file_meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    if "FileMetaInformationGroupLength" in file_meta:
        del file_meta.FileMetaInformationGroupLength  # pydicom recomputes it on write
