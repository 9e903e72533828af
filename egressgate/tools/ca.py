"""`egressgate ca init`: the CA that signs the leaf certificates of intercepted hosts.

Owns making the CA (ECDSA P-256: the curve every TLS client accepts, with keys and signatures
an order of magnitude cheaper than RSA-2048 for the leaf minting the proxy does per name),
writing it without ever exposing the key, and telling the operator how each runtime is made to
trust it. Pure except `write_ca` and `find_system_bundle`, which touch files.

Writing (`write_ca`): nothing is ever overwritten, and the key is never readable by anyone but
its owner, not even for an instant: each file is written under a temporary name created with
O_CREAT|O_EXCL and its final mode (0600 for the key, 0644 for certificates; the umask can only
take bits away), flushed, then linked to its final name, which fails if that name exists (a
race with another writer loses cleanly), and the temporary name is removed. A failure removes
what this run created.

Name constraints (`--name-constraint`, RFC 5280 4.2.1.10, critical): the CA can then only vouch
for those domains (a constraint `github.com` covers it and every name below it), and never for
an IP address, so a stolen key is worth much less. Clients enforce them (OpenSSL, Go, NSS,
BoringSSL, the JDK, Apple's and Windows' verifiers).
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import secrets
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from egressgate.names.patterns import DomainPattern, PatternKind

CA_CERT_NAME = "ca.crt"
CA_KEY_NAME = "ca.key"
BUNDLE_NAME = "bundle.pem"
DEFAULT_VALIDITY_DAYS = 365
KEY_MODE = 0o600
CERT_MODE = 0o644
# Clocks of clients may lag the proxy's: the CA is valid from a little before it was made.
BACKDATE = datetime.timedelta(hours=1)
# Where distributions keep the system's CA bundle, tried after Python's own idea of it.
SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",  # RHEL, Fedora, CentOS
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, BSDs, Alpine
)


class CaError(Exception):
    """The CA cannot be made or written; the message is for the operator."""


@dataclass(frozen=True, slots=True)
class CaFiles:
    """What `write_ca` wrote."""

    directory: str
    cert: str
    key: str
    bundle: str | None  # the system's CAs plus this one; None without a system bundle
    not_after: datetime.datetime
    constraints: tuple[str, ...]


def constraint_names(hosts: Sequence[str]) -> tuple[str, ...]:
    """--name-constraint values (the allowlist's name forms) → DNS name constraints.

    `api.github.com` → `api.github.com`; `.github.com` and `*.github.com` → `github.com` (a
    DNS constraint covers the name and everything below it; subdomains-only has no portable
    spelling). Raises CaError for addresses, `*` and malformed names."""
    names: dict[str, None] = {}
    for host in hosts:
        try:
            pattern = DomainPattern.parse(host)
        except ValueError as exc:
            raise CaError(f"--name-constraint {exc}") from None
        if pattern.kind in (PatternKind.ANY, PatternKind.NETWORK):
            raise CaError(f"--name-constraint {host!r}: give a host name or domain")
        names.setdefault(pattern.name, None)
    return tuple(names)


def make_ca(
    constraints: Sequence[str] = (),
    *,
    days: int = DEFAULT_VALIDITY_DAYS,
    now: datetime.datetime | None = None,
    label: str | None = None,
    purpose: str = "interception",
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new self-signed CA (certificate, key). `constraints` are DNS names (constraint_names).
    `purpose` names it in the subject (the injection webhook's CA: tools/k8s_certs.py)."""
    if not 1 <= days <= 3650:
        raise CaError(f"--days {days}: give 1 to 3650 days")
    now = now or datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    # A unique subject per CA: clients that cache issuers by name never confuse two of them.
    tag = label or f"{socket.gethostname()} {now:%Y-%m-%d} {secrets.token_hex(4)}"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "egressgate"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"egressgate {purpose} CA ({tag})"[:64]),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        # path_length=0: it signs leaf certificates only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(key_usage(), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )
    if constraints:
        builder = builder.add_extension(_name_constraints(constraints), critical=True)
    return builder.sign(key, hashes.SHA256()), key


