"""Running a pipeline on the engine: the stages it is given, and the outputs it yields."""

from __future__ import annotations

import asyncio
import functools
import threading
from types import SimpleNamespace
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncGenerator,
    Dict,
    Generator,
    Generic,
    List,
    Optional,
    Sequence,
    Tuple,
)

from . import _engine, _timeout
from ._aio import driver_factory
from ._process import process_worker, stage_payload
from ._typing import R

if TYPE_CHECKING:
    from ._metrics import Metrics
    from ._task import Task

Args = Tuple[Any, ...]
Kwargs = Dict[str, Any]


def _name(func: Any) -> str:
    while isinstance(func, functools.partial):
        func = func.func
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    return str(name or type(func).__name__)


def _check_first(task: Task) -> None:
    if task.workers > 1:
        raise RuntimeError(
            f"The first task in a pipeline ({task.func}) cannot have more than 1 worker")
    if task.join:
        raise RuntimeError(
            f"The first task in a pipeline ({task.func}) cannot join previous results")


def _stages(tasks: Sequence[Task],
            loop: Optional[asyncio.AbstractEventLoop] = None) -> List[Any]:
    """The engine's description of each task."""
    stages: List[Any] = []
    for position, task in enumerate(tasks):
        first = position == 0
        func: Any = task.func
        workers, plain = task.workers, True
        driver = task.is_async and task.remote is None
        if driver:
            assert loop is not None, "an async task runs on a loop"
            # One engine worker feeds the stage's coroutines, `workers` at once.
            func, workers, plain = driver_factory(task, first, loop), 1, False
        per_worker = task.multiprocess
        if per_worker:
            payload = stage_payload(func, task.branch, first, task.timeout, task.throttle)
            overran = None if task.timeout is None else _timeout.overran(func, task.timeout)
            func, plain = functools.partial(process_worker, payload, _name(task.func),
                                            overran, task.retries, task.timeout), False
        stages.append(SimpleNamespace(
            function=func,
            name=_name(task.func),
            workers=workers,
            # `workers="auto"`: `workers` is a most, and the engine tunes the count.
            auto=task.auto,
            throttle=task.throttle,
            branch=task.branch and plain,
            join=task.join and plain,
            star_args=first and plain,
            per_worker=per_worker,
            retries=task.retries if plain else 0,
            driver=driver,
            ordered=task.ordered,
            concurrency=task.workers,
            remote=task.remote,
            module=task.located[0] if task.located else None,
            qualname=task.located[1] if task.located else None,
            # Applied by the engine to a remote task only (a local one's function is timed).
            timeout=task.timeout,
        ))
    return stages


def start(tasks: Sequence[Task], args: Args, kwargs: Kwargs) -> _engine.Run[Any]:
    """The engine's run of a `Pipeline` (`Pipeline.start`)."""
    _check_first(tasks[0])
    return _engine.Engine(_stages(tasks)).run((args, kwargs))


def outputs(tasks: Sequence[Task], args: Args, kwargs: Kwargs
            ) -> Generator[Any, None, None]:
    """The generator a `Pipeline` call returns."""
    run = start(tasks, args, kwargs)
    reader = threading.get_ident()
    try:
        # Not `yield from`: closing the generator would call `run.close()` on whichever
        # thread closes it, before the check below.
        for item in run:  # noqa: UP028
            yield item
    finally:
        if threading.get_ident() == reader:
            run.close()
        else:
            # Garbage collection finalizes an unclosed generator on whichever thread it
            # runs, which may be one the run's workers wait for (one of its own, or a
            # pool thread of a fork): waiting there could never end. The run is
            # cancelled, and its workers are waited for off this thread.
            run.cancel()


_END = object()


async def _read(run: _engine.Run[Any], loop: asyncio.AbstractEventLoop
                ) -> AsyncGenerator[Any, None]:
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


def _start_async(tasks: Sequence[Task], args: Args, kwargs: Kwargs
                 ) -> Tuple[_engine.Run[Any], asyncio.AbstractEventLoop]:
    _check_first(tasks[0])
    loop = asyncio.get_running_loop()
    return _engine.Engine(_stages(tasks, loop)).run((args, kwargs)), loop


async def async_outputs(tasks: Sequence[Task], args: Args, kwargs: Kwargs
                        ) -> AsyncGenerator[Any, None]:
    """The async generator an `AsyncPipeline` call returns."""
    run, loop = _start_async(tasks, args, kwargs)
    async for item in _read(run, loop):
        yield item


class AsyncRun(Generic[R]):
    """A run of an `AsyncPipeline` (`AsyncPipeline.start`): an async iterator of its
    outputs, with `report()` and `metrics()`. It starts on the first `__anext__` (or
    `async with`), on the running loop; `aclose()`, or leaving the block, ends it."""

    def __init__(self, tasks: Sequence[Task], args: Args, kwargs: Kwargs):
        _check_first(tasks[0])
        self._tasks, self._args, self._kwargs = tasks, args, kwargs
        self._run: Optional[_engine.Run[Any]] = None
        self._outputs: Optional[AsyncGenerator[Any, None]] = None

    def _started(self) -> AsyncGenerator[Any, None]:
        if self._outputs is None:
            self._run, loop = _start_async(self._tasks, self._args, self._kwargs)
            self._outputs = _read(self._run, loop)
        return self._outputs

    def __aiter__(self) -> AsyncRun[R]:
        return self

    async def __anext__(self) -> R:
        item: R = await self._started().__anext__()
        return item

    async def aclose(self) -> None:
        """Ends the run, if it is still going, and waits for its workers."""
        if self._outputs is not None:
            await self._outputs.aclose()

    async def __aenter__(self) -> AsyncRun[R]:
        self._started()
        return self

    async def __aexit__(self, *exception: object) -> None:
        await self.aclose()

    def report(self) -> str:
        """The engine's report of the run (see `Pipeline.start`); empty before it starts."""
        return "" if self._run is None else self._run.report()

    def metrics(self) -> Metrics:
        """The report's figures as plain data (see `Pipeline.start`)."""
        if self._run is None:
            raise RuntimeError("this run has not started: iterate it, or enter it, first")
        return self._run.metrics()
