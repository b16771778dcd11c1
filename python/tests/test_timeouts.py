"""An extension (not in Pyper): ``timeout=seconds`` on a task."""

import asyncio
import threading

import pytest

from pyper import task


def numbers(n):
    yield from range(n)


release = threading.Event()


def stuck_at_two(x):
    # Waits for the test to let it go: a call that would overrun any deadline.
    if x == 2:
        release.wait(30)
    return x


def test_a_sync_call_over_its_timeout_fails_the_run():
    release.clear()
    try:
        p = task(numbers, branch=True) | task(stuck_at_two, timeout=0.2)
        with pytest.raises(TimeoutError, match="stuck_at_two did not return within 0.2 s"):
            list(p(5))
    finally:
        release.set()


class SlowOnce:
    """Stuck on its first call, quick afterwards."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, x):
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            release.wait(30)
        return x


def test_a_timed_out_call_is_retried():
    release.clear()
    try:
        p = task(numbers, branch=True) | task(SlowOnce(), timeout=0.2, retries=1)
        assert list(p(3)) == [0, 1, 2]
    finally:
        release.set()


async def never(x):
    await asyncio.sleep(30)
    return x


@pytest.mark.asyncio
async def test_an_async_call_over_its_timeout_is_cancelled_and_fails_the_run():
    p = task(numbers, branch=True) | task(never, timeout=0.2, workers=4)
    with pytest.raises(TimeoutError, match="never did not return within 0.2 s"):
        async for _ in p(10):
            pass


def test_a_timeout_must_be_a_positive_number_for_a_function_called_per_item():
    with pytest.raises(ValueError, match="longer than zero"):
        task(stuck_at_two, timeout=0)
    with pytest.raises(TypeError, match="number of seconds"):
        task(stuck_at_two, timeout="1")
    with pytest.raises(ValueError, match="not to a generator"):
        task(numbers, branch=True, timeout=1)
    with pytest.raises(ValueError, match="not to a generator"):
        task(sum, join=True, timeout=1)
