"""A bundle as the server holds it: the LM, its decode scheduler and its refine worker."""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ortrefine.errors import ConfigError
from ortrefine.serve.scheduler import Scheduler, SchedulerFull
from ortrefine.serve.settings import ServeSettings

if TYPE_CHECKING:
    from ortrefine.runtime.refine import RefineConfig, RefineResult
    from ortrefine.runtime.session import LM


class ServedModel:
    """One loaded bundle.

    Decoding goes through the scheduler (continuous batching). Refinement is one long job of its
    own batched passes, so it runs on a worker thread beside the scheduler, one call at a time,
    instead of stalling every stream for its duration. onnxruntime sessions take concurrent runs;
    the worker gets a shallow copy of the LM (the same session and tokenizer) so that the refiner's
    token accounting (`LM.forward_tokens`) does not count the scheduler's tokens.
    """

    def __init__(self, name: str, lm: "LM", settings: ServeSettings) -> None:
        self.name, self.lm, self.settings = name, lm, settings
        self.created = int(time.time())
        self.scheduler = Scheduler(lm, max_batch=settings.max_batch, max_queue=settings.max_queue, name=name)
        self._refine_lm = copy.copy(lm)
        self._refine_pool = ThreadPoolExecutor(1, thread_name_prefix=f"ortrefine-refine-{name}")
        self._pending = 0
        self._lock = threading.Lock()

    def refine(self, prompt: "str | Sequence[int]", cfg: "RefineConfig") -> "Future[RefineResult]":
        from ortrefine.runtime.refine import refine

        with self._lock:
            if self._pending >= self.settings.refine_queue:
                raise SchedulerFull(f"{self._pending} refine calls are already queued for {self.name}; retry later")
            self._pending += 1

        def run() -> "RefineResult":
            try:
                return refine(self._refine_lm, prompt, cfg)
            finally:
                with self._lock:
                    self._pending -= 1

        return self._refine_pool.submit(run)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            pending = self._pending
        return {**self.scheduler.stats(), "refine_pending": pending}

    def close(self, drain: bool = True) -> None:
        self.scheduler.close(drain=drain)
        self._refine_pool.shutdown(wait=drain, cancel_futures=not drain)


def model_names(paths: Sequence[str | Path]) -> list[str]:
    """The id clients use for each bundle: its folder name (or the catalog name), each unique."""
    names = [Path(str(p)).name or str(p) for p in paths]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"two bundles would both be served as {dup[0]!r}; give bundles with different folder names")
    return names


def load_models(paths: Sequence[str | Path], settings: ServeSettings, pin_threads: bool = False,
                hugepages: bool = False) -> dict[str, ServedModel]:
    import ortrefine

    models: dict[str, ServedModel] = {}
    try:
        for name, path in zip(model_names(paths), paths):
            lm = ortrefine.load(path, provider=settings.provider, threads=settings.threads, pin_threads=pin_threads,
                                hugepages=hugepages)
            models[name] = ServedModel(name, lm, settings)
    except BaseException:
        for m in models.values():
            m.close(drain=False)
        raise
    return models
