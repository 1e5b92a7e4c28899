"""Whole synthetic data sets: DICOM files grouped by study plus ``manifest.jsonl``."""

from __future__ import annotations

import json
import multiprocessing
import os
import queue
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2

from ._study import Anatomy, SynthStudy, render_study

MANIFEST_NAME = "manifest.jsonl"


@dataclass(frozen=True)
class SynthSummary:
    """Counts of what :func:`generate_dataset` wrote."""

    studies: int
    images: int
    positives: int
    positive_images: int
    occult_views: int
    photometric: dict[str, int]
    anatomy: dict[str, int]
    manifest: Path


def _check(studies: int, seed: int, anatomy: str, size: int, workers: int) -> None:
    for name, value in (("studies", studies), ("seed", seed), ("size", size),
                        ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if studies < 1:
        raise ValueError(f"studies must be >= 1, got {studies}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 64 <= size <= 4096:
        raise ValueError(f"size must be between 64 and 4096 pixels, got {size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if anatomy not in ("hip", "wrist", "mixed"):
        raise ValueError(f"anatomy must be 'hip', 'wrist' or 'mixed', got {anatomy!r}")


Job = tuple[Path, int, int, Anatomy, int, bool]


def _render(job: Job) -> SynthStudy:
    _, seed, index, anatomy, size, artifacts = job
    return render_study(seed, index, anatomy=anatomy, size=size, artifacts=artifacts)


def _write(job: Job, study: SynthStudy) -> list[dict[str, Any]]:
    from ._dicom import write_study  # pydicom: imported where it is used, not in helpers

    return write_study(study, job[0])


def _claim(counter: Any, total: int) -> int | None:
    """The next unclaimed study index, or None when all are taken."""
    with counter.get_lock():
        index = int(counter.value)
        if index >= total:
            return None
        counter.value = index + 1
    return index


def _helper(jobs: list[Job], counter: Any, results: Any) -> None:
    """A spawned process: render studies until none is left to claim (the caller writes
    them, so a helper starts without importing pydicom)."""
    cv2.setNumThreads(1)
    while (index := _claim(counter, len(jobs))) is not None:
        try:
            results.put((index, _render(jobs[index]), None))
        except Exception:  # reported to the parent, which raises
            results.put((index, None, traceback.format_exc()))
            return


def _run(jobs: list[Job], workers: int) -> Iterator[list[dict[str, Any]]]:
    """Manifest entries of each study, in study order.

    With ``workers > 1`` this process renders too, claiming studies from the same counter as
    ``workers - 1`` spawned helpers (no process waits for the helpers to start), and writes
    what the helpers render as it arrives.
    """
    helpers = min(workers, len(jobs)) - 1
    if helpers < 1:
        for job in jobs:
            yield _write(job, _render(job))
        return
    ctx = multiprocessing.get_context("spawn")
    counter = ctx.Value("q", 0)
    results = ctx.Queue()
    procs = [ctx.Process(target=_helper, args=(jobs, counter, results), daemon=True)
             for _ in range(helpers)]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    done: dict[int, list[dict[str, Any]]] = {}

    def receive(timeout: float | None) -> bool:
        """Write one study a helper rendered; False when none came within ``timeout``."""
        try:
            index, study, error = (results.get(timeout=timeout) if timeout is not None
                                   else results.get_nowait())
        except queue.Empty:
            return False
        if error is not None:
            raise RuntimeError(f"rendering study {index} failed in a worker:\n{error}")
        done[index] = _write(jobs[index], study)
        return True

    try:
        for proc in procs:
            proc.start()
        following = 0
        while following < len(jobs):
            while receive(None):
                pass
            while following in done:
                yield done.pop(following)
                following += 1
            if following >= len(jobs):
                break
            index = _claim(counter, len(jobs))
            if index is not None:
                done[index] = _write(jobs[index], _render(jobs[index]))
            elif not receive(1.0) and not any(proc.is_alive() for proc in procs):
                if not receive(0.1):
                    raise RuntimeError("a synthetic-data worker died without a result")
    finally:
        cv2.setNumThreads(threads)
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


def generate_dataset(out_dir: Path, *, studies: int, seed: int, anatomy: Anatomy = "mixed",
                     size: int = 512, workers: int = 1, artifacts: bool = True,
                     progress: Callable[[int, int], None] | None = None) -> SynthSummary:
    """Write ``studies`` synthetic studies (DICOM) and their ground truth under ``out_dir``.

    Files go to ``out_dir/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``;
    ``out_dir/manifest.jsonl`` lists one JSON object per view in study order, with the
    boxes of its ``artifacts`` and its ``exposed_field``. ``artifacts=False`` writes clean
    images (no collimation, markers, text, rulers, grid lines, implants or casts). The same
    ``(seed, studies, anatomy, size, artifacts)`` gives byte-identical files for any
    ``workers`` (this process and ``workers - 1`` spawned ones share the studies).
    ``progress(done, total)`` is called after each study. Raises ValueError/TypeError on bad
    arguments.
    """
    _check(studies, seed, anatomy, size, workers)
    if not isinstance(artifacts, bool):
        raise TypeError(f"artifacts must be a bool, got {type(artifacts).__name__}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(root, seed, i, anatomy, size, artifacts) for i in range(studies)]
    records: list[dict[str, Any]] = []

    def collect(results: Iterator[list[dict[str, Any]]]) -> None:
        for done, recs in enumerate(results, start=1):
            records.extend(recs)
            if progress is not None:
                progress(done, studies)

    collect(_run(jobs, workers))

    manifest = root / MANIFEST_NAME
    tmp = manifest.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, manifest)

    by_study: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_study.setdefault(rec["study_instance_uid"], []).append(rec)
    return SynthSummary(
        studies=studies,
        images=len(records),
        positives=sum(1 for recs in by_study.values() if recs[0]["study_label"] == 1),
        positive_images=sum(rec["label"] for rec in records),
        occult_views=sum(1 for rec in records if rec["study_label"] == 1 and not rec["visible"]),
        photometric=dict(sorted(Counter(rec["photometric"] for rec in records).items())),
        anatomy=dict(sorted(Counter(recs[0]["anatomy"] for recs in by_study.values()).items())),
        manifest=manifest,
    )


def read_manifest(root: Path) -> list[dict[str, Any]]:
    """The manifest entries (one per view) of the synthetic data set at ``root``.

    Raises FileNotFoundError when there is no manifest and ValueError on a malformed line.
    """
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no {MANIFEST_NAME} under {root}")
    entries = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                entries.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
    return entries
