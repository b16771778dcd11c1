"""An extension (not in Pyper): ``timeout=seconds`` on a task."""

import asyncio
import threading
import time

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


class FirstCall:
    """Tells its first call from the others, whichever thread makes them."""

    def __init__(self):
        self.calls = 0
        self.lock = threading.Lock()

    def first(self):
        with self.lock:
            self.calls += 1
            return self.calls == 1


class SlowOnce(FirstCall):
    """Stuck on its first call, quick afterwards."""

    def __call__(self, x):
        first = self.first()
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


def test_a_timeout_must_be_a_positive_number():
    with pytest.raises(ValueError, match="longer than zero"):
        task(stuck_at_two, timeout=0)
    with pytest.raises(TypeError, match="number of seconds"):
        task(stuck_at_two, timeout="1")


def double(x):
    return 2 * x


# Generators: a sync one is consumed whole within the limit, on a thread of its own.

endless_closed = threading.Event()


def endless(x):
    try:
        while True:
            time.sleep(0.001)
            yield x
    finally:
        endless_closed.set()


def test_an_endless_sync_generator_times_out_and_is_closed(no_threads_left):
    endless_closed.clear()
    p = task(numbers, branch=True) | task(endless, branch=True, timeout=0.2)
    with pytest.raises(TimeoutError, match="endless did not return within 0.2 s"):
        list(p(3))
    # Abandoned, it is refused its next element and closed (its thread ends: the fixture).
    assert endless_closed.wait(10)


def thrice(x):
    for _ in range(3):
        yield x


def test_a_sync_generator_within_its_timeout_gives_all_its_outputs():
    p = task(numbers, branch=True) | task(thrice, branch=True, timeout=10)
    assert list(p(4)) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


class StuckOnceGenerator(FirstCall):
    """Yields ``x`` and ``x + 100``; its first call is stuck between the two."""

    def __call__(self, x):
        first = self.first()
        yield x
        if first:
            release.wait(30)
        yield x + 100


def test_a_timed_out_generator_is_retried_and_its_outputs_come_once():
    # The attempt that timed out handed nothing on: its first output is not repeated.
    release.clear()
    try:
        p = (task(numbers, branch=True)
             | task(StuckOnceGenerator(), branch=True, timeout=0.2, retries=1))
        assert list(p(3)) == [0, 100, 1, 101, 2, 102]
    finally:
        release.set()


@pytest.mark.asyncio
async def test_an_endless_async_generator_hands_on_its_outputs_then_times_out():
    received = asyncio.Event()
    closed = []

    async def ticking(x):
        try:
            yield "first"
            # Only goes on once the test has the first output: outputs come as they are made.
            await received.wait()
            while True:
                await asyncio.sleep(0.01)
                yield "more"
        finally:
            closed.append(True)

    p = task(numbers, branch=True) | task(ticking, branch=True, timeout=1)
    outputs = []
    with pytest.raises(TimeoutError, match="ticking did not return within 1 s"):
        async for output in p(1):
            outputs.append(output)
            received.set()
    assert outputs[:2] == ["first", "more"]
    assert closed == [True]


# Joins: the limit counts from the end of their input.

def hangs_after_its_input(items):
    total = sum(items)
    release.wait(30)
    return total


def test_a_sync_join_stuck_after_its_input_ended_times_out():
    release.clear()
    try:
        p = task(numbers, branch=True) | task(hangs_after_its_input, join=True, timeout=0.2)
        with pytest.raises(TimeoutError,
                           match="hangs_after_its_input did not return within 0.2 s"):
            list(p(5))
    finally:
        release.set()


def late_at_two(x):
    # The input takes longer than the join's timeout to come.
    if x == 2:
        time.sleep(1.0)
    return x


def total(items):
    return sum(items)


def test_a_sync_join_times_only_what_follows_its_last_input():
    p = task(numbers, branch=True) | task(late_at_two) | task(total, join=True, timeout=0.5)
    assert list(p(4)) == [6]


def doubles(items):
    for x in items:
        yield 2 * x
    release.wait(30)


def test_a_sync_join_generator_hands_on_its_outputs_then_times_out():
    # An endless source: outputs come while the input goes on.
    release.clear()
    try:
        p = task(numbers, branch=True) | task(doubles, branch=True, join=True, timeout=0.2)
        outputs = p(10**9)
        assert [next(outputs) for _ in range(3)] == [0, 2, 4]
        outputs.close()
        p = task(numbers, branch=True) | task(doubles, branch=True, join=True, timeout=0.2)
        with pytest.raises(TimeoutError, match="doubles did not return within 0.2 s"):
            list(p(3))
    finally:
        release.set()


async def async_hangs_after_its_input(items):
    total = 0
    async for x in items:
        total += x
    await asyncio.sleep(30)
    return total


@pytest.mark.asyncio
async def test_an_async_join_stuck_after_its_input_ended_is_cancelled_and_fails():
    p = task(numbers, branch=True) | task(async_hangs_after_its_input, join=True,
                                          timeout=0.2)
    with pytest.raises(TimeoutError,
                       match="async_hangs_after_its_input did not return within 0.2 s"):
        async for _ in p(5):
            pass


async def async_late_at_two(x):
    if x == 2:
        await asyncio.sleep(1.0)
    return x


async def async_total(items):
    total = 0
    async for x in items:
        total += x
    return total


@pytest.mark.asyncio
async def test_an_async_join_times_only_what_follows_its_last_input():
    p = (task(numbers, branch=True) | task(async_late_at_two)
         | task(async_total, join=True, timeout=0.5))
    assert [x async for x in p(4)] == [6]


@pytest.mark.asyncio
async def test_an_async_join_generator_hands_on_its_outputs_then_times_out():
    cancelled = []

    async def async_doubles(items):
        async for x in items:
            yield 2 * x
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    p = (task(numbers, branch=True) | task(async_late_at_two)
         | task(async_doubles, branch=True, join=True, timeout=0.5))
    outputs = []
    with pytest.raises(TimeoutError, match="async_doubles did not return within 0.5 s"):
        async for output in p(4):
            outputs.append(output)
    # Its input took longer than its timeout, and its outputs all came before the end.
    assert outputs == [0, 2, 4, 6]
    assert cancelled == [True]
