"""DICOM UID validation: the only gate between network-supplied UIDs and file paths."""

from __future__ import annotations

import re

from .errors import InvalidUID

__all__ = ["MAX_UID_LENGTH", "is_valid_uid", "validate_uid"]

MAX_UID_LENGTH = 64
# PS3.5 §9.1: components of ASCII digits separated by single dots; a component of more
# than one digit does not start with 0. [0-9], not \d: \d also matches non-ASCII digits.
_UID = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_SHOWN = 64


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def validate_uid(value: object, attribute: str | None = None) -> str:
    """Return ``value`` as a clean UID string, or raise :class:`InvalidUID`.

    Trailing NUL and space padding (as in DICOM UI values) is removed first. The result has
    1 to 64 characters: digit components separated by single dots, no empty component and
    no leading zero in a multi-digit component.

    Args:
        value: the candidate UID (``str``, including ``pydicom.uid.UID``); anything else fails.
        attribute: the DICOM keyword the value came from, named in the error message.

    Raises:
        InvalidUID: the value is not a valid UID; the message quotes at most ~64 characters.
    """
    where = f"{attribute}: " if attribute else ""
    if not isinstance(value, str):
        raise InvalidUID(f"{where}UID must be a str, got {type(value).__name__}")
    uid = value.rstrip("\x00 ")
    if not uid:
        raise InvalidUID(f"{where}UID is empty")
    if len(uid) > MAX_UID_LENGTH:
        raise InvalidUID(f"{where}UID has {len(uid)} characters (at most {MAX_UID_LENGTH}): "
                         f"{_shown(uid)}")
    if _UID.fullmatch(uid) is None:
        raise InvalidUID(f"{where}not a valid UID (digits and single dots, no leading zeros): "
                         f"{_shown(uid)}")
    return str(uid)


def is_valid_uid(value: object) -> bool:
    """Return whether :func:`validate_uid` would accept ``value``."""
    try:
        validate_uid(value)
    except InvalidUID:
        return False
    return True
