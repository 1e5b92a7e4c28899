"""The ``pacs-node`` command line."""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

# Plain help: Typer's Rich help panel (typer 0.29) prints a type column for every option,
# `<bool>` after each flag and --help included; the plain formatter leaves flags bare.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="pacs-node: fracture detection beside your PACS.")
console = Console(stderr=True)


class Anatomy(StrEnum):
    hip = "hip"
    wrist = "wrist"
    mixed = "mixed"


class LabelSet(StrEnum):
    binary = "binary"
    ao = "ao"
    garden = "garden"


class AugmentPreset(StrEnum):
    seed000 = "seed000"
    mild = "mild"
    none = "none"


class Balance(StrEnum):
    sampler = "sampler"
    weights = "weights"
    both = "both"
    none = "none"


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeRemainingColumn(), console=console, transient=False,
    )


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=2)


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write the DICOM files and manifest.jsonl")],
    studies: Annotated[int, typer.Option(min=1, help="Number of studies")] = 50,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed gives the same files")] = 0,
    anatomy: Annotated[Anatomy, typer.Option(help="Anatomy of the phantoms")] = Anatomy.mixed,
    size: Annotated[int, typer.Option(min=64, max=4096, help="Image size in pixels")] = 512,
    workers: Annotated[int, typer.Option(min=1, help="Parallel processes")] = 1,
) -> None:
    """Write synthetic radiograph studies (DICOM) with a ground-truth manifest."""
    from models.synth import generate_dataset

    with _progress() as bar:
        task = bar.add_task("synthesising studies", total=studies)
        summary = generate_dataset(
            out, studies=studies, seed=seed, anatomy=anatomy.value, size=size, workers=workers,
            progress=lambda done, total: bar.update(task, completed=done, total=total),
        )
    console.print(f"wrote {summary.images} images in {summary.studies} studies to {out} "
                  f"(manifest: {summary.manifest})")


