"""The bridge from a request's handler (asyncio) to the model's scheduler thread.

The scheduler calls its sinks on its own thread; each event is handed to the handler's loop with
`call_soon_threadsafe`, so the handler awaits a queue and never blocks the loop. A client that
goes away cancels its sequences, which frees their rows at the scheduler's next step.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import AsyncIterator, Callable

from starlette.requests import Request

from ortrefine.serve.models import ServedModel
from ortrefine.serve.protocol import DecodeParams, Result


class Run:
    """The sequences of one request on a model's scheduler, their events on one asyncio queue.

    jobs: (prompt ids, params) per choice. Cancelled (the slots freed) when the client goes away.
    """

    def __init__(self, m: ServedModel, jobs: list[tuple[list[int], DecodeParams]]) -> None:
        self.jobs = jobs
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        self.handles = []
        try:
            for i, (ids, params) in enumerate(jobs):
                self.handles.append(m.scheduler.submit(ids, params, self._sink(i)))
        except BaseException:
            self.cancel()
            raise

    def _sink(self, i: int) -> Callable[[object], None]:
        def put(obj: object) -> None:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (i, obj))

        return put

    def cancel(self) -> None:
        for h in self.handles:
            h.cancel()

    async def events(self) -> AsyncIterator[tuple[int, object]]:
        """(choice index, Delta | Result) until every choice has its Result; cancels on exit."""
        left = len(self.jobs)
        try:
            while left:
                i, ev = await self.queue.get()
                if isinstance(ev, Result):
                    left -= 1
                yield i, ev
        finally:
            if left:
                self.cancel()

    async def wait(self, request: Request) -> list[Result] | None:
        """Every choice's Result in order, or None when the client disconnected first."""
        results: list[Result | None] = [None] * len(self.jobs)

        async def collect() -> None:
            async for i, ev in self.events():
                if isinstance(ev, Result):
                    results[i] = ev

        done = asyncio.ensure_future(collect())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({done, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not done.done():
            self.cancel()
            done.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await done
            return None
        done.result()
        return results  # type: ignore[return-value]


async def _disconnected(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def choice_params(params: DecodeParams, n: int, j: int) -> DecodeParams:
    """Choice j of n: its own sampling stream (choice 0 keeps the request's seed exactly)."""
    if j == 0 or params.seed is None:
        return params
    seed = params.seed if isinstance(params.seed, tuple) else (params.seed,)
    return replace(params, seed=(*seed, j))
