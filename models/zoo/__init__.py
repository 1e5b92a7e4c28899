"""The seed papers' model types, one module each.

Each module registers one model type with :func:`models.registry.register_model_type`:
network (in :mod:`models.nets`), inference to the registry contract, and its
:class:`models.supervision.TrainingSpec`. This package imports none of them: the registry
imports a type's module when a checkpoint or a training run asks for it
(:data:`models.registry.BUILTIN_MODEL_TYPES`).
"""
