"""Every registered model type runs through the study pipeline and yields valid objects.

A tiny, randomly initialised checkpoint of each type, its domain check calibrated on
synthetic views (:mod:`models.calibration`), is routed a synthetic two-view study; the node
must store one SR and one SC per view, each passing dciodvfy, with the study's aggregation
recorded (the learned one for study-level types) and every view's domain score.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
import torch
from sqlalchemy import select

from models.calibration import calibrate_checkpoint
from models.registry import ModelMetadata, model_type_spec, model_types, save_checkpoint
from models.synth import generate_dataset, read_manifest
from models.train import TrainConfig
from storage import (
    Instance,
    InstanceSource,
    JobRepository,
)
from tests.dicom_checks import dciodvfy_errors
from tests.workers.conftest import ingest_file, settle_job
from workers.pipeline import ModelCache, PipelineOptions, StudyPipeline
from workers.routing import Route

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
EXPECTED_TYPES = {"global_pool", "stl", "stn", "localize_classify", "two_stage", "window_fpn",
                  "mvcnn"}


def tiny_checkpoint(model_type: str, path: Path, *, input_size: int = 64,
                    calibration: Path | None = None) -> Path:
    """A randomly initialised checkpoint of ``model_type`` small enough for a test, its
    domain check calibrated on the data set ``calibration`` when given."""
    torch.manual_seed(0)
    spec = model_type_spec(model_type)
    assert spec.training is not None
    config = TrainConfig(model_type=model_type, backbone="resnet18", stages=2,
                         input_size=input_size, transition_channels=16)
    arch = spec.training.architecture(config, 2)
    meta = ModelMetadata(model_type=model_type, name=f"tiny-{model_type}", version="0.0.1",
                         classes=("normal", "fracture"), input_size=input_size,
                         architecture=arch, synthetic_demo=True)
    save_checkpoint(path, spec.build(**arch), meta)
    if calibration is not None:
        stats, scope = calibrate_checkpoint(path, calibration, pass_rate=0.99)
        assert stats.layer == spec.feature_layer and scope["body_parts"]
    return path


def test_every_model_type_of_the_seed_papers_is_registered() -> None:
    assert EXPECTED_TYPES <= set(model_types())


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, studies=10, seed=5, size=160)
    return root


@pytest.fixture(scope="module")
def study_files(synthetic_set: Path) -> list[Path]:
    entries = read_manifest(synthetic_set)
    uid = entries[0]["study_instance_uid"]
    files = [synthetic_set / e["path"] for e in entries if e["study_instance_uid"] == uid]
    assert len(files) >= 2
    return files


@pytest.mark.filterwarnings("ignore:only .* held-out views set the domain threshold")
@pytest.mark.parametrize("model_type", sorted(EXPECTED_TYPES))
def test_model_type_runs_through_the_pipeline(model_type: str, study_files: list[Path],
                                              synthetic_set: Path, node_storage,
                                              tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(model_type, tmp_path / f"{model_type}.pt",
                                 calibration=synthetic_set)
    store, sessions = node_storage
    for f in study_files:
        ingest_file(store, sessions, f)
    job_id = settle_job(sessions)
    options = PipelineOptions(routes=(Route(model=str(checkpoint)),))
    assert StudyPipeline(store, sessions, options, ModelCache(device="cpu")).run(job_id) == "done"
    with sessions() as session:
        produced = session.scalars(select(Instance).where(
            Instance.source == InstanceSource.PRODUCED)).all()
        result = JobRepository(session).result_for(job_id)
        assert result is not None
        aggregation = result.aggregation
    assert sorted(i.sop_class_uid for i in produced) == \
        [SC_CLASS] * len(study_files) + [SR_CLASS]
    expected = "learned (mvcnn)" if model_type == "mvcnn" else "max"
    assert aggregation == expected
    for item in produced:
        errors = dciodvfy_errors(store.path_of(item.relpath))
        assert not errors, (model_type, item.sop_class_uid, errors)
    sr = pydicom.dcmread(store.path_of(next(
        i for i in produced if i.sop_class_uid == SR_CLASS).relpath))
    assert f"tiny-{model_type}" in str(sr)  # the SR names the model that made it
