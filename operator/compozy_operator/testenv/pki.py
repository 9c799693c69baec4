"""Certificates and keys for the local cluster: a CA, the apiserver's serving certificate,
an admin client certificate (group ``system:masters``) and the service-account signing key; and
a CA with a loopback serving certificate for a TLS NATS server (:func:`write_loopback_tls`)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=365)
APISERVER_NAMES = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IPS = ("127.0.0.1", "10.0.0.1")
ADMIN_USER, ADMIN_GROUP = "compozy-admin", "system:masters"  # the local kubeconfig's identity


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files written by :func:`write_pki`."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    sa_key: Path
    sa_pub: Path


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    usage: list[x509.ObjectIdentifier] | None = None,
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write_pki(directory: Path) -> Pki:
    """Generate every certificate and key the control plane needs into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(*(directory / n for n in (
        "ca.crt", "ca.key", "apiserver.crt", "apiserver.key", "admin.crt", "admin.key", "sa.key", "sa.pub",
    )))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("compozy-local-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)

    serving_key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in APISERVER_NAMES]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in APISERVER_IPS]
    serving = _cert(
        _name("kube-apiserver"), serving_key, ca_name, ca_key,
        usage=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans,
    )
    admin_key = ec.generate_private_key(ec.SECP256R1())
    admin = _cert(
        _name(ADMIN_USER, ADMIN_GROUP), admin_key, ca_name, ca_key,
        usage=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    pem = serialization.Encoding.PEM
    files = {
        pki.ca_cert: ca.public_bytes(pem),
        pki.ca_key: _key_pem(ca_key),
        pki.serving_cert: serving.public_bytes(pem),
        pki.serving_key: _key_pem(serving_key),
        pki.admin_cert: admin.public_bytes(pem),
        pki.admin_key: _key_pem(admin_key),
        pki.sa_key: _key_pem(sa_key),
        pki.sa_pub: sa_key.public_key().public_bytes(pem, serialization.PublicFormat.SubjectPublicKeyInfo),
    }
    for path, data in files.items():
        path.write_bytes(data)
        path.chmod(0o600)
    return pki


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    cert: Path
    key: Path


def write_loopback_tls(directory: Path, cn: str) -> TlsFiles:
    """A fresh CA and a serving certificate for ``localhost`` / ``127.0.0.1`` signed by it."""
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"{cn}-ca")
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = _cert(_name(cn), key, ca_name, ca_key, usage=[ExtendedKeyUsageOID.SERVER_AUTH], sans=sans)
    pem = serialization.Encoding.PEM
    for path, data in ((files.ca_cert, ca.public_bytes(pem)), (files.cert, cert.public_bytes(pem)),
                       (files.key, _key_pem(key))):
        path.write_bytes(data)
        path.chmod(0o600)
    return files


def write_client_certificate(directory: Path, cn: str, org: str | None = None,
                             ca: tuple[Path, Path] | None = None) -> tuple[Path, Path]:
    """A user's client certificate (CN the user, O a group) signed by ``ca`` (its certificate and key
    files, e.g. the cluster's), or self-signed without one; returns (certificate, key) files."""
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    if ca is None:
        issuer, issuer_key = _name(cn, org), key
    else:
        issuer_cert = x509.load_pem_x509_certificate(ca[0].read_bytes())
        loaded = serialization.load_pem_private_key(ca[1].read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        issuer, issuer_key = issuer_cert.subject, loaded
    cert = _cert(_name(cn, org), key, issuer, issuer_key, usage=[ExtendedKeyUsageOID.CLIENT_AUTH])
    files = (directory / f"{cn}.crt", directory / f"{cn}.key")
    files[0].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files[1].write_bytes(_key_pem(key))
    files[1].chmod(0o600)
    return files
