"""What each real client shows its user when egressgate refuses a request.

Every client installed here (curl, wget, git, pip, requests, httpx, urllib, aiohttp, Node's
undici fetch, npm, apt, Java) is pointed at a real proxy on loopback and asked for
`https://denied.test/` (a CONNECT tunnel) and `http://denied.test/` (a forwarded request). The
proxy refuses both by name before any DNS lookup, so nothing is resolved and nothing leaves the
machine: the clients talk only to the proxy, whose only nameserver is the test DNS server.

The test keeps `docs/clients.md` honest: CLIENTS holds the fragment each client prints, and
whether that output names the reason code; the test checks both against what the client really
printed, and checks that the docs table quotes the same fragment on that client's row. A client
that is not installed is skipped with its name (and the table says "not measured").
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import requests

from tests.integration.helpers_core import start_proxy
from tests.support.dns import DnsServer
from tests.support.proxy import REPO_ROOT, ProxyFactory, ProxyProcess, clean_env

CLIENT_TIMEOUT_S = 60.0
CODE = "host-not-allowed"
HOST = "denied.test"
PHRASE = f"Forbidden (egressgate: {CODE})"
DOCS = REPO_ROOT / "docs" / "clients.md"
UNDICI = Path("/usr/lib/node_modules/npm/node_modules/undici")  # the copy npm ships


@dataclass(frozen=True)
class Seen:
    """What a client printed for one refused URL, and whether that names the reason code."""

    fragment: str
    shows_code: bool


@dataclass(frozen=True)
class Case:
    """A proxy on loopback, the scratch directory and an environment with nothing else in it."""

    proxy: ProxyProcess
    tmp: Path
    env: dict[str, str]


Runner = Callable[[Case, str], str]


def run(argv: list[str], case: Case, extra: Mapping[str, str] | None = None) -> str:
    """Run a client program; its stdout and stderr together, as a user's terminal shows them."""
    try:
        done = subprocess.run(
            argv,
            env=case.env | dict(extra or {}),
            cwd=case.tmp,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{argv[0]} did not finish within {CLIENT_TIMEOUT_S}s: {exc}")
    return done.stdout + done.stderr


def empty_file(case: Case) -> Path:
    """An empty configuration file, for clients that must read one (wget, apt)."""
    path = case.tmp / "empty.conf"
    path.touch()
    return path


def lower_env(case: Case) -> dict[str, str]:
    url = case.proxy.proxy_url
    return {"http_proxy": url, "https_proxy": url, "HTTP_PROXY": url, "HTTPS_PROXY": url}


# ---------------------------------------------------------------------------------------------
# One runner per client: how a user would call it, with every setting pointing at the proxy.
# ---------------------------------------------------------------------------------------------


def curl(case: Case, url: str) -> str:
    return run(["curl", "-sS", "--max-time", "20", "-x", case.proxy.proxy_url, url], case)


def wget(case: Case, url: str) -> str:
    argv = ["wget", "--tries=1", "--timeout=20", "-O", os.devnull, url]
    return run(argv, case, lower_env(case) | {"WGETRC": str(empty_file(case))})


def git(case: Case, url: str) -> str:
    argv = ["git", "-c", f"http.proxy={case.proxy.proxy_url}", "ls-remote", f"{url}repo.git"]
    return run(argv, case)


def pip(case: Case, url: str) -> str:
    argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(case.tmp)]
    argv += ["--retries", "1", "--timeout", "20", "--proxy", case.proxy.proxy_url]
    argv += ["--index-url", f"{url}simple/", "--trusted-host", "denied.test", "somepackage"]
    return run(argv, case)


def python_requests(case: Case, url: str) -> str:
    proxies = case.proxy.requests_proxies
    try:
        requests.get(url, proxies=proxies, timeout=20).raise_for_status()
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def python_httpx(case: Case, url: str) -> str:
    try:
        httpx.get(url, proxy=case.proxy.proxy_url, timeout=20, trust_env=False).raise_for_status()
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def python_urllib(case: Case, url: str) -> str:
    proxy = case.proxy.proxy_url
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": proxy, "https": proxy})
    )
    try:
        opener.open(url, timeout=20).close()
    except urllib.error.URLError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def python_aiohttp(case: Case, url: str) -> str:
    aiohttp = pytest.importorskip("aiohttp")

    async def fetch() -> str:
        async with aiohttp.ClientSession(trust_env=False) as session:
            try:
                async with session.get(url, proxy=case.proxy.proxy_url) as response:
                    response.raise_for_status()
            except aiohttp.ClientError as exc:
                return f"{type(exc).__name__}: {exc}"
        return "no error"

    return asyncio.run(asyncio.wait_for(fetch(), 30))


