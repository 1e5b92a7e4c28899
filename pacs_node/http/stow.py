"""STOW-RS (PS3.18 10.5): ``POST /studies`` and ``/studies/{study}`` with
``multipart/related; type="application/dicom"`` or a single ``application/dicom`` body.

The body is streamed to disk part by part (python-multipart's streaming parser, on the
upload's own thread; a few chunks are held in memory at most), bounded by
``http.max_request_bytes``; each part goes through the same checks as a C-STORE as soon as
it has arrived, and once the body has arrived whole, the valid parts go through the same
durable ingest (:class:`pacs_node.receive.Receiver`), moved into the store, not copied,
and indexed together. The answer is a DICOM JSON data set
(Referenced SOP Sequence with Retrieve URLs, Failed SOP Sequence with Failure Reasons):
200 all stored, 202 some failed or stored with a warning, 409 none stored, 503 none
stored because storage refused (out of resources).

Below the free-space watermark (``storage.min_free_bytes``, counting the request's declared
length) the request is answered 503 with ``Retry-After`` before anything is written; the
watermark is checked again as each part begins, and a request that crosses it is 503 as a
whole (its parts are deleted, none is stored)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydicom import Dataset
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from storage import (
    InstanceMeta,
    StagedFile,
    StorageError,
    StoreOutcome,
    WrittenFile,
    is_valid_uid,
)

from ..receive import Receiver, Refused, read_header
from .common import DICOM_JSON, DicomJSONResponse, checked_uid

__all__ = ["MAX_PARTS", "router"]

log = logging.getLogger(__name__)

router = APIRouter(tags=["STOW-RS"])

#: Most parts one request may carry.
MAX_PARTS = 10_000
_WARNING_CONFLICT = 0xB000  # stored earlier with other content; that copy is kept
_OUT_OF_RESOURCES = 0xA700
_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{1,70}$")  # RFC 2046 5.1.1


@dataclass
class _Part:
    path: Path
    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    head: bytes = b""  # the first bytes, held until the preamble question is settled
    settled: bool = False
    meta: InstanceMeta | None = None  # the checks passed
    staged: StagedFile | None = None  # and the file is staged for the store
    refused: Refused | None = None  # or why not
    digest: hashlib._Hash = field(default_factory=hashlib.sha256)

    def written(self) -> WrittenFile:
        """The part as the store takes it: moved into place, not copied."""
        return WrittenFile(self.path, self.digest.hexdigest(), self.size)


_PREAMBLE = 132  # 128 bytes, then "DICM" (PS3.10 7.1)
_AHEAD = 16  # body chunks (64 KiB from uvicorn) waiting for the upload's thread, at most


@dataclass
class _Outcome:
    sop_class: str = ""
    sop_instance: str = ""
    study: str = ""
    series: str = ""
    failure: int | None = None
    warning: int | None = None


def _media_type(header: str) -> tuple[str, dict[str, str]]:
    pieces = re.findall(r'(?:[^;"]|"[^"]*")+', header)
    if not pieces:
        return "", {}
    params: dict[str, str] = {}
    for piece in pieces[1:]:
        name, _, value = piece.strip().partition("=")
        params[name.strip().lower()] = value.strip().strip('"')
    return pieces[0].strip().lower(), params


class _Upload:
    """The body streamed into temp files, one per part, each part checked as soon as it
    has arrived.

    The parsing, writing, hashing and checking run on the upload's own thread, in the
    order the chunks arrive, while the event loop reads on (:meth:`feed`): the two
    overlap, and the event loop never waits on the disk. At most :data:`_AHEAD` chunks
    wait for that thread, so memory stays bounded whatever the client sends.
    """

    def __init__(self, receiver: Receiver, limit: int, study: str | None) -> None:
        self._receiver = receiver
        self._limit = limit
        self._study = study
        self.parts: list[_Part] = []
        self.total = 0
        self.complete = False
        self._handle: IO[bytes] | None = None
        self._field = b""
        self._value = b""
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stow-part")
        self._pending: deque[Future[object]] = deque()

    async def feed(self, work: Callable[[], object]) -> None:
        """Run ``work`` on the upload's thread after what was fed before; wait only when
        :data:`_AHEAD` pieces are waiting already. An error of an earlier piece is raised."""
        self._pending.append(self._worker.submit(work))
        while self._pending and (len(self._pending) > _AHEAD or self._pending[0].done()):
            await asyncio.wrap_future(self._pending.popleft())

    async def drain(self) -> None:
        """Wait until everything fed has run; raise the first error."""
        while self._pending:
            await asyncio.wrap_future(self._pending.popleft())

    def open_part(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise HTTPException(400, f"more than {MAX_PARTS} parts in one request")
        _ensure_space(self._receiver)
        path = self._receiver.store.incoming_path()
        self.parts.append(_Part(path))
        self._handle = path.open("xb")

    def close_part(self) -> None:
        """The part has arrived whole: finish its file and check it."""
        if self._handle is not None:
            part = self.parts[-1]
            if not part.settled:
                data = self._settle(part)
                self._handle.write(data)
                part.digest.update(data)
                part.size += len(data)
            self._handle.close()
            self._handle = None
            self._check(part)

    def _check(self, part: _Part) -> None:
        kind, _ = _media_type(part.headers.get("content-type", "application/dicom"))
        try:
            if kind != "application/dicom":
                raise Refused(0xC000, f"a part of type {kind[:64]!r}, not application/dicom")
            meta = self._receiver.validate(part.path, study=self._study)
            # Moved beside its final place and fsynced here, while the next part arrives.
            part.staged = self._receiver.store.stage(
                meta.study_instance_uid, meta.series_instance_uid, meta.sop_instance_uid,
                part.written())
            part.meta = meta
        except Refused as exc:
            part.refused = exc
        except StorageError as exc:
            part.refused = Refused(exc.dimse_status, f"{type(exc).__name__}: {exc}")

    def write(self, data: bytes) -> None:
        part = self.parts[-1]
        assert self._handle is not None
        if not part.settled:
            part.head += data
            if len(part.head) < _PREAMBLE:
                return
            data, part.head = self._settle(part), b""
        self._handle.write(data)
        part.digest.update(data)
        part.size += len(data)

    def _settle(self, part: _Part) -> bytes:
        """Many clients (dicomweb-client among them) send the file meta without the
        128-byte preamble and "DICM" (pydicom's ``dcmwrite`` of a data set read without
        one): it is added, so the store holds Part 10 files."""
        part.settled = True
        head = part.head
        if head[128:132] != b"DICM" and head[:2] == b"\x02\x00":
            return b"\x00" * 128 + b"DICM" + head
        return head

    def count(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self._limit:
            raise HTTPException(413, f"the request is larger than http.max_request_bytes "
                                     f"({self._limit} bytes)")

    def parser(self, boundary: str) -> MultipartParser:
        def on_part_begin() -> None:
            self.open_part()

        def on_part_data(data: bytes, start: int, end: int) -> None:
            self.write(data[start:end])

        def on_part_end() -> None:
            self.close_part()

        def on_header_field(data: bytes, start: int, end: int) -> None:
            self._field += data[start:end]

        def on_header_value(data: bytes, start: int, end: int) -> None:
            self._value += data[start:end]

        def on_header_end() -> None:
            name = self._field.decode("latin-1").strip().lower()
            self.parts[-1].headers[name] = self._value.decode("latin-1").strip()
            self._field = self._value = b""

        def on_end() -> None:
            self.complete = True

        return MultipartParser(boundary, {  # type: ignore[arg-type]
            "on_part_begin": on_part_begin, "on_part_data": on_part_data,
            "on_part_end": on_part_end, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_end": on_end}, max_header_size=8192, max_header_count=16)

    def discard(self) -> None:
        """Stop the upload's thread, then delete every part file (stored ones were moved)."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        if self._handle is not None:
            self._handle.close()
        for part in self.parts:
            if part.staged is not None:
                self._receiver.store.discard(part.staged)  # a no-op once stored
            try:
                os.unlink(part.path)
            except FileNotFoundError:
                pass


