"""`egressgate import-squid`: convert a Squid allowlist config into an egressgate config.

Owns the command line only: reading the file, printing notes and refusals on stderr, checking
that the generated YAML loads as an egressgate config, and writing it to stdout or -o. The
translation itself is egressgate.tools.squid_import.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from egressgate.config.load import load_config_text
from egressgate.errors import ConfigError
from egressgate.tools.squid_import import DiskFiles, SquidImportError, import_squid

DESCRIPTION = """\
Convert a squid.conf that Squid uses as an egress allowlist into an egressgate config that
decides the same: http_access rules (first match wins, the default is the opposite of the last
rule) over dstdomain, dstdom_regex, src, port and method ACLs become named policies, `clients`
rules and `default_policy`; http_port, hosts_file and dns_nameservers carry over too.

Where Squid's rules cannot be expressed exactly (a deny that carves a subdomain out of an
allowed domain, ports that differ per destination, rules by HTTP method or URL, ...) nothing is
written: each refusal is printed with its file:line and the reason. Directives that are not
carried over (caching, logging formats, ...) are listed on stderr with their line numbers.
"""

EPILOG = """\
examples:
  egressgate import-squid /etc/squid/squid.conf -o egressgate.yaml
  egressgate import-squid copied/etc/squid/squid.conf --root copied   # a config from elsewhere
  egressgate check --config egressgate.yaml

exit status: 0 written (notes may have been printed), 2 refused or unreadable input.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import-squid",
        help="convert a Squid allowlist config (squid.conf) into an egressgate config",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("squid_conf", metavar="SQUID_CONF", help="the squid.conf to convert")
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write the egressgate config here (default: standard output)",
    )
    parser.add_argument(
        "--root",
        metavar="DIR",
        help="read absolute paths in the config (include, ACL files, hosts_file) under DIR, "
        "for a configuration tree copied from another machine",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    path: str = args.squid_conf
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            text = handle.read()
    except OSError as exc:
        print(f"error: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    files = DiskFiles(os.path.dirname(os.path.abspath(path)), args.root)
    try:
        result = import_squid(text, path, files)
    except SquidImportError as exc:
        for issue in exc.issues:
            print(f"error: {issue}", file=sys.stderr)
        print(
            f"error: {path} was not converted ({len(exc.issues)} problem(s) above)", file=sys.stderr
        )
        return 2
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    if not _validates(result.yaml_text, args.output):
        return 2
    if args.output is None:
        sys.stdout.write(result.yaml_text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(result.yaml_text)
    except OSError as exc:
        print(f"error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _validates(yaml_text: str, output: str | None) -> bool:
    """The generated config must load; a miss here is a missing file on this machine."""
    base_dir = os.path.dirname(os.path.abspath(output)) if output else os.getcwd()
    try:
        load_config_text(yaml_text, output or "<generated config>", base_dir=base_dir)
    except ConfigError as exc:
        for issue in exc.issues:
            print(f"error: the generated config does not load here: {issue}", file=sys.stderr)
        print(
            "error: nothing written (use --root if the squid.conf came from another machine)",
            file=sys.stderr,
        )
        return False
    return True
