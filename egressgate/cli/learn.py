"""`egressgate learn`: propose allowlists from access logs (the report-mode workflow).

Owns the command line only: opening the log files (plain, gzip, or - for stdin), loading the
optional current config, printing warnings on stderr and the proposal on stdout. The counting,
grouping and diffing are egressgate.tools.learn.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from collections.abc import Iterator
from typing import Any

from egressgate.config.load import load_config_file
from egressgate.config.model import Config
from egressgate.errors import ConfigError
from egressgate.tools.learn import LogAccumulator, diff, render_json, render_yaml

DESCRIPTION = """\
Read egressgate access logs (JSON lines) and propose, per policy, the smallest allowlist that
covers what the clients did: hosts grouped under their registrable domain (Public Suffix List),
`.domain` where a domain has many or CDN-like hosts, exact names otherwise, with request counts,
first/last seen and the ports used. IP-literal destinations are proposed only as explicit
addresses (with a warning). Never proposed, listed after the proposal for the reviewer:
destinations whose every request was refused (DENIED, with the reasons) and SUSPICIOUS ones
(cloud-metadata and other internal IP literals, names that contain an allowed name without
being under it such as registry.npmjs.org.evil.net, names that resolved to internal addresses).

The workflow: run egressgate with `mode: report`, collect its access log for a representative
period, run `egressgate learn`, review the proposal, paste it into the config, switch to
`mode: enforce`. With --config, also show what to add, which entries nothing used, and which
logged requests that config would refuse.
"""

EPILOG = """\
examples:
  egressgate learn /var/log/egressgate/access.log
  egressgate learn access.log.1.gz access.log --config egressgate.yaml
  egressgate learn access.log --policy ci --min-requests 5 --format json

exit status: 0 proposal printed, 2 unreadable input or no usable log lines.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "learn",
        help="propose allowlists from access logs (after running in report mode)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "logs",
        metavar="ACCESS_LOG",
        nargs="+",
        help="egressgate access-log files (JSON lines; .gz is read too; - for standard input)",
    )
    parser.add_argument("--policy", metavar="P", help="only learn for the policy named P")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="the current config: also print a diff against its policies",
    )
    parser.add_argument(
        "--format", choices=("yaml", "json"), default="yaml", help="output format (yaml)"
    )
    parser.add_argument(
        "--min-requests",
        metavar="N",
        type=_positive,
        default=1,
        help="propose only hosts seen at least N times (default 1); rarer ones are listed",
    )
    parser.set_defaults(handler=_run)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of 1 or more")
    return int(text)


def _lines(path: str) -> Iterator[str]:
    if path == "-":
        yield from sys.stdin
        return
    if path.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as handle:
            yield from handle
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        yield from handle


def _run(args: argparse.Namespace) -> int:
    config: Config | None = None
    if args.config is not None:
        try:
            config = load_config_file(args.config)
        except ConfigError as exc:
            for issue in exc.issues:
                print(f"error: {issue}", file=sys.stderr)
            return 2
    accumulator = LogAccumulator(args.policy)
    for path in args.logs:
        try:
            accumulator.feed(_lines(path), source=path)
        except (OSError, EOFError) as exc:
            print(
                f"error: cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                file=sys.stderr,
            )
            return 2
    result = accumulator.result(args.min_requests, config)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if result.stats.used == 0:
        scope = f" for policy {args.policy}" if args.policy else ""
        print(
            f"error: no usable access-log lines{scope} in {', '.join(args.logs)} "
            f"({result.stats.lines} read)",
            file=sys.stderr,
        )
        return 2
    diffs = diff(result, config, args.policy) if config is not None else ()
    if args.format == "json":
        sys.stdout.write(render_json(result, diffs))
    else:
        sys.stdout.write(render_yaml(result, args.min_requests, diffs))
    return 0
