"""Library log lines a hostile or broken instance causes: one line, no traceback."""

from __future__ import annotations

import logging
import struct

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless

from storage import keep_values_out_of_logs


def _corrupt_jpeg2000() -> Dataset:
    """A 16 x 16 image whose JPEG 2000 codestream has the right SIZ and garbage after
    it: the ingest check (headers only) accepts it, every decoder fails on it."""
    siz = struct.pack(">HHIIIIIIIIH", 41, 0, 16, 16, 0, 0, 16, 16, 0, 0, 1) + b"\x07\x01\x01"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 16, 16, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + siz + b"\x00" * 200 + b"\xff\xd9"])
    return ds


def test_a_failing_decoding_plugin_is_one_warning_without_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    """pydicom logged each failing plugin with LOGGER.exception: two tracebacks per
    corrupt view in the node's log (found by the hostile battery)."""
    keep_values_out_of_logs()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RuntimeError, match="Unable to decode"):
        _ = _corrupt_jpeg2000().pixel_array  # the caller still learns it failed
    failures = [r for r in caplog.records if r.name == "pydicom.pixels.decoders.base"
                and "decoding plugin failed" in r.getMessage()]
    assert failures, [r.getMessage() for r in caplog.records]
    for record in caplog.records:
        assert record.exc_info is None and record.exc_text is None, record.getMessage()
    assert all(r.levelno == logging.WARNING for r in failures)
