"""TLS contexts for DICOM over TLS: the node's listener (``node.tls``) and the
destinations it sends to (``destinations[].tls``).

Built at start from the settings; a file that is missing, unreadable or not what its key
says fails with :class:`~pacs_node.config.ConfigError` naming that key. TLS 1.2 is the
minimum either way (the BCP 195 profile of DICOM PS3.15 B.9).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, Destination, DestinationTls, NodeTls, Remote

__all__ = ["HANDSHAKE_TIMEOUT_S", "client_context", "destination_contexts", "server_context"]

log = logging.getLogger(__name__)

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
HANDSHAKE_TIMEOUT_S = 10.0


class _ListenerSocket(ssl.SSLSocket):
    """An accepted TLS connection that shakes hands on its first read or write, within
    :data:`HANDSHAKE_TIMEOUT_S`, in the association's thread.

    A refused handshake (a plain DICOM client, a certificate from another CA, an expired
    one, a peer that stalls) is logged as one warning and reads as a closed connection
    (``b""``), which pynetdicom's DUL handles like a peer that hung up: no traceback, and
    only that connection ends.
    """

    _handshake_state: bool | None = None  # None: not tried; then whether it succeeded

    def _handshake(self) -> bool:
        if self._handshake_state is None:
            self._handshake_state = False
            try:
                host, port = self.getpeername()[:2]
                peer = f"{host}:{port}"
            except OSError:
                peer = "unknown peer"
            previous = self.gettimeout()
            try:
                self.settimeout(HANDSHAKE_TIMEOUT_S)
                self.do_handshake()
                self.settimeout(previous)
                self._handshake_state = True
            except (OSError, ValueError) as exc:  # SSLError and timeouts are OSErrors
                reason = (getattr(exc, "verify_message", None) or getattr(exc, "reason", None)
                          or type(exc).__name__)
                log.warning("TLS handshake with %s refused: %s", peer, reason)
        return self._handshake_state

    def recv(self, buflen: int = 1024, flags: int = 0) -> bytes:
        if not self._handshake():
            return b""
        return super().recv(buflen, flags)

    def send(self, data: Any, flags: int = 0) -> int:
        if not self._handshake():
            raise ConnectionAbortedError("the TLS handshake failed")
        return super().send(data, flags)

    def sendall(self, data: Any, flags: int = 0) -> None:
        if not self._handshake():
            raise ConnectionAbortedError("the TLS handshake failed")
        super().sendall(data, flags)


class _ListenerContext(ssl.SSLContext):
    """A server context whose sockets shake hands in their own thread, not at accept.

    pynetdicom wraps each accepted socket in its single accept thread
    (``AssociationServer.get_request``) with the handshake done there: one peer that
    connects and stays silent would stop every other client from being accepted. Here the
    handshake is left to the association's thread (:class:`_ListenerSocket`).
    """

    sslsocket_class = _ListenerSocket

    def wrap_socket(self, sock: socket.socket, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        kwargs["do_handshake_on_connect"] = False
        return super().wrap_socket(sock, *args, **kwargs)


def _readable(path: Path, key: str) -> str:
    if not path.is_file():
        raise ConfigError(f"{key}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{key}: {path} cannot be read (permissions)")
    return str(path)


def _no_password(key: str) -> Any:
    def refuse() -> bytes:
        raise ConfigError(f"{key}: the key is encrypted; give an unencrypted PEM key")

    return refuse


def _load_pair(context: ssl.SSLContext, certificate: Path, key: Path, prefix: str) -> None:
    cert_file = _readable(certificate, f"{prefix}.certificate")
    key_file = _readable(key, f"{prefix}.key")
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_password(f"{prefix}.key"))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"{prefix}.key: {key} is not the key of {prefix}.certificate "
                              f"{certificate}") from None
        try:  # which of the two is unusable: the certificate alone must load as a CA
            ssl.create_default_context(cafile=cert_file)
        except ssl.SSLError:
            raise ConfigError(f"{prefix}.certificate: {certificate} is not a PEM "
                              "certificate") from None
        raise ConfigError(f"{prefix}.key: {key} is not a PEM private key ({exc.reason})") \
            from None


def _load_cas(context: ssl.SSLContext, ca_bundle: Path, key: str) -> None:
    try:
        context.load_verify_locations(cafile=_readable(ca_bundle, key))
    except ssl.SSLError:
        raise ConfigError(f"{key}: {ca_bundle} holds no PEM CA certificate") from None


def server_context(tls: NodeTls, *, prefix: str = "node.tls") -> ssl.SSLContext:
    """The listener's context: the node's certificate and key; client certificates
    required and checked against ``ca_bundle`` when it is set.

    Raises:
        ConfigError: naming the key (``node.tls.certificate``...) whose file is missing,
            unreadable, or not a PEM certificate / unencrypted key / CA bundle.
    """
    if tls.certificate is None or tls.key is None:
        raise ConfigError(f"{prefix}.certificate and {prefix}.key are required")
    context = _ListenerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_COMPRESSION
    _load_pair(context, tls.certificate, tls.key, prefix)
    if tls.ca_bundle is not None:
        _load_cas(context, tls.ca_bundle, f"{prefix}.ca_bundle")
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE
    return context


def client_context(tls: DestinationTls, *, prefix: str) -> ssl.SSLContext:
    """A context to send to a destination: its certificate is verified (against
    ``ca_bundle``, or the system's CAs) and must name the host; ours is presented when
    ``certificate`` and ``key`` are set.

    Raises:
        ConfigError: naming the key whose file is missing or unusable.
    """
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.ca_bundle is not None:
        _load_cas(context, tls.ca_bundle, f"{prefix}.ca_bundle")
    if tls.certificate is not None and tls.key is not None:
        _load_pair(context, tls.certificate, tls.key, prefix)
    return context


def destination_contexts(destinations: Sequence[Destination | Remote], *,
                         section: str = "destinations") -> dict[str, ssl.SSLContext]:
    """A client context per peer with ``tls.enabled``, by name (``section`` names the
    config list in errors: ``destinations`` or ``remotes``).

    Raises:
        ConfigError: naming the key (``destinations.0.tls.key``...) that is unusable.
    """
    return {d.name: client_context(d.tls, prefix=f"{section}.{i}.tls")
            for i, d in enumerate(destinations) if d.tls.enabled}
