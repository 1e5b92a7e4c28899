"""Per-view inference cost of model checkpoints, measured side by side (``FractureModel.predict``).

Writes ``--studies`` synthetic studies at ``--image-size`` into a temporary folder, then
times ``predict`` (decode, preprocessing, network, heatmap back on the original grid,
findings) over all views for each checkpoint, in alternating rounds so that every model
sees the same machine load. Prints views/s and the ratio to the first checkpoint:

    .venv/bin/python benchmarks/inference_speed.py models/weights/demo_global_pool.pt OTHER.pt
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pydicom
import torch

from models.data import read_manifest
from models.registry import DEMO_WEIGHTS, load_model
from models.synth import generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights", nargs="*", type=Path, default=[Path(DEMO_WEIGHTS)])
    parser.add_argument("--studies", type=int, default=12)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if present)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = [load_model(w, device=args.device) for w in args.weights]
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp), studies=args.studies, seed=11, size=args.image_size)
        views = [pydicom.dcmread(Path(tmp) / e["path"]) for e in read_manifest(Path(tmp))]
    for model in models:  # warm-up: first allocations, cudnn choices
        model.predict(views[: args.batch_size], batch_size=args.batch_size, abstain=False)
    seconds: list[list[float]] = [[] for _ in models]
    for _ in range(args.rounds):
        for i, model in enumerate(models):
            start = time.perf_counter()
            model.predict(views, batch_size=args.batch_size, abstain=False)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            seconds[i].append(time.perf_counter() - start)
    base = statistics.median(seconds[0])
    print(f"{len(views)} views of {args.image_size} px, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads, device {models[0].device}")
    for path, model, times in zip(args.weights, models, seconds, strict=True):
        median = statistics.median(times)
        print(f"{str(path):48s} input {model.metadata.input_size:4d} px  "
              f"{len(views) / median:6.2f} views/s  {1000 * median / len(views):7.1f} ms/view  "
              f"x{median / base:.2f} time of the first")


if __name__ == "__main__":
    main()
