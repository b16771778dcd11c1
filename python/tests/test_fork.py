"""An extension (Pyper's unreleased ``&``): ``task(f) & task(g)`` forks each input to both
tasks, run at once, and outputs ``[f(x), g(x)]``."""

import asyncio
import threading

import pytest

from pyper import AsyncPipeline, Pipeline, fork, task


class Boom(Exception):
    pass


def numbers(n):
    yield from range(n)


def double(x):
    return x * 2


def square(x):
    return x * x


async def later(x):
    await asyncio.sleep(0.001)
    return x + 1


def test_outputs_are_lists_in_the_tasks_order():
    p = task(numbers, branch=True) | (task(double) & task(square) & task(str))
    assert isinstance(p, Pipeline) and not isinstance(p, AsyncPipeline)
    assert list(p(5)) == [[2 * x, x * x, str(x)] for x in range(5)]


def test_a_fork_is_one_stage_of_the_pipeline():
    p = task(double) & task(square)
    assert len(p.tasks) == 1
    assert len((p & task(str)).tasks[0].func.tasks) == 3


def test_the_tasks_of_one_input_run_at_the_same_time():
    # Each call waits for the other's: one after the other, they would never return.
    meet = threading.Barrier(2, timeout=30)

    def left(x):
        meet.wait()
        return x

    def right(x):
        meet.wait()
        return -x

    p = task(numbers, branch=True) | (task(left) & task(right))
    assert list(p(10)) == [[x, -x] for x in range(10)]


def test_workers_is_how_many_inputs_are_in_flight():
    gather = threading.Barrier(3, timeout=30)
    in_flight = [0, 0]
    lock = threading.Lock()

    def counted(x):
        with lock:
            in_flight[0] += 1
            in_flight[1] = max(in_flight)
        gather.wait()
        with lock:
            in_flight[0] -= 1
        return x

    p = task(numbers, branch=True) | fork(task(counted), task(double), workers=3)
    assert sorted(list(p(30))) == sorted([x, 2 * x] for x in range(30))
    assert in_flight[1] == 3


def test_an_ordered_fork_keeps_the_input_order():
    p = task(numbers, branch=True) | fork(task(double), task(square), workers=4, ordered=True)
    assert list(p(50)) == [[2 * x, x * x] for x in range(50)]


def test_the_first_failure_is_raised_as_is():
    def fail_at_three(x):
        if x == 3:
            raise Boom("three")
        return x

    p = task(numbers, branch=True) | (task(double) & task(fail_at_three))
    with pytest.raises(Boom, match="three") as raised:
        list(p(10))
    notes = getattr(raised.value, "__notes__", ["in task fail_at_three of a fork"])
    assert "in task fail_at_three of a fork" in notes


def test_each_task_keeps_its_timeout_and_retries():
    tries = []

    def flaky(x):
        tries.append(x)
        if len(tries) % 2:
            raise Boom("flaky")
        return x

    p = task(numbers, branch=True) | (task(flaky, retries=1) & task(double))
    assert list(p(5)) == [[x, 2 * x] for x in range(5)]
    assert len(tries) == 10

    release = threading.Event()

    def stuck(x):
        release.wait(30)
        return x

    try:
        p = task(numbers, branch=True) | (task(double) & task(stuck, timeout=0.1))
        with pytest.raises(TimeoutError):
            list(p(3))
    finally:
        release.set()


def test_what_does_not_combine_is_refused():
    with pytest.raises(ValueError, match="branch or join"):
        task(double) & task(numbers, branch=True)
    with pytest.raises(ValueError, match="apply to the fork"):
        task(double) & task(square, workers=2)
    with pytest.raises(ValueError, match="single task"):
        task(double) & (task(double) | task(square))
    with pytest.raises(ValueError, match="at least two"):
        fork(task(double))


def test_closing_the_run_early_ends_it():
    p = task(numbers, branch=True) | fork(task(double), task(square), workers=2)
    outputs = p(10_000)
    first = next(outputs)  # workers=2: any input may come first
    assert first in ([2 * x, x * x] for x in range(10_000))
    outputs.close()
    with pytest.raises(StopIteration):
        next(outputs)


@pytest.mark.asyncio
async def test_sync_and_async_tasks_mix_in_an_async_fork():
    p = task(numbers, branch=True) | fork(task(later), task(double), workers=8)
    assert isinstance(p, AsyncPipeline)
    assert sorted([x async for x in p(20)]) == sorted([x + 1, 2 * x] for x in range(20))


@pytest.mark.asyncio
async def test_an_async_failure_cancels_the_other_coroutines_of_the_input():
    cancelled = []

    async def forever(x):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.append(x)
            raise
        return x

    async def fails(x):
        await asyncio.sleep(0.001)
        raise Boom(str(x))

    p = task(numbers, branch=True) | (task(forever) & task(fails))
    with pytest.raises(Boom):
        async for _ in p(1):
            pass
    assert cancelled == [0]


def own_pid(x):
    import os

    return os.getpid()


def fails_on_three(x):
    if x == 3:
        raise Boom(f"boom {x}")
    return x


def test_a_multiprocess_task_in_a_fork_runs_in_a_worker_process():
    import os

    p = task(numbers, branch=True) | fork(task(own_pid, multiprocess=True), task(double),
                                          task(square, multiprocess=True), workers=3)
    outputs = list(p(12))
    assert sorted(output[1:] for output in outputs) == [[2 * x, x * x] for x in range(12)]
    assert all(output[0] != os.getpid() for output in outputs)


def test_a_multiprocess_task_in_a_fork_fails_the_run_with_its_own_exception():
    p = task(numbers, branch=True) | (task(fails_on_three, multiprocess=True) & task(double))
    with pytest.raises(Boom, match="boom 3"):
        list(p(6))


def sleepy(x):
    import time

    if x == 1:
        time.sleep(3600)
    return x


def test_a_multiprocess_task_in_a_fork_keeps_its_timeout():
    p = task(numbers, branch=True) | (task(sleepy, multiprocess=True, timeout=0.3)
                                      & task(double))
    with pytest.raises(TimeoutError, match="sleepy did not return within 0.3 s"):
        list(p(3))


@pytest.mark.asyncio
async def test_a_multiprocess_task_in_an_async_fork():
    p = task(numbers, branch=True) | (task(square, multiprocess=True) & task(later))
    assert sorted([x async for x in p(5)]) == [[x * x, x + 1] for x in range(5)]
