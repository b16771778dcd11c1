"""``workers="auto"``: the run tunes a sync task's thread count (the engine's
``auto_workers``), up to 64. No assertion here depends on a timing: the counts asserted
are what the tuner's rule gives on any machine, with room for its probes."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Dict, Iterator

import pytest

from pyper import fork, task
from pyper._metrics import Metrics

CORES = os.cpu_count() or 1
MAX = 64

# The tuner starts a stage at a worker per core: with as many cores as a quarter of its
# most, there is no room to see it stay small.
room_to_grow = pytest.mark.skipif(4 * CORES > MAX, reason="starts near its most")


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


def nap(x: int) -> int:
    time.sleep(0.005)
    return x


def compute(x: int) -> int:
    # Pure Python: holds the GIL throughout (about 0.1 ms).
    total = 0
    for i in range(2_000):
        total += i * i
    return x


def stage(metrics: Metrics, name: str) -> Dict[str, Any]:
    rows = {row["name"]: row for row in metrics["stages"]}
    row: Dict[str, Any] = dict(rows[name])
    return row


def test_an_io_bound_stage_grows_past_its_start() -> None:
    with (task(numbers, branch=True) | task(nap, workers="auto")).start(2_000) as run:
        assert sorted(run) == list(range(2_000))
    napped = stage(run.metrics(), "nap")
    tuned = napped["tuned"]
    assert set(tuned) == {"workers", "max", "peak", "why"}
    assert tuned["max"] == MAX and 1 <= tuned["workers"] <= MAX
    # It starts with one worker per core (or the most it may have), and sleeps scale:
    # the first window's step up pays, and the next ones while throughput doubles.
    assert tuned["peak"] > min(CORES, MAX) or tuned["peak"] == MAX, tuned
    assert napped["workers"] > 1  # on average over the run
    assert (napped["items_in"], napped["items_out"]) == (2_000, 2_000)
    assert napped["errors"] == 0
    # The report says what the run chose, as for a Rust stage with `auto_workers`.
    assert "`nap`: the run tuned it to" in run.report()
    assert any("the run tuned it to" in line for line in run.metrics()["advice"])


@room_to_grow
def test_a_cpu_bound_stage_stays_small() -> None:
    # Under the GIL, more threads raise a pure Python stage's throughput only while one
    # of them leaves the GIL idle (as the task before it and the reader take it): on 2
    # cores, 3 to 4 threads do best. The tuner starts at a worker per core, steps up,
    # finds no gain, and comes back; its probes up a quarter are undone unless noise
    # lets one through. So it stays near its start, far from its most.
    with (task(numbers, branch=True) | task(compute, workers="auto")).start(20_000) as run:
        assert sorted(run) == list(range(20_000))
    computed = stage(run.metrics(), "compute")
    tuned = computed["tuned"]
    small = 2 * CORES + 2
    assert tuned["workers"] <= small, tuned
    assert tuned["peak"] < MAX, tuned
    assert tuned["why"] != "it reached the most workers it was allowed", tuned
    assert (computed["items_in"], computed["items_out"]) == (20_000, 20_000)


@room_to_grow
def test_a_cpu_bound_stage_stays_below_an_io_bound_one() -> None:
    def run_auto(function: Any, items: int) -> Dict[str, Any]:
        pipeline = task(numbers, branch=True) | task(function, workers="auto")
        with pipeline.start(items) as run:
            assert sum(1 for _ in run) == items
        return dict(stage(run.metrics(), function.__name__)["tuned"])

    # The same windows, the same machine: the one that waits grows past the one that
    # computes.
    assert run_auto(compute, 20_000)["workers"] < run_auto(nap, 2_000)["peak"]


def test_fixed_workers_are_not_tuned() -> None:
    with (task(numbers, branch=True) | task(nap, workers=3)).start(30) as run:
        assert sorted(run) == list(range(30))
    napped = stage(run.metrics(), "nap")
    assert napped["workers"] == 3 and "tuned" not in napped


def test_branch_and_ordered_outputs_are_complete() -> None:
    def pair(x: int) -> Iterator[int]:
        time.sleep(0.001)
        yield x
        yield -x

    pipeline = task(numbers, branch=True) | task(pair, branch=True, workers="auto",
                                                   ordered=True)
    outputs = list(pipeline(500))
    assert outputs == [y for x in range(500) for y in (x, -x)]


def test_a_stage_after_an_auto_stage_gets_every_output() -> None:
    pipeline = (task(numbers, branch=True) | task(nap, workers="auto", throttle=4)
                | task(lambda x: x * 2))
    assert sorted(pipeline(300)) == [2 * x for x in range(300)]


def test_an_error_still_fails_the_run() -> None:
    def fail_at_100(x: int) -> int:
        time.sleep(0.001)
        if x == 100:
            raise KeyError(x)
        return x

    pipeline = task(numbers, branch=True) | task(fail_at_100, workers="auto")
    with pytest.raises(KeyError):
        list(pipeline(1_000))


def test_closing_early_wakes_the_parked_workers(no_threads_left: None) -> None:
    def endless() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    with (task(endless, branch=True) | task(nap, workers="auto")).start() as run:
        taken = [next(run) for _ in range(50)]
    assert len(set(taken)) == 50


@pytest.mark.parametrize("workers", ["Auto", "AUTO", "", "4", "1"])
def test_other_strings_are_refused_as_pyper_refuses_them(workers: Any) -> None:
    with pytest.raises(TypeError, match='workers must be an integer or "auto"'):
        task(nap, workers=workers)


@pytest.mark.parametrize("workers", [1.5, None, b"auto"])
def test_other_types_are_refused(workers: Any) -> None:
    with pytest.raises(TypeError, match='workers must be an integer or "auto"'):
        task(nap, workers=workers)


def test_auto_is_refused_where_the_count_cannot_be_tuned() -> None:
    async def await_nap(x: int) -> int:
        await asyncio.sleep(0)
        return x

    def total(items: Iterator[int]) -> int:
        return sum(items)

    cases: Dict[str, Any] = {
        "an async task": lambda: task(await_nap, workers="auto"),
        "a join task": lambda: task(total, join=True, workers="auto"),
        "a multiprocess task": lambda: task(nap, multiprocess=True, workers="auto"),
        "a remote task": lambda: task(nap, remote="nats://127.0.0.1:1", workers="auto"),
    }
    for kind, make in cases.items():
        with pytest.raises(ValueError, match=f'workers="auto" does not apply to {kind}'):
            make()


def test_the_first_task_cannot_be_auto() -> None:
    # As with `workers > 1`, at the run.
    pipeline = task(nap, workers="auto") | task(nap)
    with pytest.raises(RuntimeError, match="cannot have more than 1 worker"):
        list(pipeline(1))


def test_a_task_in_a_fork_cannot_be_auto() -> None:
    with pytest.raises(ValueError, match="apply to the fork"):
        fork(task(nap, workers="auto"), task(nap))
