"""A private certificate authority for simulators that must speak https on loopback.

The fake SNS topic serves its signing certificate and ``SubscribeURL`` over https, as AWS
does, because oppsync never fetches either over plain http. This module makes, once per
process, a CA and a server certificate for ``127.0.0.1``/``localhost`` signed by it; the
CA's certificate is written to a file the service is pointed at with
``IVVY_SNS_CA_BUNDLE``.
"""

from __future__ import annotations

import atexit
import ipaddress
import shutil
import ssl
import tempfile
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_lock = threading.Lock()
_files: tuple[Path, Path, Path] | None = None


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _files_made() -> tuple[Path, Path, Path]:
    """(CA certificate, server certificate, server key), as PEM files in a private folder."""
    global _files
    with _lock:
        if _files is not None:
            return _files
        now = datetime.now(UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(_name("oppsync test CA"))
            .issuer_name(_name("oppsync test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )  # fmt: skip
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("127.0.0.1"))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        folder = Path(tempfile.mkdtemp(prefix="oppsync-test-ca-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        ca_file, cert_file, key_file = folder / "ca.pem", folder / "server.pem", folder / "key.pem"
        ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        _files = ca_file, cert_file, key_file
        return _files


def ca_bundle() -> str:
    """The path of the CA certificate (PEM) that signed every simulator's https certificate."""
    return str(_files_made()[0])


def server_context() -> ssl.SSLContext:
    """A server-side TLS context with the certificate for ``127.0.0.1``."""
    _ca, cert_file, key_file = _files_made()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


def client_context() -> ssl.SSLContext:
    """A client-side TLS context trusting only the test CA (for tests' own https calls)."""
    return ssl.create_default_context(cafile=ca_bundle())
