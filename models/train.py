"""Training of the registered model types (``pacs-node train``).

One run: prepare the data once, split it by study into training and validation, train with
the seed papers' recipe (weighted cross entropy, seed 000 eq. 1-2; class-balanced sampler,
seed 004 eq. 4.3; seed 000 §III augmentations), keep ``last.pt`` every epoch and ``best.pt``
at the best validation AUROC, and write ``summary.json``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from .augment import AugmentConfig, Augmenter
from .calibration import calibrate, scope_of
from .data import (
    LABEL_SETS,
    AugmentedStudies,
    AugmentedViews,
    PreparedSet,
    collate_batch,
    split_by_study,
    study_batch,
)
from .metrics import binary_metrics
from .registry import (
    SYNTHETIC_NOTICE,
    ModelMetadata,
    ModelTypeSpec,
    load_model,
    model_type_spec,
    save_checkpoint,
    set_domain_calibration,
)
from .sampling import balanced_sampler, class_weights
from .supervision import LossContext

__all__ = ["TrainConfig", "TrainResult", "bf16_is_fast", "seed_everything", "train"]

BALANCE_MODES = ("sampler", "weights", "both", "none")


@dataclass(frozen=True)
class TrainConfig:
    """A training recipe; every field ends up in the checkpoint metadata."""

    model_type: str = "global_pool"
    backbone: str = "resnet18"
    stages: int = 3
    pooling: str = "lse"
    lse_r: float = 10.0
    transition_channels: int = 256
    input_size: int = 256
    preprocess_mode: str = "pad"
    heuristic_inversion: bool = False
    label_set: str = "binary"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    balance: str = "sampler"
    val_fraction: float = 0.15
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    name: str = "global_pool"
    version: str = "0.1.0"
    synthetic_demo: bool = False
    threads: int | None = None
    # Processes that augment training batches (DataLoader workers); 0 augments in the training
    # process. Samples draw from (seed, epoch, index) alone, so any number trains the same.
    loader_workers: int = 0
    bf16: bool = False  # bfloat16 autocast (CPU with AVX512-BF16/AMX, or CUDA)
    # Start from the weights of an earlier run (same architecture; the input size may
    # differ: the network is fully convolutional), e.g. to fine-tune at a higher resolution.
    init_from: str | None = None
    # Stop after this many epochs of an ``epochs``-long schedule (the learning-rate schedule
    # still spans ``epochs``); None runs them all.
    stop_after: int | None = None
    # Parameter-name prefixes whose weights stay fixed (``--freeze features.0``): fine-tuning
    # on a CPU trains ~2x faster with the stem and first stage frozen, and frozen batch-norm
    # layers keep their running statistics (they stay in eval mode).
    freeze: tuple[str, ...] = ()
    # Share of held-out (validation) views the domain check lets pass; best.pt is calibrated
    # on the training split with the threshold from the validation split (models.domain).
    domain_pass_rate: float = 0.99
    # Options of the model type (``--option name=value``), read by its TrainingSpec through
    # ``LossContext.option`` and its ``architecture`` hook, e.g. STL's alpha or seed 003's r_l.
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from .registry import model_type_spec

        training = model_type_spec(self.model_type).training
        if training is None:
            raise ValueError(f"model type {self.model_type!r} has no training recipe")
        unknown = sorted(set(self.options) - set(training.options))
        if unknown:
            known = ", ".join(training.options) or "none"
            raise ValueError(f"model type {self.model_type!r} has no option(s) "
                             f"{', '.join(unknown)}; its options: {known}")
        if self.label_set not in LABEL_SETS:
            raise ValueError(f"label_set must be one of {sorted(LABEL_SETS)}")
        if self.balance not in BALANCE_MODES:
            raise ValueError(f"balance must be one of {BALANCE_MODES}, got {self.balance!r}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError("epochs and batch_size must be positive and lr > 0")
        if self.loader_workers < 0:
            raise ValueError(f"loader_workers must be >= 0, got {self.loader_workers}")
        if not 0.5 <= self.domain_pass_rate < 1.0:
            raise ValueError(f"domain_pass_rate must lie in [0.5, 1), got {self.domain_pass_rate}")
        if any(not prefix.strip() for prefix in self.freeze):
            raise ValueError("freeze prefixes must not be empty")


@dataclass
class TrainResult:
    best_checkpoint: Path
    last_checkpoint: Path
    summary: dict[str, Any]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _predict_scores(spec: ModelTypeSpec, network: nn.Module, data: PreparedSet,
                    device: torch.device, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities and labels of the validation views (or studies)."""
    network.eval()
    probs, labels = [], []
    with torch.inference_mode():
        if spec.training is not None and spec.training.study_level:
            assert spec.infer_study is not None, "a study-level type needs infer_study"
            uids = list(data.studies())
            for start in range(0, len(uids), batch_size):
                batch = study_batch(data, uids[start:start + batch_size]).to(device)
                assert batch.mask is not None
                probs.append(spec.infer_study(network, batch.images, batch.mask).float().cpu())
                labels.append(batch.labels.cpu())
        else:
            for start in range(0, len(data.labels), batch_size):
                images = data.images[start:start + batch_size].float().unsqueeze(1).to(device)
                probs.append(spec.infer(network, images)[0].float().cpu())
                labels.append(data.labels[start:start + batch_size])
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 autocast speeds training up on ``device`` rather than emulating it."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:  # private to torch; float32 is always a correct answer if it goes away
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def train(
    config: TrainConfig,
    data: PreparedSet,
    run_dir: Path,
    *,
    data_description: dict[str, Any],
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train on ``data`` (split by study into train/validation); checkpoints go to ``run_dir``."""
    seed_everything(config.seed)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with _deterministic(device):
        return _train(config, data, run_dir, device, data_description=data_description,
                      on_epoch=on_epoch, on_batch=on_batch)


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Seeded runs repeat on a GPU too: deterministic cuDNN kernels and, where torch has
    them, deterministic algorithms (measured on an H100 without this: losses of two runs
    differed by 3e-5 relative after one epoch). The cuDNN and algorithm settings come back
    after; CUBLAS_WORKSPACE_CONFIG, which cuBLAS reads once, stays set."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    # cuBLAS reads this when it starts; where it already has, torch warns instead of failing.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
        torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])


def _train(
    config: TrainConfig,
    data: PreparedSet,
    run_dir: Path,
    device: torch.device,
    *,
    data_description: dict[str, Any],
    on_epoch: Callable[[dict[str, Any]], None] | None,
    on_batch: Callable[[int, int], None] | None,
) -> TrainResult:
    if config.bf16 and not bf16_is_fast(device):
        # Emulated bfloat16 runs ~30x slower than float32 (measured on an AVX2-only EPYC:
        # 0.3 against 9.6 images/s): train in float32 and say so in the checkpoint.
        what = "GPU" if device.type == "cuda" else "CPU (no AVX512-BF16/AMX)"
        warnings.warn(f"this {what} has no native bfloat16: training in float32", stacklevel=2)
        config = dataclasses.replace(config, bf16=False)
    classes = LABEL_SETS[config.label_set]
    train_idx, val_idx = split_by_study(data.entries, config.val_fraction, config.seed)
    train_set, val_set = data.subset(train_idx), data.subset(val_idx)
    spec = model_type_spec(config.model_type)
    hooks = spec.training
    assert hooks is not None  # TrainConfig checks it
    augmenter = Augmenter(config.augment)
    views: AugmentedViews | AugmentedStudies
    if hooks.study_level:
        views = AugmentedStudies(train_set, augmenter=augmenter, seed=config.seed)
        labels = views.labels
    else:
        views = AugmentedViews(train_set, augmenter=augmenter, seed=config.seed)
        labels = train_set.labels.tolist()
    if len(set(labels)) < 2:
        raise ValueError("the training split holds a single class: nothing to learn")

    arch = hooks.architecture(config, len(classes))
    network = spec.build(**arch)
    earlier: dict[str, Any] | None = None
    if config.init_from is not None:
        earlier = _initialise_from(network, arch, Path(config.init_from))
    frozen = _freeze(network, config.freeze)
    # Channels-last runs the convolutions of a ResNet ~1.5x faster on a CPU (oneDNN) and on
    # tensor cores; the weights it saves are the same tensors.
    network.to(device)
    network.to(memory_format=torch.channels_last)
    use_weights = config.balance in ("weights", "both")
    weights = class_weights(labels, len(classes)) if use_weights else None
    groups = ([(list(network.parameters()), 1.0)] if hooks.param_groups is None
              else hooks.param_groups(network, config))
    groups = [([p for p in params if p.requires_grad], factor) for params, factor in groups]
    groups = [(params, factor) for params, factor in groups if params]
    _check_groups(network, groups)
    max_lrs = [config.lr * factor for _, factor in groups]
    optimizer = torch.optim.AdamW([{"params": p, "lr": lr} for (p, _), lr in
                                   zip(groups, max_lrs, strict=True)],
                                  lr=config.lr, weight_decay=config.weight_decay)
    g = torch.Generator().manual_seed(config.seed)
    batch_size = min(config.batch_size, len(views))
    # Workers restart every epoch (not persistent), so each one sees the epoch set below.
    loading: dict[str, Any] = {"batch_size": batch_size, "drop_last": True,
                               "collate_fn": collate_batch, "num_workers": config.loader_workers,
                               "pin_memory": device.type == "cuda"}
    if config.balance in ("sampler", "both"):
        sampler = balanced_sampler(labels, len(classes), generator=g)
        loader = DataLoader(views, sampler=sampler, **loading)
    else:
        loader = DataLoader(views, shuffle=True, generator=g, **loading)
    if len(loader) == 0:
        raise ValueError(
            f"an epoch would hold no full batch of {batch_size} (class-balanced sampling draws "
            "classes x the rarest class's count); lower --batch-size or add data")
    steps = config.epochs * len(loader)
    ctx = LossContext(config=config, num_classes=len(classes), epoch=0, epochs=config.epochs,
                      steps=steps,
                      class_weights=None if weights is None else weights.to(device))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lrs, total_steps=steps)

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    history: list[dict[str, Any]] = []
    best_score = -math.inf
    started = time.perf_counter()
    last_epoch = min(config.epochs, config.stop_after or config.epochs)
    for epoch in range(1, last_epoch + 1):
        views.set_epoch(epoch)
        ctx.epoch = epoch
        if hooks.on_epoch_start is not None:
            hooks.on_epoch_start(network, ctx, train_set)
        network.train()
        for module in frozen:
            module.eval()
        total, count = 0.0, 0
        for step, batch in enumerate(loader, start=1):
            batch = batch.to(device, non_blocking=True)
            if batch.images.dim() == 4:
                batch.images = batch.images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16):
                loss = hooks.loss(network, batch, ctx).float()
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training diverged at epoch {epoch}, step {step} (loss {float(loss)}); "
                    "lower --lr or drop --bf16")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            ctx.step += 1
            total += float(loss.detach()) * len(batch.labels)
            count += len(batch.labels)
            if on_batch is not None:
                on_batch(step, len(loader))
        record: dict[str, Any] = {"epoch": epoch, "train_loss": total / max(count, 1),
                                  "seconds": round(time.perf_counter() - started, 1)}
        if len(val_set.labels):
            probs, val_labels = _predict_scores(spec, network, val_set, device,
                                                config.batch_size)
            truth = (val_labels > 0).astype(int)
            val = binary_metrics(truth, 1.0 - probs[:, 0])
            record["val_auroc"] = val["auroc"]
            record["val_accuracy"] = val["accuracy"]
            score = val["auroc"] if not math.isnan(val["auroc"]) else -record["train_loss"]
        else:
            score = -record["train_loss"]
        history.append(record)
        metadata = _metadata(config, arch, classes, data_description, history,
                             len(train_idx), len(val_idx), earlier, device,
                             scope=scope_of(data.views))
        save_checkpoint(last_path, network, metadata)
        selectable = hooks.selectable is None or hooks.selectable(ctx)
        if selectable and score > best_score:
            best_score = score
            shutil.copyfile(last_path, best_path)
        elif best_score == -math.inf:  # a placeholder until a selectable epoch comes
            shutil.copyfile(last_path, best_path)
        if on_epoch is not None:
            on_epoch(record)

    domain = _calibrate_best(config, best_path, data)
    summary = {
        "domain": domain,
        "config": _config_dict(config),
        "data": data_description,
        "train_views": len(train_idx),
        "val_views": len(val_idx),
        "history": history,
        "best_val_score": best_score if best_score > -math.inf else None,
        "seconds": round(time.perf_counter() - started, 1),
        "device": str(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "checkpoints": {"best": str(best_path), "last": str(last_path)},
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return TrainResult(best_checkpoint=best_path, last_checkpoint=last_path, summary=summary)


def _freeze(network: nn.Module, prefixes: tuple[str, ...]) -> list[nn.Module]:
    """Fix the parameters under each name prefix; returns the frozen modules (kept in eval
    mode while training, so their batch-norm statistics stay as they were)."""
    modules = dict(network.named_modules())
    frozen = []
    for prefix in prefixes:
        if prefix not in modules:
            raise ValueError(f"--freeze {prefix}: no such module; top-level modules: "
                             f"{sorted(n for n in modules if n and '.' not in n)}")
        frozen.append(modules[prefix])
        for param in modules[prefix].parameters():
            param.requires_grad_(False)
    if frozen and not any(p.requires_grad for p in network.parameters()):
        raise ValueError("--freeze leaves no parameter to train")
    return frozen


def _calibrate_best(config: TrainConfig, best_path: Path, data: PreparedSet) -> dict[str, Any]:
    """Calibrate the domain check of ``best_path`` (statistics from the training split,
    threshold from the validation split); returns what the run summary records."""
    if not data.entries or config.val_fraction == 0:
        warnings.warn("no validation split: the checkpoint has no domain calibration "
                      "(run pacs-node calibrate)", stacklevel=3)
        return {"calibrated": False}
    model = load_model(best_path)
    stats = calibrate(model, data, pass_rate=config.domain_pass_rate,
                      val_fraction=config.val_fraction, seed=config.seed,
                      batch_size=config.batch_size)
    set_domain_calibration(best_path, stats)
    return {"calibrated": True, "threshold": stats.threshold, "pass_rate": stats.pass_rate,
            "fit_views": stats.fit_views, "threshold_views": stats.threshold_views,
            "layer": stats.layer}


def _check_groups(network: nn.Module, groups: list[tuple[list[nn.Parameter], float]]) -> None:
    seen = [id(p) for params, _ in groups for p in params]
    trainable = {id(p) for p in network.parameters() if p.requires_grad}
    if len(seen) != len(set(seen)) or set(seen) != trainable:
        raise ValueError("param_groups must list every trainable network parameter exactly "
                         "once")
    if any(not factor > 0 for _, factor in groups):
        raise ValueError("param_groups learning-rate factors must be positive")


def _initialise_from(network: nn.Module, arch: dict[str, Any], path: Path) -> dict[str, Any]:
    """Load the weights of ``path`` into ``network``; returns that checkpoint's training
    record, so a fine-tuned model carries the whole chain of data and recipes behind it."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob or "metadata" not in blob:
        raise ValueError(f"--init-from {path}: not a pacs-node checkpoint")
    earlier = blob["metadata"].get("architecture", {})
    if earlier != arch:
        raise ValueError(f"--init-from {path}: architecture {earlier} differs from {arch}")
    network.load_state_dict(blob["state_dict"])
    return dict(blob["metadata"].get("training") or {})


def _config_dict(config: TrainConfig) -> dict[str, Any]:
    data = dataclasses.asdict(config)
    data["augment"] = dataclasses.asdict(config.augment)
    return data


def _metadata(
    config: TrainConfig,
    arch: dict[str, Any],
    classes: tuple[str, ...],
    data_description: dict[str, Any],
    history: list[dict[str, Any]],
    n_train: int,
    n_val: int,
    earlier: dict[str, Any] | None = None,
    device: torch.device | None = None,
    *,
    scope: dict[str, list[str]] | None = None,
) -> ModelMetadata:
    training: dict[str, Any] = {
        "data": data_description,
        "recipe": _config_dict(config),
        "train_views": n_train,
        "val_views": n_val,
        "history": history,
        # Where it ran: GPU and CPU runs of one recipe agree closely, not bit for bit.
        "device": str(device) if device is not None else None,
        "torch": str(torch.__version__),  # a plain str: weights_only loading refuses TorchVersion
    }
    if earlier is not None:
        training["initialised_from"] = earlier
    return ModelMetadata(
        model_type=config.model_type,
        name=config.name,
        version=config.version,
        classes=classes,
        input_size=config.input_size,
        architecture=arch,
        # The corner heuristic (seed 004 §4.2.2.2) stays off: real CR/DX with white
        # collimation borders look "inverted" to it; the tag decides.
        preprocessing={"mode": config.preprocess_mode, "align": False,
                       "heuristic_inversion": config.heuristic_inversion},
        training=training,
        synthetic_demo=config.synthetic_demo,
        intended_use=SYNTHETIC_NOTICE if config.synthetic_demo else "research use",
        scope=scope or {},
    )
