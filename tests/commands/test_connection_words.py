"""What users read when the network fails: words, not exception class names."""

from __future__ import annotations

import socket

import pytest
import requests

from dynsync_dagster.dynamics.auth import connection_failure


def _error(url: str, timeout: float = 5) -> requests.RequestException:
    session = requests.Session()
    session.trust_env = False  # no proxy between us and the address under test
    with pytest.raises(requests.RequestException) as caught:
        session.get(url, timeout=timeout)
    return caught.value


def test_a_refused_connection_and_an_unknown_name_are_said_in_words() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    assert connection_failure(_error(f"https://127.0.0.1:{port}/")) == "connection refused"
    assert connection_failure(_error("https://no-such-host.invalid/")) == "name not resolved"


def test_a_silent_server_times_out() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()  # accepts the TCP connection, never answers the TLS handshake
        url = f"https://127.0.0.1:{s.getsockname()[1]}/"
        assert connection_failure(_error(url, timeout=0.5)) == "timed out"
