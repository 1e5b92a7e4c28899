"""Errors raised by the storage package.

Every error carries the DIMSE status and the HTTP status the edges answer with, so the
mapping lives here, in one place, and the DIMSE/DICOMweb layers only read the attributes.
"""

from __future__ import annotations

__all__ = [
    "InvalidInstance",
    "InvalidQuery",
    "InvalidUID",
    "NotFound",
    "OutOfResources",
    "StorageError",
]


class StorageError(Exception):
    """Base error of the storage package: the store or the index could not do its work.

    ``dimse_status`` is 0x0110 (Processing failure), ``http_status`` is 500.
    """

    dimse_status: int = 0x0110
    http_status: int = 500


class InvalidUID(StorageError, ValueError):
    """A UID is not a valid DICOM UID (PS3.5 §9.1); nothing was written.

    ``dimse_status`` is 0xC210, in the C-STORE "Error: Cannot understand" range (0xCxxx);
    ``http_status`` is 400.
    """

    dimse_status = 0xC210
    http_status = 400


class InvalidInstance(StorageError, ValueError):
    """The content is not a DICOM instance the store can index (unreadable header).

    ``dimse_status`` is 0xC000 (Error: Cannot understand); ``http_status`` is 400.
    """

    dimse_status = 0xC000
    http_status = 400


class InvalidQuery(StorageError, ValueError):
    """A query key holds a value the matching rules cannot use (bad date range, bad UID list).

    ``dimse_status`` is 0xA900 (Identifier does not match SOP Class); ``http_status`` is 400.
    """

    dimse_status = 0xA900
    http_status = 400


class OutOfResources(StorageError):
    """The disk (or the database) is full or over quota: ENOSPC, EDQUOT.

    ``dimse_status`` is 0xA700 (Refused: Out of Resources); ``http_status`` is 507.
    """

    dimse_status = 0xA700
    http_status = 507


class NotFound(StorageError, LookupError):
    """A row or a stored file that should exist does not (a job, an instance, a relpath).

    ``dimse_status`` is 0x0112 (No such SOP Instance); ``http_status`` is 404.
    """

    dimse_status = 0x0112
    http_status = 404
