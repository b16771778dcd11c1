"""Async tasks in an `AsyncPipeline`: asyncio tasks on the caller's event loop.

An async stage has one engine worker, which feeds a `Driver`: it submits batches of ready
items (one hand-off to the loop per batch), and the driver starts one asyncio task per
item, up to the stage's `workers` at once; outputs and completions come back through a
deque the worker drains, ringing it awake only when it waits. So the loop and the engine
cross threads only when nothing is ready, never once per item and per await.

Coroutines run step by step under a `_Clock`, as the engine times a Rust future's polls:
the time each step holds the loop, and the steps of over a millisecond ("stalls": a
blocking call or a computation inside a coroutine, during which every other coroutine on
the loop waits), with their CPU time. The stage's report reads them. Timing steps costs
a few percent of a loop busy with short awaits, so only a sample of the items is timed
step by step (the first 16, then one in 8), and their figures stand for every item's;
each item's time in flight is timed."""

from __future__ import annotations

import asyncio
import collections
import types
from collections.abc import Iterable
from time import perf_counter_ns, thread_time_ns
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Coroutine,
    Deque,
    Generator,
    List,
    Optional,
    Set,
    Tuple,
)

if TYPE_CHECKING:
    from ._task import Task

OUTPUT, DONE, ERROR, JOIN_DONE = 0, 1, 2, 3

# How many items a join stage's coroutines may have waiting for them on the loop.
_JOIN_BUFFER = 256


# A step that holds the loop longer than this stalls it (the engine's `STALL`).
_STALL_NS = 1_000_000

# The items timed step by step: the first ones, then one in `_SAMPLE_EVERY`.
_SAMPLE_FIRST = 16
_SAMPLE_EVERY = 8


class _Clock:
    """The times of one driver's coroutines, in nanoseconds (see `Driver.totals`)."""

    __slots__ = ("items", "busy", "polled", "stalled", "longest", "stalled_cpu",
                 "started", "sampled", "_mark_wall", "_mark_cpu")

    def __init__(self) -> None:
        self.items = self.busy = self.polled = 0
        self.stalled = self.longest = self.stalled_cpu = 0
        # Items started, and items timed step by step that are done.
        self.started = self.sampled = 0
        self._mark_wall = self._mark_cpu = 0

    def sample(self) -> bool:
        """Whether the item starting now is timed step by step."""
        started = self.started
        self.started = started + 1
        return started < _SAMPLE_FIRST or started % _SAMPLE_EVERY == 0

    def step_began(self) -> int:
        now = perf_counter_ns()
        # The thread's CPU clock is a system call: read at most once a millisecond, so a
        # stall's CPU time may include up to a millisecond of the step before.
        if now - self._mark_wall >= _STALL_NS:
            self._mark_cpu = thread_time_ns()
            now = self._mark_wall = perf_counter_ns()
        return now

    def step_ended(self, began: int) -> None:
        now = perf_counter_ns()
        took = now - began
        if took <= _STALL_NS:
            self.polled += took
            return
        cpu = thread_time_ns()
        used = min(cpu - self._mark_cpu, took)
        self._mark_cpu, self._mark_wall = cpu, perf_counter_ns()
        self.polled += used
        self.stalled += took
        self.stalled_cpu += used
        self.longest = max(self.longest, took)


@types.coroutine
def _stepped(awaitable: Awaitable[Any], clock: _Clock) -> Generator[Any, Any, Any]:
    """Awaits `awaitable` step by step, timing each step on `clock`."""
    iterator = awaitable.__await__()
    value: Any = None
    error: Optional[BaseException] = None
    while True:
        began = clock.step_began()
        try:
            if error is None:
                yielded = iterator.send(value)
            else:
                yielded = iterator.throw(error)
        except StopIteration as stop:
            clock.step_ended(began)
            return stop.value
        except BaseException:
            clock.step_ended(began)
            raise
        clock.step_ended(began)
        try:
            value, error = (yield yielded), None
        except GeneratorExit:
            iterator.close()
            raise
        except BaseException as thrown:  # noqa: B902 - a cancel, handed to the coroutine
            value, error = None, thrown


class _Upstream:
    """A join coroutine's input: an async iterator over the stage's items."""

    def __init__(self, driver: Driver):
        self._driver = driver

    def __aiter__(self) -> _Upstream:
        return self

    async def __anext__(self) -> Any:
        driver = self._driver
        while not driver.inputs:
            if driver.input_over:
                raise StopAsyncIteration
            assert driver.input_ready is not None
            driver.input_ready.clear()
            await driver.input_ready.wait()
        item = driver.inputs.popleft()
        driver.clock.items += 1
        driver.event(DONE, None)
        return item


