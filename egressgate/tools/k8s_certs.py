"""`egressgate k8s certs`: a private CA and the injection webhook's serving certificate.

For clusters without cert-manager. The API server calls the webhook over TLS and checks its
certificate against the `caBundle` of the MutatingWebhookConfiguration, for the Service's DNS
name (<service>.<namespace>.svc). This module makes an ECDSA P-256 CA and a serving pair
signed by it, for exactly those names, and the kubernetes.io/tls Secret (with ca.crt) that the
webhook Deployment mounts; `k8s render --inject --ca-bundle ca.crt` puts the CA into caBundle.
The CA's key is not kept: to rotate, generate a new set and apply both again.

Pure apart from the randomness of the keys: no files, no cluster access (the CLI writes).
"""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_VALIDITY_DAYS = 825  # the longest leaf validity clients commonly accept
_BACKDATE = datetime.timedelta(minutes=5)  # clock skew between this machine and the cluster


@dataclass(frozen=True, slots=True)
class WebhookCerts:
    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes


def service_names(service: str, namespace: str) -> list[str]:
    """The names the API server may use for the Service (it uses <svc>.<ns>.svc)."""
    return [
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        f"{service}.{namespace}",
        service,
    ]


def generate(names: list[str], validity_days: int = DEFAULT_VALIDITY_DAYS) -> WebhookCerts:
    """A new CA and a serving certificate for `names` (the first is the subject's CN)."""
    now = datetime.datetime.now(datetime.UTC) - _BACKDATE
    until = now + datetime.timedelta(days=validity_days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egressgate-inject CA")])
    ca = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    leaf = (
        _builder(subject, ca_name, key.public_key(), now, until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return WebhookCerts(
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
        cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    start: datetime.datetime,
    end: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def tls_secret(certs: WebhookCerts, name: str, namespace: str) -> dict[str, Any]:
    """The kubernetes.io/tls Secret the webhook mounts (tls.crt, tls.key, ca.crt)."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/name": "egressgate",
                "app.kubernetes.io/component": "inject",
                "app.kubernetes.io/managed-by": "egressgate-k8s-certs",
            },
        },
        "data": {
            "tls.crt": b64(certs.cert_pem),
            "tls.key": b64(certs.key_pem),
            "ca.crt": b64(certs.ca_pem),
        },
    }


def ca_bundle(ca_pem: bytes) -> str:
    """The caBundle field: the CA's PEM, base64 (the field is []byte)."""
    x509.load_pem_x509_certificate(ca_pem)  # ValueError if this is not a certificate
    return base64.b64encode(ca_pem).decode("ascii")
