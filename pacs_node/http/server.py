"""Running the HTTP app in the node's process: uvicorn in a thread, started and stopped
with the node."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

__all__ = ["HttpServer"]

START_TIMEOUT_S = 15.0


class HttpServer:
    """uvicorn serving ``app`` on ``(host, port)`` from a daemon thread.

    uvicorn's own access log is off (its lines carry query strings, and QIDO queries carry
    patient names); the app logs each request without them.
    """

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None,
                                access_log=False, lifespan="on", server_header=False,
                                timeout_graceful_shutdown=5)
        self._server = uvicorn.Server(config)
        # uvicorn decides per connection from the logger's handlers whether to log access
        # lines (with query strings); the logger is switched off for the whole process.
        logging.getLogger("uvicorn.access").disabled = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start serving; returns once the port accepts connections.

        Raises:
            RuntimeError: already started, or uvicorn did not come up (port taken...).
        """
        if self._thread is not None:
            raise RuntimeError("the HTTP server is already running")
        self._thread = threading.Thread(target=self._server.run, name="http-server",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self._server.should_exit = True
                raise RuntimeError("the HTTP server did not start (see the log)")
            time.sleep(0.01)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish requests in progress (up to ``timeout``). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._server.should_exit = True
        thread.join(timeout)

    @property
    def port(self) -> int:
        """The bound port (useful when configured as 0)."""
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self._server.config.port)
