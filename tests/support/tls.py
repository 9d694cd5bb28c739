"""A self-signed certificate for 127.0.0.1, made by the openssl command (.ci installs it)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.net import LOOPBACK


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(certificate, private key) PEM files in ``directory``, valid for LOOPBACK for a day."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={LOOPBACK}",
         "-addext", f"subjectAltName=IP:{LOOPBACK}"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key
