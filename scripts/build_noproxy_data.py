#!/usr/bin/env python3
"""Derive `egressgate/data/noproxy_matrix.json` from the measured `reference/noproxy/matrix.json`.

This script owns the translation from raw measurements (one record per client x case, see
reference/noproxy/README.md) to the compact per-runtime rule set that `egressgate.tools.noproxy`
interprets: which variables each runtime reads, how it treats each kind of NO_PROXY entry and
each proxy-URL form.

Every rule value comes from a named matrix cell ("probe"). Two things can hide a cell:
  * the runtime ignores the proxy variables altogether (Java, aiohttp default, Node fetch);
    its rules are then irrelevant and recorded as null;
  * a built-in loopback bypass (Go for loopback literals, Ruby for names that *resolve* to
    loopback) answered before NO_PROXY was consulted. Then the decision-only probe of section
    5 is used when one exists, and otherwise a documented fact from the client's source
    (`SOURCE_FACTS`). Such values are listed under the runtime's `basis` so that nobody
    mistakes them for measurements.
A few rules are not probed by the matrix at all (whether `*` works when mixed with other
entries, whether blanks separate entries); those are source facts too, also listed in `basis`.

Usage:
  python scripts/build_noproxy_data.py            # rewrite the data file
  python scripts/build_noproxy_data.py --check    # exit 1 if the checked-in file is stale
"""

from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "reference" / "noproxy" / "matrix.json"
TARGET = ROOT / "egressgate" / "data" / "noproxy_matrix.json"
FORMAT_VERSION = 1

H = "http://example.test/"
S = "https://example.test/"


@dataclass(frozen=True, slots=True)
class RuntimeSpec:
    """A column of the matrix, and the runtime id the tools use for it."""

    id: str
    client: str
    label: str
    decision_client: str | None = None
    env_note: str | None = None


RUNTIMES = (
    RuntimeSpec("curl", "curl", "curl"),
    RuntimeSpec("wget", "wget", "wget"),
    RuntimeSpec("git", "git", "git (libcurl)"),
    RuntimeSpec("pip", "pip", "pip (vendored requests 2.31)"),
    RuntimeSpec("urllib", "py-urllib", "Python urllib"),
    RuntimeSpec("requests", "requests", "requests"),
    RuntimeSpec("httpx", "httpx", "httpx"),
    RuntimeSpec(
        "aiohttp",
        "aiohttp",
        "aiohttp (default)",
        env_note="aiohttp reads no proxy variable unless the session is created with "
        "trust_env=True (or pass proxy= per request)",
    ),
    RuntimeSpec("aiohttp-trust-env", "aiohttp-trust_env", "aiohttp trust_env=True"),
    RuntimeSpec("go", "go", "Go net/http", decision_client="go-decision"),
    RuntimeSpec(
        "node-fetch",
        "node-fetch",
        "Node built-in fetch",
        env_note="Node's built-in fetch ignores proxy variables; use undici's EnvHttpProxyAgent "
        "(setGlobalDispatcher) or a newer Node with NODE_USE_ENV_PROXY=1",
    ),
    RuntimeSpec(
        "node-fetch-env",
        "node-fetch+NODE_USE_ENV_PROXY",
        "Node fetch + NODE_USE_ENV_PROXY=1",
        env_note="NODE_USE_ENV_PROXY=1 had no effect on the measured Node 20; Node's docs say "
        "22.21+/24 honour it (not measured)",
    ),
    RuntimeSpec("undici", "undici-EnvHttpProxyAgent", "undici EnvHttpProxyAgent"),
    RuntimeSpec("axios", "axios", "axios"),
    RuntimeSpec("global-agent", "global-agent", "global-agent"),
    RuntimeSpec(
        "java",
        "java-HttpClient",
        "Java HttpClient",
        env_note="the JVM ignores proxy variables (even with -Djava.net.useSystemProxies=true); "
        "set -Dhttp.proxyHost/-Dhttps.proxyHost/-Dhttp.nonProxyHosts (egressgate env prints "
        "them as JAVA_TOOL_OPTIONS)",
    ),
    RuntimeSpec("ruby", "ruby-Net::HTTP", "Ruby Net::HTTP", decision_client="ruby-decision"),
)

