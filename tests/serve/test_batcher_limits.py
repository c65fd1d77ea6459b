"""The micro-batcher, the rate limiter and the key comparison, without HTTP."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from gsvision.serve.batcher import MicroBatcher, QueueFull
from gsvision.serve.limits import RateLimiter, key_matches


class _Model:
    """Doubles numbers; records the batches it was given; slow enough for requests to pile up."""

    def __init__(self, delay: float = 0.05, fail_on: int | None = None):
        self.batches: list[list[int]] = []
        self.delay, self.fail_on = delay, fail_on
        self.threads: set[str] = set()

    def __call__(self, items: list[int]) -> list[int]:
        self.threads.add(threading.current_thread().name)
        self.batches.append(list(items))
        time.sleep(self.delay)
        if self.fail_on is not None and self.fail_on in items:
            raise RuntimeError("model failed")
        return [2 * x for x in items]


def _run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_share_batches_and_get_their_own_results():
    model = _Model()

    async def main():
        with ThreadPoolExecutor(1, thread_name_prefix="model") as ex:
            b = MicroBatcher(model, ex, max_batch=8, max_wait=0.01)
            b.start()
            results = await asyncio.gather(*(b.submit([i, 100 + i]) for i in range(12)))
            await b.stop()
            return results

    results = _run(main())
    assert results == [[2 * i, 200 + 2 * i] for i in range(12)]
    sizes = [len(x) for x in model.batches]
    assert sum(sizes) == 24
    assert max(sizes) >= 8 and len(sizes) <= 4  # requests were merged, up to max_batch
    assert all(s % 2 == 0 for s in sizes)  # a request is never split across batches
    assert model.threads == {"model_0"}


def test_a_lone_request_waits_at_most_max_wait():
    model = _Model(delay=0)

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(model, ex, max_batch=64, max_wait=0.05)
            b.start()
            start = time.perf_counter()
            out = await b.submit([1])
            took = time.perf_counter() - start
            await b.stop()
            return out, took

    out, took = _run(main())
    assert out == [2] and took < 1.0 and model.batches == [[1]]


def test_a_failing_batch_fails_its_requests_only():
    model = _Model(delay=0.02, fail_on=3)

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(model, ex, max_batch=1, max_wait=0)
            b.start()
            out = await asyncio.gather(*(b.submit([i]) for i in range(5)), return_exceptions=True)
            after = await b.submit([7])  # the worker goes on
            await b.stop()
            return out, after

    out, after = _run(main())
    assert out[:3] == [[0], [2], [4]] and out[4] == [8]
    assert isinstance(out[3], RuntimeError) and after == [14]


def test_queue_is_bounded():
    model = _Model(delay=0.2)

    async def main():
        with ThreadPoolExecutor(1) as ex:
            b = MicroBatcher(model, ex, max_batch=2, max_wait=0, max_queue=4)
            b.start()
            first = asyncio.ensure_future(b.submit([0, 1]))
            await asyncio.sleep(0.05)  # taken by the worker
            waiting = asyncio.ensure_future(b.submit([2, 3, 4]))
            await asyncio.sleep(0)
            with pytest.raises(QueueFull, match="3 items are waiting"):
                await b.submit([5, 6])
            out = await asyncio.gather(first, waiting)
            await b.stop()
            return out

    assert _run(main()) == [[0, 2], [4, 6, 8]]


def test_rate_limiter_token_bucket():
    lim = RateLimiter(rate=2, burst=3)
    assert [lim.acquire("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert lim.acquire("a", now=0.0) == pytest.approx(0.5)
    assert lim.acquire("b", now=0.0) == 0.0  # per client
    assert lim.acquire("a", now=0.5) == 0.0  # one token back after 1/rate
    assert lim.acquire("a", now=0.5) == pytest.approx(0.5)
    assert lim.acquire("a", now=100.0) == 0.0  # refills, capped at the burst
    assert [lim.acquire("a", now=100.0) for _ in range(3)][-1] > 0
    with pytest.raises(ValueError, match="rate limit"):
        RateLimiter(0)
    small = RateLimiter(rate=10, max_clients=2)
    for c in "abcde":
        small.acquire(c, now=0.0)
    small.acquire("f", now=10.0)
    assert len(small._buckets) <= 2


def test_key_matches():
    assert key_matches("secret", "secret")
    assert not key_matches("secreT", "secret") and not key_matches("", "secret")
    assert not key_matches(None, "secret") and not key_matches("sécret", "secret")