@app.command()
def train(
    out: Annotated[Path, typer.Option(help="Where to write the trained checkpoint")],
    model_type: Annotated[str, typer.Option(help="Model type to train")] = "global_pool",
    data: Annotated[Path | None, typer.Option(help="Data set folder (DICOM + manifest.jsonl)")]
    = None,
    synthetic: Annotated[bool, typer.Option(help="Train on freshly generated synthetic data")]
    = False,
    synthetic_studies: Annotated[int, typer.Option(min=2)] = 400,
    synthetic_artifacts: Annotated[bool, typer.Option(
        help="Draw the artifacts of real films into the synthetic studies")] = True,
    data_seed: Annotated[int, typer.Option(help="Seed of the synthetic training set")] = 1000,
    synthetic_workers: Annotated[int, typer.Option(
        min=1, help="Processes that write the synthetic set (same files for any number)")] = 1,
    data_workers: Annotated[int, typer.Option(
        min=1, help="Processes that preprocess and augment views (the same model for any "
        "number)")] = 1,
    run_dir: Annotated[Path | None, typer.Option(help="Checkpoints and summary.json")] = None,
    backbone: Annotated[str, typer.Option(help="resnet18 | resnet50 | densenet121")] = "resnet18",
    stages: Annotated[int, typer.Option(min=1, max=4, help="ResNet stages kept")] = 3,
    pooling: Annotated[str, typer.Option(help="avg | max | lse")] = "lse",
    lse_r: Annotated[float, typer.Option(help="LSE sharpness r")] = 10.0,
    input_size: Annotated[int, typer.Option(min=32)] = 256,
    label_set: Annotated[LabelSet, typer.Option()] = LabelSet.binary,
    balance: Annotated[Balance, typer.Option(help="Class balancing")] = Balance.sampler,
    augment: Annotated[AugmentPreset, typer.Option(help="Augmentation ranges")]
    = AugmentPreset.seed000,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option()] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of initialisation, sampling, augmentation")]
    = 0,
    bf16: Annotated[bool, typer.Option(
        help="bfloat16 autocast where the CPU/GPU runs it natively (else float32, with a warning)")]
    = False,
    init_from: Annotated[Path | None, typer.Option(help="Start from this checkpoint's weights")]
    = None,
    stop_after: Annotated[int | None, typer.Option(min=1, help="Stop after N epochs of the "
                                                   "--epochs schedule")] = None,
    demo: Annotated[bool, typer.Option(help="Mark the checkpoint as the synthetic demo")]
    = False,
    name: Annotated[str | None, typer.Option(help="Model name in the metadata")] = None,
    option: Annotated[list[str] | None, typer.Option(
        help="Model-type option NAME=VALUE (repeatable), e.g. --option alpha=0.1")] = None,
    domain_pass_rate: Annotated[float, typer.Option(
        min=0.5, max=0.999, help="Share of validation views the domain check lets pass")] = 0.99,
    freeze: Annotated[list[str] | None, typer.Option(
        help="Keep the weights under this module name fixed (repeatable), e.g. "
             "--freeze features.0")] = None,
) -> None:
    """Train a model and write a checkpoint that carries its metadata.

    Model types: global_pool, stl, stn, localize_classify, two_stage, window_fpn, mvcnn
    (the seed papers' methods; see README "Models").
    """
    import shutil

    from models.augment import AUGMENT_PRESETS
    from models.data import prepare_dataset
    from models.train import TrainConfig
    from models.train import train as run_training

    if (data is None) == (not synthetic):
        _fail("give exactly one of --data DIR or --synthetic")
    if demo and not synthetic:
        _fail("--demo weights must be trained on --synthetic data only")
    options: dict[str, str] = {}
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            _fail(f"--option must look like NAME=VALUE, got {item!r}")
        options[key.strip()] = value.strip()
    try:
        config = TrainConfig(
            model_type=model_type, backbone=backbone, stages=stages, pooling=pooling,
            lse_r=lse_r, input_size=input_size, label_set=label_set.value,
            balance=balance.value, augment=AUGMENT_PRESETS[augment.value], epochs=epochs,
            batch_size=batch_size, lr=lr, seed=seed, bf16=bf16,
            loader_workers=data_workers - 1 if data_workers > 1 else 0,
            init_from=str(init_from) if init_from else None, stop_after=stop_after,
            name=name or ("demo_global_pool" if demo else model_type),
            synthetic_demo=demo or synthetic, options=options,
            freeze=tuple(freeze or ()), domain_pass_rate=domain_pass_rate,
        )
    except ValueError as exc:
        _fail(str(exc))
        return
    run_dir = run_dir or Path("runs") / f"{model_type}-seed{seed}"
    if synthetic:
        from models.synth import generate_dataset

        data = run_dir / (f"synthetic-seed{data_seed}-n{synthetic_studies}"
                          + ("" if synthetic_artifacts else "-clean"))
        if not (data / "manifest.jsonl").is_file():
            with _progress() as bar:
                task = bar.add_task("synthesising training studies", total=synthetic_studies)
                generate_dataset(data, studies=synthetic_studies, seed=data_seed,
                                 workers=synthetic_workers, artifacts=synthetic_artifacts,
                                 progress=lambda d, t: bar.update(task, completed=d, total=t))
        description = {"kind": "synthetic", "generator": "models.synth", "seed": data_seed,
                       "studies": synthetic_studies, "artifacts": synthetic_artifacts}
    else:
        description = {"kind": "folder", "path": str(data)}
    if data is None:  # unreachable: checked above; keeps the type checker informed
        _fail("no data set")
        return
    with _progress() as bar:
        task = bar.add_task("preprocessing views", total=None)
        prepared = prepare_dataset(
            data, size=input_size, label_set=label_set.value, workers=data_workers,
            progress=lambda d, t: bar.update(task, completed=d, total=t),
        )
    description["views"] = len(prepared.labels)
    console.print(f"{len(prepared.labels)} views, {int((prepared.labels > 0).sum())} positive")

    with _progress() as bar:
        task = bar.add_task("epoch 1", total=None)

        def on_batch(step: int, total: int) -> None:
            bar.update(task, completed=step, total=total)

        def on_epoch(record: dict[str, Any]) -> None:
            shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                              for k, v in record.items())
            bar.console.print(shown)
            bar.update(task, description=f"epoch {int(record['epoch']) + 1}", completed=0)

        try:
            result = run_training(config, prepared, run_dir, data_description=description,
                                  on_epoch=on_epoch, on_batch=on_batch)
        except ValueError as exc:  # bad data or options for this model type
            _fail(str(exc))
            return
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(result.best_checkpoint, out)
    console.print(f"best checkpoint -> {out}; run summary -> {run_dir / 'summary.json'}")


