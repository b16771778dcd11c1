"""Fork/join: ``task(f) & task(g)`` calls ``f`` and ``g`` at once on each input and
outputs ``[f(x), g(x)]`` (as Pyper's unreleased ``ft-forking`` branch does).

The fork is one engine stage (a task whose function is a ``Fork``): the engine runs it
with the fork's ``workers``, so that many inputs are in flight, each with all its tasks
running. Inside one call the tasks run at once, each of its own kind: a sync task on a
thread of the fork's pool, an async task as a coroutine on the caller's loop (a sync task
in an async fork runs on the pool too), and a ``multiprocess`` task in a worker process
of the program's pool, taken for the call (a thread of the pool waits for it). The fork
is built here, in Python, over that one engine stage rather than as an engine stage kind:
the engine's Python stages call one Python callable per item, and calling a few more, at
once, is what Python's own thread pools and ``asyncio.wait`` do well; the concurrency is
the same.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

from . import _process
from ._task import Task
from ._timeout import name_of
from ._timeout import overran as overran_message

if TYPE_CHECKING:
    from ._pipeline import Pipeline

# The most threads a fork's pool starts (only as calls need them): enough for the
# fork's workers times its sync tasks in any sensible pipeline.
_POOL_THREADS = 256


def _name(task: Task) -> str:
    return name_of(task.func)


def _noted(error: BaseException, task: Task) -> BaseException:
    """``error``, noted with the task of the fork that raised it (Python 3.11+)."""
    add_note = getattr(error, "add_note", None)
    if add_note is not None:
        add_note(f"in task {_name(task)} of a fork")
    return error


def _call(task: Task, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    """One sync task on one input, with its retries."""
    if task.multiprocess:
        return _in_process(task, args, kwargs)
    attempt = 0
    while True:
        try:
            return task.func(*args, **kwargs)
        except Exception as error:
            attempt += 1
            if attempt > task.retries:
                raise _noted(error, task) from None
            time.sleep(_process.backoff(attempt))


@functools.lru_cache(maxsize=64)
def _in_process_payload(task: Task) -> bytes:
    """A ``multiprocess`` task's function, pickled once rather than for each input."""
    return _process.stage_payload(task.func, False, True, task.timeout, 0)


def _in_process(task: Task, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    """A ``multiprocess`` task on one input, in a worker process of the program's pool,
    which applies its ``timeout`` (killing the process) and ``retries``."""
    payload = _in_process_payload(task)
    overran = None if task.timeout is None else overran_message(task.func, task.timeout)
    try:
        return _process.call_once(payload, _name(task), overran, task.retries, task.timeout,
                                  args, kwargs)
    except Exception as error:
        raise _noted(error, task) from error.__cause__


async def _acall(task: Task, args: Tuple[Any, ...], kwargs: Dict[str, Any],
                 pool: ThreadPoolExecutor) -> Any:
    """One task of an async fork on one input, with its retries."""
    if not task.is_async:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(pool, lambda: _call(task, args, kwargs))
    attempt = 0
    while True:
        try:
            return await task.func(*args, **kwargs)
        except Exception as error:
            attempt += 1
            if attempt > task.retries:
                raise _noted(error, task) from None
            await asyncio.sleep(_process.backoff(attempt))


def _check(task: Task) -> None:
    if task.branch or task.join:
        raise ValueError("a branch or join task cannot be forked: each task of a fork"
                         " makes one output per input")
    if task.workers != 1 or task.throttle != 0 or task.ordered:
        raise ValueError("workers, throttle and ordered apply to the fork, not to a task"
                         " inside it: pyper.fork(..., workers=n)")


class Fork:
    """The function of a fork stage: calls every task on the same arguments at once and
    returns their outputs as a list, in the tasks' order. The first exception is raised
    as soon as it comes; the other calls of that input finish on their own, their results
    dropped."""

    def __init__(self, tasks: Sequence[Task]):
        self.tasks = list(tasks)
        self._pool: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    def pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(_POOL_THREADS, thread_name_prefix="pyper-fork")
            return self._pool

    def __call__(self, *args: Any, **kwargs: Any) -> List[Any]:
        pool = self.pool()
        calls: List[Future[Any]] = [pool.submit(_call, task, args, kwargs)
                                    for task in self.tasks]
        wait(calls, return_when=FIRST_EXCEPTION)
        for call in calls:
            error = call.exception() if call.done() else None
            if error is not None:
                for other in calls:
                    other.cancel()
                raise error
        return [call.result() for call in calls]

    def __reduce__(self) -> Tuple[Any, ...]:
        return (self.__class__, (self.tasks,))

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {[task.func for task in self.tasks]}>"


class AsyncFork(Fork):
    """A fork with an async task: its calls are coroutines on the caller's loop, its sync
    tasks run on the fork's pool. A failure cancels the other coroutines of that input."""

    async def __call__(self, *args: Any, **kwargs: Any) -> List[Any]:  # type: ignore[override]
        pool = self.pool()
        calls = [asyncio.ensure_future(_acall(task, args, kwargs, pool))
                 for task in self.tasks]
        try:
            await asyncio.wait(calls, return_when=asyncio.FIRST_EXCEPTION)
            for call in calls:
                error = call.exception() if call.done() and not call.cancelled() else None
                if error is not None:
                    raise error
            return [call.result() for call in calls]
        finally:
            pending = [call for call in calls if not call.done()]
            for call in pending:
                call.cancel()
            if pending:
                # Nothing of this input outlives its call.
                await asyncio.wait(pending)


def fork(*pipelines: Pipeline[Any, Any], workers: int = 1, throttle: int = 0,
         ordered: bool = False) -> Pipeline[Any, List[Any]]:
    """Extension (Pyper's unreleased ``&``): one stage that calls each one-task pipeline
    (``task(f)``) at once on every input and outputs their results as a list.

    ``task(f) & task(g)`` is ``fork(task(f), task(g))``; ``fork`` also takes the fork's
    own options: ``workers`` (how many inputs are in flight), ``throttle`` and ``ordered``.
    Each task keeps its kind (sync, async or ``multiprocess``), ``timeout`` and
    ``retries``; ``branch`` and ``join`` tasks cannot be forked, and ``workers``, ``throttle``
    and ``ordered`` go on the fork (each a ``ValueError``). A fork is async if any of its
    tasks is.
    """
    from ._pipeline import Pipeline

    tasks: List[Task] = []
    for pipeline in pipelines:
        if not isinstance(pipeline, Pipeline):
            raise TypeError(f"{pipeline} of type {type(pipeline)} cannot be forked"
                            " (expected a task)")
        if len(pipeline.tasks) != 1:
            raise ValueError("only a single task, not a pipeline of several, can be forked")
        only = pipeline.tasks[0]
        if isinstance(only.func, Fork) and (only.workers, only.throttle, only.ordered) == (
                1, 0, False):
            tasks.extend(only.func.tasks)  # `a & b & c` is one fork of three
            continue
        _check(only)
        tasks.append(only)
    if len(tasks) < 2:
        raise ValueError("a fork needs at least two tasks")
    func = AsyncFork(tasks) if any(task.is_async for task in tasks) else Fork(tasks)
    return Pipeline([Task(func, workers=workers, throttle=throttle, ordered=ordered)])
