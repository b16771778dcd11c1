"""An ordered Python stage keeps to its throttle, as the engine's ordered stages do: with
`throttle=t` and `w` workers it holds at most about `t × (w + 1)` items ahead of a
consumer that stalls (`t` in its output queue, up to `t` with each worker).

The consumer takes a millisecond per item, so the stage in front of it is always held
back. The lead is how many items the stage started beyond those the consumer finished,
sampled after each output; the slack covers what the consumer holds itself (the batch it
took from the queue, at most `t`, and the item in its hands). No assertion is on a
duration."""

import itertools
import threading
import time

import pytest

from pyper import task

OUTPUTS = 300

lock = threading.Lock()
counts = {"started": 0, "finished": 0}


def counted(x):
    with lock:
        counts["started"] += 1
    return x


def endless():
    # A thread stage's calls are counted where they happen; a worker process's, as the
    # source hands their items on (its own queue then holds one more: `throttle=1`).
    for x in itertools.count():
        with lock:
            counts["source"] = counts.get("source", 0) + 1
        yield x


def identity(x):
    return x


def slow(x):
    time.sleep(0.001)
    with lock:
        counts["finished"] += 1
    return x


def lead(stage, count):
    counts.update(started=0, finished=0, source=0)
    pipeline = task(endless, branch=True, throttle=1) | stage | task(slow)
    outputs = pipeline()
    worst = 0
    try:
        for expected in range(OUTPUTS):
            assert next(outputs) == expected, "in order"
            with lock:
                worst = max(worst, counts[count] - counts["finished"])
    finally:
        outputs.close()
    return worst


def bound(throttle, workers):
    return throttle * (workers + 1) + throttle + 1


@pytest.mark.parametrize("throttle", [1, 2])
@pytest.mark.parametrize("workers", [2, 4])
def test_an_ordered_thread_stage_keeps_to_its_throttle(throttle, workers):
    stage = task(counted, workers=workers, throttle=throttle, ordered=True)
    worst = lead(stage, "started")
    assert worst <= bound(throttle, workers), worst


@pytest.mark.parametrize("throttle", [1, 2])
@pytest.mark.parametrize("workers", [2, 4])
def test_an_ordered_multiprocess_stage_keeps_to_its_throttle(throttle, workers):
    stage = task(identity, workers=workers, throttle=throttle, ordered=True,
                 multiprocess=True)
    worst = lead(stage, "source")
    # The source's own queue (`throttle=1`) and the item in its hands.
    assert worst <= bound(throttle, workers) + 2, worst
