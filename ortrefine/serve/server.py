"""Running the app on uvicorn: in the foreground (the CLI, SIGTERM drains) or on a thread (tests)."""

from __future__ import annotations

import logging
import socket
import threading
from typing import Callable

from ortrefine.errors import MissingExtraError
from ortrefine.serve.models import ServedModel
from ortrefine.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def require_serve_extra():
    """uvicorn, or the error naming the extra to install."""
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise MissingExtraError("serving needs starlette and uvicorn: pip install 'ortrefine[serve]'") from None
    return uvicorn


def bind(settings: ServeSettings) -> socket.socket:
    """The listening socket, bound before uvicorn starts so that port 0 gives a known free port."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say they are TCP,
    # and without it every response's second segment waits out the client's delayed ACK (40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"cannot listen on {settings.host}:{settings.port} ({e.strerror}); pick another --port") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(models: dict[str, ServedModel], settings: ServeSettings, log_level: str = "info"):
    """A uvicorn Server over the app. On SIGTERM/SIGINT uvicorn stops accepting, waits up to
    `drain_seconds` for in-flight responses (streams included), then the app's lifespan drains
    and stops the schedulers."""
    uvicorn = require_serve_extra()
    from ortrefine.serve.app import create_app

    config = uvicorn.Config(create_app(models, settings), log_level=log_level, lifespan="on", ws="none",
                            timeout_graceful_shutdown=settings.drain_seconds, server_header=False,
                            limit_concurrency=settings.max_connections)
    return uvicorn.Server(config)


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def serve_forever(models: dict[str, ServedModel], settings: ServeSettings, on_ready: Callable[[str], None] | None = None) -> None:
    """Serve in the foreground until SIGINT/SIGTERM; returns after the drain."""
    sock = bind(settings)
    server = make_server(models, settings)
    if on_ready is not None:
        _after_startup(server, lambda: on_ready(address(sock)))
    server.run(sockets=[sock])


def _after_startup(server, fn: Callable[[], None]) -> None:
    startup = server.startup

    async def wrapped(*args, **kwargs):
        await startup(*args, **kwargs)
        if server.started:
            fn()

    server.startup = wrapped


class ThreadedServer:
    """The server on a background thread (tests, notebooks): `with ThreadedServer(...) as url:`."""

    def __init__(self, models: dict[str, ServedModel], settings: ServeSettings) -> None:
        self.sock = bind(settings)
        self.url = address(self.sock)
        self.server = make_server(models, settings, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, name="ortrefine-serve", daemon=True)

    def start(self, timeout: float = 30.0) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.sock.close()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