def key_usage(*, ca: bool = True) -> x509.KeyUsage:
    """Signatures only (ECDSA); a CA also signs certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name_constraints(names: Sequence[str]) -> x509.NameConstraints:
    # The excluded IP ranges cover every address: with only DNS names permitted, an IP SAN
    # would otherwise not be constrained at all (RFC 5280: constraints apply per name form).
    return x509.NameConstraints(
        permitted_subtrees=[x509.DNSName(n) for n in names],
        excluded_subtrees=[
            x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
            x509.IPAddress(ipaddress.ip_network("::/0")),
        ],
    )


def find_system_bundle() -> str | None:
    """The system's CA bundle file, or None when this machine has none we know of."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, *SYSTEM_BUNDLES):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def write_ca(
    directory: str,
    cert: x509.Certificate,
    key: ec.EllipticCurvePrivateKey,
    system_bundle: bytes | None,
) -> CaFiles:
    """Write ca.key (0600), ca.crt and, with `system_bundle`, bundle.pem into `directory`.

    Refuses (CaError) if any of them exists; never overwrites (module docstring)."""
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    plan = [(CA_KEY_NAME, key_pem, KEY_MODE), (CA_CERT_NAME, cert_pem, CERT_MODE)]
    if system_bundle is not None:
        bundle = system_bundle.rstrip(b"\n") + b"\n" + cert_pem
        plan.append((BUNDLE_NAME, bundle, CERT_MODE))
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise CaError(f"cannot create {directory}: {exc.strerror}") from None
    existing = [name for name, _, _ in plan if os.path.lexists(os.path.join(directory, name))]
    if existing:
        raise CaError(
            f"{directory} already holds {', '.join(existing)}: refusing to overwrite a CA "
            "(move it away first, or give another --out)"
        )
    written: list[str] = []
    try:
        for name, data, mode in plan:
            path = os.path.join(directory, name)
            _write_new(path, data, mode)
            written.append(path)
    except BaseException:
        for path in written:
            with contextlib.suppress(OSError):
                os.unlink(path)
        raise
    return CaFiles(
        directory=directory,
        cert=os.path.join(directory, CA_CERT_NAME),
        key=os.path.join(directory, CA_KEY_NAME),
        bundle=os.path.join(directory, BUNDLE_NAME) if system_bundle is not None else None,
        not_after=cert.not_valid_after_utc,
        constraints=tuple(_constraints_of(cert)),
    )


def _write_new(path: str, data: bytes, mode: int) -> None:
    """Create `path` with `data` and `mode`; CaError if it exists. Never another mode."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(temporary, flags, mode)
    except OSError as exc:
        raise CaError(f"cannot create {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # exactly this mode, whatever the umask kept
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)  # fails if `path` exists: never an overwrite
        except FileExistsError:
            raise CaError(f"{path} appeared meanwhile: refusing to overwrite it") from None
        except OSError as exc:
            raise CaError(f"cannot create {path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(temporary)


def _constraints_of(cert: x509.Certificate) -> list[str]:
    try:
        extension = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    except x509.ExtensionNotFound:
        return []
    return [str(n.value) for n in extension.permitted_subtrees or () if isinstance(n, x509.DNSName)]


def trust_instructions(files: CaFiles) -> str:
    """What to tell the operator after `ca init`: the config lines, and how each runtime is
    made to trust the CA (measured runtimes of issue 16)."""
    bundle = files.bundle or files.cert
    lines = [
        f"Created {files.cert} (the CA certificate: clients trust it)",
        f"        {files.key} (its private key, mode 0600: only the proxy may read it)",
    ]
    if files.bundle is not None:
        lines.append(f"        {files.bundle} (the system's CA bundle plus this CA)")
    lines += [
        f"Valid until {files.not_after:%Y-%m-%d %H:%M} UTC; "
        + (
            "name constraints: " + ", ".join(files.constraints)
            if files.constraints
            else "no name constraints (it can vouch for any name; see --name-constraint)"
        ),
        "",
        "In the egressgate config:",
        f"  tls_intercept: {{ca_cert_file: {files.cert}, ca_key_file: {files.key}}}",
        "",
        "Make the clients of intercepted hosts trust it (docs/interception.md):",
        "  system store, Debian/Ubuntu/Alpine:",
        f"    cp {files.cert} /usr/local/share/ca-certificates/egressgate.crt "
        "&& update-ca-certificates",
        "  system store, RHEL/Fedora:",
        f"    cp {files.cert} /etc/pki/ca-trust/source/anchors/egressgate.crt && update-ca-trust",
        "  Python requests, pip (their own CA store, replaced by these):",
        f"    REQUESTS_CA_BUNDLE={bundle}  PIP_CERT={bundle}",
        "  OpenSSL-based clients, curl, httpx, Go, Ruby (replace the default store):",
        f"    SSL_CERT_FILE={bundle}  CURL_CA_BUNDLE={bundle}",
        "  Node.js (adds to its store):",
        f"    NODE_EXTRA_CA_CERTS={files.cert}",
        "  git:",
        f"    GIT_SSL_CAINFO={bundle}",
        "  the JVM truststore:",
        f"    keytool -importcert -noprompt -alias egressgate -file {files.cert} "
        '-keystore "$JAVA_HOME/lib/security/cacerts" -storepass changeit',
        "  every variable at once, for a shell, Docker, Kubernetes...:",
        f"    egressgate env --ca {bundle} [--proxy http://HOST:3128] [--format ...]",
    ]
    if files.bundle is None:
        lines += [
            "",
            "warning: no system CA bundle found, so no bundle.pem: the variables that REPLACE "
            "a store (all but NODE_EXTRA_CA_CERTS) would then trust only this CA, and hosts "
            "that are tunnelled, not intercepted, would fail. Concatenate the system's CAs and "
            f"{files.cert} into one file (or give --system-bundle FILE) and use that instead.",
        ]
    return "\n".join(lines) + "\n"
