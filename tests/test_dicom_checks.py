"""The dciodvfy helper fails what dciodvfy could not read, not only what it called an error."""

from __future__ import annotations

from pathlib import Path

from pydicom.data import get_testdata_file

from tests.dicom_checks import dciodvfy, dciodvfy_errors


def test_a_valid_file_passes() -> None:
    errors, _ = dciodvfy(get_testdata_file("CT_small.dcm"))
    assert errors == []


def test_a_missing_file_fails_with_the_abort_line(tmp_path: Path) -> None:
    errors = dciodvfy_errors(tmp_path / "absent.dcm")
    assert any(line.startswith("Abort") for line in errors), errors


def test_a_file_that_is_not_dicom_fails(tmp_path: Path) -> None:
    path = tmp_path / "garbage.dcm"
    path.write_bytes(b"not a DICOM file at all\n" * 4)
    assert dciodvfy_errors(path) != []


def test_errors_after_a_tag_count(tmp_path: Path) -> None:
    """dciodvfy prefixes some errors with the tag: ``(0x...,0x...) ... - Error - ...``."""
    path = tmp_path / "odd-length.dcm"
    path.write_bytes(b"garbage\n")
    errors = dciodvfy_errors(path)
    assert any(line.startswith("(0x") and " - Error - " in line for line in errors), errors


def test_a_file_with_an_iod_error_fails() -> None:
    errors = dciodvfy_errors(get_testdata_file("rtplan.dcm"))
    assert any("Error" in line for line in errors), errors
