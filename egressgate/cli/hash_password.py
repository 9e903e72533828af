"""`egressgate hash-password`: print a bcrypt (default) or argon2 hash for a users file line.

The password is read from standard input (one line) or, on a terminal, prompted for without
echo; it never appears on the command line, where `ps` and shell history would show it.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from egressgate.policy.credentials import Scheme, hash_password

EPILOG = """\
examples:
  egressgate hash-password                          # prompts; prints a bcrypt hash
  printf '%s\\n' "$PW" | egressgate hash-password --scheme argon2 --user alice
                                                    # prints alice:$argon2id$...
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "hash-password",
        help="hash a proxy password for auth.users_file (bcrypt or argon2)",
        description="Read a password (stdin or prompt) and print a salted hash for a users "
        "file line.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--scheme", choices=[Scheme.BCRYPT.value, Scheme.ARGON2.value], default="bcrypt"
    )
    parser.add_argument("--user", metavar="NAME", help="print a whole `NAME:hash` line")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("egressgate hash-password: empty password", file=sys.stderr)
        return 1
    hashed = hash_password(password, Scheme(args.scheme))
    print(f"{args.user}:{hashed}" if args.user else hashed)
    return 0
