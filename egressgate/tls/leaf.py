"""Leaf certificates for TLS interception: one per server name, signed by the operator's CA.

`LeafMinter` holds the CA (certificate and key objects: config/intercept_ca.py reads and checks
the files)
and one ECDSA P-256 key for the whole process. `context_for(name)` returns a server-side
`ssl.SSLContext` presenting a certificate for `name` (SAN dNSName, serverAuth, not a CA, valid
`validity_s` from a few minutes ago, never beyond the CA's own end), ALPN `http/1.1` only:

- Minting costs one signature by the CA key (no key generation: the leaf key is shared, see
  docs/threat-model.md for why that is sound) plus building the SSLContext.
- A bounded LRU (`cache_entries`) keeps the context per name, so a repeated name costs a dict
  lookup. An entry is minted again once half its validity has passed, so no client ever sees a
  certificate about to expire.

The key and certificate reach OpenSSL through an anonymous memory file (memfd): the leaf key
is never written to a file system.

Why one SSLContext per name and not one context with an `sni_callback`: the interception path
reads the ClientHello itself before any TLS object exists (the SNI check), so it knows the name
and picks the context directly; a callback would add a Python call into every handshake and
still need one context per certificate (OpenSSL binds the certificate to the context).
Measured (memory BIOs, client + server handshake): the same CPU within noise either way.
"""

from __future__ import annotations

import datetime
import os
import secrets
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ALPN_HTTP1 = ("http/1.1",)
# Clock skew between proxy and clients: a leaf is valid from this long before it is minted.
BACKDATE_S = 300.0
_SIGNING_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)


class CAError(ValueError):
    """The CA certificate or key cannot be used to sign leaves (message says why, never the key)."""


@dataclass(slots=True)
class _Entry:
    context: ssl.SSLContext
    renew_at: float  # time.time() after which the name is minted again


class LeafMinter:
    """Mints and caches per-name server contexts (see the module docstring). Not thread-safe:
    used from the event loop only."""

    __slots__ = (
        "_ca_cert",
        "_ca_key",
        "_cache",
        "_chain_pem",
        "_key_pem",
        "_leaf_key",
        "_ski",
        "cache_entries",
        "minted",
        "validity_s",
    )

    def __init__(
        self,
        ca_cert: x509.Certificate,
        ca_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
        cache_entries: int,
        validity_s: float,
    ) -> None:
        """A CA pair already checked to belong together (config/intercept_ca.py load_ca)."""
        self._ca_cert = ca_cert
        self._ca_key = ca_key
        try:  # the leaves' authority key identifier is the CA's own subject key identifier
            self._ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        except x509.ExtensionNotFound:
            self._ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._chain_pem = self._ca_cert.public_bytes(serialization.Encoding.PEM)
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self.cache_entries = max(1, cache_entries)
        self.validity_s = validity_s
        self.minted = 0  # leaves signed so far (tests and the bench count them)

    @classmethod
    def from_pem(
        cls, ca_cert_pem: bytes, ca_key_pem: bytes, cache_entries: int, validity_s: float
    ) -> LeafMinter:
        """From PEM bytes, checking what load_ca checks for files (for the tests)."""
        try:
            cert = x509.load_pem_x509_certificate(ca_cert_pem)
        except ValueError as exc:
            raise CAError(f"the CA certificate is not a PEM certificate: {exc}") from None
        try:
            key = serialization.load_pem_private_key(ca_key_pem, password=None)
        except (ValueError, TypeError) as exc:
            raise CAError(f"the CA key is not an unencrypted PEM private key ({exc})") from None
        if not isinstance(key, _SIGNING_KEYS):
            raise CAError("the CA key must be an EC or RSA key")
        spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*spki) != cert.public_key().public_bytes(*spki):
            raise CAError("the CA key does not belong to the CA certificate")
        return cls(cert, key, cache_entries, validity_s)

    def context_for(self, name: str) -> ssl.SSLContext:
        """The server context for `name` (a normalized DNS name), minted on a cache miss."""
        cache = self._cache
        entry = cache.get(name)
        now = time.time()
        if entry is not None and now < entry.renew_at:
            cache.move_to_end(name)
            return entry.context
        context, not_after = self._mint(name, now)
        cache[name] = _Entry(context, now + (not_after - now) / 2)
        cache.move_to_end(name)
        while len(cache) > self.cache_entries:
            cache.popitem(last=False)
        return context

    def certificate_pem(self, name: str) -> bytes:
        """A freshly minted leaf for `name` as PEM (for the tests: they inspect what is minted)."""
        return self._certificate(name, time.time())[0].public_bytes(serialization.Encoding.PEM)

    def _certificate(self, name: str, now: float) -> tuple[x509.Certificate, float]:
        ca = self._ca_cert
        not_before = now - BACKDATE_S
        not_after = min(now + self.validity_s, ca.not_valid_after_utc.timestamp())
        if not_after <= now:
            raise CAError("the CA certificate has expired")
        utc = datetime.UTC
        # The CN, when there is one, is the name itself: OpenSSL checks a hostname-like CN
        # against a CA's name constraints (`egressgate ca init`). A name too long for a CN gets
        # an empty subject and a critical SAN (RFC 5280 4.2.1.6).
        cn = len(name) <= 64
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if cn else [])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1)
            .not_valid_before(datetime.datetime.fromtimestamp(not_before, utc))
            .not_valid_after(datetime.datetime.fromtimestamp(not_after, utc))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=not cn)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
        )
        algorithm = hashes.SHA256()
        return builder.sign(self._ca_key, algorithm), not_after

    def _mint(self, name: str, now: float) -> tuple[ssl.SSLContext, float]:
        cert, not_after = self._certificate(name, now)
        self.minted += 1
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(list(ALPN_HTTP1))
        # The leaf then the CA: clients that trust the CA need nothing else.
        chain = cert.public_bytes(serialization.Encoding.PEM) + self._chain_pem
        _load_from_memory(context, chain, self._key_pem)
        return context, not_after


def _load_from_memory(context: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """`load_cert_chain` from bytes: OpenSSL reads paths, so hand it anonymous memory files."""
    chain_fd = os.memfd_create("egressgate-leaf-chain", os.MFD_CLOEXEC)
    key_fd = os.memfd_create("egressgate-leaf-key", os.MFD_CLOEXEC)
    try:
        os.write(chain_fd, chain_pem)
        os.write(key_fd, key_pem)
        context.load_cert_chain(f"/proc/self/fd/{chain_fd}", f"/proc/self/fd/{key_fd}")
    finally:
        os.close(chain_fd)
        os.close(key_fd)
