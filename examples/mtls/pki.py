"""A throwaway certificate authority for the example, made with trustme.

In production the mesh's CA (cert-manager, SPIFFE, Vault, ...) issues and rotates
the files; here trustme plays that part, into a temporary directory.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

import trustme

__all__ = ["MeshCA"]


class MeshCA:
    """Issue server and client certificates, and write them the way rotation tools do."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._ca = trustme.CA(organization_name="example mesh")
        self.bundle = directory / "mesh-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.bundle))

    def server_context(self) -> ssl.SSLContext:
        """A server context for 127.0.0.1 that requires a client certificate from this CA."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ca.issue_cert("127.0.0.1").configure_cert(context)
        context.verify_mode = ssl.CERT_REQUIRED
        self._ca.configure_trust(context)
        return context

    def issue_client(self, name: str, cert: Path, key: Path) -> None:
        """Issue a client certificate for `name` and put it in place atomically."""
        leaf = self._ca.issue_cert(f"{name}.svc.internal", common_name=name)
        # Each file is written aside, then renamed over the old one: a reader sees the
        # old file or the new one, never half of one.
        _replace(cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        _replace(key, leaf.private_key_pem.bytes())


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