_RETRY_AFTER_S = 60


def _ensure_space(receiver: Receiver, incoming: int = 0) -> None:
    """The free-space watermark: 503 with ``Retry-After`` below it."""
    try:
        receiver.ensure_space(incoming)
    except Refused as exc:
        raise HTTPException(503, str(exc),
                            headers={"Retry-After": str(_RETRY_AFTER_S)}) from None


def _receiver(request: Request) -> Receiver:
    return request.app.state.receiver  # type: ignore[no-any-return]


async def _read_body(request: Request, upload: _Upload) -> None:
    kind, params = _media_type(request.headers.get("content-type", ""))
    if kind == "multipart/related":
        part_type = params.get("type", "application/dicom").lower()
        if part_type != "application/dicom":
            raise HTTPException(415, f"STOW-RS parts of type {part_type[:64]!r} are not "
                                     "supported; send application/dicom")
        boundary = params.get("boundary", "")
        if not boundary:
            raise HTTPException(400, "the multipart/related Content-Type has no boundary")
        if not _BOUNDARY.match(boundary):
            raise HTTPException(400, "the multipart boundary is not a valid boundary")
        parser = upload.parser(boundary)
        try:
            async for chunk in request.stream():
                upload.count(chunk)
                await upload.feed(partial(parser.write, chunk))
            await upload.feed(parser.finalize)
            await upload.drain()
        except MultipartParseError as exc:
            raise HTTPException(400, f"malformed multipart body: {exc}") from None
        if not upload.complete:
            raise HTTPException(400, "the multipart body ends before its closing boundary")
        if not upload.parts:
            raise HTTPException(400, "the multipart body holds no part")
    elif kind == "application/dicom":
        await upload.feed(upload.open_part)
        async for chunk in request.stream():
            upload.count(chunk)
            await upload.feed(partial(upload.write, chunk))
        await upload.feed(upload.close_part)
        await upload.drain()
        upload.complete = True
    else:
        raise HTTPException(415, "STOW-RS takes multipart/related; type=\"application/dicom\" "
                                 "or application/dicom")


