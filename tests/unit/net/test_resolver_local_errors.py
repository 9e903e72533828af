"""A lookup that fails for a local reason (out of file descriptors: c-ares cannot open its
socket) is a `dns-failure` that is NOT negative-cached: once descriptors are free again, the
next lookup of the same name asks DNS and succeeds. Today the failure is cached for 5 s.

Runs in a subprocess (its own RLIMIT_NOFILE) with the real Resolver on uvloop and the real test
DNS server (tests/support/dns.py) on loopback.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support.proxy import REPO_ROOT

SCRIPT = textwrap.dedent(
    """
    import asyncio, os, resource, sys
    import uvloop
    from egressgate.errors import ResolveError
    from egressgate.net.resolver import Resolver
    from tests.support.dns import DnsServer

    async def main(dns: DnsServer) -> None:
        resolver = Resolver((dns.address,), timeout_s=2.0)
        spare: list[int] = []
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
        try:
            for _ in range(4096):  # take every free descriptor (bounded)
                spare.append(os.dup(0))
        except OSError:
            pass
        try:
            await resolver.resolve("a.test")
            print("first: ok")
        except ResolveError as exc:
            print("first:", exc.reason.value, exc.detail)
        for fd in spare:
            os.close(fd)
        try:
            found = await resolver.resolve("a.test")
            print("second: ok", found.source)
        except ResolveError as exc:
            print("second:", exc.reason.value, exc.detail)
        resolver.close()

    with DnsServer({"a.test": ["127.0.0.2"]}) as dns:
        uvloop.run(asyncio.wait_for(main(dns), 10))
    """
)


def test_a_lookup_failed_by_emfile_is_not_negative_cached() -> None:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("first: dns-failure"), result.stdout
    assert lines[1] == "second: ok dns", result.stdout
