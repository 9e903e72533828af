"""`egressgate k8s certs`: a private CA and the injection webhook's serving certificate.

For clusters without cert-manager. The API server calls the webhook over TLS and checks its
certificate against the `caBundle` of the MutatingWebhookConfiguration, for the Service's DNS
name (<service>.<namespace>.svc). This module makes an ECDSA P-256 CA (tools/ca.py's `make_ca`,
name-constrained to the Service's names) and a serving pair signed by it, for exactly those
names, and the kubernetes.io/tls Secret (with ca.crt) that the
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

from egressgate.tools import ca

DEFAULT_VALIDITY_DAYS = 825  # the longest leaf validity clients commonly accept


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
    """A new CA (tools/ca.py's, name-constrained to `names`: even a leaked CA could sign
    nothing else) and a serving certificate for `names` (the first is the subject's CN)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_cert, ca_key = ca.make_ca(
        names, days=validity_days, now=now, label=names[0], purpose="injection webhook"
    )
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])])
    leaf = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - ca.BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(ca.key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return WebhookCerts(
        ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
        cert_pem=leaf.public_bytes(serialization.Encoding.PEM),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
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
