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


# `ordered=True` on async tasks: an extension (Pyper has no `ordered`).

def jitter(x):
    """A few milliseconds that vary from item to item, so later items overtake."""
    return (x * 7 % 5) / 1000


async def jittery(x):
    await asyncio.sleep(jitter(x))
    return x


async def jittery_triples(x):
    for k in range(3):
        await asyncio.sleep(jitter(x + k))
        yield (x, k)


async def jittery_pairs(x):
    await asyncio.sleep(jitter(x))
    return [(x, 0), (x, 1)]


def sync_jittery(x):
    import time
    time.sleep(jitter(x) / 5)
    return x


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [2, 4])
async def test_ordered_coroutines_keep_the_input_order(workers):
    p = task(numbers, branch=True) | task(jittery, workers=workers, ordered=True)
    assert [x async for x in p(200)] == list(range(200))


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [2, 4])
async def test_ordered_async_generators_keep_the_input_order(workers):
    p = task(numbers, branch=True) \
        | task(jittery_triples, branch=True, workers=workers, ordered=True)
    assert [x async for x in p(100)] == [(x, k) for x in range(100) for k in range(3)]


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [2, 4])
async def test_ordered_coroutines_returning_iterables_keep_the_input_order(workers):
    p = task(numbers, branch=True) \
        | task(jittery_pairs, branch=True, workers=workers, ordered=True)
    assert [x async for x in p(100)] == [(x, k) for x in range(100) for k in range(2)]


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [2, 4])
async def test_ordered_sync_and_async_tasks_in_one_async_pipeline(workers):
    p = task(numbers, branch=True) | task(jittery, workers=workers, ordered=True) \
        | task(sync_jittery, workers=workers, ordered=True) \
        | task(jittery_pairs, branch=True, workers=workers, ordered=True)
    assert [x async for x in p(100)] == [(x, k) for x in range(100) for k in range(2)]


async def jittery_fail_at_thirty(x):
    await asyncio.sleep(jitter(x))
    if x == 30:
        raise Boom()
    return x


@pytest.mark.asyncio
@pytest.mark.parametrize("workers", [2, 4])
async def test_an_ordered_async_error_stops_the_run(workers):
    p = task(numbers, branch=True) \
        | task(jittery_fail_at_thirty, workers=workers, ordered=True)
    seen = []
    with pytest.raises(Boom):
        async for x in p(10**9):
            seen.append(x)
    assert seen == list(range(len(seen))) and len(seen) <= 30


async def stuck_at_zero_fail_at_three(x):
    if x == 0:
        await asyncio.Event().wait()
    return await fail_at_three(x)


@pytest.mark.asyncio
async def test_an_ordered_async_error_stops_the_run_before_its_turn():
    # The first error in time fails the run: an item waiting for its turn does not hold
    # it back. (The limit only detects a hang.)
    p = task(numbers, branch=True) \
        | task(stuck_at_zero_fail_at_three, workers=4, ordered=True)

    async def read():
        async for _ in p(10):
            pass

    with pytest.raises(Boom):
        await asyncio.wait_for(read(), 30)


async def endless_from(x):
    k = 0
    while True:
        yield (x, k)
        k += 1
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_an_endless_async_generator_at_the_head_of_an_ordered_stage_flows():
    # Item 0's outputs stream as they come; item 1's wait their turn (paused at its hold).
    p = task(numbers, branch=True) | task(endless_from, branch=True, workers=2, ordered=True)
    outputs = p(2)
    try:
        assert [await outputs.__anext__() for _ in range(3000)] \
            == [(0, k) for k in range(3000)]
    finally:
        await outputs.aclose()


def test_an_ordered_async_join_is_refused():
    async def joined(items):
        return [x async for x in items]

    with pytest.raises(ValueError, match="whole stream"):
        task(joined, join=True, ordered=True)


started = {"items": 0, "outputs": 0}


async def counted(x):
    started["items"] += 1
    await asyncio.sleep(jitter(x))
    return x


async def counted_endless(x):
    k = 0
    while True:
        started["outputs"] += 1
        yield (x, k)
        k += 1
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_an_ordered_async_stage_keeps_to_its_throttle_before_a_stalled_consumer():
    # With `throttle=t` and `w` workers an ordered stage runs ahead of a consumer that
    # stops reading by about `t × (w + 1)` items; the slack covers the batch the reader
    # took and the worker's hand-over. A driver that ran ahead would start hundreds
    # meanwhile.
    started["items"] = 0
    throttle, workers = 2, 4
    p = task(numbers, branch=True) \
        | task(counted, workers=workers, throttle=throttle, ordered=True)
    outputs = p(10**9)
    try:
        assert await outputs.__anext__() == 0
        await asyncio.sleep(0.5)
        assert started["items"] <= throttle * (workers + 1) + 8, started["items"]
    finally:
        await outputs.aclose()


@pytest.mark.asyncio
@pytest.mark.parametrize("ordered", [False, True])
async def test_an_endless_async_generator_before_a_stalled_consumer_is_paused(ordered):
    # Its outputs wait for the worker, a thousand or so at most, then it pauses: memory
    # stays bounded. Unpaused, it would make tens of thousands meanwhile.
    started["outputs"] = 0
    p = task(numbers, branch=True) \
        | task(counted_endless, branch=True, workers=2, throttle=2, ordered=ordered)
    outputs = p(2)
    try:
        await outputs.__anext__()
        await asyncio.sleep(0.5)
        assert started["outputs"] <= 3000, started["outputs"]
    finally:
        await outputs.aclose()
