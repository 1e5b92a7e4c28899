"""The C-FIND handler: Study Root and Patient Root queries over the index."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from io import BytesIO
from typing import Any

from pydicom import Dataset
from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.filereader import read_dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import PersonName
from pynetdicom.events import Event
from sqlalchemy.orm import Session, sessionmaker

from storage import (
    InvalidInstance,
    InvalidUID,
    QueryRepository,
    StorageError,
    StudyMatch,
    check_encoding,
    validate_uid,
)

from ._status import FindStatus

__all__ = [
    "FIND_MODELS",
    "PATIENT_ROOT_FIND",
    "STUDY_ROOT_FIND",
    "FindContext",
    "handle_find",
]

log = logging.getLogger(__name__)

STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"
# The levels of each information model, top down.
FIND_MODELS: Mapping[str, tuple[str, ...]] = {
    STUDY_ROOT_FIND: ("STUDY", "SERIES", "IMAGE"),
    PATIENT_ROOT_FIND: ("PATIENT", "STUDY", "SERIES", "IMAGE"),
}
_UNIQUE_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID",
               "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
_PATIENT_KEYS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")
_NOT_FILTERS = frozenset({"QueryRetrieveLevel", "SpecificCharacterSet"})
_UTF8 = "ISO_IR 192"
# Control characters in a value (PS3.5 6.1.2.3, 6.2): the default repertoire has none but
# ESC (ISO 2022 code extensions); LT, ST and UT add TAB, LF, FF and CR. A NUL inside a
# wildcard value cut SQLite's LIKE pattern short ("*\0Nobody" became "%": every study).
_CONTROL = re.compile(r"[\x00-\x1a\x1c-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile(r"[\x00-\x08\x0b\x0e-\x1a\x1c-\x1f\x7f]")
_TEXT_VRS = frozenset({"LT", "ST", "UT"})


@dataclass(frozen=True)
class FindContext:
    """What the C-FIND handler needs, bound through ``evt_handlers``."""

    sessions: sessionmaker[Session]


class _BadIdentifier(Exception):
    """The identifier does not describe a query of the information model."""


def _identifier(event: Event) -> dict[str, DataElement]:
    """Every element of the received identifier, decoded, by keyword.

    pydicom reads leniently: a value shorter than its declared length, a data set cut
    inside an element header, an unclosed sequence and everything after a stray item
    delimiter are dropped without a word, and the query would run with fewer keys (a cut
    PatientName: every study). So the raw bytes must walk completely in the negotiated
    transfer syntax (:func:`storage.check_encoding`) and pydicom's read must end at the
    last byte; then every element is decoded.

    Raises:
        InvalidInstance: the identifier is not one complete data set.
    """
    raw = getattr(event.request, "Identifier", None)  # a BytesIO of the received bytes
    data = raw.getvalue() if raw is not None else b""
    syntax = UID(str(event.context.transfer_syntax))
    if syntax.is_deflated:  # never negotiated for C-FIND (UNCOMPRESSED_TRANSFER_SYNTAXES)
        raise InvalidInstance("a deflated identifier is not accepted")
    check_encoding(data, syntax)
    stream = BytesIO(data)
    dataset = read_dataset(stream, syntax.is_implicit_VR, syntax.is_little_endian)
    if stream.tell() != len(data):
        raise InvalidInstance(f"malformed data set: reading stopped at byte {stream.tell()} "
                              f"of {len(data)}")
    return {elem.keyword: elem for elem in dataset if elem.keyword}


def _check_values(elements: Mapping[str, DataElement]) -> None:
    """Refuse a control character in a value (trailing NUL and space padding aside).

    The status is 0xA900, as for any unusable value: the identifier decoded, but a value
    breaks its VR's character repertoire, like a StudyDate that is not a date; 0xC000 is
    kept for identifiers that cannot be decoded at all. Sequence items are not matched
    (no sequence matching here) and are not looked at.
    """
    for keyword, elem in elements.items():
        if elem.VR == "SQ":
            continue
        value = elem.value
        if isinstance(value, MultiValue | list):
            text = "\\".join(str(v) for v in value if isinstance(v, str | PersonName))
        elif isinstance(value, str | PersonName):
            text = str(value)
        else:
            continue
        pattern = _CONTROL_IN_TEXT if elem.VR in _TEXT_VRS else _CONTROL
        found = pattern.search(text.rstrip(" \x00"))
        if found is not None:
            raise _BadIdentifier(f"{keyword} holds control character "
                                 f"0x{ord(found.group()):02X}")


@dataclass
class _Query:
    level: str
    filters: dict[str, object]
    requested: dict[str, DataElement]  # return keys, by keyword, in request order
    above: dict[str, str] = field(default_factory=dict)  # unique keys of higher levels
    charset_requested: bool = False


def _single_value(identifier: Mapping[str, DataElement], keyword: str, level: str) -> str:
    """The single value a unique key of a higher level must hold (PS3.4 C.4.1.2.2)."""
    elem = identifier.get(keyword)
    value = str(elem.value).strip(" \x00") if elem is not None and elem.VM == 1 else ""
    if not value or any(c in value for c in "*?\\"):
        raise _BadIdentifier(f"a {level} query needs a single {keyword} value")
    if keyword == "PatientID":
        return value
    try:
        return validate_uid(value, keyword)
    except InvalidUID as exc:
        raise _BadIdentifier(str(exc)) from None


def _parse(elements: Mapping[str, DataElement], model: str) -> _Query:
    levels = FIND_MODELS[model]
    level_elem = elements.get("QueryRetrieveLevel")
    level = "" if level_elem is None or level_elem.value is None \
        else str(level_elem.value).strip(" \x00")
    if not level:
        raise _BadIdentifier("no QueryRetrieveLevel")
    if level not in levels:
        raise _BadIdentifier(f"QueryRetrieveLevel {level[:16]!r} is not one of {levels}")
    above = {_UNIQUE_KEY[upper]: _single_value(elements, _UNIQUE_KEY[upper], level)
             for upper in levels[: levels.index(level)]}
    filters = {kw: elem.value for kw, elem in elements.items()
               if kw not in _NOT_FILTERS and elem.VR != "SQ"}
    requested = {kw: elem for kw, elem in elements.items() if kw not in _NOT_FILTERS}
    return _Query(level, filters, requested, above,
                  charset_requested="SpecificCharacterSet" in elements)


def _patients(studies: list[StudyMatch]) -> list[dict[str, object]]:
    """Patient-level matches: the matching studies grouped by patient."""
    patients: dict[tuple[str, ...], dict[str, Any]] = {}
    for study in studies:
        key = tuple(getattr(study, kw) for kw in _PATIENT_KEYS)
        patient = patients.setdefault(key, {
            **dict(zip(_PATIENT_KEYS, key, strict=True)),
            "NumberOfPatientRelatedStudies": 0, "NumberOfPatientRelatedSeries": 0,
            "NumberOfPatientRelatedInstances": 0})
        patient["NumberOfPatientRelatedStudies"] += 1
        patient["NumberOfPatientRelatedSeries"] += study.NumberOfStudyRelatedSeries
        patient["NumberOfPatientRelatedInstances"] += study.NumberOfStudyRelatedInstances
    return list(patients.values())


def _matches(query: _Query, sessions: sessionmaker[Session]) -> list[dict[str, object]]:
    """Run the query; the session is closed before any response is sent."""
    with sessions() as session:
        repo = QueryRepository(session)
        patient_id = query.above.get("PatientID")
        if patient_id is not None and query.level in ("SERIES", "IMAGE"):
            # Patient Root below the study: the study must belong to that patient.
            owner = {"PatientID": patient_id,
                     "StudyInstanceUID": query.above["StudyInstanceUID"]}
            if not repo.find_studies(owner, limit=1):
                return []
        filters = {**query.filters, **query.above}
        if query.level == "PATIENT":
            wanted = {kw: v for kw, v in filters.items() if kw in _PATIENT_KEYS}
            return _patients(repo.find_studies(wanted))
        if query.level == "STUDY":
            return [asdict(m) for m in repo.find_studies(filters)]
        if query.level == "SERIES":
            return [asdict(m) for m in repo.find_series(filters)]
        return [asdict(m) for m in repo.find_instances(filters)]


def _set(ds: Dataset, keyword: str, value: object) -> None:
    """Set a value from the index without pydicom's validation: stored values may be
    non-conformant, and its warning would log them. ``A\\B`` strings become multi-values."""
    if isinstance(value, str) and "\\" in value:
        value = value.split("\\")
    tag = tag_for_keyword(keyword)
    if tag is None:
        return
    ds.add(DataElement(tag, dictionary_VR(tag), value,
                       validation_mode=pydicom_config.IGNORE))


def _response(query: _Query, values: Mapping[str, object]) -> Dataset:
    """The identifier of one match: every requested key (empty when the node does not
    know it), the unique keys of the level and those above, the level."""
    ds = Dataset()
    for keyword, elem in query.requested.items():
        if keyword in values:
            _set(ds, keyword, values[keyword])
        elif keyword == "InstanceAvailability":
            ds.InstanceAvailability = "ONLINE"
        elif elem.VR == "SQ":
            ds.add_new(elem.tag, "SQ", [])
        elif " or " not in elem.VR:  # ambiguous VRs (US or SS) are left out
            ds.add_new(elem.tag, elem.VR, None)
    for keyword in (*query.above, _UNIQUE_KEY[query.level]):
        if keyword in values:
            _set(ds, keyword, values[keyword])
    ds.QueryRetrieveLevel = query.level
    non_ascii = any(isinstance(v, str) and not v.isascii() for v in values.values())
    if non_ascii or query.charset_requested:
        ds.SpecificCharacterSet = _UTF8
    return ds


def _calling_ae(event: Event) -> str:
    try:
        return str(event.assoc.requestor.ae_title)
    except Exception:
        return "?"


def handle_find(event: Event, context: FindContext) -> Iterator[tuple[int, Dataset | None]]:
    """EVT_C_FIND handler: yields ``(0xFF00, identifier)`` per match, then pynetdicom
    sends Success; a refused or failed query yields one failure status. Never raises."""
    started = time.monotonic()
    calling_ae = _calling_ae(event)
    model = str(event.request.AffectedSOPClassUID or "")
    try:
        elements = _identifier(event)
    except InvalidInstance as exc:  # its message says where, and quotes no value
        log.warning("C-FIND from %r refused: the identifier is incomplete or malformed (%s)",
                    calling_ae, exc)
        yield int(FindStatus.UNABLE_TO_PROCESS), None
        return
    except Exception as exc:
        log.warning("C-FIND from %r refused: cannot decode the identifier (%s)", calling_ae,
                    type(exc).__name__)
        yield int(FindStatus.UNABLE_TO_PROCESS), None
        return
    try:
        if model not in FIND_MODELS:
            raise _BadIdentifier(f"information model {model[:64]!r} is not supported")
        _check_values(elements)
        query = _parse(elements, model)
        matches = _matches(query, context.sessions)
    except _BadIdentifier as exc:
        log.warning("C-FIND from %r refused: %s", calling_ae, exc)
        yield int(FindStatus.IDENTIFIER_MISMATCH), None
        return
    except StorageError as exc:  # InvalidQuery: a value the matching rules cannot use
        log.warning("C-FIND from %r refused (0x%04X): %s", calling_ae, exc.dimse_status, exc)
        yield exc.dimse_status, None
        return
    except Exception as exc:
        log.error("C-FIND from %r failed: unexpected %s", calling_ae, type(exc).__name__)
        yield int(FindStatus.INTERNAL_ERROR), None
        return

    sent = 0
    for values in matches:
        if event.is_cancelled:
            log.info("C-FIND from %r cancelled after %d of %d matches", calling_ae, sent,
                     len(matches))
            yield int(FindStatus.CANCEL), None
            return
        try:
            identifier = _response(query, values)
        except Exception as exc:
            log.error("C-FIND from %r failed building a response: unexpected %s",
                      calling_ae, type(exc).__name__)
            yield int(FindStatus.INTERNAL_ERROR), None
            return
        sent += 1
        yield int(FindStatus.PENDING), identifier
    log.info("C-FIND from %r: %s level, %d matches, %.0f ms", calling_ae, query.level,
             len(matches), (time.monotonic() - started) * 1000)
