"""`egressgate ca init`: create the CA for TLS interception and say how to trust it.

Owns the command line only: arguments, reading the system bundle, printing, exit status. What
the CA is and how it is written is egressgate.tools.ca.
"""

from __future__ import annotations

import argparse
import sys

from egressgate.cli.usage import usage_handler
from egressgate.tools import ca

CA_DESCRIPTION = "The CA that signs the certificates of intercepted hosts (docs/interception.md)."

INIT_DESCRIPTION = f"""\
Create DIR/{ca.CA_CERT_NAME} and DIR/{ca.CA_KEY_NAME} (ECDSA P-256; the key file is created
with mode 0600 and never exists with any other), plus DIR/{ca.BUNDLE_NAME}: the system's CA
bundle with this CA appended, for the runtimes whose CA variable replaces their store.
Existing files are never overwritten. Then print the tls_intercept lines of the config and how
to make each runtime trust the CA (system store, REQUESTS_CA_BUNDLE, SSL_CERT_FILE,
NODE_EXTRA_CA_CERTS, the JVM truststore, GIT_SSL_CAINFO, PIP_CERT).

With --name-constraint, the CA can only vouch for those domains and for no IP address
(a critical X.509 name constraint that clients enforce): list the hosts you intercept.
"""

INIT_EPILOG = """\
examples:
  egressgate ca init --out /etc/egressgate-ca --name-constraint api.github.com \\
      --name-constraint pypi.org
  egressgate env --ca /etc/egressgate-ca/bundle.pem --proxy http://egressgate:3128

exit status: 0 created; 1 refused (a file exists, a directory cannot be written); 2 usage.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "ca", help="create the interception CA (ca init)", description=CA_DESCRIPTION
    )
    commands = parser.add_subparsers(dest="ca_command", metavar="SUBCOMMAND")
    parser.set_defaults(handler=usage_handler(parser))
    init = commands.add_parser(
        "init",
        help="create ca.crt and ca.key (0600) and print how to trust them",
        description=INIT_DESCRIPTION,
        epilog=INIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    init.add_argument("--out", required=True, metavar="DIR", help="directory for the files")
    init.add_argument(
        "--name-constraint",
        action="append",
        default=[],
        metavar="HOST",
        help="a host or domain (api.github.com, .github.com) the CA may vouch for; repeatable. "
        "A domain covers every name below it. Without it: any name",
    )
    init.add_argument(
        "--days",
        type=int,
        default=ca.DEFAULT_VALIDITY_DAYS,
        metavar="N",
        help="validity of the CA (%(default)s days; rotate before it ends)",
    )
    bundle = init.add_mutually_exclusive_group()
    bundle.add_argument(
        "--system-bundle",
        metavar="FILE",
        help="the CA bundle to extend into bundle.pem (default: this system's)",
    )
    bundle.add_argument("--no-bundle", action="store_true", help=f"do not write {ca.BUNDLE_NAME}")
    init.set_defaults(handler=_init)


def _init(args: argparse.Namespace) -> int:
    try:
        names = ca.constraint_names(args.name_constraint)
        bundle = None if args.no_bundle else _system_bundle(args.system_bundle)
        cert, key = ca.make_ca(names, days=args.days)
    except ca.CaError as exc:
        print(f"egressgate ca init: {exc}", file=sys.stderr)
        return 2
    try:
        files = ca.write_ca(args.out, cert, key, bundle)
    except ca.CaError as exc:
        print(f"egressgate ca init: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(ca.trust_instructions(files))
    return 0


def _system_bundle(path: str | None) -> bytes | None:
    path = path or ca.find_system_bundle()
    if path is None:
        return None
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise ca.CaError(f"cannot read the system bundle {path}: {exc.strerror}") from None
