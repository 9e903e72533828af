"""`egressgate inject`: the HTTPS server of the Pod injection webhook (the I/O around
tools/inject_patch.py, which decides what to change).

A small HTTP/1.1 responder on an asyncio Protocol (no framework): the API server POSTs one
AdmissionReview per request, with Content-Length, on keep-alive connections it reuses; the
answer is always 200 with an AdmissionReview (allowed, maybe a JSONPatch, maybe warnings), or a
4xx when the body is not an AdmissionReview at all (then the webhook's failurePolicy decides,
Ignore by default: the pod is admitted unchanged). GET /healthz and /readyz answer probes.

Bounded, so that nothing a client sends can hurt the webhook (limits: in the config):
  * TLS handshake and the request head within header_timeout_s, the body within body_timeout_s,
    an idle keep-alive connection closed after idle_timeout_s;
  * the head at most MAX_HEAD_BYTES (431), the body at most max_body_bytes (413, before any of
    it is read), chunked bodies refused (411: the API server always sends Content-Length);
  * at most max_connections connections (more are closed at once); a client that does not read
    its answers stops being read (transport flow control).

Hot reload like the proxy's (runtime/reload.py's StableFileWatch, polled every POLL_INTERVAL_S,
and SIGHUP): a new config is parsed aside and swapped in only if valid, otherwise the old one
stays and `reload-failed` is logged; the serving certificate and key are reloaded the same way
when their files change (cert-manager renews them in place), new handshakes use the new pair.
Events are JSON lines on stderr (observe/events.py), like the proxy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
from typing import Any, cast

import uvloop

from egressgate.config.model import ListenAddress
from egressgate.errors import ConfigError
from egressgate.observe.events import emit
from egressgate.runtime.reload import POLL_INTERVAL_S, StableFileWatch, is_empty_config, read_config
from egressgate.tools import inject_patch
from egressgate.tools.inject_patch import BadReview, InjectConfigError, InjectSettings

MAX_HEAD_BYTES = 16 * 1024  # an AdmissionReview POST has a head of a few hundred bytes
_HEAD_END = b"\r\n\r\n"
_PHRASES = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    411: b"Length Required",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
}


def load_settings(path: str, *, reloading: bool = False) -> InjectSettings:
    """Read and parse the webhook config; raises InjectConfigError (or ConfigError: unreadable)."""
    text = read_config(path)
    if reloading and is_empty_config(text):
        raise InjectConfigError([f"{path}: the file is empty: refused on reload"])
    return inject_patch.parse_settings(text, path)


class WebhookServer:
    """One webhook process: the listener, the current settings, reload, shutdown."""

    def __init__(
        self, config_path: str, listen: ListenAddress, cert_path: str, key_path: str
    ) -> None:
        self.config_path = config_path
        self.listen = listen
        self.cert_path = cert_path
        self.key_path = key_path
        self.settings = load_settings(config_path)  # raises: a bad config at start is fatal
        self.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.tls.minimum_version = ssl.TLSVersion.TLSv1_2
        self.tls.load_cert_chain(cert_path, key_path)
        self.connections = 0
        self._watches = {
            "config": StableFileWatch(config_path),
            "cert": StableFileWatch(cert_path),
            "key": StableFileWatch(key_path),
        }
        self._stop = asyncio.Event()

    # ---- lifecycle
    async def serve(self) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: _WebhookProtocol(self),
            self.listen.host,
            self.listen.port,
            ssl=self.tls,
            ssl_handshake_timeout=self.settings.limits.header_timeout_s,
            backlog=1024,
        )
        host, port = server.sockets[0].getsockname()[:2]
        emit("listening", webhook=f"{host}:{port}", config=self.config_path)
        for warning in self.settings.warnings:
            emit("config-warning", level="warning", warning=warning)
        loop.add_signal_handler(signal.SIGHUP, self.reload, "SIGHUP")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop.set)
        poller = loop.call_later(POLL_INTERVAL_S, self._poll)
        self._poller = poller
        await self._stop.wait()
        self._poller.cancel()
        server.close()
        emit("stopped")
        return 0

    def _poll(self) -> None:
        try:
            if self._watches["config"].poll():
                self.reload("file-change")
            cert_changed = self._watches["cert"].poll()
            if self._watches["key"].poll() or cert_changed:
                self._reload_certificate()
        except Exception as exc:  # the watcher must outlive any bug
            emit("reload-watcher-error", level="error", error=f"{type(exc).__name__}: {exc}")
        finally:
            self._poller = asyncio.get_running_loop().call_later(POLL_INTERVAL_S, self._poll)

    def reload(self, trigger: str = "api") -> bool:
        """Parse the config aside; swap it in only if valid (the old one stays otherwise)."""
        self._watches["config"].rebase()
        try:
            settings = load_settings(self.config_path, reloading=True)
        except (InjectConfigError, ConfigError) as exc:
            problems = exc.problems if isinstance(exc, InjectConfigError) else exc.issues
            emit(
                "reload-failed",
                level="error",
                trigger=trigger,
                problems=[str(problem) for problem in problems],
                note="the running config stays",
            )
            return False
        self.settings = settings
        emit("reloaded", trigger=trigger, proxy=settings.env.proxy.url)
        return True

    def _reload_certificate(self) -> None:
        self._watches["cert"].rebase()
        self._watches["key"].rebase()
        try:
            # New handshakes use the new pair; open connections keep theirs.
            self.tls.load_cert_chain(self.cert_path, self.key_path)
        except (OSError, ssl.SSLError) as exc:
            emit("certificate-reload-failed", level="error", error=str(exc))
            return
        emit("certificate-reloaded", cert=self.cert_path)

    # ---- one request
    def handle(self, method: bytes, path: bytes, body: bytes) -> tuple[int, bytes]:
        """(status, JSON or text body) for one complete request."""
        route = path.split(b"?", 1)[0].decode("latin-1")
        if route in ("/healthz", "/readyz"):
            # GET only: an answer to HEAD must have no body, and probes use GET.
            return (200, b"ok\n") if method == b"GET" else (405, b"use GET\n")
        namespace_mode = inject_patch.mode_for_path(route)
        if namespace_mode is False:
            return 404, b"not found: POST an AdmissionReview to /mutate[/explicit|/transparent]\n"
        if method != b"POST":
            return 405, b"POST an AdmissionReview\n"
        try:
            request = inject_patch.read_request(json.loads(body))
        except (ValueError, BadReview) as exc:  # json.JSONDecodeError is a ValueError
            return 400, f"{exc}\n".encode()
        mode = namespace_mode if isinstance(namespace_mode, str) else None
        decision = inject_patch.decide_request(request, mode, self.settings)
        if decision.mode is not None or decision.warnings:
            self._log(request, decision)
        answer = inject_patch.admission_response(request, decision)
        return 200, json.dumps(answer, separators=(",", ":")).encode()

    @staticmethod
    def _log(request: dict[str, Any], decision: inject_patch.Decision) -> None:
        obj = request.get("object")
        meta = obj.get("metadata") if isinstance(obj, dict) else None
        name = None
        if isinstance(meta, dict):
            name = meta.get("name") or meta.get("generateName")
        fields: dict[str, Any] = {"uid": request["uid"], "namespace": request.get("namespace")}
        fields["pod"] = name if isinstance(name, str) else None
        if decision.mode is not None:
            emit("injected", mode=decision.mode, skipped=decision.skipped or None, **fields)
        else:
            emit("left-unchanged", level="warning", why=decision.why, **fields)


class _WebhookProtocol(asyncio.Protocol):
    """One client connection: requests in order, keep-alive, every wait bounded."""

    def __init__(self, server: WebhookServer) -> None:
        self._server = server
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._head: tuple[bytes, bytes, int, bool] | None = None  # method, path, length, close
        self._counted = False

    # ---- connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses; same interface.
        self._transport = cast(asyncio.Transport, transport)
        server = self._server
        if server.connections >= server.settings.limits.max_connections:
            self._transport.abort()
            return
        server.connections += 1
        self._counted = True
        self._arm(server.settings.limits.idle_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._counted:
            self._counted = False
            self._server.connections -= 1

    def pause_writing(self) -> None:  # the client does not read its answers: stop reading
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        transport = self._transport
        assert transport is not None
        self._timer = asyncio.get_running_loop().call_later(seconds, transport.abort)

    # ---- requests
    def data_received(self, data: bytes) -> None:
        limits = self._server.settings.limits
        if not self._buffer and self._head is None:
            self._arm(limits.header_timeout_s)  # a request started: its head must come soon
        self._buffer += data
        while self._transport is not None and not self._transport.is_closing():
            if self._head is None and not self._parse_head():
                return
            assert self._head is not None
            method, path, length, close = self._head
            if len(self._buffer) < length:
                return
            body = bytes(self._buffer[:length])
            del self._buffer[:length]
            self._head = None
            status, answer = self._server.handle(method, path, body)
            self._respond(status, answer, close)
            if close:
                return
            if self._buffer:
                self._arm(limits.header_timeout_s)
            else:
                self._arm(limits.idle_timeout_s)

    def _parse_head(self) -> bool:
        """Parse a complete head off the buffer; False while it is incomplete (or refused)."""
        end = self._buffer.find(_HEAD_END)
        if end < 0:
            if len(self._buffer) > MAX_HEAD_BYTES:
                self._respond(431, b"request head too large\n", True)
            return False
        lines = bytes(self._buffer[:end]).split(b"\r\n")
        del self._buffer[: end + len(_HEAD_END)]
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._respond(400, b"bad request line\n", True)
            return False
        length, close, problem = _headers(lines[1:], parts[2] == b"HTTP/1.0")
        if problem is not None:
            self._respond(problem[0], problem[1], True)
            return False
        limits = self._server.settings.limits
        if length > limits.max_body_bytes:
            self._respond(413, b"body larger than limits.max_body_bytes\n", True)
            return False
        self._head = (parts[0], parts[1], length, close)
        if len(self._buffer) < length:
            self._arm(limits.body_timeout_s)
        return True

    def _respond(self, status: int, body: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        kind = b"application/json" if body[:1] == b"{" else b"text/plain"
        head = b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n" % (
            status,
            _PHRASES.get(status, b"Error"),
            kind,
            len(body),
            b"Connection: close\r\n" if close else b"",
        )
        transport.write(head + body)
        if close:
            transport.close()


def _headers(lines: list[bytes], http10: bool) -> tuple[int, bool, tuple[int, bytes] | None]:
    """(Content-Length, close after the answer, a refusal (status, text) or None)."""
    length: int | None = None
    close = http10
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            return 0, True, (400, b"bad header line\n")
        key = name.strip().lower()
        value = value.strip()
        if key == b"content-length":
            if not value.isdigit() or (length is not None and int(value) != length):
                return 0, True, (400, b"bad Content-Length\n")
            length = int(value)
        elif key == b"transfer-encoding":
            return 0, True, (411, b"send a Content-Length (chunked bodies are not accepted)\n")
        elif key == b"connection":
            lowered = value.lower()
            close = b"close" in lowered or (http10 and b"keep-alive" not in lowered)
    return length or 0, close, None


def run(config_path: str, listen: ListenAddress, cert_path: str, key_path: str) -> int:
    """Serve until SIGTERM/SIGINT; the exit status."""

    async def main() -> int:
        server = WebhookServer(config_path, listen, cert_path, key_path)
        return await server.serve()

    with contextlib.suppress(KeyboardInterrupt):
        return int(uvloop.run(main()))
    return 130
