"""Throughput of the synthetic radiograph generator (models.synth).

Generates ``--studies`` studies into a temporary folder (DICOM files and manifest, the full
``generate_dataset`` path) and prints images/s and ms/image for each size:

    .venv/bin/python benchmarks/synth_speed.py --studies 40 --sizes 512 1024 --workers 1
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from models.synth import generate_dataset


def measure(studies: int, seed: int, size: int, workers: int) -> tuple[int, float]:
    """Images written and seconds taken for one generation run."""
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = generate_dataset(Path(tmp), studies=studies, seed=seed, size=size,
                                   workers=workers)
        return summary.images, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=40)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # warm-up: imports, first allocations
        generate_dataset(Path(tmp), studies=1, seed=args.seed, size=64)
    for size in args.sizes:
        images, seconds = measure(args.studies, args.seed, size, args.workers)
        print(f"size {size:5d}  workers {args.workers}  {images} images in {seconds:.2f} s  "
              f"{images / seconds:6.1f} images/s  {1000 * seconds / images:6.1f} ms/image")


if __name__ == "__main__":
    main()
