"""Proxy authentication hardening (issue 19, Low): salted password hashes in the users file
(bcrypt, argon2) verified off the event loop, and a per-client back-off after failed logins.

Before: the users file held clear-text passwords compared as unsalted SHA-256 (a bcrypt line
was taken for a clear-text password), and one client could try 2,868 passwords a second.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import argon2
import bcrypt
import pytest

from tests.integration.helpers_ops import EchoTunnel, admin_get, proxied_get, scrape
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, RawOrigin, RawOriginFactory
from tests.support.proxy import REPO_ROOT, ProxyFactory, ProxyProcess, clean_env

DELAY_S = 0.5
OTHER_CLIENT = "127.0.0.2"


def basic(user: str, password: str) -> tuple[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return ("Proxy-Authorization", f"Basic {token}")


@pytest.fixture
def sites(
    dns_server: DnsServer, origin_factory: OriginFactory, raw_origin_factory: RawOriginFactory
) -> tuple[Origin, RawOrigin]:
    dns_server.records["a.test"] = ["127.0.0.1"]
    return origin_factory("web"), raw_origin_factory("echo", mode="echo")


def _users_proxy(
    proxy_factory: ProxyFactory,
    sites: tuple[Origin, RawOrigin],
    tmp_path: Path,
    lines: list[str],
) -> ProxyProcess:
    web, echo = sites
    users = tmp_path / "users.txt"
    users.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return proxy_factory(
        auth={"users_file": str(users)},
        allow=[],
        allow_private=["127.0.0.0/8"],
        http_ports=[str(web.port)],
        connect_ports=[str(echo.port)],
        policies={
            "members": {
                "allow": ["a.test"],
                "allow_private": ["127.0.0.0/8"],
                "http_ports": [str(web.port)],
                "connect_ports": [str(echo.port)],
            }
        },
        clients=[{"user": ["bea", "ari", "sha", "pat"], "policy": "members"}],
        limits={"auth_failure_delay_s": DELAY_S},
    )


def _fast_argon2(password: str) -> str:
    return argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash(password)


def test_bcrypt_argon2_sha256_and_clear_text_entries_verify_on_both_paths(
    proxy_factory: ProxyFactory, sites: tuple[Origin, RawOrigin], tmp_path: Path
) -> None:
    web, echo = sites
    proxy = _users_proxy(
        proxy_factory,
        sites,
        tmp_path,
        [
            "bea:" + bcrypt.hashpw(b"bea-pw", bcrypt.gensalt(rounds=4)).decode(),
            "ari:" + _fast_argon2("ari-pw"),
            "sha:{SHA256}" + hashlib.sha256(b"sha-pw").hexdigest(),
            "pat:pat-pw",
        ],
    )
    url = web.url("/", "a.test")
    for user in ("bea", "ari", "sha", "pat"):
        right = basic(user, f"{user}-pw")
        assert proxied_get(proxy.proxy_address, url, headers=[right]).status == 200, user
        # Again: the verdict is remembered (no second slow hash), still right.
        assert proxied_get(proxy.proxy_address, url, headers=[right]).status == 200, user
        with EchoTunnel(proxy.proxy_address, echo.authority("a.test"), headers=[right]) as t:
            assert t.status == 200, user
            assert t.roundtrip(b"hello")
        wrong = basic(user, f"{user}-wrong")
        assert (
            proxied_get(proxy.proxy_address, url, headers=[wrong], source=OTHER_CLIENT).status
            == 407
        )
    # The stored hash itself is not a password.
    stored = (tmp_path / "users.txt").read_text().splitlines()[0].split(":", 1)[1]
    denied = proxied_get(
        proxy.proxy_address, url, headers=[basic("bea", stored)], source=OTHER_CLIENT
    )
    assert denied.status == 407
    assert "bea-pw" not in "\n".join(proxy.stderr_lines)


def test_failed_logins_from_one_client_are_slowed_and_other_clients_are_not(
    proxy_factory: ProxyFactory, sites: tuple[Origin, RawOrigin], tmp_path: Path
) -> None:
    web, echo = sites
    proxy = _users_proxy(proxy_factory, sites, tmp_path, ["pat:pat-pw"])
    url = web.url("/", "a.test")
    wrong = [basic("pat", f"guess-{n}") for n in range(4)]
    started = time.monotonic()
    # Four guesses at once on four connections: the back-off is per client, not per connection.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        statuses = list(
            pool.map(lambda h: proxied_get(proxy.proxy_address, url, headers=[h]).status, wrong)
        )
    took = time.monotonic() - started
    assert statuses == [407] * 4
    assert took >= 4 * DELAY_S * 0.9, f"4 failures answered in {took:.2f}s"
    # Another client with the right password is not delayed.
    started = time.monotonic()
    good = proxied_get(
        proxy.proxy_address, url, headers=[basic("pat", "pat-pw")], source=OTHER_CLIENT
    )
    assert good.status == 200
    assert time.monotonic() - started < DELAY_S
    # The raw CONNECT path backs off too.
    started = time.monotonic()
    with EchoTunnel(proxy.proxy_address, echo.authority("a.test"), headers=[wrong[0]]) as tunnel:
        assert tunnel.status == 407
    assert time.monotonic() - started >= DELAY_S * 0.9
    assert scrape(proxy).value("egressgate_auth_failures_total") == 5


def test_a_slow_hash_is_verified_off_the_event_loop(
    proxy_factory: ProxyFactory, sites: tuple[Origin, RawOrigin], tmp_path: Path
) -> None:
    """A costly bcrypt (2^14 rounds) must not stall everyone else while it runs."""
    web, _ = sites
    costly = bcrypt.hashpw(b"pat-pw", bcrypt.gensalt(rounds=14)).decode()
    proxy = _users_proxy(proxy_factory, sites, tmp_path, ["pat:" + costly])
    url = web.url("/", "a.test")
    admin = proxy.admin_address
    assert admin is not None
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        login = pool.submit(
            lambda: proxied_get(
                proxy.proxy_address, url, headers=[basic("pat", "pat-pw")], timeout=60
            )
        )
        time.sleep(0.1)  # the hash is running now
        slowest = 0.0
        while not login.done():
            started = time.monotonic()
            assert admin_get(admin, "/healthz").status == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        assert login.result().status == 200
    assert slowest < 0.5, f"the event loop stalled {slowest:.2f}s during a bcrypt check"


def test_a_malformed_hash_is_refused_at_start(
    proxy_factory: ProxyFactory, sites: tuple[Origin, RawOrigin], tmp_path: Path
) -> None:
    from tests.support.proxy import ProxyStartError

    with pytest.raises(ProxyStartError, match="bcrypt"):
        _users_proxy(proxy_factory, sites, tmp_path, ["pat:$2b$12$too-short"])


def _egressgate(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egressgate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=clean_env(),
        timeout=60,
        check=False,
    )


def test_hash_password_output_is_accepted_and_check_warns_only_about_weak_entries(
    proxy_factory: ProxyFactory, sites: tuple[Origin, RawOrigin], tmp_path: Path
) -> None:
    web, _ = sites
    made = _egressgate("hash-password", "--user", "pat", stdin="pat-pw\n")
    assert made.returncode == 0, made.stderr
    line = made.stdout.strip()
    assert line.startswith("pat:$2b$")
    assert "pat-pw" not in line
    proxy = _users_proxy(proxy_factory, sites, tmp_path, [line])
    right = basic("pat", "pat-pw")
    assert proxied_get(proxy.proxy_address, web.url("/", "a.test"), headers=[right]).status == 200
    assert proxy.events("weak-passwords") == []

    checked = _egressgate("check", "--config", str(proxy.config_path))
    assert checked.returncode == 0, checked.stderr
    assert "warning" not in checked.stderr
    (tmp_path / "users.txt").write_text(line + "\nsha:{SHA256}" + "0" * 64 + "\n")
    checked = _egressgate("check", "--config", str(proxy.config_path))
    assert checked.returncode == 0, checked.stderr
    assert "warning:" in checked.stderr
    assert "sha" in checked.stderr
    assert "bcrypt or argon2" in checked.stderr
