"""Process entry for `egressgate run`: load the config, choose the event loop, run the server
(or supervise N worker processes; see runtime/workers.py)."""

from __future__ import annotations

import asyncio
import resource

import uvloop

from egressgate.config.default import BUILTIN_DEFAULT_YAML, builtin_default
from egressgate.observe.events import emit
from egressgate.runtime.reload import load_generation
from egressgate.runtime.state import Generation, compile_generation


def initial_generation(config_path: str | None) -> Generation:
    """Generation 1 from the file, or from the built-in default; raises ConfigError."""
    if config_path is None:
        return compile_generation(builtin_default(), BUILTIN_DEFAULT_YAML, 1)
    return load_generation(config_path, 1)


def raise_fd_limit() -> None:
    """Each tunnel holds two sockets: lift the soft open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_proxy(config_path: str | None, workers: int | None) -> int:
    generation = initial_generation(config_path)
    count = workers or generation.config.workers
    raise_fd_limit()
    if count > 1:
        from egressgate.proxy.workers import supervise

        return supervise(generation, config_path, count)
    return int(uvloop.run(serve(generation, config_path)))


async def serve(generation: Generation, config_path: str | None, reuse_port: bool = False) -> int:
    from egressgate.proxy.server import ProxyServer

    if config_path is None:
        emit(
            "default-config",
            level="warning",
            note="no --config given: using the built-in default, which allows no destination",
        )
    server = ProxyServer(generation, config_path, reuse_port=reuse_port)
    await server.start()
    await server.wait_stopped()
    await asyncio.sleep(0)
    return 0