# Probes: (matrix case, target) whose outcome decides one NO_PROXY rule. The decision
# substitute is a section-5 probe of the same rule on a non-loopback address.
NOPROXY_PROBES: dict[str, tuple[tuple[str, str], tuple[str, str] | None]] = {
    "exact": (("example.test", H), None),
    "subdomain": (("example.test", "http://sub.example.test/"), None),
    "plain_suffix": (("example.test", "http://notexample.test/"), None),
    "dot_apex": ((".example.test", H), None),
    "dot_subdomain": ((".example.test", "http://sub.example.test/"), None),
    "wildcard_apex": (("*.example.test", H), None),
    "wildcard_subdomain": (("*.example.test", "http://sub.example.test/"), None),
    "star": (("*", H), None),
    "case_insensitive": (("EXAMPLE.TEST (uppercase value)", H), None),
    "trims_after_comma": (("'other.test, example.test' (space after comma)", H), None),
    "trims_first_and_trailing": (("' example.test ,other.test' (spaces around)", H), None),
    "ipv4_exact": (("127.0.0.2", "http://127.0.0.2/"), ("10.1.2.3", "http://10.1.2.3/")),
    "resolves_names": (("127.0.0.2", "http://example.test/ (-> 127.0.0.2)"), None),
    "cidr_inside": (("127.0.0.0/24", "http://127.0.0.2/"), ("10.0.0.0/8", "http://10.1.2.3/")),
    "cidr_outside": (("127.0.0.0/24", "http://127.0.1.5/"), ("10.1.2.0/24", "http://10.1.3.3/")),
    "cidr_host32": (("127.0.0.2/32", "http://127.0.0.2/"), None),
    "ipv6_bare": (("::1", "http://[::1]/"), None),
    "ipv6_bracketed": (("[::1]", "http://[::1]/"), None),
    "ipv6_cidr": (("fd00::/8", "http://[fd00::1]/"), ("fd00::/8", "http://[fd00::1]/")),
    "host_port": (("example.test:8080", "http://example.test:8080/"), None),
    "host_port_default": (("example.test:80", H), None),
    "localhost_covers_ip": (("localhost", "http://127.0.0.1/"), None),
    "ip_covers_localhost": (("127.0.0.1", "http://localhost/"), None),
}

