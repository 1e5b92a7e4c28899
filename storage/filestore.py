"""The file store: one file per instance at ``root/<study>/<series>/<sop>.dcm``.

Paths are built only from validated UIDs. Writes are durable: the content goes to a temp
file in the final directory, is fsynced, renamed into place, and the directory is fsynced.
A write is two steps (:meth:`FileStore.stage`, then :meth:`FileStore.commit` or
:meth:`FileStore.discard`) so the index can decide about duplicates between them.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .errors import InvalidUID, NotFound, OutOfResources, StorageError
from .uids import validate_uid

__all__ = ["FileStore", "StagedFile", "StoredFile", "WrittenFile"]

CHUNK_SIZE = 1 << 20
_SUFFIX = ".dcm"
_TEMP_NAME = re.compile(r"\..+\.tmp-[0-9a-f]{16}")
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})



@dataclass(frozen=True)
class WrittenFile:
    """A file already written on the store's filesystem (an upload under ``.incoming``),
    with the SHA-256 and size computed while it was written: :meth:`FileStore.stage` moves
    it into place (fsync, rename) instead of copying it."""

    path: Path
    sha256: str
    size: int


Data = bytes | bytearray | memoryview | Path | WrittenFile | Iterable[bytes]


@dataclass(frozen=True)
class StoredFile:
    """A file in its final place: absolute ``path``, ``relpath`` under the root (posix)."""

    path: Path
    relpath: str
    sha256: str
    size: int


@dataclass
class StagedFile:
    """Content written and fsynced under a temp name, waiting for commit or discard."""

    temp_path: Path
    path: Path
    relpath: str
    sha256: str
    size: int
    done: bool = field(default=False, repr=False)


def _storage_error(exc: OSError, what: str) -> StorageError:
    if exc.errno in _FULL_ERRNOS:
        return OutOfResources(f"{what}: {os.strerror(exc.errno or 0)}")
    return StorageError(f"{what}: {exc.strerror or exc}")


def _write_all(fd: int, data: memoryview) -> None:
    while data:
        written = os.write(fd, data)
        data = data[written:]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    """Instance files under ``root``; every path comes from validated UIDs.

    Args:
        root: the store folder; created if missing.
    """

    def __init__(self, root: Path) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()

    # -- paths -------------------------------------------------------------------------

    def relpath_for(self, study_uid: object, series_uid: object, sop_uid: object) -> str:
        """Return ``<study>/<series>/<sop>.dcm`` after validating the three UIDs.

        Raises:
            InvalidUID: a UID is not valid.
        """
        study = validate_uid(study_uid, "StudyInstanceUID")
        series = validate_uid(series_uid, "SeriesInstanceUID")
        sop = validate_uid(sop_uid, "SOPInstanceUID")
        return f"{study}/{series}/{sop}{_SUFFIX}"

    def instance_path(self, study_uid: object, series_uid: object, sop_uid: object) -> Path:
        """Return the absolute path of an instance file (it need not exist).

        Raises:
            InvalidUID: a UID is not valid.
            StorageError: the resolved path leaves the root (a symlink inside the store).
        """
        return self._inside(self.relpath_for(study_uid, series_uid, sop_uid))

    def path_of(self, relpath: str) -> Path:
        """Return the absolute path for a ``relpath`` recorded in the index.

        Raises:
            InvalidUID: ``relpath`` is not ``<uid>/<uid>/<uid>.dcm``.
        """
        if not isinstance(relpath, str):
            raise InvalidUID(f"relpath must be a str, got {type(relpath).__name__}")
        parts = relpath.split("/")
        if len(parts) != 3 or not parts[2].endswith(_SUFFIX):
            raise InvalidUID(f"not a store relpath: {relpath[:200]!r}")
        return self._inside(self.relpath_for(parts[0], parts[1], parts[2][: -len(_SUFFIX)]))

    def _inside(self, relpath: str) -> Path:
        path = self.root / relpath
        if not path.resolve().is_relative_to(self.root):
            raise StorageError("instance path resolves outside the store root")
        return path

    # -- writing -----------------------------------------------------------------------

    def stage(self, study_uid: object, series_uid: object, sop_uid: object,
              data: Data) -> StagedFile:
        """Write ``data`` durably to a temp file beside its final place.

        Args:
            data: the encoded instance: bytes, a file to copy (read in chunks), a
                :class:`WrittenFile` of this store to move, or an iterable of byte chunks.

        Raises:
            InvalidUID: a UID is not valid (nothing is created).
            OutOfResources: the disk is full or over quota (the temp file is removed).
            StorageError: any other I/O error.
        """
        relpath = self.relpath_for(study_uid, series_uid, sop_uid)
        path = self._inside(relpath)
        try:
            self._make_dirs(path.parent)
        except OSError as exc:
            raise _storage_error(exc, "cannot create store folder") from exc
        temp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
        if isinstance(data, WrittenFile):
            return self._adopt(data, temp, path, relpath)
        digest = hashlib.sha256()
        size = 0
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o644)
        except OSError as exc:
            raise _storage_error(exc, "cannot create temp file") from exc
        try:
            try:
                for chunk in self._chunks(data):
                    view = memoryview(chunk)
                    digest.update(view)
                    _write_all(fd, view)
                    size += len(view)
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise _storage_error(exc, "cannot write instance") from exc
            raise
        return StagedFile(temp, path, relpath, digest.hexdigest(), size)

    def _adopt(self, written: WrittenFile, temp: Path, path: Path, relpath: str) -> StagedFile:
        """Make an already written file the staged one: fsync it, rename it beside its
        final place. It must be a temp file of this store (``.incoming``): it is moved."""
        if not written.path.resolve().is_relative_to(self.root):
            raise StorageError("a written file to adopt lies outside the store")
        try:
            fd = os.open(written.path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(written.path, temp)
        except OSError as exc:
            raise _storage_error(exc, "cannot move the received file") from exc
        return StagedFile(temp, path, relpath, written.sha256, written.size)

    def commit(self, staged: StagedFile, *, sync: bool = True) -> StoredFile:
        """Rename a staged file into place (replacing any file there) and fsync the folder.

        Calling it again for the same staged file returns the same result.

        Args:
            sync: False leaves the folder's fsync to the caller (:meth:`sync_folders`,
                once for many files of one folder).

        Raises:
            StorageError: the rename or the fsync failed.
        """
        if not staged.done:
            try:
                os.replace(staged.temp_path, staged.path)
                if sync:
                    _fsync_dir(staged.path.parent)
            except OSError as exc:
                raise _storage_error(exc, "cannot move instance into place") from exc
            staged.done = True
        return StoredFile(staged.path, staged.relpath, staged.sha256, staged.size)

    def sync_folders(self, folders: Iterable[Path]) -> None:
        """fsync folders files were renamed into with ``commit(sync=False)``.

        Raises:
            StorageError: an fsync failed.
        """
        for folder in folders:
            try:
                _fsync_dir(folder)
            except OSError as exc:
                raise _storage_error(exc, "cannot sync the store folder") from exc

    def discard(self, staged: StagedFile) -> None:
        """Remove a staged temp file that will not be committed (no-op once committed)."""
        if not staged.done:
            staged.temp_path.unlink(missing_ok=True)
            staged.done = True

    def write(self, study_uid: object, series_uid: object, sop_uid: object,
              data: Data) -> StoredFile:
        """Write ``data`` durably to its final place, replacing any file there.

        Raises:
            InvalidUID, OutOfResources, StorageError: as :meth:`stage` and :meth:`commit`.
        """
        staged = self.stage(study_uid, series_uid, sop_uid, data)
        try:
            return self.commit(staged)
        finally:
            self.discard(staged)

    def remove(self, relpath: str) -> bool:
        """Delete a stored file; return whether it existed. The folder is fsynced."""
        path = self.path_of(relpath)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _storage_error(exc, "cannot remove instance") from exc
        _fsync_dir(path.parent)
        return True

    def _make_dirs(self, folder: Path) -> None:
        missing: list[Path] = []
        probe = folder
        while not probe.exists():
            missing.append(probe)
            probe = probe.parent
        for new in reversed(missing):
            try:
                new.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(new.parent)

    @staticmethod
    def _chunks(data: bytes | bytearray | memoryview | Path | Iterable[bytes]
                ) -> Iterable[bytes | bytearray | memoryview]:
        if isinstance(data, bytes | bytearray | memoryview):
            yield data
        elif isinstance(data, Path):
            with data.open("rb") as source:
                while chunk := source.read(CHUNK_SIZE):
                    yield chunk
        else:
            for chunk in data:
                if not isinstance(chunk, bytes | bytearray | memoryview):
                    raise TypeError(f"data chunks must be bytes, got {type(chunk).__name__}")
                yield chunk

    # -- reading and housekeeping ------------------------------------------------------

    def open(self, relpath: str) -> BinaryIO:
        """Open a stored file for reading.

        Raises:
            InvalidUID: ``relpath`` is not a store relpath.
            NotFound: the file does not exist.
        """
        path = self.path_of(relpath)
        try:
            return path.open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"no stored file {relpath}") from exc

    @staticmethod
    def sha256_of(path: Path) -> str:
        """Return the hex SHA-256 of a file, read in chunks."""
        digest = hashlib.sha256()
        with Path(path).open("rb") as source:
            while chunk := source.read(CHUNK_SIZE):
                digest.update(chunk)
        return digest.hexdigest()

    def remove_temp_files(self) -> int:
        """Delete temp files left by interrupted writes; return how many.

        Call it at start, before any write: it cannot tell a live temp file from a dead one.
        """
        removed = 0
        for folder, _dirs, files in os.walk(self.root):
            for name in files:
                if _TEMP_NAME.fullmatch(name):
                    try:
                        os.unlink(os.path.join(folder, name))
                    except FileNotFoundError:
                        continue
                    removed += 1
        return removed

    def incoming_path(self) -> Path:
        """A new, unused path under ``<root>/.incoming`` for an upload being received
        (STOW-RS parts). Its name is a temp name: :meth:`remove_temp_files` deletes what
        an interrupted upload left.

        Raises:
            StorageError: the folder cannot be created.
        """
        folder = self.root / ".incoming"
        try:
            self._make_dirs(folder)
        except OSError as exc:
            raise _storage_error(exc, "cannot create the incoming folder") from exc
        return folder / f".part.tmp-{secrets.token_hex(8)}"

    def free_bytes(self) -> int:
        """Return the bytes available to this process on the store's filesystem."""
        return shutil.disk_usage(self.root).free
