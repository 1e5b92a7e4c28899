"""The seed papers' model types beyond the global pooling classifier.

Each module registers one model type with :func:`models.registry.register_model_type`:
network (in :mod:`models.nets`), inference to the registry contract, and its
:class:`models.supervision.TrainingSpec`. Importing this package registers all of them.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
