"""AsyncPipeline: async tasks on the caller's loop, sync tasks on the engine's threads."""

import asyncio

import pytest

from pyper import AsyncPipeline, task


class Boom(Exception):
    pass


async def sleepy(x):
    await asyncio.sleep(0.01)
    return x


def numbers(n):
    yield from range(n)


def total(items):
    return sum(items)


async def fail_at_three(x):
    if x == 3:
        raise Boom()
    return x


@pytest.mark.asyncio
async def test_many_awaits_run_concurrently():
    p = task(numbers, branch=True) | task(sleepy, workers=50)
    assert isinstance(p, AsyncPipeline)
    assert sorted([x async for x in p(200)]) == list(range(200))


@pytest.mark.asyncio
async def test_a_sync_join_in_an_async_pipeline_receives_an_iterator():
    # Pyper hands a sync join an async generator there, and crashes.
    p = task(numbers, branch=True) | task(sleepy) | task(total, join=True)
    assert [x async for x in p(10)] == [45]


@pytest.mark.asyncio
async def test_an_async_error_stops_the_run():
    p = task(numbers, branch=True) | task(fail_at_three, workers=2)
    with pytest.raises(Boom):
        async for _ in p(10**9):
            pass


@pytest.mark.asyncio
async def test_leaving_early_stops_the_run():
    p = task(numbers, branch=True, throttle=1) | task(sleepy, throttle=1)
    outputs = p(10**9)
    assert await outputs.__anext__() == 0
    await outputs.aclose()


def slow(x):
    import time
    time.sleep(0.3)
    return x


@pytest.mark.asyncio
async def test_cancelling_a_wait_for_the_next_output_ends_the_run():
    # The reader waits on an executor thread; cancelling it must end that wait too, or
    # closing the run (and the loop's executor at exit) would wait forever.
    p = task(numbers, branch=True) | task(sleepy) | task(slow)
    outputs = p(10**9)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(outputs.__anext__(), 0.05)
    await outputs.aclose()
