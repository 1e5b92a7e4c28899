"""UID validation and the file store (no database)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from storage import (
    FileStore,
    InvalidUID,
    NotFound,
    OutOfResources,
    StorageError,
    WrittenFile,
    is_valid_uid,
    validate_uid,
)
from storage import filestore as filestore_module

GOOD = [
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.826.0.1.3680043.8.498.10000000000000000000000000000000000001",
    "2.25.329800735698586629295641978511506172918",
    "0",
    "0.0.1",
    "1." + "2" * 62,  # exactly 64 characters
]
BAD = [
    "../../x",
    "/tmp/x",
    "1.2.abc",
    "1..2",
    "1.02",
    "1." + "2" * 63,  # 65 characters
    "",
    ".1.2",
    "1.2.",
    "1.2/3",
    "1.2\\3",
    "1.2 .3",
    " 1.2",
    "1.2\n",
    "١.٢",  # non-ASCII digits
    "1.2\x003",
]
NOT_STR = [None, 12, 1.2, b"1.2.3", ["1.2"], object()]


@pytest.mark.parametrize("value", GOOD)
def test_valid_uids_are_accepted(value: str) -> None:
    assert validate_uid(value) == value
    assert is_valid_uid(value)


def test_dicom_padding_is_stripped() -> None:
    assert validate_uid("1.2.3\x00") == "1.2.3"
    assert validate_uid("1.2.3 ") == "1.2.3"


@pytest.mark.parametrize("value", BAD + NOT_STR)
def test_invalid_uids_are_refused(value: object) -> None:
    with pytest.raises(InvalidUID):
        validate_uid(value)
    assert not is_valid_uid(value)


def test_error_names_the_attribute_and_truncates_the_value() -> None:
    with pytest.raises(InvalidUID) as caught:
        validate_uid("9" * 10_000 + "x", attribute="SOPInstanceUID")
    message = str(caught.value)
    assert "SOPInstanceUID" in message
    assert len(message) < 200
    assert caught.value.dimse_status & 0xF000 == 0xC000
    assert caught.value.http_status == 400


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("bad", BAD + NOT_STR)
@pytest.mark.parametrize("position", [0, 1, 2])
def test_store_creates_nothing_for_an_invalid_uid(tmp_path: Path, bad: object,
                                                  position: int) -> None:
    store = FileStore(tmp_path / "root")
    uids: list[object] = ["1.2.3", "1.2.3.4", "1.2.3.4.5"]
    uids[position] = bad
    with pytest.raises(InvalidUID):
        store.write(*uids, data=b"payload")
    with pytest.raises(InvalidUID):
        store.instance_path(*uids)
    assert _tree(tmp_path) == ["root"]


def test_relpaths_from_the_index_are_validated_too(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    for relpath in ["../x/1.2/1.2.3.dcm", "1.2/1.2.3/../../../etc/passwd", "/etc/passwd",
                    "1.2/1.3/1.4.txt", "1.2/1.3.dcm"]:
        with pytest.raises(InvalidUID):
            store.open(relpath)
    with pytest.raises(NotFound):
        store.open("1.2/1.3/1.4.dcm")


def test_a_symlink_out_of_the_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    store = FileStore(tmp_path / "root")
    (store.root / "1.2.3").symlink_to(outside)
    with pytest.raises(StorageError):
        store.write("1.2.3", "1.2.3.4", "1.2.3.4.5", b"payload")
    assert list(outside.iterdir()) == []


def test_write_is_durable_and_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "root")
    data = os.urandom(300_000)
    final = store.instance_path("1.2.3", "1.2.3.4", "1.2.3.4.5")
    fsynced: list[int] = []
    renames: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        fsynced.append(fd)
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        # At the rename the final name does not exist yet and the temp file is complete.
        assert not Path(dst).exists()
        assert Path(src).read_bytes() == data
        assert len(fsynced) >= 1
        renames.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(filestore_module.os, "fsync", fsync)
    monkeypatch.setattr(filestore_module.os, "replace", replace)
    stored = store.write("1.2.3", "1.2.3.4", "1.2.3.4.5", data)

    assert stored.path == final
    assert stored.relpath == "1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest() == store.sha256_of(final)
    assert final.read_bytes() == data
    assert os.listdir(final.parent) == ["1.2.3.4.5.dcm"]
    (temp_name, final_name), = renames
    assert temp_name.startswith(".1.2.3.4.5.dcm.tmp-") and final_name == "1.2.3.4.5.dcm"
    # file, then the folder after the rename (plus the new folders' parents)
    assert len(fsynced) >= 2
    with store.open(stored.relpath) as handle:
        assert handle.read() == data


def test_write_from_a_file_and_from_chunks(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    data = os.urandom(3 * filestore_module.CHUNK_SIZE + 17)
    source = tmp_path / "incoming.dcm"
    source.write_bytes(data)
    from_file = store.write("1.2", "1.2.1", "1.2.1.1", source)
    chunks = [data[i:i + 1000] for i in range(0, len(data), 1000)]
    from_chunks = store.write("1.2", "1.2.1", "1.2.1.2", iter(chunks))
    assert from_file.sha256 == from_chunks.sha256 == hashlib.sha256(data).hexdigest()
    assert from_file.path.read_bytes() == from_chunks.path.read_bytes() == data
    assert source.exists()  # the caller's file is copied, not moved


def test_remove_temp_files_removes_only_temp_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    kept = store.write("1.2", "1.2.1", "1.2.1.1", b"kept")
    planted = kept.path.parent / ".1.2.1.2.dcm.tmp-0123456789abcdef"
    planted.write_bytes(b"half a file")
    lookalikes = [kept.path.parent / "notes.tmp-0123456789abcdef",
                  kept.path.parent / ".hidden", store.root / "README"]
    for path in lookalikes:
        path.write_bytes(b"x")
    assert store.remove_temp_files() == 1
    assert not planted.exists()
    assert kept.path.read_bytes() == b"kept"
    assert all(path.exists() for path in lookalikes)
    assert store.remove_temp_files() == 0


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_is_out_of_resources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         code: int) -> None:
    store = FileStore(tmp_path / "root")

    def full(fd: int, data: object) -> int:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(filestore_module.os, "write", full)
    with pytest.raises(OutOfResources) as caught:
        store.write("1.2", "1.2.1", "1.2.1.1", b"payload")
    assert caught.value.dimse_status == 0xA700
    assert caught.value.http_status == 507
    assert [p.name for p in store.root.rglob("*") if p.is_file()] == []


def test_other_io_errors_are_storage_errors(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "root")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(filestore_module.os, "fsync", broken)
    with pytest.raises(StorageError) as caught:
        store.write("1.2", "1.2.1", "1.2.1.1", b"payload")
    assert not isinstance(caught.value, OutOfResources)
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_staged_content_can_be_discarded(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    staged = store.stage("1.2", "1.2.1", "1.2.1.1", b"maybe")
    assert staged.temp_path.exists() and not staged.path.exists()
    store.discard(staged)
    assert [p for p in store.root.rglob("*") if p.is_file()] == []
    assert store.free_bytes() > 0


def test_a_written_upload_is_moved_into_place_not_copied(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = FileStore(tmp_path / "root")
    upload = store.incoming_path()
    upload.write_bytes(b"uploaded")
    inode = upload.stat().st_ino
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(filestore_module.os, "fsync",
                        lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd))[1])
    digest = hashlib.sha256(b"uploaded").hexdigest()
    stored = store.commit(store.stage("1.2", "1.2.1", "1.2.1.1",
                                      WrittenFile(upload, digest, 8)))
    assert not upload.exists()
    assert stored.path.read_bytes() == b"uploaded" and stored.path.stat().st_ino == inode
    assert stored.sha256 == digest and stored.size == 8
    assert inode in synced  # its content is durable before it is renamed into place


def test_only_files_of_the_store_are_adopted(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "root")
    outside = tmp_path / "elsewhere.dcm"
    outside.write_bytes(b"x")
    with pytest.raises(StorageError, match="outside the store"):
        store.stage("1.2", "1.2.1", "1.2.1.1", WrittenFile(outside, "0" * 64, 1))
    assert outside.exists()
