"""``run.metrics()``: the report's figures as plain Python data."""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterator, Iterator

import pytest

from pyper import task
from pyper._metrics import Metrics

STAGE_KEYS = {
    "name", "kind", "workers", "items_in", "items_out", "errors", "busy", "cpu", "starved",
    "blocked", "gil_wait", "utilization", "cpu_ratio", "throughput", "verdict",
    "waits_for_gil", "suggested_workers",
}


def numbers(n: int) -> Iterator[int]:
    yield from range(n)


def double(x: int) -> int:
    return 2 * x


def nap(x: int) -> int:
    time.sleep(0.005)
    return x


async def await_nap(x: int) -> int:
    await asyncio.sleep(0.001)
    return x


def test_metrics_are_plain_data_per_stage() -> None:
    pipeline = task(numbers, branch=True) | task(double, workers=3) | task(nap, workers=2)
    with pipeline.start(50) as run:
        assert sum(run) == 2 * sum(range(50))
    metrics = run.metrics()
    # Plain data: JSON takes it as it is.
    assert json.loads(json.dumps(metrics)) == metrics
    assert set(metrics) == {"elapsed", "cores", "bottleneck", "advice", "stages"}
    assert metrics["elapsed"] > 0 and metrics["cores"] >= 1
    assert metrics["bottleneck"] == "nap"
    assert all(isinstance(line, str) for line in metrics["advice"])
    stages = {row["name"]: row for row in metrics["stages"]}
    assert list(stages) == ["numbers", "double", "nap"]
    assert all(set(row) == STAGE_KEYS for row in stages.values())
    assert (stages["numbers"]["items_in"], stages["numbers"]["items_out"]) == (1, 50)
    assert (stages["double"]["items_in"], stages["double"]["items_out"]) == (50, 50)
    assert stages["double"]["workers"] == 3 and stages["nap"]["workers"] == 2
    assert all(row["kind"] == "threads" and row["errors"] == 0 for row in stages.values())
    nap_row = stages["nap"]
    assert nap_row["verdict"] == "IO-bound / waiting"
    assert nap_row["busy"] > 0 and nap_row["starved"] >= 0 and nap_row["blocked"] >= 0
    assert nap_row["gil_wait"] is not None and nap_row["gil_wait"] >= 0
    assert 0 <= nap_row["utilization"] <= 1
    assert isinstance(nap_row["suggested_workers"], int)


def test_metrics_are_live_while_the_run_goes_on() -> None:
    with (task(numbers, branch=True) | task(nap)).start(1000) as run:
        next(run)
        live = run.metrics()
        assert live["stages"][1]["items_in"] < 1000
    ended = run.metrics()
    assert ended["stages"][1]["items_in"] < 1000  # closed early, and kept


def test_a_failed_stage_counts_its_error() -> None:
    def fail(x: int) -> int:
        raise ValueError(x)

    run = (task(numbers, branch=True) | task(fail)).start(3)
    try:
        list(run)
    except ValueError:
        pass
    stages = {row["name"]: row for row in run.metrics()["stages"]}
    assert stages["test_a_failed_stage_counts_its_error.<locals>.fail"]["errors"] == 1


def test_async_runs_have_metrics() -> None:
    async def main() -> Metrics:
        run = (task(numbers, branch=True) | task(await_nap, workers=4)).start(20)
        with pytest.raises(RuntimeError, match="not started"):
            run.metrics()
        async with run:
            assert sorted([x async for x in run]) == list(range(20))
        return run.metrics()

    metrics = asyncio.run(main())
    awaited = metrics["stages"][1]
    assert (awaited["kind"], awaited["workers"]) == ("async", 4)
    assert (awaited["items_in"], awaited["items_out"]) == (20, 20)
    assert awaited["gil_wait"] is None and not awaited["waits_for_gil"]


def test_an_async_join_counts_the_items_it_reads() -> None:
    async def total(items: AsyncIterator[int]) -> int:
        added = 0
        async for item in items:
            await asyncio.sleep(0.001)  # long enough for a verdict
            added += item
        return added

    async def main() -> Metrics:
        async with (task(numbers, branch=True) | task(total, join=True)).start(30) as run:
            assert [x async for x in run] == [sum(range(30))]
        return run.metrics()

    joined = asyncio.run(main())["stages"][1]
    assert (joined["kind"], joined["workers"]) == ("async", 1)
    assert (joined["items_in"], joined["items_out"]) == (30, 1)
    assert joined["verdict"] == "IO-bound / waiting"
