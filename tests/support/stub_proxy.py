"""A tiny stand-in that speaks the proxy's process contract, for the harness's own self-tests.

It is NOT egressgate: it lets tests/integration/test_support_selftest.py check `ProxyProcess`
and the CONNECT client helpers without the real proxy. Run as a script:

    python tests/support/stub_proxy.py [run] --config FILE

Config keys used: `listen`, `admin_listen` (null: none), `access_log`, and stub-only keys:
`stub_hosts` (name → loopback IP used for CONNECT targets), `stub_exit` ({code, message}: print
the message to stderr and exit before listening), `stub_silent` (never announce listening).
Behaviour: stderr JSON events `starting`, `listening` {proxy, admin, pid}, `reloaded` (on
SIGHUP, after re-reading the config), `stopping` (on SIGTERM, then exit 0). It answers CONNECT
to a loopback destination with 200 and relays bytes, anything else with 403/501, and appends one
JSON access record per request to `access_log`, flushed in batches every 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import yaml


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), file=sys.stderr, flush=True)


def split_hostport(text: str) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest.lstrip(":"))
    host, _, port = text.rpartition(":")
    return host, int(port)


def join_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Stub:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.config: dict[str, Any] = self.load()
        self.pending: list[str] = []
        self.stopping = asyncio.Event()

    def load(self) -> dict[str, Any]:
        data = yaml.safe_load(self.config_path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}

    def log(self, **record: Any) -> None:
        self.pending.append(json.dumps({"time": time.time(), **record}))

    def flush(self) -> None:
        path = self.config.get("access_log")
        if path and self.pending:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in self.pending))
        self.pending.clear()

    async def flusher(self) -> None:
        while not self.stopping.is_set():
            await asyncio.sleep(0.1)
            self.flush()

    def target(self, authority: str) -> tuple[str, int] | None:
        host, port = split_hostport(authority)
        host = dict(self.config.get("stub_hosts") or {}).get(host.lower(), host)
        try:
            if not ipaddress.ip_address(host).is_loopback:
                return None
        except ValueError:
            return None
        return host, port

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, authority, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method != "CONNECT":
                self.log(method=method, target=authority, status=501)
                writer.write(b"HTTP/1.1 501 Not Implemented\r\nContent-Length: 0\r\n\r\n")
                return
            destination = self.target(authority)
            if destination is None:
                self.log(method=method, target=authority, status=403)
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            up_reader, up_writer = await asyncio.open_connection(*destination)
            self.log(method=method, target=authority, status=200)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
            up_writer.close()
        except (TimeoutError, OSError, ValueError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()

    async def admin(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            await writer.drain()
        writer.close()

    def reload(self) -> None:
        self.flush()
        self.config = self.load()
        emit("reloaded")

    async def main(self) -> int:
        emit("starting", pid=os.getpid())
        failure = self.config.get("stub_exit")
        if failure:
            print(failure.get("message", "stub failure"), file=sys.stderr, flush=True)
            return int(failure.get("code", 1))
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        host, port = split_hostport(str(self.config.get("listen", "127.0.0.1:0")))
        server = await asyncio.start_server(self.handle, host, port)
        proxy = join_hostport(*server.sockets[0].getsockname()[:2])
        admin_server = None
        admin = None
        if self.config.get("admin_listen"):
            ahost, aport = split_hostport(str(self.config["admin_listen"]))
            admin_server = await asyncio.start_server(self.admin, ahost, aport)
            admin = join_hostport(*admin_server.sockets[0].getsockname()[:2])
        if not self.config.get("stub_silent"):
            emit("listening", proxy=proxy, admin=admin, pid=os.getpid())
        flusher = loop.create_task(self.flusher())
        await self.stopping.wait()
        emit("stopping")
        server.close()
        if admin_server is not None:
            admin_server.close()
        flusher.cancel()
        self.flush()
        return 0


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", nargs="?", default="run")
    parser.add_argument("--config", required=True, type=Path)
    args = parser.parse_args()

    async def run() -> int:
        return await Stub(args.config).main()

    return asyncio.run(run())


if __name__ == "__main__":
    raise SystemExit(main())
