"""Synthetic radiographs with known fractures: procedural 3D hip and wrist phantoms projected
like the DRRs of seed 002 (Appendix, "Data Augmentation"), written as DICOM with a
ground-truth manifest (labels, per-view visibility, points and boxes; seeds 000-004).

Views carry the artifacts of real films (collimation, lead markers, burned-in text, rulers,
grid lines, implants, casts) unless ``artifacts=False``; each manifest entry lists them as
``"artifacts": [{"kind": K, "box": [x0, y0, x1, y1]}, ...]`` with ``K`` in
``ARTIFACT_KINDS`` and boxes in stored pixels ((x, y) = (column, row), inclusive, clipped),
and gives the ``"exposed_field"`` box (the whole image when uncollimated).

``generate_dataset`` writes a data set; ``render_study`` renders one study in memory;
``read_manifest`` reads the ground truth back.
"""

from ._artifacts import KINDS as ARTIFACT_KINDS
from ._dataset import MANIFEST_NAME, SynthSummary, generate_dataset, read_manifest
from ._study import SynthStudy, SynthView, render_study

__all__ = [
    "ARTIFACT_KINDS",
    "MANIFEST_NAME",
    "SynthStudy",
    "SynthSummary",
    "SynthView",
    "generate_dataset",
    "read_manifest",
    "render_study",
]
