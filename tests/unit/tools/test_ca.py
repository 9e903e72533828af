"""tools/ca.py: the interception CA, how it is written, and what its name constraints allow.

The constraints are checked by a real X.509 path verifier (cryptography's, the one pyca ships
for TLS), with leaves signed by the CA the way the proxy's minter signs them.
"""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from egressgate.config.intercept_ca import load_ca
from egressgate.tools import ca

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)


def _leaf(issuer: x509.Certificate, key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(issuer.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(minutes=5))
        .not_valid_after(NOW + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .sign(key, hashes.SHA256())
    )


def _verifies(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, name: str) -> bool:
    verifier = (
        verification.PolicyBuilder()
        .store(verification.Store([cert]))
        .time(NOW)
        .build_server_verifier(verification.DNSName(name))
    )
    try:
        verifier.verify(_leaf(cert, key, name), [])
    except verification.VerificationError:
        return False
    return True


def test_a_ca_is_a_p256_ca_that_signs_leaves_only() -> None:
    cert, key = ca.make_ca(days=30, now=NOW, label="test")
    assert isinstance(key.curve, ec.SECP256R1)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert cert.not_valid_after_utc - cert.not_valid_before_utc == datetime.timedelta(
        days=30, hours=1
    )
    assert cert.subject == cert.issuer
    assert "egressgate interception CA (test)" in cert.subject.rfc4514_string()
    assert _verifies(cert, key, "anything.example")


def test_each_ca_has_its_own_subject() -> None:
    first, _ = ca.make_ca(now=NOW)
    second, _ = ca.make_ca(now=NOW)
    assert first.subject != second.subject


@pytest.mark.parametrize(
    ("hosts", "constraints"),
    [
        (["api.github.com"], ("api.github.com",)),
        ([".github.com"], ("github.com",)),
        (["*.github.com", "API.GitHub.com."], ("github.com", "api.github.com")),
        ([".github.com", "github.com"], ("github.com",)),
    ],
)
def test_constraint_names(hosts: list[str], constraints: tuple[str, ...]) -> None:
    assert ca.constraint_names(hosts) == constraints


@pytest.mark.parametrize("host", ["*", "10.0.0.0/8", "192.0.2.1", "a..b", ""])
def test_constraint_names_refuse_what_is_not_a_name(host: str) -> None:
    with pytest.raises(ca.CaError, match="--name-constraint"):
        ca.constraint_names([host])


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("api.github.com", True),
        ("x.api.github.com", True),  # a DNS constraint covers the names below it
        ("pypi.org", True),
        ("files.pypi.org", True),
        ("github.com", False),
        ("evil.example", False),
        ("api.github.com.evil.example", False),
        ("notpypi.org", False),
    ],
)
def test_name_constraints_hold_in_a_real_verifier(name: str, ok: bool) -> None:
    cert, key = ca.make_ca(ca.constraint_names(["api.github.com", ".pypi.org"]), now=NOW)
    extension = cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert extension.critical
    assert _verifies(cert, key, name) is ok


def test_days_are_bounded() -> None:
    for days in (0, 3651):
        with pytest.raises(ca.CaError, match="--days"):
            ca.make_ca(days=days)


# ---------------------------------------------------------------------------------------------
# write_ca
# ---------------------------------------------------------------------------------------------


def _mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_write_ca_files_modes_and_the_loader_accepts_them(tmp_path: Path) -> None:
    cert, key = ca.make_ca(["api.github.com"])
    files = ca.write_ca(str(tmp_path / "new" / "dir"), cert, key, b"SYSTEM ROOTS\n")
    assert _mode(files.key) == 0o600
    assert _mode(files.cert) == 0o644
    assert files.bundle is not None
    bundle = Path(files.bundle).read_bytes()
    assert bundle.startswith(b"SYSTEM ROOTS\n-----BEGIN CERTIFICATE-----")
    assert bundle.endswith(Path(files.cert).read_bytes())
    assert files.constraints == ("api.github.com",)
    loaded = load_ca(files.cert, files.key)
    assert loaded.cert == cert
    assert sorted(os.listdir(files.directory)) == ["bundle.pem", "ca.crt", "ca.key"]


