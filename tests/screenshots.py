"""Screenshots of the browser tests: in the test's tmp folder and, as CI artifacts, in
``test-artifacts/<name>/`` at the repository root (git-ignored, emptied per test)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

ARTIFACTS_ROOT = Path(__file__).resolve().parents[1] / "test-artifacts"


def screenshot_taker(tmp_path: Path, name: str, *, full_page: bool = False
                     ) -> Callable[[Any, str], None]:
    """``shot(page, step)`` saves a playwright page as ``<step>.png`` in both places."""
    folder = tmp_path / "screenshots"
    folder.mkdir(exist_ok=True)
    artifacts = ARTIFACTS_ROOT / name
    if artifacts.exists():
        shutil.rmtree(artifacts)
    artifacts.mkdir(parents=True)

    def shot(page: Any, step: str) -> None:
        path = folder / f"{step}.png"
        page.screenshot(path=str(path), full_page=full_page)
        shutil.copy2(path, artifacts / path.name)

    return shot
