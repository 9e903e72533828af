"""`egressgate env`: print the proxy settings that point an application at egressgate.

Owns the command line only: arguments, output format, warnings on stderr (inside the document
for --format json) and exit status. What goes into the variables, and why, is
egressgate.tools.proxy_env.
"""

from __future__ import annotations

import argparse
import sys

from egressgate.tools import noproxy
from egressgate.tools.proxy_env import (
    FORMATS,
    CaTrust,
    ProxyEnvError,
    build_env,
    ca_trust,
    parse_socks_url,
    render,
    render_ca,
    ssh_config,
    ssh_config_warnings,
)

DESCRIPTION = """\
Print HTTP_PROXY/HTTPS_PROXY/NO_PROXY (in both letter cases, same value, no spaces) and the
Java system properties that make applications send their traffic through egressgate.

The NO_PROXY value is built to mean the same in every runtime measured in reference/noproxy
(curl, wget, git, pip, Python urllib/requests/httpx/aiohttp, Go, Node undici/axios/
global-agent, Ruby): localhost, 127.0.0.1, ::1, .svc, .cluster.local, then your extra hosts
(a suffix such as .corp.example or *.corp.example is written as `corp.example,.corp.example`,
which every runtime reads as "the domain and everything under it"), then each --cluster-cidr
and, because wget, urllib, aiohttp, undici and global-agent ignore CIDRs (and httpx keeps only
the first address), each of its addresses when it has at most 256. Larger CIDRs get a warning
naming the runtimes that will not honour them.

Java ignores the variables: JAVA_TOOL_OPTIONS carries -Dhttp.proxyHost, -Dhttp.proxyPort,
-Dhttps.proxyHost, -Dhttps.proxyPort and -Dhttp.nonProxyHosts (Java's `|`-separated list with
`*.suffix` globs).

With --socks socks5h://HOST:PORT (egressgate's socks_listen), ALL_PROXY/all_proxy carry the
SOCKS URL (clients that read it use it for what the scheme variables do not cover: curl and
git for other schemes, pip/requests/httpx with their SOCKS extras), and JAVA_TOOL_OPTIONS adds
-DsocksProxyHost and -DsocksProxyPort. `--format ssh-config` prints an ssh_config Host block
whose ProxyCommand (`nc -X 5`) sends SSH through the SOCKS listener; it needs only --socks.

With --ca FILE (TLS interception, docs/interception.md), the variables that make each measured
runtime trust egressgate's CA: SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE,
GIT_SSL_CAINFO and PIP_CERT replace the runtime's CA store, so FILE must also hold the public
CAs (give the bundle.pem of `egressgate ca init`); NODE_EXTRA_CA_CERTS adds to Node's. The JVM
reads no variable for this: the keytool command that imports the CA is printed on stderr (and
in --format json). --ca works without --proxy (transparent mode: only the CA variables).

Check any value with `egressgate noproxy explain` and `egressgate noproxy lint`.
"""

