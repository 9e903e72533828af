"""The README's quick start works as written: its config is valid, and every URL it fetches
through the proxy is allowed by that config and names a host that exists in public DNS.

Issue 18: the quick start allowed `api.example.com`, which has no DNS record, so a newcomer's
first allowed request ended in `502 dns-nxdomain`. Nothing here touches the network: the names
are checked against the IANA-reserved example domains (RFC 2606 §3: example.com, example.net
and example.org are registered and answered), and the decision is the policy engine's.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

from egressgate.config.load import load_config_text
from egressgate.names.hostname import normalize_host
from egressgate.policy.decision import ClientIdentity, Target, Verdict
from egressgate.policy.engine import PolicySet

ROOT = Path(__file__).resolve().parents[2]
RESOLVING = {"example.com", "www.example.com", "example.org", "www.example.org", "example.net"}


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Quick start")
    return readme[start : readme.index("\n## ", start + 1)]


def test_the_quick_start_config_is_valid_and_allows_what_it_fetches() -> None:
    section = quick_start()
    yaml_text = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert yaml_text is not None
    policies = PolicySet.compile(load_config_text(yaml_text.group(1), "egress.yaml"))
    allowed = re.findall(r"curl -x http://127\.0\.0\.1:3128 (\S+)", section)
    assert len(allowed) >= 2, "the quick start shows an allowed https:// and http:// request"
    client = ClientIdentity(ipaddress.ip_address("127.0.0.1"))
    for url in allowed:
        parts = urlsplit(url)
        assert parts.hostname in RESOLVING, f"{url}: use a name that exists in public DNS"
        port = parts.port or (443 if parts.scheme == "https" else 80)
        target = Target(normalize_host(parts.hostname), port, parts.scheme == "https")
        decision = policies.decide(client, target)
        assert decision.verdict is Verdict.ALLOW, f"{url}: {decision}"


def test_the_quick_start_says_what_happens_without_internet() -> None:
    assert "Without internet access" in quick_start()
