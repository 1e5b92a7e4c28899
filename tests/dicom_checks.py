"""dciodvfy (dicom3tools), as every test that checks our DICOM output runs it (STYLE.md #12).

A file passes only when dciodvfy read it whole and found nothing wrong: its exit status is
0, no line says ``Error`` (alone, or after a tag: ``(0x0008,0x0016) ... - Error - ...``)
and none says ``Abort`` (the file could not be read; dciodvfy then prints no ``Error``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

__all__ = ["dciodvfy", "dciodvfy_errors"]

_ERROR = re.compile(r"(^|\s-\s)(Error|Abort)\b")
_WARNING = re.compile(r"(^|\s-\s)Warning\b")


def dciodvfy(path: Path | str) -> tuple[list[str], list[str]]:
    """Run dciodvfy on ``path``; return its (errors, warnings).

    Errors are the ``Error`` and ``Abort`` lines, plus a line naming a non-zero exit status
    when dciodvfy failed without saying why. A missing dciodvfy fails the test.
    """
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.fail("dciodvfy (dicom3tools) must be installed: run `make test`")
    run = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=120)
    lines = (run.stdout + run.stderr).splitlines()
    errors = [line for line in lines if _ERROR.search(line)]
    warnings = [line for line in lines if _WARNING.search(line) and line not in errors]
    if run.returncode != 0 and not errors:
        errors.append(f"dciodvfy exited with status {run.returncode}")
    return errors, warnings


def dciodvfy_errors(path: Path | str) -> list[str]:
    """The errors of :func:`dciodvfy` on ``path``: empty when the file passes."""
    return dciodvfy(path)[0]
