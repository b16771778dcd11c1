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
each item's time in flight is timed.

An ordered stage's driver (`ordered=True`, several workers) numbers its items as they are
handed over and releases their outputs in that order: the oldest item not yet released
(the head) streams its outputs as they come; every other item collects its own, up to the
stage's hold (its throttle, at most `_HOLD`), and is then paused until it is the head.
An item is done for the engine's worker when it is released, so the worker hands over no
more than the driver's `capacity` of items between taking them and releasing them:
`workers` running and up to as many again finished and waiting for older ones (`workers`
with `throttle=1`), so a stage runs ahead of a stalled consumer by about
`throttle × (workers + 1)` items, as an ordered thread stage does.

A generator (or an iterable) that outputs faster than the worker takes its outputs is
paused while `_EVENTS_HELD` events wait for it: an endless one in front of a stalled
consumer holds bounded memory."""

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
    Dict,
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

# The most outputs an item of an ordered stage that is not the head collects before it is
# paused (the engine's batch); a throttle below it is the bound.
_HOLD = 1024

# The events a generator's outputs may leave waiting for the worker before it is paused.
_EVENTS_HELD = 1024


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


class _Place:
    """An item of an ordered stage, from its start until its outputs are released."""

    __slots__ = ("outputs", "done", "gate")

    def __init__(self) -> None:
        self.outputs: List[Any] = []
        self.done = False
        # Set while the item is paused: it has collected all it may and is not the head.
        self.gate: Optional[asyncio.Future[None]] = None


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
        self.workers = task.workers
        # One coroutine at a time keeps the order by itself.
        self.ordered = task.ordered and task.workers > 1 and not task.join
        if task.join:
            self.capacity = _JOIN_BUFFER
        elif self.ordered:
            # `workers` running and up to as many again waiting to be released (as many
            # as the throttle per worker, when it is 1).
            self.capacity = task.workers * (min(task.throttle, 2) if task.throttle else 2)
        else:
            # `workers` running and as many on standby: a coroutine that ends starts the
            # next item at once, without waiting for the engine's worker, which tops the
            # standby up when it next holds the GIL (up to the interpreter's switch
            # interval, 5 ms, later while the loop is busy).
            self.capacity = 2 * task.workers
        self.joins = task.workers if task.join else 0
        self._ring = ring
        # Whether the worker was rung since it last drained the events.
        self._rung = False
        self._events: Deque[Tuple[int, Any]] = collections.deque()
        self._tasks: Set[asyncio.Task[None]] = set()
        self.inputs: Deque[Any] = collections.deque()
        self.input_over = False
        self.input_ready: Optional[asyncio.Event] = None
        self.clock = _Clock()
        # An ordered stage's items: handed over and not started (in `inputs`), then by
        # position (in the order they were handed over) from their start to their release.
        self._hold = min(task.throttle, _HOLD) if task.throttle else _HOLD
        self._places: Dict[int, _Place] = {}
        self._head = self._taken = self._running = 0
        # The runners of a stage not ordered that wait for items (see `_runner`).
        self._idle: List[asyncio.Future[None]] = []
        # The generators waiting for the worker to take events, and whether the worker
        # must wake them when it does (set on the loop, cleared by `drain`).
        self._waiting_room: List[asyncio.Future[None]] = []
        self._full = False
        if self.join:
            self._call_soon(self._start_joins)

    # Called by the engine's worker thread.

    def submit(self, items: List[Any]) -> None:
        self._call_soon(self._start, items)

    def end_input(self) -> None:
        self._call_soon(self._end_input)

    def drain(self) -> List[Tuple[int, Any]]:
        # Before taking them: an event added from now on rings again.
        self._rung = False
        events = []
        while self._events:
            events.append(self._events.popleft())
        # After taking them: a generator that saw too many events sets `_full` before it
        # looks again (see `_hand_on`), so either it sees them taken or it is woken.
        if self._full:
            self._full = False
            self._call_soon(self._make_room)
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
        self._wake()

    def _wake(self) -> None:
        """Rings the worker, once between two of its drains: it takes every event then."""
        if not self._rung:
            self._rung = True
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
        if self.ordered:
            self.inputs.extend(items)
            self._start_ordered()
            return
        self.inputs.extend(items)
        self._start_standby()

    def _start_standby(self) -> None:
        """Wakes the idle runners for the items on standby, and starts more runners (up
        to `workers`) for the items they leave."""
        idle, self._idle = self._idle, []
        for wake in idle:
            if not wake.done():
                wake.set_result(None)
        more = min(self.workers - self._running, len(self.inputs) - len(idle))
        for _ in range(max(more, 0)):
            self._running += 1
            self._spawn(self._runner())

    async def _runner(self) -> None:
        """Runs items on standby one after the other, as a worker coroutine of a plain
        asyncio program does: no task to create per item. Waits while there is none."""
        inputs = self.inputs
        try:
            while True:
                while inputs:
                    await self._one(inputs.popleft(), -1)
                if self.input_over:
                    return
                wake = self.loop.create_future()
                self._idle.append(wake)
                await wake
        finally:
            self._running -= 1

    def _start_ordered(self) -> None:
        """Starts items handed over, in order, while fewer than `workers` run and fewer
        than `capacity` wait for their release (the worker hands over no more anyway)."""
        inputs, places = self.inputs, self._places
        while inputs and self._running < self.workers and len(places) < self.capacity:
            position = self._taken
            self._taken += 1
            places[position] = _Place()
            self._running += 1
            self._spawn(self._one(inputs.popleft(), position))

    def _end_input(self) -> None:
        self.input_over = True
        if not (self.join or self.ordered):
            # Idle runners end.
            self._start_standby()
        if self.input_ready is not None:
            self.input_ready.set()

    def _start_joins(self) -> None:
        self.input_ready = asyncio.Event()
        for _ in range(self.joins):
            self._spawn(self._join())

    def _cancel(self) -> None:
        self.inputs.clear()
        for task in list(self._tasks):
            task.cancel()

    def _make_room(self) -> None:
        waiting, self._waiting_room = self._waiting_room, []
        for room in waiting:
            if not room.done():
                room.set_result(None)

    def _hand_on(self, position: int, output: Any) -> Optional[asyncio.Future[None]]:
        """Hands on one output of the item at `position` (-1 in a stage not ordered, or a
        join), or keeps it until the item is the oldest not released. Returns what the
        item must wait for before its next output, if anything: its turn, once it has
        kept all it may, or the worker, while `_EVENTS_HELD` events wait for it (a
        generator that outputs faster than its consumer takes: a stalled one holds it
        there)."""
        if position < 0 or position == self._head:
            events = self._events
            events.append((OUTPUT, output))
            self._wake()
            if len(events) < _EVENTS_HELD:
                return None
            room = self.loop.create_future()
            self._waiting_room.append(room)
            self._full = True
            # Taken before `drain` could see `_full`: it will not wake this one.
            if len(events) < _EVENTS_HELD:
                return None
            return room
        place = self._places[position]
        place.outputs.append(output)
        if len(place.outputs) < self._hold:
            return None
        # Paused until it is the head (`_release` hands its outputs on then).
        gate: asyncio.Future[None] = self.loop.create_future()
        place.gate = gate
        return gate

    def _release(self, position: int) -> None:
        """The item at `position` is done: hands on, in order, the outputs that may leave
        now (of the items released, then what the new head collected), and lets the new
        head go on."""
        self._running -= 1
        places = self._places
        places[position].done = True
        events = self._events
        before = len(events)
        while self._head in places:
            place = places[self._head]
            events.extend((OUTPUT, output) for output in place.outputs)
            place.outputs = []
            if not place.done:
                if place.gate is not None and not place.gate.done():
                    place.gate.set_result(None)
                place.gate = None
                break
            del places[self._head]
            self._head += 1
            events.append((DONE, None))
        if len(events) != before:
            self._wake()
        self._start_ordered()

    async def _emit(self, result: Any, timed: bool, position: int) -> None:
        clock = self.clock
        if self.is_gen:
            following = result.__anext__
            while True:
                try:
                    step = following()
                    output = await (_stepped(step, clock) if timed else step)
                except StopAsyncIteration:
                    return
                waiting = self._hand_on(position, output)
                if waiting is not None:
                    await waiting
        result = await (_stepped(result, clock) if timed else result)
        if not self.branch:
            # Its item's only output: nothing follows it to wait for.
            self._hand_on(position, result)
            return
        if not isinstance(result, Iterable):
            raise TypeError(
                f"got object of type {type(result)} from branching task {self.func} which"
                " could not be iterated over. (the task should be a generator, or return an"
                " iterable)")
        for output in result:
            waiting = self._hand_on(position, output)
            if waiting is not None:
                await waiting

    async def _one(self, item: Any, position: int) -> None:
        clock = self.clock
        timed = clock.sample()
        began = perf_counter_ns()
        try:
            if self.star_args:
                args, kwargs = item
                await self._emit(self.func(*args, **kwargs), timed, position)
            else:
                await self._emit(self.func(item), timed, position)
            clock.items += 1
            clock.busy += perf_counter_ns() - began
            if timed:
                clock.sampled += 1
            if position < 0:
                self.event(DONE, None)
            else:
                self._release(position)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: B902 - the run's error, whatever it is
            self.event(ERROR, error)

    async def _join(self) -> None:
        began = perf_counter_ns()
        try:
            await self._emit(self.func(_Upstream(self)), True, -1)
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
