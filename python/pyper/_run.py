"""Running a pipeline on the engine: the stages it is given, and the outputs it yields."""

from __future__ import annotations

import asyncio
import functools
from types import SimpleNamespace

from . import _engine
from ._aio import driver_factory
from ._process import process_worker


def _name(func) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) \
        or type(func).__name__


def _check_first(task):
    if task.workers > 1:
        raise RuntimeError(f"The first task in a pipeline ({task.func}) cannot have more than 1 worker")
    if task.join:
        raise RuntimeError(f"The first task in a pipeline ({task.func}) cannot join previous results")


def _stages(tasks, loop=None):
    """The engine's description of each task."""
    stages = []
    for position, task in enumerate(tasks):
        first = position == 0
        func, workers, plain = task.func, task.workers, True
        driver = task.is_async
        if driver:
            # One engine worker feeds the stage's coroutines, `workers` at once.
            func, workers, plain = driver_factory(task, first, loop), 1, False
        per_worker = task.multiprocess
        if per_worker:
            func, plain = functools.partial(process_worker, func, task.branch, first,
                                            _name(task.func)), False
        stages.append(SimpleNamespace(
            function=func,
            name=_name(task.func),
            workers=workers,
            throttle=task.throttle,
            branch=task.branch and plain,
            join=task.join and plain,
            star_args=first and plain,
            per_worker=per_worker,
            retries=task.retries if plain else 0,
            driver=driver,
            ordered=task.ordered,
            concurrency=task.workers,
        ))
    return stages


def start(tasks, args, kwargs):
    """The engine's run of a `Pipeline` (`Pipeline.start`)."""
    _check_first(tasks[0])
    return _engine.Engine(_stages(tasks)).run((args, kwargs))


def outputs(tasks, args, kwargs):
    """The generator a `Pipeline` call returns."""
    run = start(tasks, args, kwargs)
    try:
        yield from run
    finally:
        run.close()


_END = object()


async def _read(run, loop):
    """The outputs of an async run, read without blocking the loop."""
    try:
        while True:
            for item in run.ready():
                yield item
            # Waits on a thread of the loop's executor: the loop goes on running the
            # pipeline's async tasks meanwhile.
            item = await loop.run_in_executor(None, run.next_or, _END)
            if item is _END:
                return
            yield item
    finally:
        # A wait for the next output may still be under way on an executor thread (this
        # generator was cancelled while it awaited it): the cancel ends it.
        run.cancel()
        # Detached from the loop too: the run's workers may be waiting for it.
        await loop.run_in_executor(None, run.close)


def _start_async(tasks, args, kwargs):
    _check_first(tasks[0])
    loop = asyncio.get_running_loop()
    return _engine.Engine(_stages(tasks, loop)).run((args, kwargs)), loop


async def async_outputs(tasks, args, kwargs):
    """The async generator an `AsyncPipeline` call returns."""
    run, loop = _start_async(tasks, args, kwargs)
    async for item in _read(run, loop):
        yield item


class AsyncRun:
    """A run of an `AsyncPipeline` (`AsyncPipeline.start`): an async iterator of its
    outputs, with `report()` and `metrics()`. It starts on the first `__anext__` (or
    `async with`), on the running loop; `aclose()`, or leaving the block, ends it."""

    def __init__(self, tasks, args, kwargs):
        _check_first(tasks[0])
        self._tasks, self._args, self._kwargs = tasks, args, kwargs
        self._run = None
        self._outputs = None

    def _started(self):
        if self._outputs is None:
            self._run, loop = _start_async(self._tasks, self._args, self._kwargs)
            self._outputs = _read(self._run, loop)
        return self._outputs

    def __aiter__(self):
        return self

    async def __anext__(self):
        return await self._started().__anext__()

    async def aclose(self):
        """Ends the run, if it is still going, and waits for its workers."""
        if self._outputs is not None:
            await self._outputs.aclose()

    async def __aenter__(self):
        self._started()
        return self

    async def __aexit__(self, *exception):
        await self.aclose()

    def report(self):
        """The engine's report of the run (see `Pipeline.start`); empty before it starts."""
        return "" if self._run is None else self._run.report()

    def metrics(self):
        """The report's figures as plain data (see `Pipeline.start`); `None` before the
        run starts."""
        return None if self._run is None else self._run.metrics()
