"""`egressgate verify`: run, inside an application container, the checklist that proves the egress
recipe works there (see egressgate/tools/verify.py for the checks, docs/verify.md for the guide).
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from egressgate.tools import attack, attack_plan, attack_report, verify

DESCRIPTION = """\
Check, from inside an application container, that its egress goes through egressgate and
nowhere else:

  environment  HTTP_PROXY/HTTPS_PROXY/NO_PROXY set in both letter cases and identical; the
               proxy URL is http://HOST:PORT; NO_PROXY keeps .svc, .cluster.local, localhost and
               127.0.0.1 away from the proxy (warns naming the runtimes that would misroute)
  proxy        a TCP connection and GET /healthz on the proxy port answer 200
  allowed      each --allowed URL works THROUGH the proxy (https: CONNECT + verified TLS)
  denied       each --denied URL is refused BY THE PROXY (403 with X-Egressgate-Reason)
  bypass       a direct TCP connection that ignores the proxy FAILS (the NetworkPolicy works)

With --attack it runs the adversarial audit instead: a catalogue of bypass probes (direct TCP,
IPv6, UDP 443/QUIC, DNS to an outside resolver over UDP/TCP 53, DoT, DoH, IP-literal and
domain-fronting requests through the proxy, the metadata address in three spellings, the proxy's
own ports, a denied host on a reused keep-alive connection) and reports for each which layer
stopped it — the proxy (with its reason code), the network rules, the DNS guard — or that
nothing did; then it inspects the pod (host network, mesh sidecar, runtimes, NetworkPolicy).
Targets are only the ones named here plus the well-known metadata addresses. See docs/verify.md.
"""

EPILOG = """\
examples:
  egressgate verify --allowed https://api.github.com/ --denied https://example.com/
  kubectl exec deploy/my-app -- egressgate verify \\
      --allowed https://api.stripe.com/ --denied http://169.254.169.254/ --json
  egressgate verify --allowed http://allowed.test/ --direct 203.0.113.10:443 --timeout 5

  egressgate verify --attack --allowed https://api.stripe.com/ --denied https://example.com/ \\
      --outside-resolver 9.9.9.9 --doh-name dns.google --sarif > egress.sarif

