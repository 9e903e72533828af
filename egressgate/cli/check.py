"""`egressgate check`: validate a config file (like `squid -k parse`), or, with --live, probe the
running proxy (like `squid -k check`) for use as a Kubernetes exec probe or Docker HEALTHCHECK.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time

from egressgate.config.default import builtin_default
from egressgate.config.load import load_config_file
from egressgate.config.model import Config, InterceptRuleConfig, ListenAddress
from egressgate.errors import ConfigError
from egressgate.runtime.state import load_credentials

EPILOG = """\
examples:
  egressgate check --config egress.yaml          # exit 0 if valid, else every error, exit 1
  egressgate check --live --config egress.yaml   # exit 0 only if the running proxy answers

exit status: 0 valid / healthy; 1 invalid / unhealthy (one line says why); 2 usage error.
--live probes in this order and reports the first failure: the admin listener's /readyz (when
the config has an admin listener and --proxy-only is not given), then the proxy port's own
GET /healthz (always); each probe is bounded by --timeout.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "check",
        help="validate a config file, or probe a running proxy (--live)",
        description="Validate an egressgate config file, or (--live) check that the proxy "
        "running with that config answers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        "-c",
        metavar="FILE",
        help="config file (default for --live: the built-in default)",
    )
    parser.add_argument(
        "--live", action="store_true", help="probe the running proxy instead of only validating"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="per-probe timeout for --live (default 2)",
    )
    parser.add_argument(
        "--proxy-only",
        action="store_true",
        help="with --live: probe only the proxy port, not the admin listener",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.config is None and not args.live:
        print("egressgate check: give --config FILE (or --live)", file=sys.stderr)
        return 2
    try:
        config = load_config_file(args.config) if args.config else builtin_default()
        if not args.live:
            check_referenced_files(config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"{issue}", file=sys.stderr)
        print(f"egressgate check: {len(exc.issues)} error(s)", file=sys.stderr)
        return 1
    if not args.live:
        for warning in credential_warnings(config):
            print(f"warning: {warning}", file=sys.stderr)
        entries = sum(len(p.allow) for p in config.policies)
        print(
            f"{args.config}: valid ({len(config.policies)} "
            f"polic{'y' if len(config.policies) == 1 else 'ies'}, {entries} allow entries)"
        )
        for line in intercept_summary(config):
            print(line)
        return 0
    problem = live_problem(config, args.timeout, args.proxy_only)
    if problem is not None:
        print(f"egressgate check: UNHEALTHY: {problem}", file=sys.stderr)
        return 1
    print("egressgate check: healthy")
    return 0


def check_referenced_files(config: Config) -> None:
    """Raise ConfigError if `run` would refuse the users file.

    The loader only checks that it exists (and loads the TLS listener's material itself), so
    without this `check` said "valid" while `run` refused to start on a users_file line that is
    not user:password (runtime/state.py). users_env is left alone: the variable is often set
    only where the proxy runs, not where configs are checked.
    """
    if config.auth is not None and config.auth.users_file is not None:
        load_credentials(config.auth)


def credential_warnings(config: Config) -> list[str]:
    """Users-file entries stored as clear text or unsalted SHA-256 (still accepted)."""
    if config.auth is None or config.auth.users_file is None:
        return []
    weak = load_credentials(config.auth).weak_users
    if not weak:
        return []
    return [
        f"{config.auth.users_file}: {len(weak)} user(s) ({', '.join(sorted(weak)[:5])}"
        f"{', …' if len(weak) > 5 else ''}) have a clear-text or unsalted SHA-256 password; "
        "store a bcrypt or argon2 hash instead (egressgate hash-password)"
    ]


def intercept_summary(config: Config) -> list[str]:
    """What TLS interception does under this config: the CA, and per policy each intercepted
    host with its rules and the headers it sets, named with where their secret comes from
    (a file or a variable), never with the value."""
    tls = config.tls_intercept
    if tls is None:
        return []
    lines = [f"tls_intercept: CA {tls.ca_cert_file}, key {tls.ca_key_file}"]
    if tls.upstream_ca_file:
        lines.append(f"  origins also verified against {tls.upstream_ca_file}")
    for policy in config.policies:
        for entry in policy.intercept:
            lines.append(f"policy {policy.name!r} intercepts {entry.host} (line {entry.line}):")
            lines += [f"  rule {i}: {_rule_text(r)}" for i, r in enumerate(entry.rules, 1)]
            lines += [
                f"  sets {h.name}: {h.prefix}<secret from {h.secret.source}>"
                for h in entry.set_headers
            ]
    return lines


def _rule_text(rule: InterceptRuleConfig) -> str:
    methods = ",".join(rule.methods) or "any method"
    paths = " ".join(rule.paths) or "any path"
    websocket = ", WebSocket upgrades too" if rule.websocket else ""
    return f"{methods} {paths}{websocket} (line {rule.line})"


def _probe_host(address: ListenAddress) -> str:
    """Where to reach a listener bound to `address` from this machine."""
    if address.host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if address.host == "::":
        return "::1"
    return address.host


def http_get(address: ListenAddress, path: str, timeout_s: float) -> tuple[int, bytes]:
    """One GET over a fresh connection; raises OSError / TimeoutError."""
    deadline = time.monotonic() + timeout_s
    host = _probe_host(address)
    with socket.create_connection((host, address.port), timeout=timeout_s) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: egressgate\r\n\r\n".encode())
        data = b""
        while b"\r\n\r\n" not in data or len(data) < 12:
            sock.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > 1 << 20:
                break
    parts = data.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise OSError(f"not an HTTP answer from {host}:{address.port}")
    return int(parts[1]), data


def live_problem(config: Config, timeout_s: float, proxy_only: bool = False) -> str | None:
    """None if the running proxy answers; otherwise one line saying what is wrong."""
    probes: list[tuple[str, ListenAddress, str]] = []
    if config.admin_listen is not None and not proxy_only:
        probes.append(("admin", config.admin_listen, "/readyz"))
    probes.append(("proxy", config.listen, "/healthz"))
    for name, address, path in probes:
        where = f"{name} listener {_probe_host(address)}:{address.port}"
        try:
            status, data = http_get(address, path, timeout_s)
        except TimeoutError:
            return f"{where} did not answer within {timeout_s:g}s (hung?)"
        except ConnectionRefusedError:
            return f"{where} refused the connection (not running?)"
        except OSError as exc:
            return f"{where}: {exc}"
        if status != 200:
            detail = data.split(b"\r\n\r\n", 1)[-1][:200].decode("utf-8", "replace").strip()
            return f"{where} answered {status} to {path}: {detail}"
    return None
