"""Keeping data element values out of logs.

pydicom and highdicom complain about out-of-spec values by quoting them (``Invalid value
for VR DA: '1901-02-03'``, ``The string "DOE JOHN" is unlikely to represent ...``), through
the ``pydicom`` logger and through :mod:`warnings`, which a service writes to its log. Real
modalities send such values, so every node would log patient names and birth dates.
:func:`keep_values_out_of_logs` drops those messages; the node's own code never puts values
in a log (only UIDs, keywords and exception types).

pydicom also logs each decoding plugin that fails on a frame with its traceback
(``LOGGER.exception`` in ``pydicom.pixels.decoders.base``) before it raises: a corrupt
codestream from a modality (the ingest check reads only its header) wrote two tracebacks
per view to the node's log, where a traceback means a bug of ours. Those become one
WARNING line each, without traceback; the caller still gets pydicom's error.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings

__all__ = ["keep_values_out_of_logs"]

#: Library messages that quote a data element's value.
_QUOTING = re.compile(
    r"^(Invalid value for VR|The string .* is unlikely to represent|Unable to convert|"
    r"Value .* (is|does) not|Invalid (date|time|datetime|value)|.*exceeds the maximum length)",
    re.DOTALL)
_lock = threading.Lock()
_installed = False


class _DropQuotedValues(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            return not _QUOTING.match(record.getMessage())
        except Exception:  # noqa: BLE001 - a message that cannot be rendered is dropped
            return False


class _DecoderFailureWithoutTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is not None and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg, record.args = "a decoding plugin failed: %s: %s", (
                type(exc).__name__, str(exc)[:200])
            record.exc_info, record.exc_text = None, None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def keep_values_out_of_logs() -> None:
    """Install the filters once per process (idempotent, thread-safe): the ``pydicom``
    and ``highdicom`` loggers drop messages that quote values, and such warnings are
    ignored; a pydicom decoding plugin's failure is logged without its traceback."""
    global _installed
    with _lock:
        if _installed:
            return
        for name in ("pydicom", "highdicom"):
            logging.getLogger(name).addFilter(_DropQuotedValues())
        logging.getLogger("pydicom.pixels.decoders.base").addFilter(
            _DecoderFailureWithoutTraceback())
        warnings.filterwarnings("ignore", message=_QUOTING.pattern)
        _installed = True
