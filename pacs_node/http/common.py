"""What the HTTP endpoints share: media types, the DICOM JSON response, UID checks."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from storage import InvalidUID, validate_uid

__all__ = ["DICOM_JSON", "DicomJSONResponse", "checked_uid"]

DICOM_JSON = "application/dicom+json"


class DicomJSONResponse(JSONResponse):
    """``application/dicom+json`` (PS3.18 F.2)."""

    media_type = DICOM_JSON

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def checked_uid(value: str, what: str) -> str:
    """``value`` if it is a valid UID; 400 otherwise (before it reaches a query or a
    path)."""
    try:
        return validate_uid(value, f"{what} UID")
    except InvalidUID as exc:
        raise HTTPException(400, str(exc)) from None
