"""Training, the checkpoint/registry contract and `evaluate`, on small synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score, roc_curve
from typer.testing import CliRunner

from models.augment import AugmentConfig
from models.data import prepare_dataset, read_manifest
from models.nets import GlobalPoolClassifier
from models.preprocess import normalise_body_part
from models.registry import ModelMetadata, load_model, save_checkpoint
from models.synth import generate_dataset
from models.train import TrainConfig, seed_everything, train
from pacs_node.cli import app

SIZE = 96  # model input: small enough for seconds on a CPU


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, studies=10, seed=11, anatomy="mixed", size=160)
    return root


@pytest.fixture(scope="module")
def tiny_run(dataset: Path, tmp_path_factory: pytest.TempPathFactory):
    config = TrainConfig(stages=1, transition_channels=16, input_size=SIZE, epochs=2,
                         batch_size=4, val_fraction=0.3, seed=5, synthetic_demo=True,
                         augment=AugmentConfig(p_scale=0.3, p_rotate=0.3, p_translate=0.3))
    data = prepare_dataset(dataset, size=SIZE)
    run_dir = tmp_path_factory.mktemp("run")
    return train(config, data, run_dir, data_description={"kind": "synthetic", "seed": 11})


def test_optimisation_steps_lower_the_loss_on_a_fixed_batch(dataset: Path) -> None:
    seed_everything(0)
    data = prepare_dataset(dataset, size=SIZE)
    images = data.images[:8].float().unsqueeze(1)
    labels = data.labels[:8]
    net = GlobalPoolClassifier(stages=1, transition_channels=16)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for _ in range(8):
        loss = loss_fn(net(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_training_writes_checkpoints_and_summary(tiny_run) -> None:
    summary = tiny_run.summary
    assert tiny_run.best_checkpoint.is_file() and tiny_run.last_checkpoint.is_file()
    saved = json.loads((tiny_run.best_checkpoint.parent / "summary.json").read_text())
    assert saved["history"] == summary["history"]
    assert [h["epoch"] for h in summary["history"]] == [1, 2]
    assert summary["train_views"] + summary["val_views"] > 0


def _losses_of_a_second_run(dataset: Path, tiny_run, tmp_path: Path, **overrides
                            ) -> tuple[list[float], list[float]]:
    """Train again with ``tiny_run``'s recipe (plus ``overrides``): both runs' losses."""
    recipe = tiny_run.summary["config"]
    config = TrainConfig(**{**recipe, **overrides, "augment": AugmentConfig(**recipe["augment"])})
    data = prepare_dataset(dataset, size=SIZE)
    again = train(config, data, tmp_path, data_description={"kind": "synthetic", "seed": 11})
    return ([h["train_loss"] for h in tiny_run.summary["history"]],
            [h["train_loss"] for h in again.summary["history"]])


def test_training_is_reproducible(dataset: Path, tiny_run, tmp_path: Path) -> None:
    first, second = _losses_of_a_second_run(dataset, tiny_run, tmp_path)
    assert first == pytest.approx(second, rel=1e-5)


def test_loader_workers_train_the_same_model(dataset: Path, tiny_run, tmp_path: Path) -> None:
    # Augmentation draws from (seed, epoch, index) alone, so worker processes change nothing.
    first, second = _losses_of_a_second_run(dataset, tiny_run, tmp_path, loader_workers=2)
    assert first == pytest.approx(second, rel=1e-5)
    with pytest.raises(ValueError, match="loader_workers"):
        TrainConfig(loader_workers=-1)


def test_checkpoint_carries_metadata_and_predicts_on_the_original_grid(
    tiny_run, dataset: Path
) -> None:
    model = load_model(tiny_run.best_checkpoint, device="cpu")
    meta = model.metadata
    assert meta.model_type == "global_pool"
    assert meta.classes == ("normal", "fracture")
    assert meta.input_size == SIZE
    assert meta.synthetic_demo is True
    assert "not for diagnostic" in model.notice
    assert meta.training["recipe"]["seed"] == 5
    # The run records what it was trained for and calibrates its domain check.
    body_parts = {normalise_body_part(e["body_part_examined"]) for e in read_manifest(dataset)}
    assert set(meta.scope["body_parts"]) == body_parts - {"UNKNOWN"}
    assert model.calibrated and model.domain.layer == "features"
    assert tiny_run.summary["domain"]["calibrated"] is True
    entries = read_manifest(dataset)[:3]
    datasets = [pydicom.dcmread(dataset / e["path"]) for e in entries]
    predictions = model.predict(datasets, batch_size=2, abstain=False)
    assert len(predictions) == 3
    for ds, pred in zip(datasets, predictions, strict=True):
        assert pred.heatmap.shape == (ds.Rows, ds.Columns)
        assert 0.0 <= pred.heatmap.min() and pred.heatmap.max() <= 1.0
        assert sum(pred.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert pred.fracture_probability == pytest.approx(1 - pred.probabilities["normal"])
        for finding in pred.findings:
            x0, y0, x1, y1 = finding.box
            assert 0 <= x0 <= finding.point[0] <= x1 < ds.Columns
            assert 0 <= y0 <= finding.point[1] <= y1 < ds.Rows
            row, col = int(finding.point[1]), int(finding.point[0])
            assert pred.heatmap[row, col] == pytest.approx(finding.score)


def test_load_model_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pt"
    torch.save({"hello": 1}, bogus)
    with pytest.raises(ValueError, match="not a pacs-node checkpoint"):
        load_model(bogus)
    unknown = tmp_path / "unknown.pt"
    meta = ModelMetadata(model_type="nope", name="x", version="0", classes=("normal", "f"),
                         input_size=64, architecture={})
    save_checkpoint(unknown, torch.nn.Linear(1, 1), meta)
    with pytest.raises(ValueError, match="unknown model type"):
        load_model(unknown)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "absent.pt")


def _s_at_r95(y: np.ndarray, s: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    return float(max(1 - f for f, t in zip(fpr, tpr, strict=True) if t >= 0.95))


def test_evaluate_equals_recomputation_from_predictions(tiny_run, dataset: Path,
                                                        tmp_path: Path) -> None:
    preds = tmp_path / "predictions.jsonl"
    result = CliRunner().invoke(app, [
        "evaluate", "--weights", str(tiny_run.best_checkpoint), "--data", str(dataset),
        "--json", "--predictions-out", str(preds),
    ])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    manifest = read_manifest(dataset)
    assert [r["sop_instance_uid"] for r in lines] == [e["sop_instance_uid"] for e in manifest]
    for line in lines:
        assert {"sop_instance_uid", "label", "score", "findings"} <= set(line)
    y = np.array([r["label"] for r in lines])
    s = np.array([r["score"] for r in lines])
    b = report["binary"]
    assert b["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert b["s_at_r95"] == pytest.approx(_s_at_r95(y, s))
    assert b["f1"] == pytest.approx(f1_score(y, (s >= 0.5).astype(int), zero_division=0))
    assert report["views"] == len(manifest)
    assert report["positives"] == int(y.sum())
    assert 0.0 <= report["froc"]["froc_score"] <= 1.0


def test_cli_refuses_ambiguous_training_data(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 2
    assert "--data" in result.output


def test_fine_tuning_starts_from_an_earlier_run_at_another_size(
    dataset: Path, tiny_run, tmp_path: Path
) -> None:
    base = tiny_run.summary["config"]
    config = TrainConfig(**{**base, "augment": AugmentConfig(**base["augment"]),
                            "input_size": SIZE + 32, "epochs": 1,
                            "init_from": str(tiny_run.best_checkpoint)})
    data = prepare_dataset(dataset, size=SIZE + 32)
    result = train(config, data, tmp_path, data_description={"kind": "synthetic"})
    model = load_model(result.last_checkpoint, device="cpu")
    assert model.metadata.input_size == SIZE + 32
    assert model.metadata.training["recipe"]["init_from"] == str(tiny_run.best_checkpoint)
    # The fine-tuned checkpoint names the data and recipe of the run it started from.
    earlier = model.metadata.training["initialised_from"]
    assert earlier["data"] == {"kind": "synthetic", "seed": 11}
    assert earlier["recipe"]["input_size"] == SIZE
    wider = TrainConfig(**{**base, "augment": AugmentConfig(**base["augment"]),
                           "transition_channels": 8, "init_from": str(tiny_run.best_checkpoint)})
    with pytest.raises(ValueError, match="architecture"):
        train(wider, data, tmp_path / "x", data_description={})


def test_bf16_on_a_cpu_without_native_support_trains_in_float32(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import models.train as training

    monkeypatch.setattr(training, "bf16_is_fast", lambda device: False)
    config = TrainConfig(stages=1, transition_channels=8, input_size=64, epochs=1,
                         batch_size=4, val_fraction=0.0, seed=1, bf16=True)
    data = prepare_dataset(dataset, size=64)
    with pytest.warns(UserWarning, match="float32"):
        result = train(config, data, tmp_path, data_description={})
    model = load_model(result.last_checkpoint, device="cpu")
    assert model.metadata.training["recipe"]["bf16"] is False


def test_checkpoint_records_where_it_was_trained(tiny_run) -> None:
    model = load_model(tiny_run.best_checkpoint)  # weights_only loading must accept it
    training = model.metadata.training
    assert training["device"] in ("cpu", "cuda")
    assert training["torch"] == str(torch.__version__)