class Driver:
    """Runs one async stage's coroutines on `loop`, for the engine worker that feeds it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: Task, star_args: bool,
                 ring: Callable[[], None]):
        self.loop = loop
        self.func = task.func
        self.branch = task.branch
        self.is_gen = task.is_gen
        self.star_args = star_args
        self.join = task.join
        self.capacity = _JOIN_BUFFER if task.join else task.workers
        self.joins = task.workers if task.join else 0
        self._ring = ring
        self._events: Deque[Tuple[int, Any]] = collections.deque()
        self._tasks: Set[asyncio.Task[None]] = set()
        self.inputs: Deque[Any] = collections.deque()
        self.input_over = False
        self.input_ready: Optional[asyncio.Event] = None
        self.clock = _Clock()
        if self.join:
            self._call_soon(self._start_joins)

    # Called by the engine's worker thread.

    def submit(self, items: List[Any]) -> None:
        self._call_soon(self._start, items)

    def end_input(self) -> None:
        self._call_soon(self._end_input)

    def drain(self) -> List[Tuple[int, Any]]:
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def stop(self) -> None:
        self._call_soon(self._cancel)

    def totals(self) -> Tuple[int, int, int, int, int, int, int]:
        """The coroutines' times so far, in nanoseconds: items done, their time in
        flight, their steps' time on the loop, and the loop's stalls: total, longest,
        total measured, and their CPU time."""
        c = self.clock
        # The sampled items' steps stand for every item's (a join's coroutines are all
        # timed).
        scale = c.items / c.sampled if c.sampled and not self.join else 1.0
        stalled, stalled_cpu = int(c.stalled * scale), int(c.stalled_cpu * scale)
        return (c.items, c.busy, int(c.polled * scale), stalled, c.longest, stalled,
                stalled_cpu)

    # On the loop.

    def event(self, kind: int, value: Any) -> None:
        self._events.append((kind, value))
        self._ring()

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The loop is closed: nobody waits for these outputs any more.
            self.event(ERROR, RuntimeError("the event loop of this AsyncPipeline closed"))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, items: List[Any]) -> None:
        if self.join:
            self.inputs.extend(items)
            assert self.input_ready is not None
            self.input_ready.set()
            return
        for item in items:
            self._spawn(self._one(item))

    def _end_input(self) -> None:
        self.input_over = True
        if self.input_ready is not None:
            self.input_ready.set()

    def _start_joins(self) -> None:
        self.input_ready = asyncio.Event()
        for _ in range(self.joins):
            self._spawn(self._join())

    def _cancel(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    async def _emit(self, result: Any, timed: bool) -> None:
        clock = self.clock
        if self.is_gen:
            following = result.__anext__
            while True:
                try:
                    step = following()
                    output = await (_stepped(step, clock) if timed else step)
                except StopAsyncIteration:
                    return
                self.event(OUTPUT, output)
        result = await (_stepped(result, clock) if timed else result)
        if not self.branch:
            self.event(OUTPUT, result)
            return
        if not isinstance(result, Iterable):
            raise TypeError(
                f"got object of type {type(result)} from branching task {self.func} which"
                " could not be iterated over. (the task should be a generator, or return an"
                " iterable)")
        for output in result:
            self.event(OUTPUT, output)

    async def _one(self, item: Any) -> None:
        clock = self.clock
        timed = clock.sample()
        began = perf_counter_ns()
        try:
            if self.star_args:
                args, kwargs = item
                await self._emit(self.func(*args, **kwargs), timed)
            else:
                await self._emit(self.func(item), timed)
            clock.items += 1
            clock.busy += perf_counter_ns() - began
            if timed:
                clock.sampled += 1
            self.event(DONE, None)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: B902 - the run's error, whatever it is
            self.event(ERROR, error)

    async def _join(self) -> None:
        began = perf_counter_ns()
        try:
            await self._emit(self.func(_Upstream(self)), True)
            # A join coroutine is busy its whole life, as a sync join's worker is.
            self.clock.busy += perf_counter_ns() - began
            self.event(JOIN_DONE, None)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: B902
            self.event(ERROR, error)


def driver_factory(task: Task, star_args: bool, loop: asyncio.AbstractEventLoop
                   ) -> Callable[[Callable[[], None]], Driver]:
    """What the engine's worker of an async stage calls, with its `ring`, to get its
    driver."""
    def make(ring: Callable[[], None]) -> Driver:
        return Driver(loop, task, star_args, ring)
    return make