def _store_parts(receiver: Receiver, parts: list[_Part]) -> list[_Outcome]:
    """Store the parts that passed their checks together (few index transactions)."""
    outcomes = [_Outcome() for _ in parts]
    valid: list[tuple[_Outcome, _Part, InstanceMeta]] = []
    for outcome, part in zip(outcomes, parts, strict=True):
        if part.meta is None:
            _refused(outcome, part, part.refused or Refused(0xC000, "the part was not read"))
            continue
        meta = part.meta
        outcome.sop_class, outcome.sop_instance = meta.sop_class_uid, meta.sop_instance_uid
        outcome.study, outcome.series = meta.study_instance_uid, meta.series_instance_uid
        valid.append((outcome, part, meta))
    stored = receiver.store_many([(part.staged, meta) for _, part, meta in valid
                                  if part.staged is not None], calling_ae="STOW-RS")
    for (outcome, part, _), result in zip(valid, stored, strict=True):
        if isinstance(result, Refused):
            _refused(outcome, part, result)
        elif result.outcome is StoreOutcome.DUPLICATE_CONFLICT_KEPT:
            outcome.warning = _WARNING_CONFLICT
    return outcomes


def _refused(outcome: _Outcome, part: _Part, exc: Refused) -> None:
    outcome.failure = exc.status
    if not outcome.sop_instance:  # what the part said it was, if it says
        try:
            header = read_header(part.path)
            for name, keyword in (("sop_class", "SOPClassUID"),
                                  ("sop_instance", "SOPInstanceUID")):
                value = str(header.get(keyword, ""))
                if is_valid_uid(value):  # a hostile value is not echoed back
                    setattr(outcome, name, value)
        except Exception:  # noqa: BLE001 - nothing readable
            pass
    log.warning("STOW-RS part %s refused (0x%04X): %s",
                outcome.sop_instance or "?", exc.status, exc)


def _answer(request: Request, outcomes: list[_Outcome], study: str | None) -> Response:
    base = str(request.base_url).rstrip("/") + request.app.state.dicomweb_prefix
    ds = Dataset()
    ds.RetrieveURL = f"{base}/studies/{study}" if study else None
    referenced, failed = [], []
    for outcome in outcomes:
        item = Dataset()
        item.ReferencedSOPClassUID = outcome.sop_class or None
        item.ReferencedSOPInstanceUID = outcome.sop_instance or None
        if outcome.failure is None:
            item.RetrieveURL = (f"{base}/studies/{outcome.study}/series/{outcome.series}/"
                                f"instances/{outcome.sop_instance}")
            if outcome.warning is not None:
                item.WarningReason = outcome.warning
            referenced.append(item)
        else:
            item.FailureReason = outcome.failure
            failed.append(item)
    if referenced:
        ds.ReferencedSOPSequence = referenced
    if failed:
        ds.FailedSOPSequence = failed
    if not referenced:
        refused = all(o.failure == _OUT_OF_RESOURCES for o in outcomes)
        status = 503 if refused else 409
    elif failed or any(o.warning is not None for o in outcomes):
        status = 202
    else:
        status = 200
    return DicomJSONResponse(ds.to_json_dict(), status_code=status)


async def _stow(request: Request, study: str | None) -> Response:
    receiver = _receiver(request)
    limit = request.app.state.settings.http.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"the request is larger than http.max_request_bytes "
                                 f"({limit} bytes)")
    _ensure_space(receiver, int(declared) if declared is not None and declared.isdigit()
                  else 0)
    upload = _Upload(receiver, limit, study)
    try:
        await _read_body(request, upload)
        outcomes = await run_in_threadpool(_store_parts, receiver, upload.parts)
    finally:
        await run_in_threadpool(upload.discard)
    return _answer(request, outcomes, study)


_DOC: dict[str, Any] = {"responses": {200: {"content": {DICOM_JSON: {}}}}}


@router.post("/studies", summary="Store instances", **_DOC)
async def store_instances(request: Request) -> Response:
    return await _stow(request, None)


@router.post("/studies/{study}", summary="Store instances of one study",
             **_DOC)
async def store_study_instances(study: str, request: Request) -> Response:
    return await _stow(request, checked_uid(study, "study"))
