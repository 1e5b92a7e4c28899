"""Throughput of the synthetic radiograph generator (models.synth).

Generates ``--studies`` studies into a temporary folder (DICOM files and manifest, the full
``generate_dataset`` path, artifacts included) and prints images/s and ms/image for each
size; ``--repeat`` keeps the best of several runs (the machine may be shared).
``--baseline DIR`` also times another copy of the package (``DIR/models/synth``, e.g. an
older commit: ``git archive <rev> models/__init__.py models/synth | tar -x -C DIR``) in
a child process, run by run alternately with this one, so both figures come from the same
minutes:

    .venv/bin/python benchmarks/synth_speed.py --studies 40 --sizes 512 --workers 2
    .venv/bin/python benchmarks/synth_speed.py --studies 20 --sizes 512 --workers 2 \\
        --repeat 3 --baseline /tmp/synth-07bdc44

Measured on this project's 2-core development machine (Xeon 2.8 GHz, otherwise
idle), 512 px, best of 2-3 alternating runs, against 07bdc44 (before the film artifacts
and the speed work; it rendered no artifacts, so it did less per image):

    ===========================  ==================  ==================================
    run                          07bdc44             artifacts + speed work (this code)
    ===========================  ==================  ==================================
    --studies 20 --workers 1     8.4 images/s        15.4 images/s  (64.8 ms/image)
    --studies 20 --workers 2     11.0 images/s       24.9 images/s  (40.1 ms/image)
    --studies 40 --workers 2     13.9 images/s       28.3 images/s  (35.3 ms/image)
    ===========================  ==================  ==================================

On a shared machine the figures fall with the other load (with ~1.7 cores of other work
running, an earlier state of this code gave 12.1 against 6.2 images/s for ``--studies 20
--workers 2``): compare runs made side by side.

Where the time went (CPU per 512 px image, in-process): ray integrals 46 -> 15 ms per
view (row bands that merge only the solids reaching them, exact quadric boxes, cached
inverses, a discriminant without float32 cancellation); the intact twin of a fractured
view rendered and processed only around its sites; noise from OpenCV's generator; the
trabecular texture filtered in the frequency domain; large blurs at power-of-two
reductions; and with ``--workers n`` the calling process renders and writes too while its
``n - 1`` render-only helpers start (0.3 s, without pydicom).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def measure(studies: int, seed: int, size: int, workers: int) -> tuple[int, float]:
    """Images written and seconds taken for one generation run."""
    from models.synth import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = generate_dataset(Path(tmp), studies=studies, seed=seed, size=size,
                                   workers=workers)
        return summary.images, time.perf_counter() - start


def _line(label: str, size: int, workers: int, images: int, seconds: float) -> str:
    return (f"{label:>10s}  size {size:5d}  workers {workers}  {images} images in "
            f"{seconds:.2f} s  {images / seconds:6.1f} images/s  "
            f"{1000 * seconds / images:6.1f} ms/image")


def _baseline(path: Path, args: argparse.Namespace, size: int) -> tuple[int, float]:
    """One run of the copy at ``path`` (a child process with it first on the path)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import synth_speed as s; "
            "n, t = s.measure(*map(int, sys.argv[2:])); print(n, t)")
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(args.studies),
         str(args.seed), str(size), str(args.workers)],
        env=env, cwd=path, check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=1, help="best of this many runs")
    parser.add_argument("--baseline", type=Path, help="folder holding another models/synth")
    args = parser.parse_args()
    if args.baseline is not None and not (args.baseline / "models" / "synth").is_dir():
        parser.error(f"--baseline: no models/synth under {args.baseline}")
    from models.synth import generate_dataset

    with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports, first allocations
        generate_dataset(Path(tmp), studies=1, seed=args.seed, size=64)
    for size in args.sizes:
        best: dict[str, tuple[int, float]] = {}
        labels = ["current"] + (["baseline"] if args.baseline is not None else [])
        for _ in range(max(args.repeat, 1)):
            for label in labels:
                images, seconds = (
                    measure(args.studies, args.seed, size, args.workers) if label == "current"
                    else _baseline(args.baseline, args, size))
                if label not in best or seconds < best[label][1]:
                    best[label] = (images, seconds)
        for label, (images, seconds) in best.items():
            print(_line(label, size, args.workers, images, seconds))


if __name__ == "__main__":
    main()
