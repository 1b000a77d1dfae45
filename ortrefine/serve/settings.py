"""Everything the server can be told, as one object the CLI fills (llama-cpp-python's settings)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ortrefine.errors import ConfigError

LOOPBACK = "127.0.0.1"


@dataclass
class ServeSettings:
    """How `ortrefine serve` runs.

    host / port: where to listen; loopback unless told otherwise, so nothing is exposed by default.
    api_key: when set, every /v1 request needs `Authorization: Bearer <api_key>` (compared in
        constant time); /health stays open for load balancers.
    max_tokens_limit: the most new tokens one choice may ask for (and chat's default when the
        client gives none, if the context allows).
    max_body_bytes: request bodies above this get 413 before they are parsed.
    max_batch: rows decoded together per model (continuous batching); more requests wait.
    max_queue: requests waiting per model before new ones get 429.
    max_choices: prompts × n of one request at most.
    refine_seconds_limit: the wall-time budget of one /v1/refine call at most (and its default).
    refine_queue: /v1/refine calls waiting per model before new ones get 429 (one runs at a time).
    max_connections: open connections at most; uvicorn answers 503 beyond (a client flood cannot
        exhaust file descriptors or memory).
    drain_seconds: on SIGTERM, how long in-flight requests may take to finish before they are cut.
    provider / threads: as for every command (onnxruntime's execution provider, intra-op threads).
    """

    host: str = LOOPBACK
    port: int = 8000
    api_key: str | None = None
    max_tokens_limit: int = 1024
    max_body_bytes: int = 1 << 20
    max_batch: int = 16
    max_queue: int = 256
    max_choices: int = 16
    refine_seconds_limit: float = 60.0
    refine_queue: int = 8
    max_connections: int = 1024
    drain_seconds: float = 30.0
    provider: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_tokens_limit", "max_body_bytes", "max_batch", "max_queue", "max_choices", "refine_queue",
                     "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if not self.refine_seconds_limit > 0 or not self.drain_seconds >= 0:
            raise ConfigError("refine-seconds-limit must be > 0 and drain-seconds >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty; give a non-empty key or none")

    @property
    def exposed(self) -> bool:
        """Whether the address is reachable from other machines (not loopback)."""
        try:
            return not ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host != "localhost"
