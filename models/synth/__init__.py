"""Synthetic radiographs with known fractures: procedural 3D hip and wrist phantoms projected
like the DRRs of seed 002 (Appendix, "Data Augmentation"), written as DICOM with a
ground-truth manifest (labels, per-view visibility, points and boxes; seeds 000-004).

``generate_dataset`` writes a data set; ``render_study`` renders one study in memory;
``read_manifest`` reads the ground truth back.
"""

from ._dataset import MANIFEST_NAME, SynthSummary, generate_dataset, read_manifest
from ._study import SynthStudy, SynthView, render_study

__all__ = [
    "MANIFEST_NAME",
    "SynthStudy",
    "SynthSummary",
    "SynthView",
    "generate_dataset",
    "read_manifest",
    "render_study",
]
