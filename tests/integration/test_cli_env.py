"""`egressgate env` and `egressgate noproxy` as a user runs them, and real clients using the output.

The CLI tests run `python -m egressgate ...` as subprocesses. The real-client tests start, on
loopback only, two origins (127.0.0.1 and 127.0.0.5/127.0.0.9, port 0) and a "proxy detector"
(127.0.0.1, port 0) that answers everything with 200 and its own name; then curl, wget, Python
urllib/requests/httpx and Java (each only if installed) fetch URLs with the environment that
`egressgate env` generated, and the answer says where each request went. Targets are loopback
addresses, or names pinned to loopback with curl --resolve: no name is ever looked up in DNS
and nothing is sent to a non-loopback address. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from egressgate.tools.proxy_env import build_env

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 30


def _egressgate(
    *args: str, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egressgate", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        cwd=ROOT,
        env=dict(env) if env is not None else _clean_env(),
        stdin=subprocess.DEVNULL,
    )


def _clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any proxy variable (they would change the outcome)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.pop("JAVA_TOOL_OPTIONS", None)
    env.pop("REQUEST_METHOD", None)
    env.update(extra or {})
    return env


# -- egressgate env -----------------------------------------------------------------------------


def test_env_shell_output() -> None:
    result = _egressgate("env", "--proxy", "http://127.0.0.1:3128")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "export HTTP_PROXY=http://127.0.0.1:3128"
    assert "export NO_PROXY=localhost,127.0.0.1,::1,.svc,.cluster.local" in lines
    assert "export no_proxy=localhost,127.0.0.1,::1,.svc,.cluster.local" in lines
    assert lines[-1].startswith("export JAVA_TOOL_OPTIONS='-Dhttp.proxyHost=127.0.0.1 ")
    assert result.stderr == ""


def test_env_shell_output_evaluates_in_a_real_shell() -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash not installed")
    result = _egressgate("env", "--proxy", "http://u:p%40ss@127.0.0.1:3128", "--no-proxy", ".corp")
    script = result.stdout + 'printf "%s\\n" "$NO_PROXY" "$https_proxy" "$JAVA_TOOL_OPTIONS"\n'
    shell = subprocess.run([bash, "-c", script], capture_output=True, text=True, timeout=TIMEOUT)
    no_proxy, https_proxy, java = shell.stdout.splitlines()
    assert no_proxy.endswith(",corp,.corp")
    assert https_proxy == "http://u:p%40ss@127.0.0.1:3128"
    assert java.endswith("|corp|*.corp")


def test_env_warnings_go_to_stderr() -> None:
    result = _egressgate(
        "env", "--proxy", "http://egress:3128", "--cluster-cidr", "10.0.0.0/8", "--format", "dotenv"
    )
    assert result.returncode == 0
    assert "NO_PROXY=localhost,127.0.0.1,::1,.svc,.cluster.local,10.0.0.0/8" in result.stdout
    assert "warning: 10.0.0.0/8" in result.stderr
    assert "wget" in result.stderr
    assert "warning" not in result.stdout


def test_env_json_carries_the_warnings() -> None:
    result = _egressgate(
        "env", "--proxy", "http://egress:3128", "--cluster-cidr", "fd00::/64", "--format", "json"
    )
    assert result.returncode == 0
    assert result.stderr == ""
    doc = json.loads(result.stdout)
    assert doc["variables"]["HTTPS_PROXY"] == "http://egress:3128"
    assert any("fd00::/64" in w for w in doc["warnings"])
    assert doc["java"]["properties"]["http.proxyPort"] == "3128"


def test_env_k8s_is_valid_yaml_env_list() -> None:
    result = _egressgate(
        "env", "--proxy", "http://egress.egress.svc:3128", "--format", "k8s", "--no-java"
    )
    doc = yaml.safe_load(result.stdout)
    names = [item["name"] for item in doc["env"]]
    assert names == [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "NO_PROXY",
        "http_proxy",
        "https_proxy",
        "no_proxy",
    ]


def test_env_docker_and_env_file() -> None:
    docker = _egressgate("env", "--proxy", "http://172.17.0.1:3128", "--format", "docker")
    assert docker.stdout.startswith("-e HTTP_PROXY=http://172.17.0.1:3128 -e ")
    env_file = _egressgate("env", "--proxy", "http://172.17.0.1:3128", "--format", "env-file")
    assert "JAVA_TOOL_OPTIONS=-Dhttp.proxyHost=172.17.0.1 -D" in env_file.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--proxy", "127.0.0.1:3128"], "has no scheme: write http://127.0.0.1:3128"),
        (["--proxy", "socks5://127.0.0.1:1080"], "not supported"),
        (["--proxy", "http://egress"], "has no port"),
        (["--proxy", "http://egress:3128", "--cluster-cidr", "10.0.0.0/99"], "is not a CIDR"),
        (["--proxy", "http://egress:3128", "--no-proxy", "bad host!"], "--no-proxy"),
    ],
)
def test_env_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = _egressgate("env", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_env_help_has_examples() -> None:
    result = _egressgate("env", "--help")
    assert result.returncode == 0
    assert "examples:" in result.stdout
    assert 'eval "$(egressgate env --proxy' in result.stdout


# -- egressgate noproxy -------------------------------------------------------------------------


def test_noproxy_explain_table() -> None:
    result = _egressgate("noproxy", "explain", "localhost,svc,10.0.0.0/8", "kubernetes.default.svc")
    assert result.returncode == 0, result.stderr
    rows = {line.split("  ")[0]: line for line in result.stdout.splitlines()}
    assert "direct" in rows["curl 7.88.1"]
    assert "proxy" in rows["axios 1.21.1"]
    assert "add `.svc`" in rows["axios 1.21.1"]
    assert "ignores env" in rows["Java HttpClient 17.0.15"]
    assert "measured 2026-11-22" in result.stdout


def test_noproxy_explain_json() -> None:
    result = _egressgate(
        "noproxy", "explain", "*.example.test", "https://www.example.test/", "--json"
    )
    doc = json.loads(result.stdout)
    verdicts = {v["runtime"]: v for v in doc["verdicts"]}
    assert len(verdicts) == 17
    assert verdicts["go"]["verdict"] == "direct"
    assert verdicts["curl"]["verdict"] == "proxy"
    assert doc["target"] == "https://www.example.test/"


def test_noproxy_explain_bad_target_exit_2() -> None:
    result = _egressgate("noproxy", "explain", "x", "host:port")
    assert result.returncode == 2
    assert "bad TARGET" in result.stderr


@pytest.mark.parametrize(
    ("value", "status", "code"),
    [
        ("localhost,127.0.0.1,::1,.svc,.cluster.local", 0, "short-names"),
        ("localhost,*.corp.example", 1, "wildcard"),
        ("localhost,127.0.0.1,::1,10.0.0.0/8", 0, "cidr"),
    ],
)
def test_noproxy_lint_exit_status(value: str, status: int, code: str) -> None:
    result = _egressgate("noproxy", "lint", value)
    assert result.returncode == status, result.stdout
    assert code in result.stdout
    as_json = _egressgate("noproxy", "lint", value, "--json")
    assert as_json.returncode == status
    assert code in {f["code"] for f in json.loads(as_json.stdout)["findings"]}


def test_noproxy_lint_reads_the_environment_without_value() -> None:
    env = _clean_env({"HTTP_PROXY": "http://egress:3128", "NO_PROXY": "localhost"})
    result = _egressgate("noproxy", "lint", "--json", env=env)
    assert result.returncode == 1
    codes = {f["code"] for f in json.loads(result.stdout)["findings"]}
    assert {"case-missing", "https-missing"} <= codes


def test_noproxy_runtimes() -> None:
    result = _egressgate("noproxy", "runtimes")
    assert result.returncode == 0
    java = [line for line in result.stdout.splitlines() if line.startswith("java ")]
    assert java[0].endswith("Java HttpClient 17.0.15: IGNORES the proxy variables")


# -- real clients with the generated environment ---------------------------------------------------


@dataclass
class Recorder:
    """A loopback HTTP server that answers every request with its name and records it."""

    name: str
    host: str
    port: int = 0
    seen: list[str] = field(default_factory=list)
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Recorder:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(16)
        sock.settimeout(0.2)
        self._sock, self.port = sock, sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
        self._thread.start()
        return self

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data and len(data) < 65536:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            self.seen.append(data.split(b"\r\n", 1)[0].decode("latin-1"))
            body = self.name.encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                b"Connection: close\r\n\r\n%s" % (len(body), body)
            )
        except OSError:
            pass

    def close(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class Lab:
    proxy: Recorder
    near: Recorder  # 127.0.0.1: must be reached directly
    far: Recorder  # 127.0.0.5: not in NO_PROXY, must go through the proxy
    cidr: Recorder  # 127.0.0.9: inside --cluster-cidr 127.0.0.8/30
    env: dict[str, str]


@pytest.fixture
def lab() -> Iterator[Lab]:
    servers: list[Recorder] = []
    try:
        proxy = Recorder("via-proxy", "127.0.0.1").start()
        servers.append(proxy)
        near = Recorder("direct-near", "127.0.0.1").start()
        servers.append(near)
        far = Recorder("direct-far", "127.0.0.5").start()
        servers.append(far)
        cidr = Recorder("direct-cidr", "127.0.0.9").start()
        servers.append(cidr)
        _also_on_ipv6_loopback(near, servers)
        generated = build_env(
            f"http://127.0.0.1:{proxy.port}", ["inside.test"], ["127.0.0.8/30"]
        ).as_dict()
        yield Lab(proxy, near, far, cidr, _clean_env(generated))
    finally:
        for server in servers:
            server.close()


def _also_on_ipv6_loopback(near: Recorder, servers: list[Recorder]) -> None:
    """`localhost` may resolve to ::1 first: serve the same port there too when possible."""
    try:
        servers.append(Recorder("direct-near", "::1", port=near.port).start())
    except OSError:
        pass  # no IPv6 loopback, or the port is taken there: clients fall back to 127.0.0.1


def _cases(lab: Lab) -> list[tuple[str, str]]:
    """(URL, where it must land) for every client."""
    return [
        (f"http://127.0.0.1:{lab.near.port}/", "direct-near"),
        (f"http://localhost:{lab.near.port}/", "direct-near"),
        (f"http://127.0.0.5:{lab.far.port}/", "via-proxy"),
        (f"http://127.0.0.9:{lab.cidr.port}/", "direct-cidr"),  # an expanded CIDR address
    ]


def _run(argv: Sequence[str], env: Mapping[str, str]) -> str:
    result = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=dict(env),
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, (argv, result.stdout, result.stderr)
    return result.stdout.strip()


PY_CLIENT = """
import sys
lib, url = sys.argv[1], sys.argv[2]
if lib == "urllib":
    import urllib.request
    print(urllib.request.urlopen(url, timeout=10).read().decode())
