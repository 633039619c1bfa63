"""Fixtures for the client tests: the simulator, and a tiny scripted HTTPS server (authority +
Web API) for edge cases the simulator cannot produce, such as a server repeating a nextLink."""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trustme

TENANT = "11111111-2222-3333-4444-555555555555"

# (status, headers, body) for a Web API GET; gets the path+query and the request headers.
Handler = Callable[[str, dict[str, str]], tuple[int, dict[str, str], bytes]]


def json_response(obj: Any, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


@dataclass
class LocalServer:
    base_url: str
    ca_path: Path
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    api: Handler | None = None

    reply = staticmethod(json_response)

    def env(self) -> dict[str, str]:
        return {
            "DYNAMICS_URL": self.base_url,
            "DYNAMICS_TENANT_ID": TENANT,
            "DYNAMICS_CLIENT_ID": "local-client",
            "DYNAMICS_CLIENT_SECRET": "local-secret",
            "DYNAMICS_AUTHORITY_HOST": self.base_url,
            "DYNAMICS_CA_BUNDLE": str(self.ca_path),
        }


class _Server(ThreadingHTTPServer):
    local: LocalServer  # what the handler answers with, and where it records requests


class _Handler(BaseHTTPRequestHandler):
    """The authority's OpenID configuration and token endpoint; the Web API by `api`."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server = self.server.local
        headers = dict(self.headers.items())
        server.requests.append(("GET", self.path, headers))
        base = server.base_url
        if self.path == f"/{TENANT}/v2.0/.well-known/openid-configuration":
            self._send(
                *json_response(
                    {
                        "issuer": f"{base}/{TENANT}/v2.0",
                        "authorization_endpoint": f"{base}/{TENANT}/oauth2/v2.0/authorize",
                        "token_endpoint": f"{base}/{TENANT}/oauth2/v2.0/token",
                    }
                )
            )
        elif server.api is not None:
            self._send(*server.api(self.path, headers))
        else:
            self._send(*json_response({"error": {"code": "", "message": "no handler"}}, 404))

    def do_POST(self) -> None:
        server = self.server.local
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        server.requests.append(("POST", self.path, dict(self.headers.items())))
        if self.path == f"/{TENANT}/oauth2/v2.0/token":
            self._send(
                *json_response(
                    {"token_type": "Bearer", "expires_in": 3599, "access_token": "local-at"}
                )
            )
        else:
            self._send(*json_response({"error": {"code": "", "message": "no"}}, 405))


def _start(tmp_dir: Path) -> tuple[LocalServer, Callable[[], None]]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = tmp_dir / "local-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)

    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    httpd.local = LocalServer(base_url=f"https://127.0.0.1:{port}", ca_path=ca_path)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()

    return httpd.local, stop


@pytest.fixture
def local_server(tmp_path: Path) -> Iterator[LocalServer]:
    server, stop = _start(tmp_path)
    try:
        yield server
    finally:
        stop()
