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


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command tree; `only`: just that subcommand's module (see `requested`)."""
    parser = argparse.ArgumentParser(
        prog="egressgate",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"egressgate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        if only is not None and name != only:
            continue
        try:
            module = importlib.import_module(f"egressgate.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"egressgate.cli.{name}":
                raise
            continue  # a subcommand not built yet
        module.register(subparsers)
    return parser


def requested(argv: Sequence[str]) -> str | None:
    """The subcommand module `argv` asks for, when its first argument names one: only that one
    is imported and registered. Registering a subcommand imports its tooling, and building
    every one cost `egressgate run` ~100 ms of start-up and ~10 MB of RSS for the whole life of
    the proxy (the squid importer, the Kubernetes renderer, the injection patcher with
    `cryptography`...): a per-pod cost for sidecars. Anything else (no argument, a global
    option first, an unknown command) builds the whole tree, so help and errors are unchanged."""
    if not argv or argv[0].startswith("-"):
        return None
    module = argv[0].replace("-", "_")
    return module if module in SUBCOMMAND_MODULES else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(requested(sys.argv[1:] if argv is None else argv))
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
