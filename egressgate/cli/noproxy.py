"""`egressgate noproxy`: explain and lint NO_PROXY values against measured client behaviour.

Owns the command line only (subcommands explain, lint, runtimes; table and JSON output; exit
status). The runtime model and the checks are egressgate.tools.noproxy (and, for linting the
current environment, egressgate.tools.proxy_env.lint_env).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from egressgate.tools import noproxy
from egressgate.tools.noproxy import Finding, RuntimeVerdict
from egressgate.tools.proxy_env import lint_env

DESCRIPTION = """\
HTTP clients disagree about NO_PROXY: curl reads `*.example.com` literally, Node libraries match
`svc` only exactly, wget, urllib, aiohttp, undici and global-agent ignore CIDRs, httpx fails on
`[::1]`, Java ignores the variables altogether. These commands answer, for the runtimes measured
in reference/noproxy (one version each, listed by `egressgate noproxy runtimes`):

  explain  what each runtime does with a NO_PROXY value for one target, and why
  lint     which entries some runtimes misread, and how to write them instead
"""

EXPLAIN_DESCRIPTION = """\
For NO_PROXY=no_proxy=VALUE (proxy variables assumed set in both letter cases, as
`egressgate env` prints them), show for each measured runtime whether a request to TARGET goes
direct or to the proxy, which entry matched by which rule, or why an entry that looks like it
should match does not. "ignores env" means the runtime never reads the variables; "error" means
the request fails. Rules marked with * come from the client's source code, not measurement.
"""

EXPLAIN_EPILOG = """\
examples:
  egressgate noproxy explain "localhost,127.0.0.1,.svc,10.0.0.0/8" api.ns.svc.cluster.local
  egressgate noproxy explain "*.example.com" www.example.com
  egressgate noproxy explain "$NO_PROXY" 10.96.0.1:443 --scheme https
  egressgate noproxy explain "10.0.0.0/8" db.internal --resolves-to 10.1.2.3   # for Ruby
  egressgate noproxy explain ".svc" https://kubernetes.default.svc/ --json

TARGET is HOST, HOST:PORT, [IPv6]:PORT, a bare IPv6 address or a URL.
exit status: 0 explained, 2 unusable TARGET.
"""

LINT_DESCRIPTION = """\
List the entries of a NO_PROXY value that some measured runtime misreads, naming the runtimes
and the fix. Without VALUE, lint the proxy variables of the current environment instead
(letter case of the variable names, the proxy URL, and the NO_PROXY value).
Severity: error = some runtime does the opposite of what the entry says; warning = some
runtimes will not honour it (there is a workaround); info = worth knowing.
"""

LINT_EPILOG = """\
examples:
  egressgate noproxy lint "localhost,*.corp.example,svc,10.0.0.0/8"
  egressgate noproxy lint            # the current environment's variables
  egressgate noproxy lint "$NO_PROXY" --json

exit status: 0 no error-level finding, 1 at least one error-level finding.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "noproxy",
        help="explain/lint NO_PROXY values against measured client behaviour",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="noproxy_command", metavar="SUBCOMMAND")
    _register_explain(commands)
    _register_lint(commands)
    runtimes = commands.add_parser(
        "runtimes",
        help="list the measured runtimes and versions",
        description="List the measured runtimes, their versions and whether they read the "
        "proxy variables.",
    )
    runtimes.add_argument("--json", action="store_true", help="print JSON")
    runtimes.set_defaults(handler=_run_runtimes)
    parser.set_defaults(handler=lambda _args: _usage(parser))