@app.command()
def evaluate(
    weights: Annotated[Path, typer.Option(help="Checkpoint to evaluate")],
    data: Annotated[Path, typer.Option(help="Data set folder (DICOM + manifest.jsonl)")],
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON")] = False,
    predictions_out: Annotated[Path | None, typer.Option(help="One JSON line per image")] = None,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    max_findings: Annotated[int, typer.Option(
        min=0, help="Findings reported per positive view (as pipeline.max_findings)")] = 3,
) -> None:
    """Evaluate a checkpoint with the seed papers' metrics.

    Headline figures are over the views that pass the model's domain check (the views the
    node would analyse); the report also gives the pass rate, the figures over all views,
    and how many negative views get a reported finding on a generator artifact.
    """
    from models.evaluate import evaluate as run_evaluation
    from models.registry import load_model

    try:
        model = load_model(weights)
    except (FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        return
    with _progress() as bar:
        task = bar.add_task("evaluating views", total=None)
        report = run_evaluation(
            model, data, predictions_out=predictions_out, batch_size=batch_size,
            max_findings=max_findings, progress=lambda d, t: bar.update(task, completed=d, total=t),
        )
    if json_out:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return
    d = report["domain"]
    if d["calibrated"]:
        console.print(f"domain check: {d['passed']} of {d['views']} views pass "
                      f"({100 * d['pass_rate']:.1f}%)")
    else:
        console.print("[yellow]the model has no domain calibration: every view counted[/yellow]")
    if "binary" not in report:
        _fail("no view passed the domain check: nothing to score")
        return
    b = report["binary"]
    console.print(f"[bold]{report['model']['name']}[/bold] {report['model']['version']} "
                  f"on {report['views']} views ({report['positives']} positive)")
    console.print(f"AUROC {b['auroc']:.4f}  S@R95 {b['s_at_r95']:.4f}  R@S95 {b['r_at_s95']:.4f}"
                  f"  P@R95 {b['p_at_r95']:.4f}  F1 {b['f1']:.4f}")
    if "froc" in report:
        f = report["froc"]
        console.print(f"FROC score {f['froc_score']:.4f}  Recall@0.1FP {f['recall_at_0.1fp']:.4f}")
    if "localization" in report:
        console.print(f"box mAP {report['localization']['map']:.4f}  CAM peak in box "
                      f"{report['cam_peak_in_box']['rate']:.4f}")
    a = report["artifact_findings"]
    if a["negative_views"]:
        console.print(f"negative views with a finding on an artifact: "
                      f"{a['views_with_finding_on_artifact']} of {a['negative_views']} "
                      f"({100 * a['rate']:.1f}%) {a['by_kind'] or ''}")
    if "all_views" in report:
        console.print(f"all {report['all_views']['views']} views, domain check ignored: "
                      f"AUROC {report['all_views']['binary']['auroc']:.4f}")
    if report["model"]["notice"]:
        console.print(f"[yellow]{report['model']['notice']}[/yellow]")


@app.command()
def calibrate(
    weights: Annotated[Path, typer.Option(help="Checkpoint to calibrate (rewritten in place)")],
    data: Annotated[Path, typer.Option(
        help="In-domain data set folder (DICOM + manifest.jsonl), e.g. the training data")],
    pass_rate: Annotated[float, typer.Option(
        min=0.5, max=0.999, help="Share of held-out in-domain views that must pass")] = 0.99,
    workers: Annotated[int, typer.Option(min=1, help="Preprocessing processes")] = 1,
) -> None:
    """Add the domain check's statistics and threshold to a checkpoint.

    The statistics come from the data set's training-side studies and the threshold from
    its held-out studies (the checkpoint's own train/validation split), so that PASS_RATE
    of new in-domain views pass. A checkpoint without a scope gets the data set's.
    """
    from models.calibration import calibrate_checkpoint

    if not (data / "manifest.jsonl").is_file():
        _fail(f"{data}: no manifest.jsonl (a data set written by pacs-node synth)")
    with _progress() as bar:
        tasks: dict[str, Any] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        try:
            stats, scope = calibrate_checkpoint(weights, data, pass_rate=pass_rate,
                                                workers=workers, progress=progress)
        except (FileNotFoundError, ValueError) as exc:
            _fail(str(exc))
            return
    console.print(f"domain check of {weights}: threshold {stats.threshold:.2f} "
                  f"({100 * stats.pass_rate:g}% of {stats.threshold_views} held-out views pass; "
                  f"statistics from {stats.fit_views} views, layer {stats.layer})")
    console.print(f"scope: body parts {', '.join(scope.get('body_parts', [])) or 'none'}; "
                  f"views {', '.join(scope.get('view_positions', [])) or 'any'}")


ConfigOption = Annotated[Path, typer.Option("--config", help="Configuration file (YAML)")]


def _settings(config: Path):  # type: ignore[no-untyped-def]
    from .config import ConfigError, load_settings

    try:
        return load_settings(config)
    except ConfigError as exc:
        _fail(str(exc))


def _logging(level: str) -> None:
    import logging

    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _record_metrics(settings: Any, *, clean: bool) -> None:
    """Record metrics into ``metrics.multiprocess_dir``, shared with the other processes
    of this host (:func:`workers.metrics.use_multiprocess_dir`); before anything imports
    prometheus-client."""
    from workers.metrics import use_multiprocess_dir

    folder = settings.metrics.multiprocess_dir
    try:
        use_multiprocess_dir(folder, clean=clean)
    except OSError as exc:
        _fail(f"metrics.multiprocess_dir {folder} cannot be used: {exc.strerror}")


@app.command()
def serve(
    config: ConfigOption = Path("config.yaml"),
    log_level: Annotated[str, typer.Option(help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Run the node: DICOM listener, study tracker, delivery (and the jobs, when embedded)."""
    import signal
    import threading

    settings = _settings(config)
    _logging(log_level)
    _record_metrics(settings, clean=True)

    from .node import Node, NodeStartError

    node = Node(settings)
    try:
        node.start()
    except NodeStartError as exc:
        node.stop()
        _fail(str(exc))
    console.print(f"pacs-node {settings.node.ae_title} listening on "
                  f"{settings.node.dimse_host}:{settings.node.dimse_port} "
                  f"({'embedded jobs' if node.embedded else settings.queue.broker_url}); "
                  "Ctrl-C stops it")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    console.print("stopping...")
    node.stop()


@app.command()
def worker(
    config: ConfigOption = Path("config.yaml"),
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes")] = 1,
    log_level: Annotated[str, typer.Option()] = "INFO",
) -> None:
    """Run a Celery worker for study jobs (production: queue.broker_url is redis://...)."""
    settings = _settings(config)
    if settings.queue.broker_url.startswith("memory://"):
        _fail("queue.broker_url is memory:// (embedded): `pacs-node serve` runs the jobs "
              "itself; set a redis:// broker to use separate workers")
    _logging(log_level)
    _record_metrics(settings, clean=False)

    from workers.celery_app import create_celery_app

    from .node import NodeStartError, open_storage, pipeline_factory

    try:
        storage = open_storage(settings, clean=False)
    except NodeStartError as exc:
        _fail(str(exc))
    celery_app = create_celery_app(settings.queue.broker_url,
                                   pipeline_factory=pipeline_factory(settings, storage),
                                   max_attempts=settings.queue.max_attempts,
                                   lease_seconds=settings.queue.lease_seconds)
    pool = ["--pool=solo"] if concurrency == 1 else ["--pool=prefork", f"-c{concurrency}"]
    from workers.dispatch import QUEUES

    queues = ",".join(QUEUES[lane] for lane in sorted(QUEUES))  # most urgent first
    celery_app.worker_main(["worker", f"--loglevel={log_level.upper()}", "-Q", queues, *pool])


@app.command()
def studies(
    config: ConfigOption = Path("config.yaml"),
    limit: Annotated[int, typer.Option(min=1)] = 50,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON lines")] = False,
) -> None:
    """List studies with their job state and study-level result, newest first."""
    from rich.table import Table

    from storage import StudyRepository

    from .index import NodeStartError, open_storage

    settings = _settings(config)
    try:
        storage = open_storage(settings, clean=False)
    except NodeStartError as exc:
        _fail(str(exc))
    with storage.sessions() as session:
        rows = StudyRepository(session).list_with_latest(limit)
    storage.engine.dispose()
    if json_out:
        for r in rows:
            sys.stdout.write(json.dumps(_study_json(r)) + "\n")
        return
    table = Table("Study Instance UID", "date", "images", "state", "job", "priority",
                  "result")
    for r in rows:
        table.add_row(r.study_instance_uid, r.study_date, str(r.images), r.state,
                      _job_text(r), r.triage_priority or "-", _result_text(r))
    # A UID is never cut: studies that differ only in their last digits must look different.
    table.columns[0].overflow = "fold"
    table.columns[6].overflow = "fold"
    Console().print(table)


def _study_json(r: Any) -> dict[str, Any]:
    """One line of ``pacs-node studies --json`` (README "Listing studies")."""
    return {
        "study_instance_uid": r.study_instance_uid, "study_date": r.study_date,
        "images": r.images, "state": r.state, "job_id": r.job_id, "job_state": r.job_state,
        "attempts": r.job_attempts, "failures": r.job_failures,
        "interruptions": r.job_interruptions,
        "result": r.result, "triage_priority": r.triage_priority,
        "reason": r.job_error if r.result == "failed" else r.reason,
        "views_analysed": r.views_analysed, "views_total": r.views_total,
        # A probability only where the node analysed the study.
        **({"fracture_probability": r.fracture_probability}
           if r.result in ("positive", "negative") else {}),
    }


def _job_text(r: Any) -> str:
    if not r.job_state:
        return "-"
    text = f"{r.job_state} (run {r.job_attempts}"
    if r.job_failures:
        text += f", {r.job_failures} failed"
    if r.job_interruptions:
        text += f", {r.job_interruptions} interrupted"
    return text + ")"


def _result_text(r: Any) -> str:
    """One study's result as ``pacs-node studies`` shows it, in the node's vocabulary."""
    result = r.result
    if result == "pending":
        return "-"
    if result == "failed":
        return f"failed: {r.job_error or 'no reason recorded'} (pacs-node rerun)"
    if result == "not_analysed":
        return f"not analysed: {r.reason}"
    verdict = "positive: fracture suspected" if result == "positive" \
        else "negative: no fracture detected"
    text = f"{verdict} (p={r.fracture_probability:.2f})"
    if r.views_total and r.views_analysed < r.views_total:
        text += f"; {r.views_analysed} of {r.views_total} views analysed ({r.reason})"
    return text


@app.command()
def rerun(
    study_uids: Annotated[list[str] | None, typer.Argument(
        help="Study Instance UIDs to process again", show_default=False)] = None,
    failed: Annotated[bool, typer.Option(
        "--failed", help="Every study whose current job failed")] = False,
    config: ConfigOption = Path("config.yaml"),
) -> None:
    """Queue studies for processing again (a new job; the running node picks it up within
    queue.reconcile_interval_seconds). The new result replaces the current one."""
    from storage import StudyRepository, run_write, validate_uid

    from .index import NodeStartError, open_storage

    uids = list(study_uids or [])
    if not uids and not failed:
        _fail("name one or more Study Instance UIDs, or --failed")
    for uid in uids:
        try:
            validate_uid(uid, "StudyInstanceUID")
        except ValueError as exc:
            _fail(str(exc))
    settings = _settings(config)
    try:
        storage = open_storage(settings, clean=False)
    except NodeStartError as exc:
        _fail(str(exc))

    def work(session: Any) -> tuple[list[str], list[str]]:
        repo = StudyRepository(session)
        targets = list(repo.failed()) if failed else []
        missing = []
        for uid in uids:
            study = repo.get(uid)
            if study is None:
                missing.append(uid)
            elif study not in targets:
                targets.append(study)
        queued = []
        for study in targets:
            repo.rerun(study, max_attempts=settings.queue.max_attempts,
                       max_interruptions=settings.queue.max_interruptions)
            queued.append(study.study_instance_uid)
        return queued, missing

    queued, missing = run_write(storage.sessions, work)
    storage.engine.dispose()
    for uid in queued:
        console.print(f"queued {uid}")
    if not queued and failed and not uids:
        console.print("no failed study")
    if missing:
        _fail(f"not held by this node: {', '.join(missing)}")


token_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="HTTP API tokens (used when http.auth is on).")
app.add_typer(token_app, name="token")


def _storage_for(config: Path):  # type: ignore[no-untyped-def]
    from .index import NodeStartError, open_storage

    settings = _settings(config)
    try:
        return open_storage(settings, clean=False)  # beside a running node: its temp files
    except NodeStartError as exc:
        _fail(str(exc))


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who or what uses it, e.g. ohif")],
    role: Annotated[str, typer.Option(help="reader (QIDO/WADO), writer (STOW) or admin")],
    config: ConfigOption = Path("config.yaml"),
) -> None:
    """Create a token and print it once (only its hash is kept: copy it now)."""
    from storage import TokenRepository, TokenRole, run_write

    if role not in {r.value for r in TokenRole}:
        _fail(f"--role must be reader, writer or admin, got {role!r}")
    storage = _storage_for(config)
    try:
        token = run_write(storage.sessions,
                          lambda session: TokenRepository(session).create(name, role))
    except ValueError as exc:
        _fail(str(exc))
    finally:
        storage.engine.dispose()
    console.print(f"token {name!r} ({role}) created; it is shown only now:")
    sys.stdout.write(token + "\n")


@token_app.command("list")
def token_list(config: ConfigOption = Path("config.yaml")) -> None:
    """List tokens: name, role, created, last used, revoked (never the tokens)."""
    from rich.table import Table

    from storage import TokenRepository

    storage = _storage_for(config)
    with storage.sessions() as session:
        tokens = TokenRepository(session).list()
    storage.engine.dispose()
    table = Table("name", "role", "created", "last used", "revoked")

    def when(moment: Any) -> str:
        return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else ""

    for t in tokens:
        table.add_row(t.name, t.role.value, when(t.created_at), when(t.last_used_at),
                      when(t.revoked_at))
    Console().print(table)


@token_app.command("revoke")
def token_revoke(name: Annotated[str, typer.Argument(help="The token's name")],
                 config: ConfigOption = Path("config.yaml")) -> None:
    """Revoke a token: requests carrying it get 401 from now on."""
    from storage import StorageError, TokenRepository, run_write

    storage = _storage_for(config)
    try:
        run_write(storage.sessions, lambda session: TokenRepository(session).revoke(name))
    except StorageError as exc:
        _fail(str(exc))
    finally:
        storage.engine.dispose()
    console.print(f"token {name!r} revoked")


remote_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                          help="Remote archives (config remotes): check what they answer.")
app.add_typer(remote_app, name="remote")


def _dimse(client: Any) -> Any:
    """The remote's DIMSE client (None only for a DICOMweb remote, which never gets here)."""
    assert client is not None
    return client


@remote_app.command("test")
def remote_test(name: Annotated[str, typer.Argument(help="A remote's name in the config")],
                config: ConfigOption = Path("config.yaml")) -> None:
    """C-ECHO the remote, C-FIND one instance it holds, and retrieve that instance the way
    the remote is configured to (C-MOVE to this node's AE title: `pacs-node serve` must be
    running and the remote must know it; or C-GET into this node's store). One verdict a
    line; the exit status is 1 when any step failed."""
    import time

    from storage import InstanceRepository

    from .archive import ArchiveClient, ArchiveError, DicomwebArchive
    from .receive import Receiver
    from .tls import destination_contexts

    settings = _settings(config)
    remote = next((r for r in settings.remotes if r.name == name), None)
    if remote is None:
        _fail(f"no remote named {name!r} in {config} (remotes: "
              f"{', '.join(r.name for r in settings.remotes) or 'none'})")
    assert remote is not None
    contexts = destination_contexts([remote], section="remotes") if remote.tls.enabled else {}
    web = (DicomwebArchive(remote.url, token=remote.token, name=remote.name)
           if remote.retrieve == "dicomweb" and remote.url else None)
    client = None if web is not None else ArchiveClient(
        remote, calling_ae=settings.node.ae_title, tls_context=contexts.get(remote.name))
    failed = False
    out = Console()  # the verdicts are the command's output: stdout

    def verdict(step: str, ok: bool, text: str) -> None:
        nonlocal failed
        failed |= not ok
        out.print(f"{step}: {'[green]ok[/green]' if ok else '[red]FAILED[/red]'}: {text}",
                  highlight=False, soft_wrap=True)

    find = "QIDO-RS" if web is not None else "C-FIND"
    if client is not None:
        try:
            client.echo()
            verdict("C-ECHO", True, f"{remote.ae_title}@{remote.host}:{remote.port} answers")
        except ArchiveError as exc:
            verdict("C-ECHO", False, str(exc))
            raise typer.Exit(1) from None
    try:
        found = web.first_instance() if web is not None else _dimse(client).first_instance()
    except ArchiveError as exc:
        verdict(find, False, str(exc))
        raise typer.Exit(1) from None
    if found is None:
        verdict(find, False, "the archive answered no instance (is it empty?)")
        raise typer.Exit(1)
    verdict(find, True, f"one instance found: {found[2]} (study {found[0]})")
    storage = _storage_for(config)
    step = "WADO-RS" if web is not None else remote.retrieve.upper()
    try:
        receiver = Receiver(storage.store, storage.sessions)
        if web is not None:
            counts = web.retrieve_instance(found, receiver)
        elif remote.retrieve == "c-get":
            counts = _dimse(client).get_instance(found, receiver)
        else:
            counts = _dimse(client).move_instance(found)
        where = (f"to {settings.node.ae_title}" if remote.retrieve == "c-move"
                 else "into this node's store")
        verdict(step, True, f"the remote sent {counts.completed} instance(s) {where}")
        deadline = time.monotonic() + 15
        while True:
            with storage.sessions() as session:
                held = InstanceRepository(session).get(found[2]) is not None
            if held or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        verdict("stored", held, "the instance is in this node's index" if held else
                f"the instance did not arrive: is `pacs-node serve` running, and does "
                f"{remote.ae_title} know {settings.node.ae_title} at "
                f"{settings.node.dimse_host}:{settings.node.dimse_port}?")
    except ArchiveError as exc:
        verdict(step, False, str(exc))
    finally:
        storage.engine.dispose()
    if failed:
        raise typer.Exit(1)


batch_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                         help="Re-processing batches: studies from a remote archive or the "
                              "node's own index, run below live traffic.")
app.add_typer(batch_app, name="batch")
BatchId = Annotated[int, typer.Argument(help="The batch's number (pacs-node batch list)")]


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"[:64]
    except Exception:  # noqa: BLE001 - no user name (a container): still say where from
        return "cli"


def _batch_call(config: Path, action: Any) -> Any:
    """Run ``action(settings, sessions)`` on the index; BatchError and NotFound are the
    user's errors (exit 2, the message)."""
    from storage import NotFound

    from .batches import BatchError

    settings = _settings(config)
    storage = _storage_for(config)
    try:
        return action(settings, storage.sessions)
    except (BatchError, NotFound) as exc:
        _fail(str(exc))
    finally:
        storage.engine.dispose()


@batch_app.command("create")
def batch_create(
    remote: Annotated[str | None, typer.Option(help="Pull the studies from this remote "
                                                    "(config remotes)")] = None,
    local: Annotated[bool, typer.Option("--local", help="Re-run studies the node holds")] = False,
    accessions: Annotated[Path | None, typer.Option(
        help="File of accession numbers: one per line, or CSV with an accession column")] = None,
    date_from: Annotated[str, typer.Option("--from", help="StudyDate from (YYYYMMDD)")] = "",
    date_to: Annotated[str, typer.Option("--to", help="StudyDate to (YYYYMMDD)")] = "",
    modality: Annotated[list[str] | None, typer.Option(
        help="Modality in study, repeatable (e.g. --modality CR --modality DX)")] = None,
    body_part: Annotated[str | None, typer.Option(help="Body Part Examined, e.g. WRIST")] = None,
    model: Annotated[str | None, typer.Option(
        help="A route's name, 'demo' or a checkpoint path (default: the configured routes)")
    ] = None,
    deliver: Annotated[str, typer.Option(
        help="none (default: results stay on the node), destinations, or folder:PATH")
    ] = "none",
    skip_done: Annotated[bool, typer.Option(
        "--skip-done", help="Skip studies whose current result is by the same model version")
    ] = False,
    max_retrieves: Annotated[int | None, typer.Option(
        min=1, max=32, help="Concurrent retrieves (default batch.max_retrieves)")] = None,
    window: Annotated[str | None, typer.Option(
        help="Off-peak window HH:MM-HH:MM in local time, e.g. 20:00-06:00: waits outside it")
    ] = None,
    name: Annotated[str, typer.Option(help="A label for the batch")] = "",
    config: ConfigOption = Path("config.yaml"),
) -> None:
    """Create a batch; `pacs-node serve` runs it. Prints the batch's number."""
    from .batches import BatchSpec, create_batch, read_accessions

    if (remote is None) == (not local):
        _fail("give either --remote NAME or --local")
    numbers: list[str] = []
    if accessions is not None:
        try:
            text = accessions.read_text(encoding="utf-8-sig", errors="strict")
        except (OSError, UnicodeDecodeError) as exc:
            _fail(f"--accessions {accessions}: cannot read it ({exc})")
        numbers = _batch_call(config, lambda *_: read_accessions(text))
    spec = BatchSpec(remote=remote, accessions=tuple(numbers), date_from=date_from,
                     date_to=date_to, modalities=tuple(modality or ()), body_part=body_part,
                     model=model, deliver=deliver, skip_done=skip_done,
                     max_retrieves=max_retrieves, window=window, name=name)
    batch_id = _batch_call(config, lambda settings, sessions: create_batch(
        settings, sessions, spec, actor=_actor()))
    console.print(f"batch {batch_id} created; `pacs-node batch show {batch_id} --follow` "
                  "shows its progress (pacs-node serve runs it)")
    sys.stdout.write(f"{batch_id}\n")


def _eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes = int(seconds // 60)
    if minutes >= 60:
        return f"{minutes // 60}h{minutes % 60:02d}m"
    return f"{minutes}m{int(seconds % 60):02d}s"


@batch_app.command("list")
def batch_list(config: ConfigOption = Path("config.yaml"),
               json_out: Annotated[bool, typer.Option("--json", help="JSON lines")] = False
               ) -> None:
    """Recent batches with their progress."""
    from rich.table import Table

    from storage import BatchRepository

    from .batches import progress

    def collect(_settings: Any, sessions: Any) -> list[Any]:
        with sessions() as session:
            return [progress(session, b.id) for b in BatchRepository(session).recent(100)]

    rows = _batch_call(config, collect)
    if json_out:
        for p in rows:
            sys.stdout.write(json.dumps(_progress_json(p)) + "\n")
        return
    table = Table("batch", "name", "from", "model", "deliver", "state", "done", "skipped",
                  "failed", "total", "ETA")
    for p in rows:
        b, c = p.batch, p.counts
        table.add_row(str(b["id"]), b["name"], b["remote"] or "local", b["models"],
                      b["deliver"], b["state"], str(c["done"]), str(c["skipped"]),
                      str(c["failed"]), str(p.total), _eta(p.eta_seconds))
    Console().print(table)


def _progress_json(p: Any) -> dict[str, Any]:
    return {**p.batch, "counts": p.counts, "total": p.total, "finished": p.finished,
            "per_hour": p.per_hour, "eta_seconds": p.eta_seconds,
            "window_open": p.window_open, **({"items": p.items} if p.items else {})}


@batch_app.command("show")
def batch_show(batch_id: BatchId, config: ConfigOption = Path("config.yaml"),
               follow: Annotated[bool, typer.Option(
                   "--follow", help="Draw a progress bar until the batch ends")] = False,
               items: Annotated[bool, typer.Option("--items", help="List every study")] = False,
               json_out: Annotated[bool, typer.Option("--json", help="Print JSON")] = False
               ) -> None:
    """A batch's state, counts per item state and ETA; --follow until it ends."""
    import time

    from rich.table import Table

    from .batches import progress

    def read(_settings: Any, sessions: Any) -> Any:
        with sessions() as session:
            return progress(session, batch_id, with_items=items)

    final = ("done", "cancelled", "failed")
    if follow:
        settings = _settings(config)
        storage = _storage_for(config)
        try:
            with _progress() as bar:
                task = bar.add_task(f"batch {batch_id}", total=None)
                while True:
                    with storage.sessions() as session:
                        p = progress(session, batch_id)
                    c = p.counts
                    bar.update(task, total=p.total or None, completed=p.finished,
                               description=f"batch {batch_id} {p.batch['state']}: "
                                           f"{c['done']} done, {c['skipped']} skipped, "
                                           f"{c['failed']} failed, "
                                           f"{c['retrieving'] + c['querying']} retrieving, "
                                           f"{c['settled'] + c['processing']} processing")
                    if p.batch["state"] in final:
                        break
                    time.sleep(max(0.5, settings.batch.tick_seconds))
        except KeyboardInterrupt:
            pass
        finally:
            storage.engine.dispose()
    p = _batch_call(config, read)
    if json_out:
        sys.stdout.write(json.dumps(_progress_json(p)) + "\n")
        return
    b = p.batch
    out = Console()
    out.print(f"batch {b['id']} {b['name']}: {b['state']}"
              + (f" ({b['reason']})" if b["reason"] else ""), highlight=False)
    out.print(f"from {b['remote'] or 'the node'} {json.dumps(b['criteria'])}; models "
              f"{b['models']}; deliver {b['deliver']}"
              + ("; skip done" if b["skip_done"] else "")
              + (f"; window {b['window']}" + ("" if p.window_open else " (closed now)")
                 if b["window"] else ""), highlight=False)
    out.print(" ".join(f"{k} {v}" for k, v in p.counts.items() if v) or "no study",
              highlight=False)
    out.print(f"{p.finished} of {p.total} finished; ETA {_eta(p.eta_seconds)}"
              + (f" ({p.per_hour:.0f} studies/h)" if p.per_hour else ""), highlight=False)
    if items:
        table = Table("item", "Study Instance UID", "accession", "state", "job", "why")
        for i in p.items:
            table.add_row(str(i["id"]), i["study_instance_uid"] or "-", i["accession_number"],
                          i["state"], str(i["job_id"] or "-"), i["reason"] or "")
        table.columns[1].overflow = "fold"
        out.print(table)
    if b["state"] == "failed" or (follow and p.counts["failed"]):
        raise typer.Exit(1)


def _batch_action(verb: str) -> Any:
    name = {"pause": "pause_batch", "resume": "resume_batch", "cancel": "cancel_batch",
            "retry-failed": "retry_failed"}[verb]

    def command(batch_id: BatchId, config: ConfigOption = Path("config.yaml")) -> None:
        # Imported here, not when the command is registered: pacs_node.batches pulls in the
        # pipeline and torch, which every other pacs-node command would pay for (1.5 s).
        from . import batches

        action = getattr(batches, name)
        result = _batch_call(config, lambda _s, sessions: action(sessions, batch_id,
                                                                 actor=_actor()))
        extra = f" ({result} studies)" if isinstance(result, int) else ""
        console.print(f"batch {batch_id}: {verb} done{extra}")

    command.__doc__ = {
        "pause": "Pause a batch: no new retrieve or job starts; running jobs finish.",
        "resume": "Resume a paused batch.",
        "cancel": "Cancel a batch: studies not yet retrieved are skipped; queued jobs finish.",
        "retry-failed": "Start a batch's failed studies again (after the archive is back)."}[verb]
    return command


for _verb in ("pause", "resume", "cancel", "retry-failed"):
    batch_app.command(_verb)(_batch_action(_verb))


@batch_app.command("export")
def batch_export(batch_id: BatchId,
                 csv_path: Annotated[Path | None, typer.Option(
                     "--csv", help="Write CSV here ('-': standard output)")] = None,
                 jsonl_path: Annotated[Path | None, typer.Option(
                     "--jsonl", help="Write JSON lines here ('-': standard output)")] = None,
                 config: ConfigOption = Path("config.yaml")) -> None:
    """Per study: accession, state, result, probability (only where analysed), triage
    priority, findings per view, model version."""
    from .batches import export_batch

    if (csv_path is None) == (jsonl_path is None):
        _fail("give one of --csv PATH or --jsonl PATH")
    fmt, path = ("csv", csv_path) if csv_path is not None else ("jsonl", jsonl_path)
    assert path is not None

    def write(_settings: Any, sessions: Any) -> int:
        with sessions() as session:
            if str(path) == "-":
                return export_batch(session, batch_id, sys.stdout, fmt)
            temp = path.with_name(f".{path.name}.tmp")
            with open(temp, "w", encoding="utf-8", newline="") as out:
                count = export_batch(session, batch_id, out, fmt)
            temp.replace(path)
            return count

    try:
        count = _batch_call(config, write)
    except OSError as exc:
        _fail(f"cannot write {path}: {exc.strerror}")
    console.print(f"batch {batch_id}: {count} studies written to "
                  f"{'standard output' if str(path) == '-' else path}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
