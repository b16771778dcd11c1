"""Regression tests for the faults of python-pyper 0.4.4 listed in the issue: each hangs or
misreports there, and must not here."""

import _thread
import itertools
import threading
import time

import pytest

from pyper import task


class Early(Exception):
    pass


class Late(Exception):
    pass


def endless(_):
    yield from itertools.count()


def numbers(n):
    yield from range(n)


def slow_identity(x):
    time.sleep(0.001)
    return x


def identity(x):
    return x


def test_six_workers_with_throttle_one_complete(no_threads_left):
    # Pyper's shared pool runs out of threads on 2 cores and hangs here.
    p = task(numbers, branch=True) | task(slow_identity, workers=6, throttle=1) | task(identity)
    assert sorted(p(200)) == list(range(200))


def test_close_after_one_next_with_throttle_one(no_threads_left):
    # Pyper waits for the whole pipeline on close, and hangs with any throttle.
    p = task(endless, branch=True, throttle=1) | task(identity, throttle=1)
    outputs = p(None)
    assert next(outputs) == 0
    outputs.close()


def test_dropping_the_output_stops_the_run(no_threads_left):
    p = task(endless, branch=True, throttle=1) | task(identity, workers=3, throttle=1)
    outputs = p(None)
    assert next(outputs) is not None
    del outputs


def fail_at_five(x):
    if x == 5:
        raise Early("five")
    return x


def test_an_endless_source_stops_after_a_downstream_error(no_threads_left):
    # Pyper's producer runs its generator to the end: an endless one never stops.
    p = task(endless, branch=True) | task(fail_at_five)
    with pytest.raises(Early):
        for _ in p(None):
            pass


def late_or_early(x):
    if x == 0:
        time.sleep(0.5)
        raise Late("submitted first, raised last")
    raise Early("submitted second, raised first")


def test_the_first_error_in_time_is_reported(no_threads_left):
    # Pyper re-raises the first-submitted worker's error.
    p = task(numbers, branch=True) | task(late_or_early, workers=2)
    with pytest.raises(Early):
        list(p(2))


def test_keyboard_interrupt_stops_a_run(no_threads_left):
    # Pyper takes 5 s; here a wait looks at signals every few milliseconds.
    p = task(endless, branch=True) | task(slow_identity, workers=2)
    timer = threading.Timer(0.2, _thread.interrupt_main)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            for _ in p(None):
                pass
    finally:
        timer.cancel()


def broken_generator(n):
    yield 1
    yield 2
    raise Early("in the generator")


def test_an_exception_in_a_generator_is_raised(no_threads_left):
    p = task(broken_generator, branch=True) | task(identity)
    seen = []
    with pytest.raises(Early, match="in the generator"):
        for x in p(0):
            seen.append(x)
    assert seen == [1, 2][: len(seen)]


def test_no_thread_is_left_behind_by_many_runs(no_threads_left):
    p = task(numbers, branch=True) | task(identity, workers=4) | task(identity, workers=2)
    for _ in range(20):
        assert sum(p(100)) == sum(range(100))
    for _ in range(5):
        with pytest.raises(Early):
            list((task(endless, branch=True) | task(fail_at_five, workers=3))(None))


def test_start_gives_the_run_and_its_report(no_threads_left):
    # An extension: `start` returns the run itself, with the engine's report.
    p = task(numbers, branch=True) | task(slow_identity, workers=2)
    with p.start(50) as run:
        assert sorted(run) == list(range(50))
    report = run.report()
    assert "slow_identity" in report and "numbers" in report


class Flaky:
    """Raises the first `failures` times it sees each item."""

    def __init__(self, failures):
        self.failures = failures
        self.seen = {}
        self.lock = threading.Lock()

    def __call__(self, x):
        with self.lock:
            self.seen[x] = self.seen.get(x, 0) + 1
            if self.seen[x] <= self.failures:
                raise Early(f"attempt {self.seen[x]} at {x}")
        return x


def test_retries_make_a_call_again(no_threads_left):
    # An extension: `retries=n`.
    p = task(numbers, branch=True) | task(Flaky(2), workers=2, retries=2)
    assert sorted(p(10)) == list(range(10))


def test_the_last_attempt_raises_the_original_exception(no_threads_left):
    p = task(numbers, branch=True) | task(Flaky(2), retries=1)
    with pytest.raises(Early, match="attempt 2"):
        list(p(3))


def first_three(items):
    return [next(items) for _ in range(3)]


def test_a_join_that_returns_early_stops_an_endless_source(no_threads_left):
    p = task(endless, branch=True) | task(first_three, join=True)
    assert list(p(None)) == [[0, 1, 2]]


def jittery(x):
    time.sleep(0.001 * (x % 3))
    return x


def test_ordered_keeps_the_input_order_through_several_workers(no_threads_left):
    # An extension: `ordered=True`.
    p = task(numbers, branch=True) | task(jittery, workers=4, ordered=True) \
        | task(pairs_of, branch=True, workers=3, ordered=True)
    assert list(p(300)) == [y for x in range(300) for y in (x, x)]


def pairs_of(x):
    return [x, x]


def test_ordered_is_refused_where_it_cannot_apply():
    with pytest.raises(ValueError):
        task(identity, join=True, ordered=True)
