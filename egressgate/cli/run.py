"""`egressgate run`: start the proxy (with --config, or the documented built-in default)."""

from __future__ import annotations

import argparse
import sys

from egressgate.config.default import BUILTIN_DEFAULT_YAML
from egressgate.errors import ConfigError, StartupError

EPILOG = """\
examples:
  egressgate run                              # built-in default: :3128, allows nothing
  egressgate run --config egress.yaml
  curl -x http://127.0.0.1:3128 https://api.example.com/

Every refused request gets a 403 whose X-Egressgate-Reason header and body say why, and one
JSON access-log line. Signals: SIGHUP reloads the config (so does editing the file), SIGTERM
drains and exits, SIGUSR1 reopens the access log.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run the proxy",
        description="Run the egress proxy. Without --config it uses the built-in default, "
        "which listens on 0.0.0.0:3128 (admin on 0.0.0.0:9090) and allows no "
        "destination until you list some.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config", "-c", metavar="FILE", help="YAML config file (see docs/configuration.md)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="worker processes sharing the listen port (overrides `workers`)",
    )
    parser.add_argument(
        "--print-default-config",
        action="store_true",
        help="print the built-in default config and exit",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if args.print_default_config:
        sys.stdout.write(BUILTIN_DEFAULT_YAML)
        return 0
    from egressgate.proxy.process import run_proxy

    try:
        return run_proxy(args.config, args.workers)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"egressgate: config error: {issue}", file=sys.stderr)
        return 2
    except StartupError as exc:
        print(f"egressgate: cannot start: {exc}", file=sys.stderr)
        return 1
