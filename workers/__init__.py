"""Asynchronous work of pacs-node: the study pipeline and the DICOM result writers."""

__all__: list[str] = []
