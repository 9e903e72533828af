"""`HarnessCA`: a throw-away certificate authority (trustme) for TLS and mTLS tests.

    ca = HarnessCA(tmp_dir)                    # the session fixture `test_ca` in conftest.py
    ca.ca_pem_path                             # for curl --cacert, openssl -CAfile, ssl cafile
    cert = ca.server_cert("allowed.test", "127.0.0.1")
    ctx = ca.server_context("allowed.test")    # ssl.SSLContext for a server presenting that cert
    client = ca.client_cert("app-1", "app-1.test", "app-1@test.invalid")
    ctx = ca.client_context(client)            # trusts the CA, presents the client cert

Every certificate and key is also written to PEM files in the CA's directory, so that external
tools (curl, openssl, the proxy's config) can use them.
"""

from __future__ import annotations

import datetime
import itertools
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class IssuedCert:
    """A leaf certificate and its key, in memory and on disk."""

    common_name: str | None
    identities: tuple[str, ...]  # the SANs (DNS names, IPs, URIs, e-mail addresses)
    leaf: trustme.LeafCert
    cert_path: Path  # the leaf certificate alone
    chain_path: Path  # leaf followed by any intermediates (what a server presents)
    key_path: Path  # the private key, unencrypted PEM
    combined_path: Path  # key + chain in one file (curl --cert, openssl -cert with the key)

    @property
    def cert_pem(self) -> bytes:
        return self.leaf.cert_chain_pems[0].bytes()

    @property
    def key_pem(self) -> bytes:
        return self.leaf.private_key_pem.bytes()

    def x509(self) -> x509.Certificate:
        """The parsed leaf certificate (for assertions on subject, SANs, validity)."""
        return x509.load_pem_x509_certificate(self.cert_pem)

    def configure(self, context: ssl.SSLContext) -> None:
        """Load this certificate and key into an `ssl.SSLContext`."""
        self.leaf.configure_cert(context)


class HarnessCA:
    """A test CA; issues server certificates (by host names/IPs) and client certificates.

    Not named Test* so that pytest never tries to collect it.
    """

    def __init__(self, directory: Path, *, name: str = "egressgate test CA") -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA(organization_name=name)
        self.ca_pem_path = self.directory / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem_path))
        self._serial = itertools.count(1)

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def _issue(
        self,
        kind: str,
        identities: tuple[str, ...],
        common_name: str | None,
        not_after: datetime.datetime | None,
    ) -> IssuedCert:
        leaf = self.ca.issue_cert(*identities, common_name=common_name, not_after=not_after)
        label = re.sub(r"[^A-Za-z0-9.-]+", "_", common_name or (identities or ("cert",))[0])[:60]
        stem = self.directory / f"{kind}-{next(self._serial)}-{label}"
        cert_path = stem.with_name(stem.name + ".crt")
        chain_path = stem.with_name(stem.name + ".chain.pem")
        key_path = stem.with_name(stem.name + ".key")
        combined_path = stem.with_name(stem.name + ".pem")
        leaf.cert_chain_pems[0].write_to_path(str(cert_path))
        chain_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key_path))
        leaf.private_key_and_cert_chain_pem.write_to_path(str(combined_path))
        return IssuedCert(
            common_name, identities, leaf, cert_path, chain_path, key_path, combined_path
        )

    def server_cert(
        self, *identities: str, not_after: datetime.datetime | None = None
    ) -> IssuedCert:
        """A server certificate whose SANs are `identities` (host names and/or IP literals)."""
        if not identities:
            raise ValueError("a server certificate needs at least one host name or IP")
        return self._issue("server", identities, None, not_after)

    def client_cert(
        self,
        common_name: str,
        *sans: str,
        not_after: datetime.datetime | None = None,
    ) -> IssuedCert:
        """A client certificate with subject CN `common_name` and the given SANs (DNS names, IP
        literals or e-mail addresses; trustme cannot make URI SANs). trustme's leaves carry both
        the clientAuth and serverAuth extended key usages."""
        return self._issue("client", sans, common_name, not_after)

    def server_context(
        self, *identities: str, client_ca: HarnessCA | None = None
    ) -> ssl.SSLContext:
        """A server-side context presenting a fresh certificate for `identities`; with `client_ca`
        it requires a client certificate issued by that CA (mTLS)."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.server_cert(*identities).configure(context)
        if client_ca is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            client_ca.ca.configure_trust(context)
        return context

    def client_context(self, client_cert: IssuedCert | None = None) -> ssl.SSLContext:
        """A client-side context that trusts this CA (and only it), optionally presenting
        `client_cert`."""
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.ca_pem_path))
        if client_cert is not None:
            client_cert.configure(context)
        return context


def subject_common_name(cert: x509.Certificate) -> str | None:
    """The subject CN of a parsed certificate, if it has one."""
    attributes = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attributes[0].value) if attributes else None


def subject_alt_names(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses (as text) in a parsed certificate's SAN extension."""
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(ext.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    names += list(ext.get_values_for_type(x509.RFC822Name))
    names += list(ext.get_values_for_type(x509.UniformResourceIdentifier))
    return names