# Facts from the clients' source code, used only where the matrix cannot show the rule (see the
# module docstring). Keyed by runtime id, then by rule name; the note is kept in the output.
_URLLIB_STAR = (
    "whole_value",
    "urllib.request.proxy_bypass_environment special-cases '*' only as the whole value",
)
_LIBCURL = {
    "star_mixed": (False, "libcurl noproxy.c: '*' is special only as the whole value"),
    "blank_separates": (True, "libcurl noproxy.c: blanks separate entries like commas"),
}
_NODE_SPLIT = (True, "the value is split on /[,\\s]/")
SOURCE_FACTS: dict[str, dict[str, tuple[Any, str]]] = {
    "curl": dict(_LIBCURL),
    "git": dict(_LIBCURL),
    "wget": {
        "star_mixed": (False, "wget has no '*' rule at all (measured: '*' alone is ignored)"),
        "blank_separates": (False, "wget splits on ',' only and skips blanks after a comma"),
    },
    "pip": {
        "star_mixed": (False, _URLLIB_STAR[1]),
        "blank_separates": (False, "requests removes every space; urllib strips each entry"),
    },
    "urllib": {
        "star_mixed": (False, _URLLIB_STAR[1]),
        "blank_separates": (False, "urllib strips each comma-separated entry"),
    },
    "requests": {
        "star_mixed": (False, _URLLIB_STAR[1]),
        "blank_separates": (False, "requests removes every space; urllib strips each entry"),
    },
    "aiohttp-trust-env": {
        "star_mixed": (False, "aiohttp uses urllib.request.proxy_bypass: " + _URLLIB_STAR[1]),
        "blank_separates": (False, "urllib strips each comma-separated entry"),
    },
    "httpx": {
        "star_mixed": (True, "httpx get_environment_proxies: any '*' entry disables proxies"),
        "blank_separates": (False, "httpx strips each comma-separated entry"),
        "ipv6_cidr": (
            "error",
            "checked against httpx 0.28.1 itself: an IPv6 CIDR entry makes Client() raise "
            "InvalidURL (\"Invalid port: ':'\"), so every request fails",
        ),
        "drops_default_port": (
            True,
            "checked against httpx 0.28.1 itself: httpx.URL drops an explicit default port, so "
            "`host:80` never matches http://host:80/",
        ),
        "entry_error_scope": (
            "all_requests",
            "checked against httpx 0.28.1 itself: the InvalidURL for a bracketed IPv6 entry is "
            "raised when the client is built, so every request fails, not only IPv6 ones",
        ),
    },
    "go": {
        "star_mixed": (True, "net/http/httpproxy: any '*' entry matches everything"),
        "blank_separates": (False, "httpproxy trims each comma-separated entry"),
        "ipv6_bare": ("match", "hidden by the loopback bypass; httpproxy parses '::1' as an IP"),
        "ipv6_bracketed": (
            "no_match",
            "hidden by the loopback bypass; httpproxy reads '[::1]' without a port as a domain",
        ),
        "localhost_alias": (False, "hidden by the loopback bypass; httpproxy has no alias rule"),
    },
    "undici": {
        "star_mixed": (False, "EnvHttpProxyAgent compares the whole value with '*'"),
        "blank_separates": _NODE_SPLIT,
    },
    "axios": {
        "star_mixed": (False, "assumed (only '*' alone was measured)"),
        "blank_separates": (True, "assumed, like proxy-from-env: split on /[,\\s]/"),
    },
    "global-agent": {
        "star_mixed": (True, "global-agent matches each entry as a glob, so '*' matches all"),
        "blank_separates": (True, "global-agent splits on /[\\s,]+/"),
    },
    "ruby": {
        "star_mixed": (False, "uri's use_proxy? has no '*' rule"),
        "blank_separates": (True, "uri scans entries with /([^:,\\s]+)(?::(\\d+))?/"),
        "exact": (True, "uri use_proxy?: '.'+host ends with '.'+entry"),
        "subdomain": (True, "uri use_proxy?: '.'+host ends with '.'+entry"),
        "plain_suffix": (False, "uri use_proxy? keeps the dot boundary"),
        "dot_apex": (False, "uri use_proxy?: host.end_with?('.domain')"),
        "dot_subdomain": (True, "uri use_proxy?: host.end_with?('.domain')"),
        "wildcard_apex": (False, "uri has no '*' rule"),
        "wildcard_subdomain": (False, "uri has no '*' rule"),
        "star": (False, "uri has no '*' rule"),
        "case_insensitive": (True, "uri downcases both sides"),
        "trims_after_comma": (True, "blanks separate entries"),
        "trims_first_and_trailing": (True, "blanks separate entries"),
        "resolves_names": (True, "find_proxy resolves the host and use_proxy? checks the address"),
        "ipv6_bare": ("no_match", "the entry scanner splits on ':', so IPv6 entries never match"),
        "ipv6_bracketed": ("no_match", "the entry scanner splits on ':'"),
        "host_port": (
            "effective_port",
            "uri use_proxy? compares an entry's :port with the URL's port (default included)",
        ),
        "localhost_alias": (False, "no alias rule (names are resolved instead)"),
        "variables": (
            {
                "http": ["http_proxy", "HTTP_PROXY"],
                "https": ["https_proxy", "HTTPS_PROXY"],
                "all": [],
                "no_proxy": ["no_proxy", "NO_PROXY"],
                "https_falls_back_to_http": False,
                "cgi_guard": "ignores_upper",
            },
            "uri find_proxy (every measured target resolved to loopback, so Ruby always went "
            "direct); HTTP_PROXY is read with a warning, and not at all under CGI",
        ),
    },
}


class Matrix:
    """Index of matrix.json rows by (client, case, target)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.meta: dict[str, Any] = doc["meta"]
        self.rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for row in doc["results"]:
            self.rows[(row["client"], row["case"], row["target"])] = row

    def outcome(self, client: str, case: str, target: str) -> str:
        return str(self.rows[(client, case, target)]["outcome"])

    def row(self, client: str, case: str, target: str) -> dict[str, Any]:
        return self.rows[(client, case, target)]

    def client_rows(self, client: str) -> list[dict[str, Any]]:
        return [row for (c, _, _), row in self.rows.items() if c == client]


def is_direct(outcome: str) -> bool:
    return outcome == "direct"


def is_proxy(outcome: str) -> bool:
    return outcome.startswith("proxy")


def target_address(matrix: Matrix, target: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address a target connects to (names mapped through the measurement's /etc/hosts)."""
    host = urlsplit(target.split(" ")[0]).hostname or ""
    if host == "localhost":
        return ipaddress.ip_address("127.0.0.1")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return ipaddress.ip_address(matrix.meta["hosts"][host])


