"""A small prepared synthetic data set shared by the model-type tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.data import PreparedSet, prepare_dataset
from models.synth import generate_dataset

ZOO_SEED = 3  # 10 studies: hips and wrists, positives with visible boxes and points


@pytest.fixture(scope="session")
def zoo_set(tmp_path_factory: pytest.TempPathFactory) -> PreparedSet:
    """10 synthetic studies (128 px DICOM) prepared at 64 px, binary labels."""
    root: Path = tmp_path_factory.mktemp("zoo-data")
    generate_dataset(root, studies=10, seed=ZOO_SEED, size=128)
    data = prepare_dataset(root, size=64)
    assert int((data.labels > 0).sum()) >= 2, "the fixture needs positive views"
    assert bool((~torch.isnan(data.points[:, 0, 0])).any()), "the fixture needs points"
    return data

