"""Async tasks in an `AsyncPipeline`: asyncio tasks on the caller's event loop.

An async stage has one engine worker, which feeds a `Driver`: it submits batches of ready
items (one hand-off to the loop per batch), and the driver starts one asyncio task per
item, up to the stage's `workers` at once; outputs and completions come back through a
deque the worker drains, ringing it awake only when it waits. So the loop and the engine
cross threads only when nothing is ready, never once per item and per await."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable

OUTPUT, DONE, ERROR, JOIN_DONE = 0, 1, 2, 3

# How many items a join stage's coroutines may have waiting for them on the loop.
_JOIN_BUFFER = 256


class _Upstream:
    """A join coroutine's input: an async iterator over the stage's items."""

    def __init__(self, driver):
        self._driver = driver

    def __aiter__(self):
        return self

    async def __anext__(self):
        driver = self._driver
        while not driver.inputs:
            if driver.input_over:
                raise StopAsyncIteration
            driver.input_ready.clear()
            await driver.input_ready.wait()
        item = driver.inputs.popleft()
        driver.event(DONE, None)
        return item


class Driver:
    """Runs one async stage's coroutines on `loop`, for the engine worker that feeds it."""

    def __init__(self, loop, task, star_args, ring):
        self.loop = loop
        self.func = task.func
        self.branch = task.branch
        self.is_gen = task.is_gen
        self.star_args = star_args
        self.join = task.join
        self.capacity = _JOIN_BUFFER if task.join else task.workers
        self.joins = task.workers if task.join else 0
        self._ring = ring
        self._events = collections.deque()
        self._tasks = set()
        self.inputs = collections.deque()
        self.input_over = False
        self.input_ready = None
        if self.join:
            self._call_soon(self._start_joins)

    # Called by the engine's worker thread.

    def submit(self, items):
        self._call_soon(self._start, items)

    def end_input(self):
        self._call_soon(self._end_input)

    def drain(self):
        events = []
        while self._events:
            events.append(self._events.popleft())
        return events

    def stop(self):
        self._call_soon(self._cancel)

    # On the loop.

    def event(self, kind, value):
        self._events.append((kind, value))
        self._ring()

    def _call_soon(self, callback, *args):
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The loop is closed: nobody waits for these outputs any more.
            self.event(ERROR, RuntimeError("the event loop of this AsyncPipeline closed"))

    def _spawn(self, coroutine):
        task = self.loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, items):
        if self.join:
            self.inputs.extend(items)
            self.input_ready.set()
            return
        for item in items:
            self._spawn(self._one(item))

    def _end_input(self):
        self.input_over = True
        if self.input_ready is not None:
            self.input_ready.set()

    def _start_joins(self):
        self.input_ready = asyncio.Event()
        for _ in range(self.joins):
            self._spawn(self._join())

    def _cancel(self):
        for task in list(self._tasks):
            task.cancel()

    async def _emit(self, result):
        if self.is_gen:
            async for output in result:
                self.event(OUTPUT, output)
            return
        result = await result
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

    async def _one(self, item):
        try:
            if self.star_args:
                args, kwargs = item
                await self._emit(self.func(*args, **kwargs))
            else:
                await self._emit(self.func(item))
            self.event(DONE, None)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: B902 - the run's error, whatever it is
            self.event(ERROR, error)

    async def _join(self):
        try:
            await self._emit(self.func(_Upstream(self)))
            self.event(JOIN_DONE, None)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: B902
            self.event(ERROR, error)


def driver_factory(task, star_args, loop):
    """What the engine's worker of an async stage calls, with its `ring`, to get its
    driver."""
    def make(ring):
        return Driver(loop, task, star_args, ring)
    return make