elif lib == "requests":
    import requests
    print(requests.get(url, timeout=10).text)
else:
    import httpx
    print(httpx.get(url, timeout=10).text)
"""


@pytest.mark.parametrize("lib", ["urllib", "requests", "httpx"])
def test_python_clients_follow_the_generated_no_proxy(lab: Lab, lib: str) -> None:
    if lib != "urllib":
        pytest.importorskip(lib)
    for url, expected in _cases(lab):
        assert _run([sys.executable, "-c", PY_CLIENT, lib, url], lab.env) == expected, url


def test_curl_follows_the_generated_no_proxy(lab: Lab) -> None:
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    base = [curl, "-sS", "--max-time", "10"]
    for url, expected in _cases(lab):
        assert _run([*base, url], lab.env) == expected, url
    # Names pinned to loopback with --resolve (no DNS): the extra host and its subdomains go
    # direct, any other name goes to the proxy (which curl never resolves).
    port = lab.far.port
    pins = [
        arg
        for name in ("inside.test", "a.inside.test")
        for arg in ("--resolve", f"{name}:{port}:127.0.0.5")
    ]
    for name, expected in [
        ("inside.test", "direct-far"),
        ("a.inside.test", "direct-far"),
        ("outside.test", "via-proxy"),
    ]:
        assert _run([*base, *pins, f"http://{name}:{port}/"], lab.env) == expected, name


def test_wget_follows_the_generated_no_proxy(lab: Lab) -> None:
    wget = shutil.which("wget")
    if wget is None:
        pytest.skip("wget not installed")
    for url, expected in _cases(lab):
        argv = [wget, "-q", "-O", "-", "-T", "10", "-t", "1", url]
        assert _run(argv, lab.env) == expected, url


JAVA_DECIDE = """
import java.net.ProxySelector;
import java.net.URI;

