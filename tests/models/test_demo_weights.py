"""The shipped demo weights are honest: a calibrated domain check, a recorded scope, and
refusal of images unlike their synthetic training data.

These use the real radiographs of ``pydicom-data`` (RG1: a chest PA film, RG3: a lower-leg
film in MONOCHROME1) and images that are plainly not radiographs of the trained anatomy,
each dressed as a hip CR so only the pixels can give them away. Figures on the 200-study
held-out set are measured by ``pacs-node evaluate`` (README "Demo weights").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from models.calibration import view_features
from models.registry import FractureModel, load_model
from models.synth import generate_dataset, read_manifest

CR = "1.2.840.10008.5.1.4.1.1.1"


@pytest.fixture(scope="module")
def demo() -> FractureModel:
    return load_model(device="cpu")


def _as_hip_cr(pixels: np.ndarray, *, bits: int = 12) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = CR, generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "HIP", "AP"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    return ds


def _ct_dressed_as_cr() -> Dataset:
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    values = ct.pixel_array.astype(np.int32)
    values = values - values.min()
    return _as_hip_cr(np.clip(values, 0, 4095))


def _foreign_views() -> dict[str, Dataset]:
    rng = np.random.default_rng(0)
    return {
        "RG1 chest PA": pydicom.dcmread(get_testdata_file("RG1_UNCR.dcm")),
        "RG3 lower leg": pydicom.dcmread(get_testdata_file("RG3_UNCR.dcm")),
        "blank": _as_hip_cr(np.zeros((512, 512))),
        "noise": _as_hip_cr(rng.integers(0, 4096, size=(512, 512))),
        "CT slice as hip CR": _ct_dressed_as_cr(),
    }


def test_demo_weights_record_their_scope_and_a_calibrated_domain_check(
        demo: FractureModel) -> None:
    assert set(demo.metadata.body_parts) == {"HIP", "PELVIS", "WRIST"}
    assert demo.calibrated
    assert demo.domain is not None
    assert demo.domain.pass_rate == 0.99
    assert demo.domain.threshold_views >= 200  # held-out validation views set the threshold
    assert demo.domain.layer == "features"


@pytest.mark.parametrize("name", sorted(_foreign_views()))
def test_images_unlike_the_training_data_are_refused(demo: FractureModel, name: str) -> None:
    (prediction,) = demo.predict([_foreign_views()[name]])
    assert not prediction.domain.in_domain, (name, prediction.domain)
    assert prediction.fracture_probability is None and prediction.heatmap is None
    assert prediction.findings == ()
    assert "outside the model's training domain" in prediction.not_analysed_reason


def test_fresh_synthetic_views_pass_the_domain_check(demo: FractureModel,
                                                     tmp_path: Path) -> None:
    # A seed never used in training or calibration (those use 1000-1006).
    generate_dataset(tmp_path, studies=12, seed=4040, size=512)
    views = [pydicom.dcmread(tmp_path / e["path"]) for e in read_manifest(tmp_path)]
    checks = [p.domain for p in demo.predict(views, abstain=False)]
    passed = sum(c.in_domain for c in checks)
    assert passed >= 0.9 * len(checks), [round(c.score or 0, 1) for c in checks]


def test_the_domain_score_separates_foreign_images_from_synthetic_ones(
        demo: FractureModel, tmp_path: Path) -> None:
    generate_dataset(tmp_path, studies=6, seed=4041, size=512)
    synthetic = [demo.prepare(pydicom.dcmread(tmp_path / e["path"]))
                 for e in read_manifest(tmp_path)]
    foreign = [demo.prepare(ds) for ds in _foreign_views().values()]
    assert demo.domain is not None
    inside = demo.domain.scores(view_features(demo, np.stack([v.image for v in synthetic])))
    outside = demo.domain.scores(view_features(demo, np.stack([v.image for v in foreign])))
    assert outside.min() > np.median(inside)
