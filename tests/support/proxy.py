"""`ProxyProcess`: the REAL egressgate proxy, run as a subprocess for integration tests.

    proxy = ProxyProcess({"allow": ["allowed.test"], "nameservers": [dns.address], ...}, tmp_dir)
    proxy.start()                      # or `with ProxyProcess(...) as proxy:`
    requests.get(url, proxies=proxy.requests_proxies)
    proxy.wait_for_records(1)          # the access log is written in batches
    proxy.reload({...})                # rewrite the config file, SIGHUP
    assert proxy.terminate() == 0      # SIGTERM, bounded wait, exit code

The proxy runs as `sys.executable -m egressgate run --config FILE` (cwd: the repo root), with
FILE written by `yaml.safe_dump` from the config dict (`listen`, `admin_listen`, `allow`,
`connect_ports`, `http_ports`, `allow_private`, `hosts_file`, `nameservers`, `access_log`,
`mode`, ...). Its environment is the test process's minus every *_proxy variable.

Contract with the proxy: on startup it writes one JSON object per line to STDERR; the line with
`"event": "listening"` carries `"proxy": "HOST:PORT"`, `"admin": "HOST:PORT"` or null, `"dns":
"HOST:PORT"` or null (the DNS guard, bound port read back), `"transparent": "HOST:PORT"` or
null (the transparent listener), and `"pid"`. A reader thread keeps every stderr line
(`stderr_lines`; the parsed JSON ones in `json_events()`); `start()` waits (bounded) for the
listening line and raises `ProxyStartError` with the captured stderr if the process exits or the
wait times out. The process is started in its own session and `close()` (called on context
exit and by the fixtures) kills its group.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

import yaml

from tests.support._aio import format_hostport, parse_hostport

REPO_ROOT = Path(__file__).resolve().parents[2]

START_TIMEOUT = 15.0

OMIT: Any = object()
"""Value for a `proxy_factory` key that should not appear in the config file at all."""


def base_proxy_config(nameserver: str, workdir: Path) -> dict[str, Any]:
    """The config every test proxy starts from: listeners on 127.0.0.1:0, the test DNS server
    `nameserver` ("127.0.0.1:PORT"), an access log in `workdir`, and nothing allowed. Tests add
    `allow`, `connect_ports`, `http_ports`, `allow_private`, `mode`, ..."""
    return {
        "listen": "127.0.0.1:0",
        "admin_listen": "127.0.0.1:0",
        "nameservers": [nameserver],
        "access_log": str(workdir / "access.log"),
        "allow": [],
    }


class ProxyError(AssertionError):
    """The proxy subprocess did not behave as the harness expected (message has its stderr)."""


class ProxyStartError(ProxyError):
    """The proxy exited, or never said it was listening, during `start()`."""


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any *_proxy variable (any case), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env.update(extra or {})
    return env


def _plain(value: Any) -> Any:
    """Make a config value YAML-safe (Paths → str, tuples → lists)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class ProxyProcess:
    """One proxy subprocess and what it said; see the module doc."""

    def __init__(
        self,
        config: Mapping[str, Any],
        workdir: Path,
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
        subcommand: Sequence[str] = ("run",),
    ) -> None:
        """`config` is written to `workdir/config.yaml`; `command` replaces the default
        `[python, -m, egressgate]` (`run --config FILE` is appended either way; `subcommand`
        replaces `run`, e.g. `("inject", "--tls-cert", ...)` for the injection webhook)."""
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "config.yaml"
        self.config: dict[str, Any] = {}
        self.write_config(config)
        prefix = list(command) if command is not None else [sys.executable, "-m", "egressgate"]
        self.argv: list[str] = [*prefix, *subcommand, "--config", str(self.config_path)]
        self.env = clean_env({"PYTHONUNBUFFERED": "1", **(env or {})})
        self.start_timeout = start_timeout
        self.listening: dict[str, Any] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._cond = threading.Condition()
        self._stderr: list[str] = []
        self._stdout: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._open_streams = 0
        self._readers: list[threading.Thread] = []

    # -- config ----------------------------------------------------------------------------------

    def write_config(self, config: Mapping[str, Any]) -> None:
        """(Re)write the config file atomically (it is read again on `reload()`)."""
        self.config = _plain(dict(config))
        tmp = self.config_path.with_name(self.config_path.name + ".tmp")
        tmp.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        os.replace(tmp, self.config_path)

    @property
    def access_log_path(self) -> Path:
        """The `access_log` path of the current config."""
        value = self.config.get("access_log")
        if not value or value == "-":
            raise ProxyError(f"this proxy's access_log is not a file: {value!r}")
        return Path(value)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> ProxyProcess:
        """Start the process and wait (bounded) for its `listening` event."""
        if self._proc is not None:
            raise ProxyError("already started")
        self._proc = subprocess.Popen(
            self.argv,
            cwd=REPO_ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self._proc.stdout is not None
        assert self._proc.stderr is not None
        self._open_streams = 2
        for stream, sink, parse in (
            (self._proc.stderr, self._stderr, True),
            (self._proc.stdout, self._stdout, False),
        ):
            thread = threading.Thread(
                target=self._read_lines,
                args=(stream, sink, parse),
                name=f"proxy-{self._proc.pid}-{'stderr' if parse else 'stdout'}",
                daemon=True,
            )
            thread.start()
            self._readers.append(thread)
        try:
            self.listening = self._wait_listening()
        except BaseException:
            self.close()
            raise
        return self

    def _read_lines(self, stream: IO[bytes], sink: list[str], parse: bool) -> None:
        try:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                event: Any = None
                if parse and line.startswith("{"):
                    with contextlib.suppress(ValueError):
                        event = json.loads(line)
                with self._cond:
                    sink.append(line)
                    if isinstance(event, dict):
                        self._events.append(event)
                    self._cond.notify_all()
        except (OSError, ValueError):
            pass  # the pipe was closed under us by close()
        finally:
            with self._cond:
                self._open_streams -= 1
                self._cond.notify_all()

    def _wait_listening(self) -> dict[str, Any]:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        with self._cond:
            while True:
                for event in self._events:
                    if event.get("event") == "listening":
                        return event
                if self._proc.poll() is not None and self._open_streams == 0:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.1))
        code = self._proc.poll()
        if code is None:
            raise ProxyStartError(
                f"proxy did not report 'listening' within {self.start_timeout}s\n" + self.describe()
            )
        raise ProxyStartError(f"proxy exited with code {code} during startup\n" + self.describe())

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise ProxyError("not started")
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while running."""
        return None if self._proc is None else self._proc.poll()

    def wait_exit(self, timeout: float = 10.0) -> int:
        """Wait (bounded) for the process to exit by itself; its exit code."""
        if self._proc is None:
            raise ProxyError("not started")
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ProxyError(f"proxy still running after {timeout}s\n{self.describe()}") from None

    def signal(self, signum: int) -> None:
        """Send `signum` to the proxy process (not its group)."""
        if self._proc is None or self._proc.poll() is not None:
            raise ProxyError(f"cannot signal: proxy not running\n{self.describe()}")
        self._proc.send_signal(signum)

    def reload(
        self,
        new_config: Mapping[str, Any] | None = None,
        *,
        wait_for: str | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Rewrite the config file (if `new_config` is given) and send SIGHUP. Returns the number
        of events seen before the signal, for `wait_for_event(..., after=mark)`; with `wait_for`,
        also waits for that event to follow the signal."""
        if new_config is not None:
            self.write_config(new_config)
        mark = len(self.json_events())
        self.signal(signal.SIGHUP)
        if wait_for is not None:
            self.wait_for_event(wait_for, timeout, after=mark)
        return mark

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then wait (bounded) for the exit; returns the exit code. If the proxy has not
        exited in `timeout` seconds it is killed and `ProxyError` is raised."""
        if self._proc is None:
            raise ProxyError("not started")
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ProxyError(
                f"proxy did not exit within {timeout}s of SIGTERM (killed)\n{self.describe()}"
            ) from None
        self._join_readers(5.0)
        return code

    def kill(self) -> int | None:
        """SIGKILL the proxy's whole process group; its exit code (None if it could not be reaped
        within 10 s)."""
        if self._proc is None:
            return None
        if self._proc.returncode is None:
            # Not reaped yet, so the pid (= its process group id) cannot have been reused: kill
            # the whole group, including any worker the proxy started.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
        try:
            return self._proc.wait(10.0)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Kill (if still running), reap, and stop the reader threads. Idempotent."""
        if self._proc is None:
            return
        self.kill()
        self._join_readers(5.0)
        for stream in (self._proc.stdout, self._proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def _join_readers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._readers:
            thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> ProxyProcess:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self.proxy_url if self.listening else "not listening"
        return f"ProxyProcess({where}, returncode={self.returncode})"

    # -- addresses -------------------------------------------------------------------------------

    def _listening(self) -> dict[str, Any]:
        if self.listening is None:
            raise ProxyError("proxy is not listening (not started?)")
        return self.listening

    @property
    def proxy_address(self) -> tuple[str, int]:
        """(host, port) of the proxy listener, from the `listening` event."""
        return parse_hostport(str(self._listening()["proxy"]))

    @property
    def proxy_url(self) -> str:
        """The proxy as a URL: "http://127.0.0.1:PORT"."""
        return "http://" + format_hostport(*self.proxy_address)

    def listening_address(self, key: str) -> tuple[str, int] | None:
        """(host, port) of listener `key` ("proxy", "admin", "tls_proxy", ...) from the
        `listening` event, or None if the event has it null or not at all."""
        value = self._listening().get(key)
        return None if not value else parse_hostport(str(value))

    @property
    def tls_proxy_address(self) -> tuple[str, int] | None:
        """(host, port) of the TLS (HTTPS-to-proxy) listener, if the proxy reports one."""
        return self.listening_address("tls_proxy")

    @property
    def transparent_address(self) -> tuple[str, int] | None:
        """(host, port) of the transparent listener (`transparent_listen`), if it runs one."""
        return self.listening_address("transparent")

    @property
    def socks_address(self) -> tuple[str, int]:
        """(host, port) of the SOCKS5 listener (`socks_listen` must be set)."""
        address = self.listening_address("socks")
        if address is None:
            raise ProxyError("this proxy has no socks_listen")
        return address

    @property
    def socks_url(self) -> str:
        """socks5h://HOST:PORT (names resolved by the proxy)."""
        return "socks5h://" + format_hostport(*self.socks_address)

    @property
    def dns_address(self) -> tuple[str, int] | None:
        """(host, port) of the DNS guard (`dns_listen`, UDP and TCP), if the proxy runs one."""
        return self.listening_address("dns")

    @property
    def admin_address(self) -> tuple[str, int] | None:
        """(host, port) of the admin listener, or None if it has none."""
        return self.listening_address("admin")

    @property
    def admin_url(self) -> str:
        """The admin listener as a URL "http://127.0.0.1:PORT" (ProxyError if it has none)."""
        address = self.admin_address
        if address is None:
            raise ProxyError("this proxy has no admin listener")
        return "http://" + format_hostport(*address)

    @property
    def requests_proxies(self) -> dict[str, str]:
        """`proxies=` for requests (use a Session with trust_env=False)."""
        return {"http": self.proxy_url, "https": self.proxy_url}

    def client_env(self, no_proxy: str = "") -> dict[str, str]:
        """Environment for a client subprocess that reads the *_proxy variables."""
        env = clean_env()
        for name in ("http_proxy", "https_proxy"):
            env[name] = env[name.upper()] = self.proxy_url
        env["no_proxy"] = env["NO_PROXY"] = no_proxy
        return env

    # -- output ----------------------------------------------------------------------------------

    @property
    def stderr_lines(self) -> list[str]:
        """Every stderr line so far (without line ends)."""
        with self._cond:
            return list(self._stderr)

    @property
    def stdout_lines(self) -> list[str]:
        with self._cond:
            return list(self._stdout)

    def json_events(self) -> list[dict[str, Any]]:
        """Every stderr line that parsed as a JSON object, in order."""
        with self._cond:
            return list(self._events)

    def events(self, name: str) -> list[dict[str, Any]]:
        """The JSON stderr events whose "event" is `name`."""
        return [e for e in self.json_events() if e.get("event") == name]

    def wait_for_event(
        self,
        name: str,
        timeout: float = 10.0,
        *,
        after: int = 0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Wait (bounded) for a JSON event named `name` (at index >= `after` in `json_events()`,
        and matching `predicate`); raises ProxyError with the stderr on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self._events[after:]:
                    if event.get("event") == name and (predicate is None or predicate(event)):
                        return event
                if self._open_streams == 0:
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, 0.5))
        raise ProxyError(f"no {name!r} event within {timeout}s\n{self.describe()}")

    def describe(self, last: int = 200) -> str:
        """The command, exit code and the last `last` stderr/stdout lines, for failure messages."""
        lines = self.stderr_lines
        out = self.stdout_lines
        text = [
            f"command: {' '.join(self.argv)}",
            f"returncode: {self.returncode}",
            f"config ({self.config_path}):",
            yaml.safe_dump(self.config, sort_keys=False).rstrip(),
            f"--- stderr ({len(lines)} lines, last {min(last, len(lines))}) ---",
            *lines[-last:],
        ]
        if out:
            text += [f"--- stdout (last {min(last, len(out))}) ---", *out[-last:]]
        return "\n".join(text)

    # -- access log ------------------------------------------------------------------------------

    def access_records(self) -> list[dict[str, Any]]:
        """The access log's JSON lines so far (from stdout if `access_log` is "-"). A last line
        without its newline (mid-write) is left out; a complete line that is not a JSON object
        raises ProxyError."""
        if self.config.get("access_log") == "-":
            path = Path("<stdout>")
            lines = [line.encode() for line in self.stdout_lines] + [b""]
        else:
            path = self.access_log_path
            try:
                lines = path.read_bytes().split(b"\n")
            except FileNotFoundError:
                return []
        records: list[dict[str, Any]] = []
        for number, line in enumerate(lines[:-1], 1):  # lines[-1] is "" or a partial line
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                raise ProxyError(f"{path}:{number} is not JSON: {line[:500]!r}") from None
            if not isinstance(record, dict):
                raise ProxyError(f"{path}:{number} is not a JSON object: {line[:500]!r}")
            records.append(record)
        return records

    def wait_for_records(
        self,
        count: int = 1,
        timeout: float = 10.0,
        predicate: Callable[[dict[str, Any]], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Poll (every 20 ms, bounded by `timeout`) until the access log has at least `count`
        records (matching `predicate`, if given); returns those records."""
        deadline = time.monotonic() + timeout
        matching: list[dict[str, Any]] = []
        for _ in range(int(timeout / 0.02) + 2):
            matching = [r for r in self.access_records() if predicate is None or predicate(r)]
            if len(matching) >= count or time.monotonic() >= deadline:
                break
            if self.returncode is not None:
                # Exited: whatever it flushed is all there will be; read once more.
                matching = [r for r in self.access_records() if predicate is None or predicate(r)]
                break
            time.sleep(0.02)  # a file being appended to: nothing to await, so poll
        if len(matching) >= count:
            return matching
        raise ProxyError(
            f"access log has {len(matching)} matching records, wanted {count} "
            f"(within {timeout}s): {matching!r}\n{self.describe(50)}"
        )


class ProxyFactory(Protocol):
    """Type of the `proxy_factory` fixture."""

    def __call__(
        self,
        config: Mapping[str, Any] | None = None,
        /,
        *,
        start_timeout: float = ...,
        command: Sequence[str] | None = ...,
        env: Mapping[str, str] | None = ...,
        **keys: Any,
    ) -> ProxyProcess: ...
