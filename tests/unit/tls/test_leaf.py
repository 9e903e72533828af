"""tls/leaf.py: minted leaves verify against the CA, are cached per name, and are bounded."""

from __future__ import annotations

import ssl
import time

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from egressgate.tls.leaf import CAError, LeafMinter


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, name: str) -> ssl.SSLObject:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    tls_client = client.wrap_bio(c_in, c_out, server_hostname=name)
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):
        for side in (tls_client, tls_server):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    return tls_client


def test_leaf_verifies_for_its_name_with_http11_alpn(ca: trustme.CA) -> None:
    minter = LeafMinter.from_pem(ca.cert_pem.bytes(), ca.private_key_pem.bytes(), 8, 3600)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.set_alpn_protocols(["h2", "http/1.1"])
    tls = _handshake(minter.context_for("api.example.test"), client, "api.example.test")
    assert tls.selected_alpn_protocol() == "http/1.1"
    assert tls.getpeercert()["subjectAltName"] == (("DNS", "api.example.test"),)


def test_leaf_is_short_lived_ecdsa_and_not_a_ca(ca: trustme.CA) -> None:
    minter = LeafMinter.from_pem(ca.cert_pem.bytes(), ca.private_key_pem.bytes(), 8, 3600)
    cert = x509.load_pem_x509_certificate(minter.certificate_pem("a.test"))
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"  # type: ignore[attr-defined]
    lifetime = cert.not_valid_after_utc.timestamp() - time.time()
    assert 3000 < lifetime <= 3600
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_repeated_names_are_cached_and_the_cache_is_bounded(ca: trustme.CA) -> None:
    minter = LeafMinter.from_pem(ca.cert_pem.bytes(), ca.private_key_pem.bytes(), 2, 3600)
    first = minter.context_for("a.test")
    assert minter.context_for("a.test") is first
    assert minter.minted == 1
    minter.context_for("b.test")
    minter.context_for("a.test")  # a is the most recent now
    minter.context_for("c.test")  # evicts b
    assert minter.minted == 3
    minter.context_for("a.test")
    assert minter.minted == 3
    minter.context_for("b.test")
    assert minter.minted == 4


def test_a_key_of_another_certificate_is_refused(ca: trustme.CA) -> None:
    other = trustme.CA()
    with pytest.raises(CAError, match="does not belong"):
        LeafMinter.from_pem(ca.cert_pem.bytes(), other.private_key_pem.bytes(), 8, 3600)
    with pytest.raises(CAError, match="not a PEM certificate"):
        LeafMinter.from_pem(b"junk", ca.private_key_pem.bytes(), 8, 3600)


def test_a_name_too_long_for_a_cn_gets_an_empty_subject_and_a_critical_san(ca: trustme.CA) -> None:
    minter = LeafMinter.from_pem(ca.cert_pem.bytes(), ca.private_key_pem.bytes(), 8, 3600)
    name = "a" * 60 + ".example.test"
    cert = x509.load_pem_x509_certificate(minter.certificate_pem(name))
    assert len(cert.subject) == 0
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.DNSName) == [name]
    client = ssl.create_default_context()
    ca.configure_trust(client)
    tls = _handshake(minter.context_for(name), client, name)
    assert tls.getpeercert()["subjectAltName"] == (("DNS", name),)


def test_leaves_of_a_name_constrained_ca_verify_inside_its_names_only() -> None:
    """`egressgate ca init --name-constraint`: a leaf for a permitted name verifies, one for any
    other name is refused by the client's own X.509 checks (the CN is the name, never a
    different string that would trip or dodge the constraint)."""
    from cryptography.hazmat.primitives import serialization

    from egressgate.tools.ca import make_ca

    cert, key = make_ca(["example.test"])
    minter = LeafMinter(cert, key, 8, 3600)
    client = ssl.create_default_context()
    client.load_verify_locations(cadata=cert.public_bytes(serialization.Encoding.PEM).decode())
    tls = _handshake(minter.context_for("api.example.test"), client, "api.example.test")
    assert tls.getpeercert()["subjectAltName"] == (("DNS", "api.example.test"),)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"name constraint|permitted"):
        _handshake(minter.context_for("api.other.test"), client, "api.other.test")
