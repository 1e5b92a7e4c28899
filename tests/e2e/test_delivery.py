"""A destination that is down: spaced retries, no storm, nothing lost across a restart.

The destination port first belongs to a TCP listener in the test that accepts each
connection, notes when it came and resets it at once, so every delivery attempt fails.
Later Orthanc takes over the same port and the results arrive.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from pathlib import Path

import pydicom
import pytest

from .conftest import (
    NodeProcess,
    Orthanc,
    index_rows,
    make_node,
    result_uids,
    start_orthanc,
    stop_process,
    storescu,
    two_view_study_files,
    wait_for,
)

BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 4.0
# The delay after the n-th failed attempt: initial * 2^(n-1), capped.
EXPECTED_GAPS = [1.0, 2.0, 4.0, 4.0]
# The node looks for due exports once a second: a gap may exceed its backoff by that
# much; more slack on top for a loaded 2-core machine.
POLL_SLACK = 1.0 + 2.0


class ClosingListener:
    """A TCP port where nothing DICOM listens: each connection is accepted, its arrival
    time (``time.monotonic()``) recorded, and reset at once (no TIME_WAIT left behind,
    so another server can take the port right after :meth:`close`)."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self._sock.settimeout(0.1)
        self.port = int(self._sock.getsockname()[1])
        self.arrivals: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="closing-listener",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.arrivals.append(time.monotonic())
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def since(self, moment: float) -> list[float]:
        return [t for t in self.arrivals if t >= moment]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._sock.close()


@pytest.fixture(scope="module")
def two_view_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return two_view_study_files(tmp_path_factory.mktemp("synth"), size=160)


def _exports(node: NodeProcess) -> list[tuple[str, int]]:
    return index_rows(node, "SELECT state, attempts FROM exports ORDER BY id")


def _gaps(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]


def test_destination_down_backs_off_and_delivers_after_restart(
    two_view_study: list[Path], tmp_path: Path,
) -> None:
    listener = ClosingListener()
    dest = [{"name": "pacs", "ae_title": "ORTHANC", "host": "127.0.0.1",
             "port": listener.port}]
    node = make_node(tmp_path / "node", destinations=dest, stable_seconds=1.0,
                     extra={"delivery": {"backoff_initial_seconds": BACKOFF_INITIAL,
                                         "backoff_max_seconds": BACKOFF_MAX,
                                         "max_attempts": 20}})
    orthanc: Orthanc | None = None
    study_uid = str(pydicom.dcmread(two_view_study[0], stop_before_pixels=True)
                    .StudyInstanceUID)
    views = len(two_view_study)
    node.start()
    try:
        result = storescu(node.port, two_view_study)
        assert result.returncode == 0, result.stderr

        # Attempts against the dead destination are spaced 1, 2, 4, 4 s apart.
        attempts = len(EXPECTED_GAPS) + 1
        wait_for(lambda: len(listener.arrivals) >= attempts, timeout=90,
                 what=f"{attempts} delivery attempts", interval=0.1)
        first = listener.arrivals[:attempts]
        gaps = _gaps(first)
        print(f"\ndelivery attempts while down: gaps {gaps} s (backoff {EXPECTED_GAPS})")
        for gap, expected in zip(gaps, EXPECTED_GAPS, strict=True):
            assert 0.8 * expected <= gap <= expected + POLL_SLACK, (gaps, EXPECTED_GAPS)
        for earlier, later in zip(gaps, gaps[1:], strict=False):
            assert later >= earlier - 1.2, f"gaps shrink: {gaps}"
        # No retry storm: at most one connection per backoff step in the window, although
        # three result objects (an SR and one SC per view) are waiting.
        window = sum(EXPECTED_GAPS)
        assert len([t for t in listener.arrivals if t < first[0] + window]) <= attempts
        before = len(listener.arrivals)
        exports = _exports(node)
        after = len(listener.arrivals)
        assert len(exports) == 1 + views, exports
        assert all(state == "pending" for state, _ in exports), exports
        tries = {n for _, n in exports}
        assert len(tries) == 1, f"the objects travel together: {exports}"
        (tried,) = tries
        assert tried <= after and before <= tried + 1, \
            f"{tried} attempts per object but {before}-{after} connections: one per attempt"

        # A node killed while the exports wait loses nothing, and keeps its backoff.
        node.stop(kill=True)
        restarted = time.monotonic()
        node.start()
        wait_for(lambda: len(listener.since(restarted)) >= 2, timeout=60,
                 what="two delivery attempts after the restart", interval=0.1)
        after_restart = listener.since(restarted)
        print(f"after the restart: first attempt {after_restart[0] - restarted:.2f} s in, "
              f"then gaps {_gaps(after_restart)} s")
        assert after_restart[1] - after_restart[0] >= 0.8 * BACKOFF_MAX, after_restart
        assert all(state == "pending" for state, _ in _exports(node))

        # The PACS comes up on that port: every result arrives, once.
        listener.close()
        up = time.monotonic()
        orthanc = start_orthanc(tmp_path / "orthanc", dicom_port=listener.port)
        srs, scs = wait_for(
            lambda: (r := result_uids(orthanc, study_uid)) and r[0] and len(r[1]) >= views
            and r, timeout=60, what="the results in Orthanc", interval=0.5)
        print(f"delivered {time.monotonic() - up:.1f} s after Orthanc was started")
        wait_for(lambda: all(state == "sent" for state, _ in _exports(node)), timeout=30,
                 what="every export marked sent", interval=0.5)
        srs, scs = result_uids(orthanc, study_uid)
        assert len(srs) == 1 and len(scs) == views, (srs, scs)
        (summary,) = index_rows(node, "SELECT summary FROM results")
        assert sorted(srs + scs) == sorted(json.loads(summary[0])["produced"])
        print(f"attempts per object until delivered: {sorted({n for _, n in _exports(node)})}")
    finally:
        listener.close()
        node.stop()
        if orthanc is not None:
            stop_process(orthanc.process)
