"""The interception CA's files: read, checked, and what makes them unusable, in operator words.

Used by config/load.py (so a bad CA is a config error with a line: at start, in `check`, and on
reload, which then keeps the old policy) and by the data path's leaf minter, which signs with the
key this returns. No sockets, no logging.

The key file must be private: a CA key others can read lets them mint certificates every client
of this proxy trusts. The rule is PostgreSQL's for its server key: a key owned by anyone but root
must have no group or other permission (0600 or less); a key owned by root may also be readable
by its group (0640 or less), because that is how an administrator grants one service account
access on purpose: Debian's `ssl-cert` group, and every Kubernetes Secret volume mounted with an
`fsGroup` (root-owned, mode 0440, group = the pod's own group). Never any bit for others, never
group write.
"""

from __future__ import annotations

import datetime
import os
import stat
from dataclasses import dataclass
from typing import TYPE_CHECKING

# `cryptography` is imported where a CA is read, not with this module: config loading imports
# it for every proxy, and only a config with `tls_intercept` needs it (8 MB of RSS and ~35 ms of
# start-up in every process otherwise, a per-pod cost for sidecars).
if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    CaKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
# Permission bits a CA key file must not have (module docstring): any for others, group write
# and execute always, and group read too unless root owns the file.
KEY_FORBIDDEN_MODE_BITS = stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP
KEY_FORBIDDEN_UNLESS_ROOT_BITS = stat.S_IRGRP
MIN_RSA_BITS = 2048


class CaFileError(ValueError):
    """A CA file is unusable; `key` names the config key of the file at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True, slots=True)
class LoadedCa:
    """The CA certificate and its private key, checked to belong together."""

    cert: x509.Certificate
    key: CaKey

    def __repr__(self) -> str:
        return f"LoadedCa(subject={self.cert.subject.rfc4514_string()!r})"


def key_mode_problem(path: str) -> str | None:
    """Why the key file at `path` is not private enough, or None. Follows symlinks (a
    Kubernetes Secret volume links each file to the real one, whose mode is what counts)."""
    try:
        info = os.stat(path)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    forbidden = KEY_FORBIDDEN_MODE_BITS
    if info.st_uid != 0:
        forbidden |= KEY_FORBIDDEN_UNLESS_ROOT_BITS
    if info.st_mode & forbidden:
        return (
            f"the CA key file {path} is accessible by group or others "
            f"(mode {stat.S_IMODE(info.st_mode):04o}); it must be private to its owner: "
            f"chmod 600 {path} (a root-owned key may be 0640: readable by its group)"
        )
    return None


def load_ca(cert_file: str, key_file: str) -> LoadedCa:
    """Read and check the CA pair; CaFileError with an operator-facing reason (never key
    bytes)."""
    from cryptography.hazmat.primitives import serialization

    problem = key_mode_problem(key_file)
    if problem is not None:
        raise CaFileError("ca_key_file", problem)
    cert = _read_cert(cert_file)
    key = _read_key(key_file)
    if cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) != key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ):
        raise CaFileError(
            "ca_key_file", f"the CA key {key_file} does not belong to the certificate {cert_file}"
        )
    return LoadedCa(cert, key)


def _read_bytes(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise CaFileError(what, f"cannot read {what} {path}: {exc.strerror}") from None


def _read_cert(path: str) -> x509.Certificate:
    from cryptography import x509

    data = _read_bytes(path, "ca_cert_file")
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CaFileError("ca_cert_file", f"ca_cert_file {path} is not a PEM certificate") from None
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CaFileError(
            "ca_cert_file",
            f"ca_cert_file {path} is not a CA certificate (no basicConstraints CA:TRUE); "
            "create one with `egressgate ca init`",
        )
    now = datetime.datetime.now(datetime.UTC)
    if cert.not_valid_after_utc <= now:
        raise CaFileError(
            "ca_cert_file",
            f"ca_cert_file {path} expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        )
    if cert.not_valid_before_utc > now:
        raise CaFileError(
            "ca_cert_file",
            f"ca_cert_file {path} is not valid before "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
        )
    return cert


def _read_key(path: str) -> CaKey:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    data = _read_bytes(path, "ca_key_file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CaFileError(
            "ca_key_file",
            f"ca_key_file {path} is encrypted; the proxy needs it unencrypted (mode 0600)",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CaFileError("ca_key_file", f"ca_key_file {path} is not a PEM private key") from None
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise CaFileError(
                "ca_key_file", f"ca_key_file {path}: RSA keys need at least {MIN_RSA_BITS} bits"
            )
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key
    raise CaFileError("ca_key_file", f"ca_key_file {path}: expected an ECDSA or RSA key")
