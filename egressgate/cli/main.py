"""The `egressgate` command: an argparse tree whose subcommands live in sibling modules.

Each subcommand module exposes `register(subparsers)`, which adds its parser and sets
`handler=` to a function taking the parsed namespace and returning the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from egressgate import __version__

# Order is the order shown in `egressgate --help`.
SUBCOMMAND_MODULES = (
    "run",
    "check",
    "env",
    "ca",
    "noproxy",
    "verify",
    "k8s",
    "inject",
    "learn",
    "import_squid",
    "hash_password",
)

DESCRIPTION = """\
egressgate: an egress firewall for applications.

A forward proxy that lets each app reach only the hostnames you allow, refuses internal and
metadata addresses, and explains every refusal. Start with `egressgate run` (a built-in
default config listens on 0.0.0.0:3128 and allows nothing), then point your app at it with
the variables from `egressgate env`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="egressgate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"egressgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"egressgate.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"egressgate.cli.{name}":
                raise
            continue  # a subcommand not built yet
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
