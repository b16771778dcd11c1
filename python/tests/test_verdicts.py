"""The report's verdicts on the cases of the concurrency guides, in Python.

The guides' first lesson: threads do not speed up CPU-bound Python (its threads take
turns on the GIL), processes do (``multiprocess=True``); IO-bound work gains from threads
or coroutines; and a blocking call inside a coroutine stalls the event loop. Each case is
one of their examples, and must get the right verdict and advice on an idle machine and on
one loaded by spinning processes (``loaded``: one more than the cores), as the engine's
Rust verdicts are tested (``pyper/tests/verdicts.rs``).

No test asserts on a duration. CPU work burns a fixed amount of its thread's CPU time
(``burn``), so it is CPU-bound however crowded the machine is, and IO waits are sleeps,
which use none.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any, Dict, Iterator, List

import pytest

from pyper import task

CORES = os.cpu_count() or 1

# Items of 4 ms of CPU time, 20 per core: enough to dwarf starting and stopping workers.
CPU_ITEMS = 20 * CORES


def burn(item: int) -> int:
    """Pure Python that computes until its thread has used 4 ms of CPU time."""
    started = time.thread_time()
    total = item
    while time.thread_time() - started < 0.004:
        for i in range(500):
            total = (total * 31 + i) % 1_000_003
    return total


def nap(item: int) -> int:
    """A wait that uses no CPU: a request, say."""
    time.sleep(0.01)
    return item


async def await_nap(item: int) -> int:
    await asyncio.sleep(0.01)
    return item


async def block_in_coroutine(item: int) -> int:
    time.sleep(0.01)  # the guides' mistake: a blocking call inside a coroutine
    return item


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


@pytest.fixture(params=["idle", "loaded"])
def machine(request: pytest.FixtureRequest) -> Iterator[str]:
    """An idle machine, or one whose every core is taken by a spinning process."""
    hogs: List[subprocess.Popen[bytes]] = []
    if request.param == "loaded":
        spin = "print('spinning', flush=True)\nwhile True: pass"
        hogs = [subprocess.Popen([sys.executable, "-c", spin], stdout=subprocess.PIPE)
                for _ in range(CORES + 1)]
        for hog in hogs:
            assert hog.stdout is not None and hog.stdout.readline()  # it spins
    yield request.param
    for hog in hogs:
        hog.kill()
        hog.wait()


def stage(metrics: Dict[str, Any], name: str) -> Dict[str, Any]:
    found: Dict[str, Any] = next(row for row in metrics["stages"] if row["name"] == name)
    return found


def advice_for(metrics: Dict[str, Any], name: str) -> str:
    lines = [line for line in metrics["advice"] if line.startswith(f"`{name}` ")]
    assert lines, metrics["advice"]
    line: str = lines[0]
    return line


def run_sync(pipeline: Any, n: int) -> Dict[str, Any]:
    with pipeline.start(n) as run:
        assert sum(1 for _ in run) == n
    print(run.report())  # shown when a test fails
    return dict(run.metrics())


def run_async(pipeline: Any, n: int) -> Dict[str, Any]:
    async def main() -> Dict[str, Any]:
        async with pipeline.start(n) as run:
            count = 0
            async for _ in run:
                count += 1
        assert count == n
        print(run.report())
        return dict(run.metrics())

    return asyncio.run(main())


@pytest.mark.parametrize("threads", [2, 4])
def test_cpu_bound_python_on_threads_waits_for_the_gil(machine: str, threads: int) -> None:
    pipeline = task(numbers, branch=True) | task(burn, workers=threads)
    metrics = run_sync(pipeline, CPU_ITEMS)
    burned = stage(metrics, "burn")
    assert burned["verdict"] == "CPU-bound", metrics
    assert burned["waits_for_gil"], metrics
    assert metrics["bottleneck"] == "burn"
    assert burned["suggested_workers"] == CORES
    advice = advice_for(metrics, "burn")
    assert "take turns on the GIL" in advice, advice
    assert f"`multiprocess=True` with {CORES} workers" in advice, advice
    assert "fewer threads" in advice, advice


def test_cpu_bound_python_on_one_thread_is_told_to_use_processes(machine: str) -> None:
    pipeline = task(numbers, branch=True) | task(burn)
    metrics = run_sync(pipeline, CPU_ITEMS // 2)
    burned = stage(metrics, "burn")
    assert burned["verdict"] == "CPU-bound", metrics
    advice = advice_for(metrics, "burn")
    assert "more threads won't speed it up" in advice, advice
    assert f"`multiprocess=True` with {CORES} workers" in advice, advice


def test_cpu_bound_python_in_processes_is_cpu_bound_without_the_gil(machine: str) -> None:
    pipeline = task(numbers, branch=True) | task(burn, workers=CORES, multiprocess=True)
    metrics = run_sync(pipeline, CPU_ITEMS)
    burned = stage(metrics, "burn")
    assert burned["kind"] == "process"
    assert burned["verdict"] == "CPU-bound", metrics
    assert not burned["waits_for_gil"]
    assert burned["gil_wait"] is None
    advice = " ".join(metrics["advice"])
    assert "GIL" not in advice and "multiprocess" not in advice, advice


def test_blocking_io_on_threads_stays_io_bound(machine: str) -> None:
    pipeline = task(numbers, branch=True) | task(nap, workers=4)
    metrics = run_sync(pipeline, 60)
    napped = stage(metrics, "nap")
    assert napped["verdict"] == "IO-bound / waiting", metrics
    assert not napped["waits_for_gil"]
    assert metrics["bottleneck"] == "nap"
    advice = advice_for(metrics, "nap")
    assert "raise workers to" in advice and "GIL" not in advice, advice


def test_asyncio_waits_are_io_bound(machine: str) -> None:
    pipeline = task(numbers, branch=True) | task(await_nap, workers=8)
    metrics = run_async(pipeline, 80)
    napped = stage(metrics, "await_nap")
    assert napped["kind"] == "async"
    assert napped["workers"] == 8
    assert napped["items_in"] == 80
    assert napped["verdict"] == "IO-bound / waiting", metrics
    assert metrics["bottleneck"] == "await_nap"


def test_a_blocking_call_inside_a_coroutine_blocks_the_event_loop(machine: str) -> None:
    pipeline = task(numbers, branch=True) | task(block_in_coroutine, workers=8)
    metrics = run_async(pipeline, 30)
    blocking = stage(metrics, "block_in_coroutine")
    assert blocking["verdict"] == "blocks its executor", metrics
    assert metrics["bottleneck"] == "block_in_coroutine"
    advice = advice_for(metrics, "block_in_coroutine")
    assert "`asyncio.sleep`" in advice and "sync task" in advice, advice
