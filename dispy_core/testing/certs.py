"""Throw-away certificates for tests: a pinned self-signed pair (dispy's classic model) or a small CA.

Certificates name 127.0.0.1, ::1 and localhost so either verification style works on loopback, and are
valid from yesterday (clock skew between test runners) to a month ahead.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["make_self_signed", "make_ca_and_leaf"]


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san() -> x509.SubjectAlternativeName:
    return x509.SubjectAlternativeName([
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("localhost"),
    ])


def _builder(subject: x509.Name, issuer: x509.Name,
             key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, private: bool = False) -> Path:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)
    return path


_LEAF_USAGE = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def make_self_signed(dir: Path, common_name: str = "dispy-test",
                     key_in_cert: bool = False) -> tuple[Path, Path]:
    """A self-signed certificate both peers hold (and pin); returns ``(certfile, keyfile)``.

    With ``key_in_cert`` the key is appended to the certificate file and both paths are that file, as
    old dispy setups often had it. Marked CA:TRUE like ``openssl req -x509`` output, so it can be its
    own trust anchor with any verifier.
    """
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    name = _name(common_name)
    cert = (_builder(name, name, key)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False, key_agreement=True,
                                         key_cert_sign=True, crl_sign=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .add_extension(_LEAF_USAGE, critical=False)
            .add_extension(_san(), critical=False)
            .sign(key, hashes.SHA256()))
    stem = common_name.replace("/", "_") or "cert"
    certfile = dir / f"{stem}.pem"
    if key_in_cert:
        _write(certfile, _cert_pem(cert) + _key_pem(key), private=True)
        return certfile, certfile
    _write(certfile, _cert_pem(cert))
    keyfile = _write(dir / f"{stem}.key", _key_pem(key), private=True)
    return certfile, keyfile


def make_ca_and_leaf(dir: Path, common_name: str = "dispy-test") -> tuple[Path, Path, Path]:
    """A CA and one leaf it signed, usable as server and client cert: ``(cafile, certfile, keyfile)``."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_name = _name(f"{common_name} CA")
    ca_cert = (_builder(ca_name, ca_name, ca_key)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    leaf_key = _new_key()
    leaf_cert = (_builder(_name(common_name), ca_name, leaf_key)
                 .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                 .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False,
                                              key_encipherment=False, data_encipherment=False,
                                              key_agreement=True, key_cert_sign=False, crl_sign=False,
                                              encipher_only=False, decipher_only=False), critical=True)
                 .add_extension(_LEAF_USAGE, critical=False)
                 .add_extension(_san(), critical=False)
                 .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                critical=False)
                 .sign(ca_key, hashes.SHA256()))
    cafile = _write(dir / "ca.pem", _cert_pem(ca_cert))
    certfile = _write(dir / f"{common_name}-leaf.pem", _cert_pem(leaf_cert))
    keyfile = _write(dir / f"{common_name}-leaf.key", _key_pem(leaf_key), private=True)
    return cafile, certfile, keyfile