EPILOG = """\
examples:
  # a shell (bash, zsh): set the variables in the current shell
  eval "$(egressgate env --proxy http://egressgate.internal:3128)"

  # a Kubernetes container: paste under spec.containers[].env
  egressgate env --proxy http://egressgate.egress.svc:3128 --format k8s \\
      --cluster-cidr 10.96.0.0/12 --cluster-cidr 10.244.0.0/16 --no-proxy 10.96.0.1

  # docker run: an env file (values taken literally), or -e flags (shell-quoted: use eval)
  egressgate env --proxy http://172.17.0.1:3128 --format env-file > proxy.env
  docker run --env-file proxy.env IMAGE
  eval "docker run $(egressgate env --proxy http://172.17.0.1:3128 --format docker) IMAGE"

  # SSH and git over SSH through the SOCKS5 listener (socks_listen: "0.0.0.0:1080")
  egressgate env --socks socks5h://egressgate.internal:1080 --format ssh-config >> ~/.ssh/config

  # HTTP(S) through the HTTP listener, everything else that reads ALL_PROXY through SOCKS
  eval "$(egressgate env --proxy http://egressgate:3128 --socks socks5h://egressgate:1080)"

  # a node: containerd (and the kubelet, docker) pull images through the proxy; the
  # registry mirror, the API server and the cluster ranges stay direct
  egressgate env --proxy http://10.0.0.5:3128 --format systemd --cluster-cidr 10.96.0.0/12 \\
      --cluster-cidr 10.244.0.0/16 --no-proxy 10.0.0.0/24 registry.corp.example \\
      > /etc/systemd/system/containerd.service.d/http-proxy.conf
  egressgate env --proxy http://10.0.0.5:3128 --format docker-daemon --no-proxy 10.0.0.0/24

  # TLS interception: trust egressgate's CA too (bundle.pem from `egressgate ca init`)
  eval "$(egressgate env --proxy http://egressgate:3128 --ca /etc/egressgate-ca/bundle.pem)"

  # a docker compose .env file, extra internal domain
  egressgate env --proxy http://egress:3128 --no-proxy .corp.example --format dotenv > .env

exit status: 0 printed (warnings, if any, on stderr); 2 unusable proxy URL, entry or CIDR.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "env",
        help="print HTTP_PROXY/NO_PROXY/Java settings that point apps at egressgate",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--proxy",
        metavar="URL",
        help="egressgate's address as the apps reach it: http://HOST:PORT "
        "(required, except with --format ssh-config)",
    )
    parser.add_argument(
        "--socks",
        metavar="URL",
        help="egressgate's SOCKS5 listener: socks5h://HOST:PORT (adds ALL_PROXY/all_proxy "
        "and the JVM's socksProxyHost/socksProxyPort)",
    )
    parser.add_argument(
        "--ca",
        metavar="FILE",
        help="egressgate's interception CA as the apps see it (a bundle: the public CAs plus "
        "egressgate's, like ca init's bundle.pem): adds SSL_CERT_FILE, REQUESTS_CA_BUNDLE, "
        "CURL_CA_BUNDLE, GIT_SSL_CAINFO, PIP_CERT and NODE_EXTRA_CA_CERTS",
    )
    parser.add_argument(
        "--no-proxy",
        action="extend",
        nargs="+",
        default=[],
        metavar="EXTRA",
        help="more hosts, .suffixes, IPs or CIDRs that should not use the proxy "
        "(repeatable; commas also separate)",
    )
    parser.add_argument(
        "--cluster-cidr",
        action="extend",
        nargs="+",
        default=[],
        metavar="CIDR",
        help="pod/service/node CIDRs to bypass (repeatable)",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="shell",
        help="shell: export lines; dotenv: KEY=value (compose); k8s: a container env: list; "
        "docker: -e flags; env-file: for docker --env-file; json; ssh-config: an ssh_config "
        "Host block through --socks; systemd: a drop-in of Environment= lines for containerd/"
        "docker/kubelet; docker-daemon: the proxies block of daemon.json (default: shell)",
    )
    parser.add_argument(
        "--no-java",
        action="store_true",
        help="leave out JAVA_TOOL_OPTIONS (the JVM prints a line on stderr when it is set)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.format == "ssh-config":
        return _run_ssh_config(args)
    try:
        ca = _ca(args.ca) if args.ca is not None else None
    except ProxyEnvError as exc:
        print(f"egressgate env: {exc}", file=sys.stderr)
        return 2
    if args.proxy is None and ca is not None:
        return _print_ca_only(ca, args.format)
    if args.proxy is None:
        print(
            "egressgate env: --proxy is required (except with --format ssh-config, or --ca alone)",
            file=sys.stderr,
        )
        return 2
    try:
        env = build_env(args.proxy, args.no_proxy, args.cluster_cidr)
        if args.socks is not None:
            socks, socks_warnings = parse_socks_url(args.socks)
            env = env.with_socks(socks, socks_warnings)
    except ProxyEnvError as exc:
        print(f"egressgate env: {exc}", file=sys.stderr)
        return 2
    if ca is not None:
        env = env.with_ca(ca)
    sys.stdout.write(render(env, args.format, java=not args.no_java))
    if args.format != "json":
        _print_ca_note(ca)
        for warning in env.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if env.warnings:
            info = noproxy.matrix_info()
            print(
                f"(client behaviour measured {info.measured_at} on {info.platform}; "
                "see docs/clients.md)",
                file=sys.stderr,
            )
    return 0


def _ca(path: str) -> CaTrust:
    """--ca FILE, with its content checked when this machine can read it (it is often a path
    inside a container, which cannot be checked here)."""
    try:
        with open(path, "rb") as handle:
            pem: bytes | None = handle.read()
    except OSError:
        pem = None
    return ca_trust(path, pem)


def _print_ca_only(ca: CaTrust, fmt: str) -> int:
    if fmt == "ssh-config":
        print("egressgate env: --format ssh-config has no use for --ca", file=sys.stderr)
        return 2
    sys.stdout.write(render_ca(ca, fmt))
    if fmt != "json":
        _print_ca_note(ca)
        for warning in ca.warnings:
            print(f"warning: {warning}", file=sys.stderr)
    return 0


def _print_ca_note(ca: CaTrust | None) -> None:
    if ca is not None:
        print(
            f"note: the JVM reads no CA variable; import the CA into its truststore: {ca.keytool}",
            file=sys.stderr,
        )


def _run_ssh_config(args: argparse.Namespace) -> int:
    if args.socks is None:
        print(
            "egressgate env: --format ssh-config needs --socks socks5h://HOST:PORT", file=sys.stderr
        )
        return 2
    try:
        socks, warnings = parse_socks_url(args.socks)
    except ProxyEnvError as exc:
        print(f"egressgate env: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(ssh_config(socks))
    for warning in warnings + ssh_config_warnings(socks):
        print(f"warning: {warning}", file=sys.stderr)
    return 0