// Decision only: asks the JVM's default ProxySelector (what HttpClient and HttpURLConnection
// use) which proxy it would take. No connection is made, no name is resolved.
public class Decide {
    public static void main(String[] args) {
        for (String url : args) {
            var proxy = ProxySelector.getDefault().select(URI.create(url)).get(0);
            System.out.println(proxy.type() == java.net.Proxy.Type.DIRECT ? "DIRECT" : "PROXY");
        }
    }
}
"""


def test_java_follows_the_generated_tool_options(tmp_path: Path) -> None:
    java, javac = shutil.which("java"), shutil.which("javac")
    if java is None or javac is None:
        pytest.skip("a JDK (java and javac) is not installed")
    source = tmp_path / "Decide.java"
    source.write_text(JAVA_DECIDE, encoding="utf-8")
    generated = build_env("http://127.0.0.1:3128", [".inside.test", "[fd00::5]"], ["10.96.0.0/12"])
    env = _clean_env({"JAVA_TOOL_OPTIONS": generated.java.tool_options})
    cases = [
        ("http://inside.test/", "DIRECT"),
        ("http://a.inside.test/", "DIRECT"),
        ("https://kubernetes.default.svc/", "DIRECT"),
        ("https://api.ns.svc.cluster.local/", "DIRECT"),
        ("http://10.96.0.1/", "DIRECT"),
        ("http://10.111.255.254/", "DIRECT"),
        ("http://[fd00::5]/", "DIRECT"),
        ("http://localhost/", "DIRECT"),
        ("http://outside.test/", "PROXY"),
        ("https://example.com/", "PROXY"),
        ("http://10.112.0.1/", "PROXY"),
        ("http://[fd00::6]/", "PROXY"),
        # The JDK appends localhost|127.*|[::1]|0.0.0.0|[::0] to any non-empty nonProxyHosts.
        ("http://127.0.0.5/", "DIRECT"),
    ]
    out = _run([java, str(source), *(url for url, _ in cases)], env)
    assert list(zip([u for u, _ in cases], out.splitlines(), strict=True)) == cases