def _register_explain(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    explain = commands.add_parser(
        "explain",
        help="what each runtime does with NO_PROXY=VALUE for TARGET, and why",
        description=EXPLAIN_DESCRIPTION,
        epilog=EXPLAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    explain.add_argument("value", metavar="VALUE", help='the NO_PROXY value ("" for unset)')
    explain.add_argument("target", metavar="TARGET", help="HOST[:PORT] or URL")
    explain.add_argument(
        "--scheme",
        choices=("http", "https"),
        help="scheme of the request (default: the URL's, else http)",
    )
    explain.add_argument(
        "--resolves-to",
        action="extend",
        nargs="+",
        default=[],
        metavar="ADDR",
        help="addresses the host name resolves to (only Ruby resolves before matching)",
    )
    explain.add_argument(
        "--runtime",
        action="extend",
        nargs="+",
        metavar="ID",
        help="only these runtimes (ids from `egressgate noproxy runtimes`)",
    )
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.set_defaults(handler=_run_explain)


def _register_lint(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lint = commands.add_parser(
        "lint",
        help="entries some runtimes misread, with fixes (exit 1 on errors)",
        description=LINT_DESCRIPTION,
        epilog=LINT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lint.add_argument(
        "value", metavar="VALUE", nargs="?", help="the NO_PROXY value (default: the environment)"
    )
    lint.add_argument("--json", action="store_true", help="print JSON")
    lint.set_defaults(handler=_run_lint)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# -- explain ----------------------------------------------------------------------------------


def _run_explain(args: argparse.Namespace) -> int:
    try:
        target = noproxy.parse_target(args.target, scheme=args.scheme, addresses=args.resolves_to)
    except ValueError as exc:
        print(f"egressgate noproxy explain: bad TARGET {args.target!r}: {exc}", file=sys.stderr)
        return 2
    known = {rt.id for rt in noproxy.runtimes()}
    unknown = sorted(set(args.runtime or ()) - known)
    if unknown:
        print(f"egressgate noproxy explain: unknown runtime {', '.join(unknown)}", file=sys.stderr)
        return 2
    verdicts = noproxy.explain_env(noproxy.proxy_env_for(args.value), target, only=args.runtime)
    if args.json:
        doc = {
            "no_proxy": args.value,
            "target": target.url,
            "measured": _measured(),
            "verdicts": [v.to_dict() for v in verdicts],
            "all_proxy": noproxy.all_proxy_readers().to_dict(),
        }
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(_explain_table(args.value, target, verdicts))
    return 0


def _explain_table(value: str, target: noproxy.Target, verdicts: Sequence[RuntimeVerdict]) -> str:
    rows = [(f"{v.label} {v.version}", _verdict_cell(v), v.reason) for v in verdicts]
    header = ("runtime", "verdict", "reason")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(2)]
    lines = [f"NO_PROXY={value!r}  target {target.url}", ""]
    lines += [f"{c[0]:<{widths[0]}}  {c[1]:<{widths[1]}}  {c[2]}" for c in [header, *rows]]
    notes = [f"  {v.label}: {c}" for v in verdicts for c in v.caveats]
    if notes:
        lines += ["", "notes:", *notes]
    lines += ["", *_all_proxy_lines(), "", _measured_line()]
    return "\n".join(lines) + "\n"


def _all_proxy_lines() -> list[str]:
    """Who honours ALL_PROXY (egressgate env --socks sets it to the SOCKS5 listener)."""
    readers = noproxy.all_proxy_readers()
    return [
        "ALL_PROXY (egressgate env --socks socks5h://HOST:PORT):",
        f"  read by: {', '.join(readers.reads) or 'none'}",
        f"  not read by: {', '.join(readers.ignores) or 'none'}",
        f"  no proxy variable read at all: {', '.join(readers.no_env) or 'none'}",
        "  measured with an http:// value; speaking SOCKS5 through it is not measured here",
        "  (egressgate's tests drive curl, git, requests+PySocks and httpx+socksio over SOCKS5)",
    ]


def _verdict_cell(verdict: RuntimeVerdict) -> str:
    unmeasured = any(c.startswith("rule `") for c in verdict.caveats)
    return str(verdict.verdict) + ("*" if unmeasured else "")


# -- lint -------------------------------------------------------------------------------------


def _run_lint(args: argparse.Namespace) -> int:
    if args.value is None:
        findings = lint_env(os.environ)
        subject = "the environment's proxy variables"
    else:
        findings = noproxy.lint(args.value)
        subject = f"NO_PROXY={args.value!r}"
    if args.json:
        doc = {
            "subject": subject,
            "measured": _measured(),
            "findings": [f.to_dict() for f in findings],
        }
        print(json.dumps(doc, indent=2))
    else:
        sys.stdout.write(_lint_text(subject, findings))
    return 1 if noproxy.has_errors(findings) else 0


def _lint_text(subject: str, findings: Sequence[Finding]) -> str:
    if not findings:
        return f"{subject}: no findings\n\n{_measured_line()}\n"
    lines = [f"{subject}: {len(findings)} finding(s)", ""]
    for f in findings:
        lines.append(f"{f.severity.upper():<7}  {f.code}: {f.message}")
        lines.append(f"{'':<7}  fix: {f.fix}")
    lines += ["", _measured_line()]
    return "\n".join(lines) + "\n"


# -- runtimes ---------------------------------------------------------------------------------


def _run_runtimes(args: argparse.Namespace) -> int:
    rts = noproxy.runtimes()
    if args.json:
        doc = [
            {"id": rt.id, "label": rt.label, "version": rt.version, "reads_env": rt.reads_env}
            for rt in rts
        ]
        print(json.dumps({"measured": _measured(), "runtimes": doc}, indent=2))
        return 0
    width = max(len(rt.id) for rt in rts)
    for rt in rts:
        reads = "reads the proxy variables" if rt.reads_env else "IGNORES the proxy variables"
        print(f"{rt.id:<{width}}  {rt.label} {rt.version}: {reads}")
    print(f"\n{_measured_line()}")
    return 0


def _measured() -> dict[str, str]:
    info = noproxy.matrix_info()
    return {"at": info.measured_at, "platform": info.platform, "source": info.source_path}


def _measured_line() -> str:
    info = noproxy.matrix_info()
    return f"measured {info.measured_at} on {info.platform} (provenance: reference/noproxy)"
