"""A throwaway test CA (trustme) and the server's certificate for 127.0.0.1 / localhost."""

from __future__ import annotations

import ssl
from pathlib import Path

import trustme

CA_FILE = "simulator-ca.pem"


def make_server_context(state_dir: Path) -> tuple[ssl.SSLContext, Path]:
    """Server TLS context plus the CA PEM path clients must trust (written into state_dir)."""
    ca = trustme.CA(organization_name="dynsync simulator test CA")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path = state_dir / CA_FILE
    ca.cert_pem.write_to_path(str(ca_path))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context, ca_path
