"""Certificates as Istio issues them: a mesh CA and workloads with a SPIFFE id as their only name.

trustme cannot put a URI in a certificate, so these are made with `cryptography`
directly. No xDS import here: TLS tests use it without the xds extra.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["MeshCerts", "ProviderFiles", "issue_workload", "mesh_certs"]


@dataclass(frozen=True)
class ProviderFiles:
    """One `file_watcher` certificate provider of a proxyless bootstrap: PEM file paths."""

    certificate: str
    key: str
    ca: str

    def bootstrap_entry(self) -> dict[str, Any]:
        """This provider as gRPC's bootstrap `certificate_providers` entry (gRFC A29)."""
        return {
            "plugin_name": "file_watcher",
            "config": {
                "certificate_file": self.certificate,
                "private_key_file": self.key,
                "ca_certificate_file": self.ca,
                "refresh_interval": "600s",
            },
        }


@dataclass(frozen=True)
class MeshCerts:
    """A mesh CA, a workload certificate for the caller and one for the server.

    Both carry a SPIFFE id as their only subject-alt-name (a URI), as Istio's are.
    `client` is the caller's bootstrap provider `default`; the server files are for an
    mTLS upstream that requires a client certificate from the same CA.
    """

    client: ProviderFiles
    client_id: str
    server_certificate: str
    server_key: str
    server_id: str


def _issue(
    folder: Path,
    name: str,
    spiffe_id: str,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)])
    issuer_name, issuer_key = issuer or (subject, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if issuer is None:  # the CA
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:
        builder = builder.add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(spiffe_id)]), True
        )
        builder = builder.add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            False,
        )
    certificate = builder.sign(issuer_key, hashes.SHA256())
    (folder / f"{name}.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return subject, key


def mesh_certs(
    folder: str,
    client_id: str = "spiffe://cluster.local/ns/default/sa/tests",
    server_id: str = "spiffe://cluster.local/ns/default/sa/orders",
) -> MeshCerts:
    """Issue `MeshCerts` into `folder` (names as Istio's agent writes them for the caller)."""
    root = Path(folder)
    ca = _issue(root, "root-cert", "", None)
    _issue(root, "cert-chain", client_id, ca)
    _issue(root, "server", server_id, ca)
    return MeshCerts(
        client=ProviderFiles(
            certificate=str(root / "cert-chain.pem"),
            key=str(root / "cert-chain.key"),
            ca=str(root / "root-cert.pem"),
        ),
        client_id=client_id,
        server_certificate=str(root / "server.pem"),
        server_key=str(root / "server.key"),
        server_id=server_id,
    )


def issue_workload(folder: str, name: str, spiffe_id: str) -> tuple[str, str]:
    """Issue another workload certificate from the CA `mesh_certs` made in `folder`.

    Returns the paths of the certificate and of its key (``NAME.pem``, ``NAME.key``).
    """
    root = Path(folder)
    ca_certificate = x509.load_pem_x509_certificate((root / "root-cert.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((root / "root-cert.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    _issue(root, name, spiffe_id, (ca_certificate.subject, ca_key))
    return str(root / f"{name}.pem"), str(root / f"{name}.key")