def test_the_key_never_exists_with_another_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file is complete, with its final mode, before its name appears; with umask 0 too."""
    seen: list[tuple[str, int, int]] = []
    real_link = os.link

    def link(source: str, target: str) -> None:
        seen.append((os.path.basename(target), _mode(source), os.path.getsize(source)))
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    previous = os.umask(0)
    try:
        cert, key = ca.make_ca()
        ca.write_ca(str(tmp_path), cert, key, None)
    finally:
        os.umask(previous)
    assert [(name, mode) for name, mode, _ in seen] == [("ca.key", 0o600), ("ca.crt", 0o644)]
    assert all(size > 0 for _, _, size in seen)
    assert sorted(os.listdir(tmp_path)) == ["ca.crt", "ca.key"]  # no temporary file left


@pytest.mark.parametrize("existing", ["ca.key", "ca.crt", "bundle.pem"])
def test_never_overwrites(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_text("precious\n")
    cert, key = ca.make_ca()
    with pytest.raises(ca.CaError, match=f"already holds {existing}"):
        ca.write_ca(str(tmp_path), cert, key, b"roots\n")
    assert sorted(os.listdir(tmp_path)) == [existing]
    assert (tmp_path / existing).read_text() == "precious\n"


def test_a_dangling_symlink_counts_as_existing(tmp_path: Path) -> None:
    (tmp_path / "ca.key").symlink_to(tmp_path / "elsewhere")
    cert, key = ca.make_ca()
    with pytest.raises(ca.CaError, match=r"already holds ca\.key"):
        ca.write_ca(str(tmp_path), cert, key, None)
    assert not (tmp_path / "elsewhere").exists()


def test_a_race_loses_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another writer creates ca.crt after the check: the link refuses, and the key this run
    wrote is removed again."""
    real_link = os.link

    def link(source: str, target: str) -> None:
        if target.endswith("ca.crt"):
            Path(target).write_text("theirs\n")
        real_link(source, target)

    monkeypatch.setattr(os, "link", link)
    cert, key = ca.make_ca()
    with pytest.raises(ca.CaError, match="appeared meanwhile"):
        ca.write_ca(str(tmp_path), cert, key, None)
    assert sorted(os.listdir(tmp_path)) == ["ca.crt"]
    assert (tmp_path / "ca.crt").read_text() == "theirs\n"


def test_trust_instructions_name_every_runtime(tmp_path: Path) -> None:
    cert, key = ca.make_ca()
    files = ca.write_ca(str(tmp_path), cert, key, b"roots\n")
    text = ca.trust_instructions(files)
    for needle in (
        "update-ca-certificates",
        "update-ca-trust",
        f"REQUESTS_CA_BUNDLE={files.bundle}",
        f"SSL_CERT_FILE={files.bundle}",
        f"NODE_EXTRA_CA_CERTS={files.cert}",
        f"GIT_SSL_CAINFO={files.bundle}",
        f"PIP_CERT={files.bundle}",
        f"keytool -importcert -noprompt -alias egressgate -file {files.cert}",
        f"tls_intercept: {{ca_cert_file: {files.cert}, ca_key_file: {files.key}}}",
        f"egressgate env --ca {files.bundle}",
        "no name constraints",
    ):
        assert needle in text, needle
    assert "BEGIN" not in text


def test_without_a_bundle_the_instructions_say_what_breaks(tmp_path: Path) -> None:
    cert, key = ca.make_ca()
    files = ca.write_ca(str(tmp_path), cert, key, None)
    text = ca.trust_instructions(files)
    assert files.bundle is None
    assert "no system CA bundle found" in text
    assert f"SSL_CERT_FILE={files.cert}" in text
