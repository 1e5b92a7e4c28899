"""DICOM attribute matching (PS3.4 C.2.2.2) turned into SQL conditions."""

from __future__ import annotations

import re
from typing import Any

from pydicom.multival import MultiValue
from sqlalchemy import ColumnElement, and_, func, literal, or_
from sqlalchemy.sql.elements import ColumnClause

from ..errors import InvalidQuery, InvalidUID
from ..uids import validate_uid

_ESCAPE = "!"
_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?")
# No control character but ESC (ISO 2022) in a matched value: SQLite ends a LIKE pattern
# at a NUL ("*\0Nobody" matched every row), and none belongs in a matched VR (PS3.5 6.2).
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
Column = ColumnElement[Any] | ColumnClause[Any] | Any


def text_of(value: object) -> str:
    """A query value as one string: ``None`` is empty, a multi-value joins with ``\\``;
    trailing NUL and space padding and leading spaces are dropped.

    Raises:
        InvalidQuery: a control character (ESC aside) is left in the value.
    """
    if value is None:
        return ""
    if isinstance(value, list | tuple | MultiValue):
        text = "\\".join(str(v) for v in value)
    else:
        text = str(value).rstrip(" \x00").lstrip(" ")
    found = _CONTROL.search(text)
    if found is not None:  # the value itself stays out of the message (patient data)
        raise InvalidQuery(f"a query value holds control character 0x{ord(found.group()):02X}")
    return text


def _universal(value: str) -> bool:
    return value == "" or set(value) == {"*"}


def _like_pattern(value: str) -> str:
    escaped = (value.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%")
               .replace("_", _ESCAPE + "_"))
    return escaped.replace("*", "%").replace("?", "_")


def string_match(column: Column, value: object, *,
                 case_insensitive: bool = False) -> ColumnElement[bool] | None:
    """Single value, wildcard (``*``, ``?``) or universal (empty, ``*``) matching.

    ``case_insensitive`` is for PN attributes, matched regardless of case.
    """
    text = text_of(value)
    if _universal(text):
        return None
    target = func.lower(column) if case_insensitive else column
    if case_insensitive:
        text = text.lower()
    if "*" in text or "?" in text:
        return target.like(_like_pattern(text), escape=_ESCAPE)
    return target == literal(text)


def fuzzy_name_match(column: Column, value: object) -> ColumnElement[bool] | None:
    """QIDO-RS ``fuzzymatching=true`` on a PN attribute (PS3.18 8.3.4.1): regardless of
    case, the value (wildcards allowed) matches the start of any word of the name, a word
    starting the name or following ``^``, a space, ``=`` or ``-`` ("smi" finds
    ``Smith^John`` and ``Jones-Smith^Ann``)."""
    text = text_of(value)
    if _universal(text):
        return None
    pattern = _like_pattern(text.lower()).rstrip("%") + "%"
    target = func.lower(column)
    return or_(target.like(pattern, escape=_ESCAPE),
               *(target.like(f"%{sep}{pattern}", escape=_ESCAPE) for sep in "^ =-"))


def _range(value: str, pattern: re.Pattern[str], what: str) -> tuple[str, str]:
    low, sep, high = value.partition("-")
    if not sep:
        low = high = value
    if (not low and not high) or any(p and not pattern.fullmatch(p) for p in (low, high)):
        raise InvalidQuery(f"{what}: not a value or range: {value[:40]!r}")
    return low, high


def date_match(column: Column, value: object, what: str = "date") -> ColumnElement[bool] | None:
    """``YYYYMMDD``, ``YYYYMMDD-``, ``-YYYYMMDD`` or ``YYYYMMDD-YYYYMMDD``; empty matches
    everything; an empty stored date matches only universally."""
    text = text_of(value)
    if _universal(text):
        return None
    low, high = _range(text, _DATE, what)
    conditions = [column != ""]
    if low:
        conditions.append(column >= low)
    if high:
        conditions.append(column <= high)
    return and_(*conditions)


def time_match(column: Column, value: object, what: str = "time") -> ColumnElement[bool] | None:
    """``HH[MM[SS[.F]]]`` values and ranges; a bound covers its whole precision
    (``-0930`` includes 09:30:59)."""
    text = text_of(value).replace(":", "")
    if _universal(text):
        return None
    low, high = _range(text, _TIME, what)
    conditions = [column != ""]
    if low:
        conditions.append(column >= low)
    if high:
        conditions.append(column <= high + "~")  # "~" sorts after digits and "."
    return and_(*conditions)


def uid_list_match(column: Column, value: object, what: str) -> ColumnElement[bool] | None:
    """UID list matching: one UID or several separated by ``\\``."""
    text = text_of(value)
    if _universal(text):
        return None
    try:
        uids = [validate_uid(part, what) for part in text.split("\\")]
    except InvalidUID as exc:
        raise InvalidQuery(str(exc)) from None
    return column.in_(uids)


def int_match(column: Column, value: object, what: str) -> ColumnElement[bool] | None:
    """Single integer value matching (IS attributes)."""
    text = text_of(value)
    if _universal(text):
        return None
    try:
        number = int(text)
    except ValueError:
        raise InvalidQuery(f"{what}: not an integer: {text[:40]!r}") from None
    return column == number
