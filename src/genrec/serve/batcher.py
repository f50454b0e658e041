"""Dynamic batching: concurrent requests gathered into one model call, since ranking many histories in one batched
beam search costs far less per history than one at a time.

A batch waits at most `max_wait_ms` for more requests to join it (up to `max_batch` histories), and only while
others are on their way (accepted by the service but not yet queued: `arriving`) or while the service is under
load (its previous model call took more than one request), so a lone request is never delayed. Under load the
wait pays: the callers answered by the previous call are sending their next requests, and one call of about 32
instead of two alternating calls of 16 ranks each history for less (on Beauty, 2 cores, 32 clients, beam 20:
723-810 requests/s against 688, p99 53-61 ms against 58; bench/NOTES.md). Only requests with the same key
(ranking method, k, beam, whether history is removed) share a call. Every model call runs on one worker thread,
so two calls never run at once on the same weights (they would share the same cores and each go slower); the
event loop stays free to accept requests meanwhile. With `batched=False` every request is its own call (the
baseline the benchmark compares with).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)  # compared by identity: field equality would compare histories, for every held job
class _Job:
    key: Hashable
    payload: Any
    future: asyncio.Future


class Batcher:
    """`await submit(key, payload)` -> the result of `run(key, [payload, ...])` for this payload."""

    def __init__(self, run: Callable[[Hashable, list[Any]], list[Any]], *, max_batch: int = 64,
                 max_wait_ms: float = 5.0, batched: bool = True,
                 limit: Callable[[Hashable], int] | None = None) -> None:
        """`limit(key)`: the most payloads one call of that key may take (at most max_batch)."""
        self.run, self.max_batch, self.max_wait = run, max(1, max_batch), max_wait_ms / 1000.0
        self.limit = limit or (lambda key: self.max_batch)
        self.batched = batched
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="genrec-model")
        self.queue: asyncio.Queue[_Job] | None = None
        self.arrived: asyncio.Event | None = None  # set at every submit
        self.worker: asyncio.Task | None = None
        self.calls = self.requests = self.largest = 0  # model calls made, requests they answered, largest batch
        self.last = 0  # requests in the latest call: more than one means the service is under load
        self.on_the_way = 0  # requests accepted and not yet queued (the service counts them)

    async def start(self) -> None:
        self.queue = asyncio.Queue()
        self.arrived = asyncio.Event()
        self.worker = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self.worker is not None and self.queue is not None:
            await self.queue.join()
            self.worker.cancel()
            try:
                await self.worker
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, key: Hashable, payload: Any) -> Any:
        assert self.queue is not None, "Batcher.start() first"
        job = _Job(key, payload, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        assert self.arrived is not None
        self.arrived.set()
        return await job.future

    async def _loop(self) -> None:
        assert self.queue is not None
        held: list[_Job] = []  # jobs of another key than the batch being gathered, first in line next time
        loop = asyncio.get_running_loop()
        while True:
            first = held.pop(0) if held else await self.queue.get()
            size = max(1, min(self.max_batch, self.limit(first.key)))
            batch = [first] + [j for j in held if j.key == first.key][: size - 1]
            held = [j for j in held if j not in batch]
            # the wait runs from now, not from the first job's arrival: after a long model call the first job is
            # old, and the requests still being read then would each go alone, in ever smaller batches
            deadline = time.perf_counter() + self.max_wait
            while self.batched and len(batch) < size:
                if not self.queue.empty():
                    job = self.queue.get_nowait()
                    (batch if job.key == first.key else held).append(job)
                    continue
                timeout = deadline - time.perf_counter()
                if (self.on_the_way <= 0 and self.last <= 1) or timeout <= 0:
                    break  # nobody else is coming, or the wait is over
                assert self.arrived is not None
                self.arrived.clear()
                try:  # waiting on an event, never on queue.get: a timeout cannot drop a dequeued job
                    await asyncio.wait_for(self.arrived.wait(), timeout)
                except asyncio.TimeoutError:
                    break
            if not self.batched:
                held = batch[1:] + held
                batch = batch[:1]
            try:
                results = await loop.run_in_executor(self.executor, self.run, first.key, [j.payload for j in batch])
                for job, result in zip(batch, results):
                    if not job.future.done():
                        job.future.set_result(result)
            except Exception as err:  # the model call failed: every request of the batch gets the error
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
            finally:
                self.calls += 1
                self.requests += len(batch)
                self.largest, self.last = max(self.largest, len(batch)), len(batch)
                for _ in batch:
                    self.queue.task_done()
