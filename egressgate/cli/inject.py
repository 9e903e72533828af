"""`egressgate inject`: run the Pod injection webhook (an HTTPS admission webhook server).

Owns the command line only: arguments, start-up errors, exit status. The server is
egressgate.tools.inject_server; what it changes in a Pod, and why, is egressgate.tools.inject_patch.
"""

from __future__ import annotations

import argparse
import ssl
import sys

from egressgate.config.model import ListenAddress
from egressgate.errors import ConfigError
from egressgate.tools.inject_patch import InjectConfigError

DEFAULT_LISTEN = "0.0.0.0:8443"

DESCRIPTION = """\
Serve the Kubernetes mutating admission webhook that puts labelled workloads behind egressgate:
a namespace or pod labelled egressgate.io/inject=explicit gets the proxy variables (both letter
cases, NO_PROXY as `egressgate env` builds it, JAVA_TOOL_OPTIONS appended, ALL_PROXY with SOCKS);
egressgate.io/inject=transparent gets the sidecar and its nftables init container of
`egressgate k8s render --mode transparent`; a pod annotation overrides the namespace label and
`disabled` opts a pod out. Never blocks a pod: what it cannot understand it admits unchanged,
with a warning.

Deploy it with `egressgate k8s render --inject` (Deployment, Service, webhook configuration,
certificate); docs/kubernetes.md, "Inject with a label". The config file (proxy URL, CIDRs,
sidecar image, limits) reloads when it changes or on SIGHUP, and so do the TLS certificate and
key. Events are JSON lines on stderr.
"""

EPILOG = """\
examples:
  egressgate inject --config /etc/egressgate-inject/inject.yaml \\
      --tls-cert /etc/egressgate-inject/tls/tls.crt --tls-key /etc/egressgate-inject/tls/tls.key

exit status: 0 stopped by SIGTERM/SIGINT; 2 unusable config, address or certificate.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "inject",
        help="run the admission webhook that injects proxy settings into labelled pods",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="webhook config")
    parser.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help="HTTPS address (%(default)s; the Service maps 443 to it)",
    )
    parser.add_argument("--tls-cert", required=True, metavar="FILE", help="serving certificate")
    parser.add_argument("--tls-key", required=True, metavar="FILE", help="its private key")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from egressgate.tools import inject_server  # the server's imports (uvloop) only when run

    try:
        listen = ListenAddress.parse(args.listen)
    except ValueError as exc:
        print(f"egressgate inject: --listen: {exc}", file=sys.stderr)
        return 2
    try:
        return inject_server.run(args.config, listen, args.tls_cert, args.tls_key)
    except InjectConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print("egressgate inject: invalid config", file=sys.stderr)
    except ConfigError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
    except (OSError, ssl.SSLError) as exc:
        print(f"egressgate inject: {exc}", file=sys.stderr)
    return 2
