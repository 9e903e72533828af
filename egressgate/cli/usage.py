"""A handler for a command group run without its subcommand (`egressgate k8s`, `egressgate ca`)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def usage_handler(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    """Show the group's subcommands on stderr and exit 2 (a usage error)."""

    def handler(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return handler
