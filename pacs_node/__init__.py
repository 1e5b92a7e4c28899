"""pacs-node: the node's edges (configuration, command line, DICOM network services)."""

__all__: list[str] = []
