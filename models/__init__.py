"""Machine learning for pacs-node: synthetic radiographs, preprocessing, architectures,
training, evaluation metrics and the model registry.

This package imports nothing from ``pacs_node``, ``workers`` or ``storage``: a researcher can
train and evaluate on a workstation with no node running.
"""

__all__: list[str] = []
