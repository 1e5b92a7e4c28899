"""Where a batch job's time goes, and how jobs per hour grow with worker processes.

No peers: ``--studies`` synthetic studies are written once, then for each process count K
they are split over K processes, each with its own store and SQLite index (so the index is
not what is measured), each running :meth:`workers.pipeline.StudyPipeline.run` over its
jobs with the model on ``--device``, as a Celery worker process does. Ingest is done
before the clock starts. Per configuration it prints studies/hour (all processes
together, from the first job's start to the last job's end), the ratio to one process,
and per job the median seconds of the whole run, of inference (``FractureModel.predict``,
heatmaps and findings included) and of writing the results (SR and overlays built,
encoded and stored)::

    .venv/bin/python benchmarks/batch_jobs.py --processes 1,2 --studies 16
    python3 benchmarks/batch_jobs.py --device cuda --processes 1,2,4,8 --studies 64
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _worker(args: tuple[list[list[str]], str, str, int, Any]) -> dict[str, Any]:
    """One worker process: ingest its studies, then run their jobs; its timings."""
    files, device, model, threads, barrier = args
    import torch

    if threads:
        torch.set_num_threads(threads)
    import workers.pipeline as pipeline_module
    from models.registry import FractureModel
    from storage import (
        FileStore,
        InstanceMeta,
        StudyRepository,
        create_engine_for,
        ingest,
        migrate,
        run_write,
        session_factory,
    )
    from workers.pipeline import ModelCache, PipelineOptions, StudyPipeline
    from workers.routing import Route

    spent = {"inference": 0.0, "results": 0.0}

    def timed(name: str, function: Any) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                if device == "cuda":
                    torch.cuda.synchronize()
                spent[name] += time.perf_counter() - started
        return wrapper

    FractureModel.predict = timed("inference", FractureModel.predict)  # type: ignore[method-assign]
    for name in ("build_sr", "build_secondary_captures", "_to_bytes"):
        setattr(pipeline_module, name, timed("results", getattr(pipeline_module, name)))

    root = Path(tempfile.mkdtemp(prefix="pacs-node-jobs-"))
    engine = create_engine_for(f"sqlite:///{root / 'index.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    store = FileStore(root / "store")
    for study in files:
        for path in study:
            data = Path(path).read_bytes()
            ingest(store, sessions, data, InstanceMeta.read(data))

    def settle(session: Any) -> list[int]:
        repo = StudyRepository(session)
        return [repo.mark_settled_and_create_job(s, stable_seconds=0.0).id  # type: ignore[union-attr]
                for s in repo.settled(datetime.now(UTC), 0.0)]

    jobs = run_write(sessions, settle)
    pipeline = StudyPipeline(store, sessions, PipelineOptions(routes=(Route(model=model),)),
                             ModelCache(device=device))
    pipeline.models.get(model)  # loaded before the clock, as a warm worker has it
    barrier.wait()
    per_job = []
    split = []
    started = time.time()
    for job_id in jobs:
        before = dict(spent)
        t0 = time.perf_counter()
        outcome = pipeline.run(job_id)
        assert outcome == "done", outcome
        per_job.append(time.perf_counter() - t0)
        split.append((spent["inference"] - before["inference"],
                      spent["results"] - before["results"]))
    ended = time.time()
    engine.dispose()
    return {"start": started, "end": ended, "per_job": per_job, "split": split,
            "cpu": time.process_time()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--processes", default="1,2,4")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--model", default="demo", help="demo or a checkpoint path")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads per process (0: torch's default)")
    parser.add_argument("--seed", type=int, default=31)
    args = parser.parse_args()

    import torch

    from models.synth import generate_dataset, read_manifest

    counts = [int(k) for k in args.processes.split(",")]
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else "none"
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; device "
          f"{args.device} ({gpu}); torch {torch.__version__}; model {args.model}")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        generate_dataset(Path(tmp), studies=args.studies, seed=args.seed,
                         size=args.image_size, workers=min(8, os.cpu_count() or 1))
        studies: dict[str, list[str]] = {}
        for entry in read_manifest(Path(tmp)):
            studies.setdefault(entry["study_instance_uid"], []).append(
                str(Path(tmp) / entry["path"]))
        views = sum(len(v) for v in studies.values())
        print(f"{len(studies)} synthetic studies, {views} views of {args.image_size} px "
              f"(written in {time.perf_counter() - started:.0f} s)\n")
        print(f"{'processes':>9} {'studies':>7} {'seconds':>8} {'studies/h':>10} "
              f"{'x 1 proc':>8} {'job s':>6} {'infer s':>8} {'results s':>9} {'other s':>8}")
        base = None
        ctx = mp.get_context("spawn")
        for k in counts:
            groups = [list(studies.values())[i::k] for i in range(k)]
            barrier = ctx.Manager().Barrier(k)
            with ctx.Pool(k) as pool:
                outs = pool.map(_worker, [(g, args.device, args.model, args.threads, barrier)
                                          for g in groups])
            seconds = max(o["end"] for o in outs) - min(o["start"] for o in outs)
            rate = len(studies) / seconds * 3600
            base = base or rate
            jobs = [t for o in outs for t in o["per_job"]]
            infer = [s[0] for o in outs for s in o["split"]]
            results = [s[1] for o in outs for s in o["split"]]
            other = [j - i - r for j, i, r in zip(jobs, infer, results, strict=True)]
            print(f"{k:>9} {len(studies):>7} {seconds:>8.1f} {rate:>10.0f} {rate / base:>8.2f} "
                  f"{statistics.median(jobs):>6.2f} {statistics.median(infer):>8.2f} "
                  f"{statistics.median(results):>9.2f} {statistics.median(other):>8.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
