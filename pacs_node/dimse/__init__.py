"""The DICOM network listener (SCP): C-ECHO, C-STORE into the store and index, C-FIND,
C-GET and C-MOVE.

An entry point builds the store and the session factory and passes them in::

    server = DimseServer(settings.node, store, sessions, on_stored=tracker.nudge)
    server.start()          # non-blocking
    ...
    server.stop()

Handlers get their dependencies through pynetdicom's ``evt_handlers`` arguments, validate,
store and index, and always answer with a DICOM status (:class:`StoreStatus`,
:class:`FindStatus`, or the ``dimse_status`` of a ``storage`` error).
"""

from ._find import FIND_MODELS, PATIENT_ROOT_FIND, STUDY_ROOT_FIND
from ._retrieve import GET_MODELS, MOVE_MODELS, MoveDestination
from ._server import STORE_TRANSFER_SYNTAXES, UNCOMPRESSED_TRANSFER_SYNTAXES, DimseServer
from ._status import FindStatus, StoreStatus

__all__ = [
    "FIND_MODELS",
    "GET_MODELS",
    "MOVE_MODELS",
    "PATIENT_ROOT_FIND",
    "STORE_TRANSFER_SYNTAXES",
    "STUDY_ROOT_FIND",
    "UNCOMPRESSED_TRANSFER_SYNTAXES",
    "DimseServer",
    "FindStatus",
    "MoveDestination",
    "StoreStatus",
]
