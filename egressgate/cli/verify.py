"""`egressgate verify`: run, inside an application container, the checklist that proves the egress
recipe works there (see egressgate/tools/verify.py for the checks, docs/verify.md for the guide).
"""

from __future__ import annotations

import argparse
import os
import sys

from egressgate.tools import verify

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
"""

EPILOG = """\
examples:
  egressgate verify --allowed https://api.github.com/ --denied https://example.com/
  kubectl exec deploy/my-app -- egressgate verify \\
      --allowed https://api.stripe.com/ --denied http://169.254.169.254/ --json
  egressgate verify --allowed http://allowed.test/ --direct 203.0.113.10:443 --timeout 5

exit status: 0 every check passed (warnings and skipped checks allowed); 1 a check failed;
2 usage error. Each network check is bounded by --timeout. The bypass check connects directly
to --direct HOST:PORT, by default the host and port of the first --allowed (else --denied) URL
resolved with the system resolver: a refused, dropped or unreachable connection passes, a
connection that opens fails.
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
    parser.add_argument("--json", action="store_true", help="print a machine-readable result")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.cacert is not None and not os.path.isfile(args.cacert):
        print(f"egressgate verify: --cacert {args.cacert}: no such file", file=sys.stderr)
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


def _can_print_unicode() -> bool:
    """✓/✗ only where stdout can encode them (a C/POSIX locale without UTF-8 cannot)."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "\u2713\u2717\u2013".encode(encoding)  # check mark, cross, en dash
    except (UnicodeEncodeError, LookupError):
        return False
    return True