def is_literal(target: str) -> bool:
    host = urlsplit(target.split(" ")[0]).hostname or ""
    if host == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# -- per-runtime derivation -------------------------------------------------------------------


class Deriver:
    """Derives one runtime's rule set; records the basis of every non-measured value."""

    def __init__(self, matrix: Matrix, spec: RuntimeSpec) -> None:
        self.m = matrix
        self.spec = spec
        self.basis: dict[str, str] = {}
        self.facts = SOURCE_FACTS.get(spec.id, {})

    # - helpers -

    def outcome(self, case: str, target: str) -> str:
        return self.m.outcome(self.spec.client, case, target)

    def fact(self, name: str, why: str) -> Any:
        if name not in self.facts:
            raise SystemExit(
                f"{self.spec.id}: rule {name!r} is {why} and has no SOURCE_FACTS entry"
            )
        value, note = self.facts[name]
        self.basis[name] = f"source ({why}): {note}"
        return value

    def reads_env(self) -> bool:
        clients = [c for c in (self.spec.client, self.spec.decision_client) if c]
        rows = [r for c in clients for r in self.m.client_rows(c)]
        return any(is_proxy(r["outcome"]) for r in rows)

    def builtin_bypass(self) -> str:
        """'none', 'literal' (loopback IP literals and localhost) or 'resolved' (Ruby)."""
        unset = "(unset)"
        if is_direct(self.outcome(unset, H)):
            decision = self.spec.decision_client
            if decision and is_direct(
                self.m.outcome(decision, unset, "http://example.test/ (-> 127.0.0.2)")
            ):
                return "resolved"
            raise SystemExit(f"{self.spec.id}: reads env but went direct with NO_PROXY unset")
        loopback = ("http://localhost/", "http://127.0.0.1/", "http://[::1]/")
        if all(is_direct(self.outcome(unset, t)) for t in loopback):
            return "literal"
        return "none"

    def hidden(self, bypass: str, target: str) -> bool:
        if bypass == "literal":
            return is_literal(target) and target_address(self.m, target).is_loopback
        if bypass == "resolved":
            return target_address(self.m, target).is_loopback
        return False

    def probe(self, name: str, bypass: str) -> str | None:
        """The outcome deciding rule `name`, or None when only a source fact can say."""
        (case, target), substitute = NOPROXY_PROBES[name]
        if (self.spec.client, case, target) in self.m.rows and not self.hidden(bypass, target):
            return self.outcome(case, target)
        if substitute and self.spec.decision_client:
            key = (self.spec.decision_client, *substitute)
            if key in self.m.rows:
                self.basis[name] = f"measured by the decision-only probe {substitute[0]!r}"
                return str(self.m.rows[key]["outcome"])
        return None

    def flag(self, name: str, bypass: str) -> bool:
        outcome = self.probe(name, bypass)
        if outcome is None:
            return bool(self.fact(name, "hidden by the built-in loopback bypass"))
        return is_direct(outcome)

    def tri(self, name: str, bypass: str) -> str:
        outcome = self.probe(name, bypass)
        if outcome is None:
            if name in self.facts:
                return str(self.fact(name, "not measurable in the matrix"))
            self.basis[name] = "not measured"
            return "unmeasured"
        return {"direct": "match", "error": "error"}.get(outcome, "no_match")

    # - NO_PROXY rules -

    def no_proxy(self, bypass: str) -> dict[str, Any]:
        rules: dict[str, Any] = {}
        for name in (
            "exact",
            "subdomain",
            "plain_suffix",
            "dot_apex",
            "dot_subdomain",
            "wildcard_apex",
            "wildcard_subdomain",
            "star",
            "case_insensitive",
            "trims_after_comma",
            "trims_first_and_trailing",
            "ipv4_exact",
            "resolves_names",
        ):
            rules[name] = self.flag(name, bypass)
        rules["star_mixed"] = self.fact("star_mixed", "not probed: only '*' alone was measured")
        rules["blank_separates"] = self.fact(
            "blank_separates", "not probed: no entry with an inner blank was measured"
        )
        rules["cidr"] = self.cidr(bypass)
        rules.update(self.ipv6(bypass))
        rules["host_port"] = self.host_port(bypass)
        rules["drops_default_port"] = (
            self.fact("drops_default_port", "not probed: no URL with an explicit default port")
            if "drops_default_port" in self.facts
            else False
        )
        rules["localhost_alias"] = self.localhost_alias(bypass)
        return rules

    def cidr(self, bypass: str) -> str:
        inside = self.probe("cidr_inside", bypass)
        outside = self.probe("cidr_outside", bypass)
        if inside is None or outside is None:
            raise SystemExit(f"{self.spec.id}: CIDR rule hidden and no decision probe")
        if is_direct(inside) and not is_direct(outside):
            return "honoured"
        if is_direct(inside):
            raise SystemExit(f"{self.spec.id}: a CIDR matched an address outside it")
        host32 = self.probe("cidr_host32", bypass)
        # httpx drops '/len' and keeps the address: only the written address matches.
        return "first_address" if host32 is not None and is_direct(host32) else "ignored"

    def ipv6(self, bypass: str) -> dict[str, Any]:
        bare = self.tri("ipv6_bare", bypass)
        bracketed = self.tri("ipv6_bracketed", bypass)
        unset_v6 = self.outcome("(unset)", "http://[::1]/")
        # Both spellings failing while the same URL works with NO_PROXY unset means the client
        # cannot match IPv6 URLs at all once NO_PROXY is set (global-agent), whatever the entry.
        target_error = bare == bracketed == "error" and unset_v6 != "error"
        out: dict[str, Any] = {
            "ipv6_target_error": target_error,
            "ipv6_bare": None if target_error else bare,
            "ipv6_bracketed": None if target_error else bracketed,
            "ipv6_cidr": self.tri("ipv6_cidr", bypass),
            "entry_error_scope": None,
        }
        if "error" in (out["ipv6_bare"], out["ipv6_bracketed"], out["ipv6_cidr"]):
            scope = self.facts.get("entry_error_scope")
            out["entry_error_scope"] = (
                self.fact("entry_error_scope", "the matrix shows only the IPv6 request failing")
                if scope
                else "target"
            )
        return out

    def host_port(self, bypass: str) -> str:
        exact = self.probe("host_port", bypass)
        default = self.probe("host_port_default", bypass)
        if exact is None or default is None:
            return str(self.fact("host_port", "hidden by the built-in loopback bypass"))
        if not is_direct(exact):
            return "never"
        return "effective_port" if is_direct(default) else "explicit_port"

    def localhost_alias(self, bypass: str) -> bool:
        a = self.probe("localhost_covers_ip", bypass)
        b = self.probe("ip_covers_localhost", bypass)
        if a is None or b is None:
            return bool(self.fact("localhost_alias", "hidden by the built-in loopback bypass"))
        if is_direct(a) != is_direct(b):
            raise SystemExit(f"{self.spec.id}: localhost/127.0.0.1 alias only one way")
        return is_direct(a)

    # - variables -

    def variables(self, bypass: str) -> dict[str, Any]:
        if self.hidden(bypass, H):
            return dict(self.fact("variables", "hidden by the built-in loopback bypass"))
        return {
            "http": self.names("http_proxy", H),
            "https": self.names("https_proxy", S),
            "all": self.all_names(),
            "no_proxy": self.no_proxy_names(),
            "https_falls_back_to_http": is_proxy(
                self.outcome("http_proxy=HTTP_PROXY=A only (no https var)", S)
            ),
            "cgi_guard": self.cgi_guard(),
        }

    def names(self, lower: str, target: str) -> list[str]:
        upper = lower.upper()
        reads_lower = is_proxy(self.outcome(f"{lower}=A (lowercase only)", target))
        reads_upper = is_proxy(self.outcome(f"{upper}=A (uppercase only)", target))
        both = self.outcome(f"{lower}=A, {upper}=B", target)
        names = [n for n, ok in ((lower, reads_lower), (upper, reads_upper)) if ok]
        if len(names) == 2 and both.endswith("(upper)"):
            names.reverse()
        return names

    def all_names(self) -> list[str]:
        names = []
        if is_proxy(self.outcome("all_proxy=A only", H)):
            names.append("all_proxy")
        if is_proxy(self.outcome("ALL_PROXY=A only", H)):
            names.append("ALL_PROXY")
        return names

    def no_proxy_names(self) -> list[str]:
        lower = is_direct(self.outcome("no_proxy=example.test (lowercase only)", H))
        upper = is_direct(self.outcome("NO_PROXY=example.test (uppercase only)", H))
        lower_wins = is_direct(self.outcome("no_proxy=example.test, NO_PROXY=other.test", H))
        names = [n for n, ok in (("no_proxy", lower), ("NO_PROXY", upper)) if ok]
        if len(names) == 2 and not lower_wins:
            names.reverse()
        return names

    def cgi_guard(self) -> str:
        outcome = self.outcome("HTTP_PROXY=A + REQUEST_METHOD=GET (CGI/httpoxy guard)", H)
        if not is_proxy(self.outcome("HTTP_PROXY=A (uppercase only)", H)):
            return "not_applicable"
        if outcome == "error":
            return "error"
        return "uses_upper" if is_proxy(outcome) else "ignores_upper"

    # - proxy URL forms -

    def proxy_url(self, bypass: str) -> dict[str, Any] | None:
        if self.hidden(bypass, H):
            self.basis["proxy_url"] = "not measured (hidden by the built-in loopback bypass)"
            return None
        return {
            "https_scheme": self.form("https://127.0.0.1:3128 (https-scheme proxy)"),
            "no_scheme": self.form("127.0.0.1:3128 (no scheme)"),
            "socks5": _form_class(self.outcome("socks5://127.0.0.1:3128", H)),
            "credentials": self.credentials(),
            "http_via_connect": self.http_via_connect(),
        }

    def form(self, case: str) -> dict[str, str]:
        return {
            "http": _form_class(self.outcome(case, H)),
            "https": _form_class(self.outcome(case, S)),
        }

    def credentials(self) -> str:
        row = self.m.row(
            self.spec.client, "http://u:p%40ss@127.0.0.1:3128 (credentials, %40 = @)", H
        )
        auth = row.get("proxy_auth")
        if auth is None:
            return "none_sent"
        return "decoded" if auth == "u:p@ss" else "raw"

    def http_via_connect(self) -> bool:
        row = self.m.row(self.spec.client, "http://127.0.0.1:3128 (baseline)", H)
        return any(e.get("kind") == "connect" for e in row["events"])

    # - all -

    def build(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.spec.id,
            "label": self.spec.label,
            "client": self.spec.client,
            "decision_client": self.spec.decision_client,
            "version": self.m.meta["clients"][self.spec.client],
            "reads_env": self.reads_env(),
            "env_note": self.spec.env_note,
        }
        if not out["reads_env"]:
            out.update(builtin_bypass=None, variables=None, proxy_url=None, no_proxy=None)
            out["basis"] = {}
            return out
        bypass = self.builtin_bypass()
        out["builtin_bypass"] = bypass
        out["variables"] = self.variables(bypass)
        out["proxy_url"] = self.proxy_url(bypass)
        out["no_proxy"] = self.no_proxy(bypass)
        out["basis"] = dict(sorted(self.basis.items()))
        return out


