"""A small certificate authority for installs without their own PKI (``limiquantix-controller pki``).

One CA signs three kinds of certificates (ECDSA P-256, SHA-256):

* ``server``: the controller's and each hostd's HTTPS certificate; its SANs are the DNS
  names and IP addresses clients use to reach it (checked by every client), extended key
  usage ``serverAuth``;
* ``client``: the controller's certificate for calling hostd and each hostd's for calling
  the controller (mutual TLS); the common name says who it is (a hostd's is its node id),
  extended key usage ``clientAuth`` (OpenSSL refuses a server certificate as a client one,
  and the reverse).

Files are PEM, written mode 0600 (keys are secrets; certificates too, so that an install
never leaves a half-readable pair), and an existing file is never replaced unless
``force``: a CA key overwritten by mistake would orphan every certificate it signed.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import socket
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Final, final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CA_CERT",
    "CA_KEY",
    "DEFAULT_CA_DAYS",
    "DEFAULT_CERT_DAYS",
    "DEFAULT_PKI_DIR",
    "CertKind",
    "Issued",
    "PKIError",
    "create_ca",
    "default_server_names",
    "issue",
    "load_ca",
    "make_ca",
    "make_cert",
]

DEFAULT_PKI_DIR: Final = Path("/etc/limiquantix/pki")
CA_CERT: Final = "ca.pem"
CA_KEY: Final = "ca.key"
#: A CA outlives the certificates it signs; ten years, then a new install-wide CA.
DEFAULT_CA_DAYS: Final = 3650
#: Server and client certificates: about a year and a month, renewed by re-issuing.
DEFAULT_CERT_DAYS: Final = 397
#: Certificates are valid from a little before now: clocks of two machines differ.
_BACKDATE: Final = datetime.timedelta(minutes=5)


class PKIError(Exception):
    """A refused or failed PKI action (the message says which file and why)."""


class CertKind(Enum):
    SERVER = "server"
    CLIENT = "client"


@final
@dataclasses.dataclass(frozen=True)
class Issued:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "LimiQuantix"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What every certificate here has: names, a random serial, the validity, and the key
    usage of a CA (signing certificates and CRLs, no path below it) or of a TLS endpoint
    (digital signatures only: ECDHE key exchange, no key encipherment)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )  # fmt: skip
    )


def make_ca(
    common_name: str = "LimiQuantix CA", *, days: int = DEFAULT_CA_DAYS, now: datetime.datetime | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed CA certificate and its key (in memory)."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        _builder(name, name, key, now - _BACKDATE, now + datetime.timedelta(days=days), ca=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    kind: CertKind,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = DEFAULT_CERT_DAYS,
    not_before: datetime.datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate signed by the CA, and its key (in memory).

    ``not_before`` (default: now, less a few minutes) and ``days`` set the validity; a
    server certificate names ``dns_names`` and ``ip_addresses`` as SANs.

    Raises:
        PKIError: an IP address that is not one, a server certificate without any name,
            an empty common name.
    """
    if not common_name:
        raise PKIError("a certificate needs a name (its common name)")
    start = not_before or datetime.datetime.now(datetime.timezone.utc) - _BACKDATE
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
    for ip in ip_addresses:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        except ValueError:
            raise PKIError(f"{ip!r} is not an IP address") from None
    if kind is CertKind.SERVER and not sans:
        raise PKIError("a server certificate needs at least one DNS name or IP address (clients check it)")
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind is CertKind.SERVER else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(_name(common_name), ca_cert.subject, key, start, start + datetime.timedelta(days=days), ca=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def default_server_names() -> tuple[list[str], list[str]]:
    """This host's name and ``localhost``; 127.0.0.1 and ::1."""
    names = [socket.gethostname(), "localhost"]
    return list(dict.fromkeys(n for n in names if n)), ["127.0.0.1", "::1"]


def _refuse_existing(paths: Sequence[Path], force: bool) -> None:
    if force:
        return
    existing = [str(p) for p in paths if p.exists()]
    if existing:
        raise PKIError(f"{', '.join(existing)} already exist(s): not overwritten (--force replaces)")


def _write_private(path: Path, data: bytes) -> None:
    """``data`` to ``path``, mode 0600 from the first byte (also when the file existed)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, cert_path: Path, key_path: Path) -> Issued:
    """Write a certificate and its key, both mode 0600 (no overwrite check: callers did it)."""
    cert_path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, _key_pem(key))
    _write_private(cert_path, _cert_pem(cert))
    return Issued(cert_path, key_path)


def create_ca(
    directory: Path, *, common_name: str = "LimiQuantix CA", days: int = DEFAULT_CA_DAYS, force: bool = False
) -> Issued:
    """A new CA in ``directory`` (``ca.pem``, ``ca.key``).

    Raises:
        PKIError: the files exist and ``force`` is false, or they cannot be written.
    """
    paths = (directory / CA_CERT, directory / CA_KEY)
    _refuse_existing(paths, force)
    cert, key = make_ca(common_name, days=days)
    try:
        return write_pair(cert, key, *paths)
    except OSError as exc:
        raise PKIError(f"cannot write the CA in {directory}: {exc.strerror}") from exc


def load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in ``directory``.

    Raises:
        PKIError: missing or unreadable files, or a key that is not an EC key.
    """
    try:
        cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    except OSError as exc:
        raise PKIError(
            f"cannot read the CA in {directory} ({exc.filename}: {exc.strerror}); create one with `pki ca`"
        ) from exc
    except ValueError as exc:
        raise PKIError(f"the CA in {directory} is not a PEM certificate and key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PKIError(f"{directory / CA_KEY} is not an EC key (this CA signs with ECDSA)")
    return cert, key


def issue(
    directory: Path,
    name: str,
    kind: CertKind,
    *,
    common_name: str = "",
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    days: int = DEFAULT_CERT_DAYS,
    force: bool = False,
) -> Issued:
    """A certificate signed by the CA in ``directory``, written as ``<name>.pem`` and ``<name>.key`` there.

    Raises:
        PKIError: a file name that is not plain, existing files without ``force``, no CA,
            bad names (see :func:`make_cert`).
    """
    if not name or "/" in name or name.startswith(".") or name in ("ca",):
        raise PKIError(f"{name!r} cannot name a certificate file (a plain name, not 'ca')")
    paths = (directory / f"{name}.pem", directory / f"{name}.key")
    _refuse_existing(paths, force)
    ca_cert, ca_key = load_ca(directory)
    cert, key = make_cert(
        ca_cert, ca_key, common_name or name, kind, dns_names=dns_names, ip_addresses=ip_addresses, days=days
    )
    try:
        return write_pair(cert, key, *paths)
    except OSError as exc:
        raise PKIError(f"cannot write {paths[0]}: {exc.strerror}") from exc