NODE_FETCH = """
const { ProxyAgent, fetch } = require(process.argv[2]);
fetch(process.argv[1], { dispatcher: new ProxyAgent(process.argv[3]) })
  .then((r) => console.log(`${r.status} ${r.statusText}`))
  .catch((e) => { console.log(`${e}`); console.log(`cause: ${e.cause}`);
                  console.log(`cause: ${e.cause && e.cause.cause}`); });
"""


def node_undici(case: Case, url: str) -> str:
    if not UNDICI.is_dir():
        pytest.skip(f"undici is not installed at {UNDICI}")
    return run(["node", "-e", NODE_FETCH, url, str(UNDICI), case.proxy.proxy_url], case)


def npm(case: Case, url: str) -> str:
    argv = ["npm", "view", "somepackage", "--registry", url, "--fetch-retries", "0"]
    argv += ["--proxy", case.proxy.proxy_url, "--https-proxy", case.proxy.proxy_url]
    argv += ["--userconfig", os.devnull, "--cache", str(case.tmp / "npm-cache")]
    return run(argv, case, {"npm_config_update_notifier": "false"})


def apt(case: Case, url: str) -> str:
    if os.geteuid() != 0:
        pytest.skip("apt-get update with a private state directory still needs root here")
    root = case.tmp / "apt"
    for sub in ("lists/partial", "cache/archives/partial", "parts"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    sources = root / "sources.list"
    sources.write_text(f"deb [trusted=yes] {url}debian bookworm main\n")
    options = {
        "Dir::Etc::SourceList": sources,
        "Dir::Etc::SourceParts": root / "parts",
        "Dir::Etc::Parts": root / "parts",
        "Dir::State::Lists": root / "lists",
        "Dir::Cache": root / "cache",
        "Acquire::http::Proxy": case.proxy.proxy_url,
        "Acquire::https::Proxy": case.proxy.proxy_url,
        "Acquire::Retries": "0",
        "APT::Sandbox::User": "root",
    }
    argv = ["apt-get", "update"]
    for key, value in options.items():
        argv += ["-o", f"{key}={value}"]
    return run(argv, case, {"APT_CONFIG": str(empty_file(case))})


JAVA = """
import java.net.*; import java.net.http.*; import java.io.*;
public class Refused {
  public static void main(String[] a) throws Exception {
    var proxy = new InetSocketAddress("127.0.0.1", Integer.parseInt(a[1]));
    var client = HttpClient.newBuilder().proxy(ProxySelector.of(proxy)).build();
    try {
      var r = client.send(HttpRequest.newBuilder(URI.create(a[0])).build(),
                          HttpResponse.BodyHandlers.ofString());
      System.out.println("HttpClient: " + r.statusCode());
    } catch (IOException e) { System.out.println("HttpClient: " + e); }
    var c = (HttpURLConnection) new URL(a[0]).openConnection(
        new Proxy(Proxy.Type.HTTP, proxy));
    try { System.out.println("HttpURLConnection: " + c.getResponseCode() + " "
                             + c.getResponseMessage()); }
    catch (IOException e) { System.out.println("HttpURLConnection: " + e); }
  }
}
"""


def java(case: Case, url: str) -> str:
    source = case.tmp / "Refused.java"
    source.write_text(JAVA)
    port = str(case.proxy.proxy_address[1])
    return run(["java", str(source), url, port], case)


# ---------------------------------------------------------------------------------------------
# What each client shows (the docs table quotes the same fragments).
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    run: Runner
    https: Seen
    http: Seen
    program: str | None = None  # the executable it needs; None: a library of this interpreter


CLIENTS: dict[str, Client] = {
    "curl": Client(
        curl,
        Seen("CONNECT tunnel failed, response 403", shows_code=False),
        Seen(f"egressgate: 403 {CODE}", shows_code=True),  # the body, on stdout
        program="curl",
    ),
    "wget": Client(
        wget,
        Seen(f"Proxy tunneling failed: {PHRASE}", shows_code=True),
        Seen(f"ERROR 403: {PHRASE}", shows_code=True),
        program="wget",
    ),
    "git": Client(
        git,
        Seen("CONNECT tunnel failed, response 403", shows_code=False),
        Seen(f"remote: egressgate: 403 {CODE}", shows_code=True),  # git relays the body
        program="git",
    ),
    "pip": Client(
        pip,
        Seen(f"Tunnel connection failed: 403 {PHRASE}", shows_code=True),  # in the retry warning
        Seen("No matching distribution found for somepackage", shows_code=False),
    ),
    "requests": Client(
        python_requests,
        Seen(f"Tunnel connection failed: 403 {PHRASE}", shows_code=True),
        Seen(f"403 Client Error: {PHRASE}", shows_code=True),
    ),
    "httpx": Client(
        python_httpx,
        Seen(f"ProxyError: 403 {PHRASE}", shows_code=True),
        Seen(f"Client error '403 {PHRASE}'", shows_code=True),
    ),
    "urllib": Client(
        python_urllib,
        Seen(f"Tunnel connection failed: 403 {PHRASE}", shows_code=True),
        Seen(f"HTTP Error 403: {PHRASE}", shows_code=True),
    ),
    "aiohttp": Client(
        python_aiohttp,
        Seen(f"ClientHttpProxyError: 403, message='{PHRASE}'", shows_code=True),
        Seen(f"ClientResponseError: 403, message='{PHRASE}'", shows_code=True),
    ),
    "node-undici": Client(
        node_undici,
        Seen("Proxy response (403) !== 200 when HTTP Tunneling", shows_code=False),
        Seen("Proxy response (403) !== 200 when HTTP Tunneling", shows_code=False),
        program="node",
    ),
    "npm": Client(
        npm,
        Seen(f"npm error 403 403 {PHRASE}", shows_code=True),
        Seen(f"npm error 403 403 {PHRASE}", shows_code=True),
        program="npm",
    ),
    "apt": Client(
        apt,
        Seen(f"Invalid response from proxy: HTTP/1.1 403 {PHRASE}", shows_code=True),
        Seen(f"403  {PHRASE}", shows_code=True),
        program="apt-get",
    ),
    "java": Client(
        java,
        Seen(f'Proxy returns "HTTP/1.1 403 {PHRASE}"', shows_code=True),
        Seen(f"HttpURLConnection: 403 {PHRASE}", shows_code=True),
        program="javac",
    ),
}


@pytest.fixture
def case(proxy_factory: ProxyFactory, dns_server: DnsServer, tmp_path: Path) -> Case:
    # A denied name that would resolve to a loopback canary, were it ever asked: it never is.
    dns_server.records["denied.test"] = ["127.0.0.3"]
    proxy = start_proxy(proxy_factory, allow=["allowed.test"], ports=[80, 443])
    home = tmp_path / "home"
    home.mkdir()
    env = clean_env(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "NO_COLOR": "1",
        }
    )
    env = {k: v for k, v in env.items() if not k.startswith(("PIP_", "npm_", "JAVA_", "JDK_"))}
    env |= {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_NO_INPUT": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    return Case(proxy, tmp_path, env)


def docs_row(client: str) -> str:
    """The row of the docs table for `client` (first cell `client`, in backquotes)."""
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith(f"| `{client}` |") or line.startswith(f"| {client} |"):
            return line
    raise AssertionError(f"docs/clients.md has no refusal-table row for {client}")


@pytest.mark.parametrize("name", list(CLIENTS))
def test_refusal_as_the_client_shows_it(case: Case, name: str) -> None:
    client = CLIENTS[name]
    if client.program is not None and shutil.which(client.program) is None:
        pytest.skip(f"{name}: {client.program} is not installed")
    for scheme, seen in (("https", client.https), ("http", client.http)):
        output = client.run(case, f"{scheme}://denied.test/")
        # The client really talked to the proxy, and the proxy refused it by name.
        wanted = (HOST, 443 if scheme == "https" else 80, CODE)
        refused = case.proxy.wait_for_records(
            1, 10.0, predicate=lambda r, w=wanted: (r["host"], r["port"], r["reason"]) == w
        )
        assert refused, f"{name} {scheme} never reached the proxy: {output!r}"
        assert seen.fragment in output, f"{name} {scheme}: {output!r}"
        assert (CODE in output) is seen.shows_code, f"{name} {scheme}: {output!r}"
        assert seen.fragment in docs_row(name), f"docs/clients.md row for {name}"