exit status: 0 every check passed (warnings and skipped checks allowed); 1 a check failed;
2 usage error. Each network check is bounded by --timeout. The bypass check connects directly
to --direct HOST:PORT, by default the host and port of the first --allowed (else --denied) URL
resolved with the system resolver: a refused, dropped or unreachable connection passes, a
connection that opens fails. With --attack: 0 only when every probe that ran was stopped by
an intended layer and no pod check failed; a probe that got through, or whose stopping layer
cannot be told, exits 1.
"""


def _url(text: str) -> str:
    try:
        verify.parse_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _hostport(text: str) -> str:
    try:
        verify.parse_hostport(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _proxy(text: str) -> str:
    try:
        verify.parse_proxy_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 120:
        raise argparse.ArgumentTypeError("the timeout must be more than 0 and at most 120 s")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check from inside an app container that egress goes only through the proxy",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--allowed",
        action="append",
        default=[],
        type=_url,
        metavar="URL",
        help="a URL that must work through the proxy (repeatable)",
    )
    parser.add_argument(
        "--denied",
        action="append",
        default=[],
        type=_url,
        metavar="URL",
        help="a URL the proxy must refuse with 403 + X-Egressgate-Reason (repeatable)",
    )
    parser.add_argument(
        "--direct",
        type=_hostport,
        metavar="HOST:PORT",
        help="where to try a direct connection (default: the first URL's host and port)",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=verify.DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"per-check timeout (default {verify.DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument(
        "--cacert",
        metavar="FILE",
        help="CA bundle for https:// URLs (default: the system CA store)",
    )
    parser.add_argument(
        "--proxy",
        type=_proxy,
        metavar="URL",
        help="test this proxy instead of the environment's (e.g. from a debug container)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print a machine-readable result")
    output.add_argument(
        "--sarif", action="store_true", help="--attack: print a SARIF 2.1.0 log (for CI gates)"
    )
    _add_attack_arguments(parser)
    parser.set_defaults(handler=_run)


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: a port is 0-65535")
    return int(text)


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _parallel(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= attack_plan.MAX_PARALLEL:
        raise argparse.ArgumentTypeError(f"1 to {attack_plan.MAX_PARALLEL}")
    return int(text)


def _add_attack_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--attack: the bypass-probe catalogue (docs/verify.md)")
    group.add_argument(
        "--attack", action="store_true", help="run the bypass probes and the pod inspection"
    )
    group.add_argument(
        "--outside-resolver",
        type=_ip,
        metavar="IP",
        help="a DNS resolver outside the cluster (e.g. 9.9.9.9): DNS over UDP/TCP 53 and DoT "
        "853 to it must be stopped",
    )
    group.add_argument(
        "--doh-name",
        metavar="NAME",
        help="a public DNS-over-HTTPS resolver's name (e.g. dns.google): direct and through "
        "the proxy, it must be stopped",
    )
    group.add_argument(
        "--ipv6-address",
        type=_ip,
        metavar="IP",
        help="an IPv6 address of the --allowed host, when its name has no AAAA record",
    )
    group.add_argument(
        "--other-port",
        type=_port,
        default=attack_plan.DEFAULT_OTHER_PORT,
        metavar="PORT",
        help="the non-standard port tried directly (%(default)s)",
    )
    group.add_argument(
        "--admin-port",
        type=_port,
        default=attack_plan.DEFAULT_ADMIN_PORT,
        metavar="PORT",
        help="the proxy's admin port, CONNECTed to through the proxy (%(default)s; 0: none)",
    )
    group.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="PROBE",
        help="leave out the probes whose id starts with this (repeatable), e.g. metadata.direct",
    )
    group.add_argument(
        "--parallel",
        type=_parallel,
        default=attack_plan.DEFAULT_PARALLEL,
        metavar="N",
        help="probes run at once (%(default)s)",
    )
    group.add_argument(
        "--no-api",
        action="store_true",
        help="do not ask the API server for the NetworkPolicies (the pod check says so)",
    )


def _run(args: argparse.Namespace) -> int:
    if args.cacert is not None and not os.path.isfile(args.cacert):
        print(f"egressgate verify: --cacert {args.cacert}: no such file", file=sys.stderr)
        return 2
    if args.attack:
        return _attack(args)
    if args.sarif:
        print("egressgate verify: --sarif needs --attack", file=sys.stderr)
        return 2
    options = verify.Options(
        allowed=tuple(args.allowed),
        denied=tuple(args.denied),
        direct=args.direct,
        timeout_s=args.timeout,
        cacert=args.cacert,
        proxy=args.proxy,
    )
    report = verify.run(options, os.environ)
    if args.json:
        print(verify.render_json(report))
    else:
        sys.stdout.write(verify.render_text(report, unicode=_can_print_unicode()))
    return report.exit_status


def _attack(args: argparse.Namespace) -> int:
    if not args.allowed or not args.denied:
        print(
            "egressgate verify: --attack needs an --allowed URL and a --denied URL: most probes "
            "aim at the allowed host's addresses and ask for the denied host",
            file=sys.stderr,
        )
        return 2
    if args.ipv6_address is not None and ":" not in args.ipv6_address:
        print("egressgate verify: --ipv6-address must be an IPv6 address", file=sys.stderr)
        return 2
    unknown = [p for p in args.skip if not any(i.startswith(p) for i in attack.BY_ID)]
    if unknown:
        print(
            f"egressgate verify: --skip {unknown[0]}: no probe id starts with it (ids: "
            f"{', '.join(attack.BY_ID)})",
            file=sys.stderr,
        )
        return 2
    options = attack_plan.AttackOptions(
        allowed=tuple(args.allowed),
        denied=tuple(args.denied),
        outside_resolver=args.outside_resolver,
        doh_name=args.doh_name,
        ipv6_address=args.ipv6_address,
        other_port=args.other_port,
        admin_port=args.admin_port or None,
        proxy=args.proxy,
        timeout_s=args.timeout,
        parallel=args.parallel,
        skip=tuple(args.skip),
    )
    report = attack_report.run_attack(options, os.environ, api=not args.no_api)
    if args.json:
        print(attack_report.render_json(report))
    elif args.sarif:
        print(attack_report.render_sarif(report))
    else:
        sys.stdout.write(attack_report.render_text(report, unicode=_can_print_unicode()))
    return report.exit_status


def _can_print_unicode() -> bool:
    """✓/✗ only where stdout can encode them (a C/POSIX locale without UTF-8 cannot)."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "\u2713\u2717\u2013".encode(encoding)  # check mark, cross, en dash
    except (UnicodeEncodeError, LookupError):
        return False
    return True
