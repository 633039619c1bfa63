"""HTTPS/1.1 keep-alive server on 127.0.0.1 that hands requests to the Application."""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from email.utils import formatdate
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .errors import ODataError
from .responses import Response
from .webapi import Application, Outcome, Request

log = logging.getLogger("dynsync.simulator")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dynsync-simulator"
    sys_version = ""
    server: SimulatorServer

    def setup(self) -> None:
        super().setup()
        self.request.settimeout(120)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except (ConnectionError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = Request(
            self.command, self.path, headers, self.headers.get_all("Prefer") or [], body
        )
        try:
            outcome = self.server.app.handle(request)
        except Exception:  # a bug must still produce the documented generic 500, not a hang
            log.exception("simulator failed on %s %s", self.command, self.path)
            err = ODataError(500, "0x80040216", "An unexpected error occurred.")
            outcome = Outcome(Response(500, err.body(), "application/json; charset=utf-8"))
        self._send(outcome)

    def _send(self, outcome: Outcome) -> None:
        response = outcome.response
        body = response.body
        if outcome.delivery == "malformed":
            body = body[: max(1, len(body) // 2)]  # a cut-off JSON document, served as complete
        lines = [
            f"HTTP/1.1 {response.status} {_reason(response.status)}",
            f"Date: {formatdate(usegmt=True)}",
            f"Server: {self.server_version}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in response.headers.items()]
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        payload = b"" if self.command == "HEAD" else body
        if outcome.delivery == "drop":
            # Promise the whole body, send part of it, then hang up mid-stream.
            self.wfile.write(head + payload[: len(payload) // 2])
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.request.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(head + payload)  # one write: big pages go out in a single sendall

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = do_OPTIONS = _serve

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


class SimulatorServer(ThreadingHTTPServer):
    """TLS is negotiated in each connection's own thread so one slow client can't block accept."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, port: int, app: Application, context: ssl.SSLContext) -> None:
        self.app = app
        self.context = context
        super().__init__(("127.0.0.1", port), _Handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            request.settimeout(30)
            request.do_handshake()
        except (OSError, ssl.SSLError):
            return  # e.g. a client that does not trust the test CA
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("connection error from %s", client_address, exc_info=True)


class ServerThread:
    """Runs serve_forever in a daemon thread; stop() shuts down and closes the socket."""

    def __init__(self, server: SimulatorServer) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="dynsync-simulator",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
