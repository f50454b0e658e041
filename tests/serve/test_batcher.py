"""The dynamic batcher's waiting rule: a lone request goes at once, while under load (the previous call answered
several) a batch waits for the callers coming back, up to max_wait_ms."""

from __future__ import annotations

import asyncio

from genrec.serve.batcher import Batcher


def record() -> tuple[list[list[int]], object]:
    calls: list[list[int]] = []

    def run(key, payloads):
        calls.append(list(payloads))
        return [p * 10 for p in payloads]

    return calls, run


def test_a_lone_request_never_waits():
    calls, run = record()

    async def go():
        b = Batcher(run, max_wait_ms=60_000)  # a wait would outlast the test's timeout by far
        await b.start()
        try:
            return await asyncio.wait_for(b.submit("k", 1), 10), await asyncio.wait_for(b.submit("k", 2), 10)
        finally:
            await b.stop()

    assert asyncio.run(go()) == (10, 20) and calls == [[1], [2]]


def test_under_load_a_batch_waits_for_callers_coming_back():
    calls, run = record()

    async def go():
        b = Batcher(run, max_wait_ms=60_000, max_batch=2)
        await b.start()
        try:
            first = await asyncio.gather(b.submit("k", 1), b.submit("k", 2))  # queued together: one call of 2
            # under load now: a request sent alone waits for the next one, sent 50 ms later, and they go as one
            later = asyncio.create_task(b.submit("k", 3))
            await asyncio.sleep(0.05)
            second = await asyncio.wait_for(asyncio.gather(later, b.submit("k", 4)), 10)
            return first, second, (b.calls, b.requests, b.largest)
        finally:
            await b.stop()

    assert asyncio.run(go()) == ([10, 20], [30, 40], (2, 4, 2)) and calls == [[1, 2], [3, 4]]


def test_unbatched_every_request_is_its_own_call():
    calls, run = record()

    async def go():
        b = Batcher(run, batched=False)
        await b.start()
        try:
            return await asyncio.gather(*(b.submit("k", i) for i in range(4)))
        finally:
            await b.stop()

    assert asyncio.run(go()) == [0, 10, 20, 30] and calls == [[0], [1], [2], [3]]