def _form_class(outcome: str) -> str:
    if outcome == "proxy-tls":
        return "tls"
    if outcome == "proxy-socks":
        return "socks"
    if is_proxy(outcome):
        return "plain"
    return outcome  # "direct" or "error"


def build(doc: dict[str, Any], raw: bytes) -> dict[str, Any]:
    matrix = Matrix(doc)
    meta = matrix.meta
    return {
        "format": "egressgate-noproxy-matrix",
        "format_version": FORMAT_VERSION,
        "generated_by": "scripts/build_noproxy_data.py",
        "source": {
            "path": "reference/noproxy/matrix.json",
            "sha256": hashlib.sha256(raw).hexdigest(),
            "measured_at": meta["generated"],
            "platform": meta["platform"],
            "rows": len(doc["results"]),
        },
        "probes": {
            name: {
                "case": case,
                "target": target,
                "decision_substitute": list(sub) if sub else None,
            }
            for name, ((case, target), sub) in NOPROXY_PROBES.items()
        },
        "runtimes": [Deriver(matrix, spec).build() for spec in RUNTIMES],
    }


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the data file is stale")
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--out", type=Path, default=TARGET)
    args = parser.parse_args(argv)
    raw = args.source.read_bytes()
    text = render(build(json.loads(raw), raw))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != text:
            print(f"{args.out} is stale: run scripts/build_noproxy_data.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
