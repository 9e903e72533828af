"""runtime/reload.load_generation with TLS interception: every generation reads its secrets
anew (what a reload runs), and one that cannot be read fails that generation only."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from egressgate.errors import ConfigError
from egressgate.names.hostname import normalize_host
from egressgate.runtime.reload import load_generation
from egressgate.tools import ca

CONFIG = """\
tls_intercept: {ca_cert_file: ca/ca.crt, ca_key_file: ca/ca.key}
allow: [api.example.test]
intercept:
  - host: api.example.test
    rules: [{methods: [GET]}]
    set_headers: {Authorization: "Bearer file:token"}
"""


def _header(path: Path, number: int) -> bytes:
    generation = load_generation(str(path), number, reloading=True)
    host = generation.policies.default.intercept.for_host(normalize_host("api.example.test"))
    assert host is not None
    ((name, value),) = host.set_headers
    assert name == b"authorization"
    return value


def test_each_generation_reads_the_secret_anew(tmp_path: Path) -> None:
    cert, key = ca.make_ca(["example.test"])
    ca.write_ca(str(tmp_path / "ca"), cert, key, None)
    config = tmp_path / "egress.yaml"
    config.write_text(CONFIG)
    token = tmp_path / "token"
    token.write_text("first-secret-value\n")
    assert _header(config, 1) == b"Bearer first-secret-value"
    token.write_text("second-secret-value\n")  # the config text is unchanged
    assert _header(config, 2) == b"Bearer second-secret-value"
    os.unlink(token)
    with pytest.raises(ConfigError) as caught:
        load_generation(str(config), 3, reloading=True)
    (issue,) = caught.value.issues
    assert (issue.file, issue.line) == (str(config), 6)
    assert f"cannot read the secret file {token}" in issue.message
