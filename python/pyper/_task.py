"""``task``: a function and its options, validated as Pyper validates them."""

from __future__ import annotations

import asyncio
import functools
import inspect
import pickle
import threading
from typing import Callable, Dict, Optional, Tuple


def _is_gen(func) -> bool:
    call = getattr(func, "__call__", None)
    return (inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)
            or inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call))


def _is_async(func) -> bool:
    call = getattr(func, "__call__", None)
    return (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
            or inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call))


def _timed(func: Callable, timeout: float, is_async: bool) -> Callable:
    """``func``, failing with ``TimeoutError`` when a call takes longer than ``timeout``.

    A coroutine is cancelled at the deadline. A sync call cannot be interrupted, so it runs
    on a thread of its own and is abandoned at the deadline (it goes on until it returns,
    as a Rust task's timed-out call does); that costs a thread start per call.
    """
    name = getattr(func, "__name__", repr(func))
    message = f"{name} did not return within {timeout} s"

    if is_async:
        @functools.wraps(func)
        async def timed_coroutine(*args, **kwargs):
            try:
                return await asyncio.wait_for(func(*args, **kwargs), timeout)
            except asyncio.TimeoutError:
                raise TimeoutError(message) from None
        return timed_coroutine

    @functools.wraps(func)
    def timed_call(*args, **kwargs):
        outcome = {}
        done = threading.Event()

        def call():
            try:
                outcome["value"] = func(*args, **kwargs)
            except BaseException as error:  # noqa: B902 - handed to the caller as is
                outcome["error"] = error
            finally:
                done.set()

        threading.Thread(target=call, name=f"pyper-timed:{name}", daemon=True).start()
        if not done.wait(timeout):
            raise TimeoutError(message)
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
    return timed_call


class Task:
    """One function of a pipeline, with its options."""

    __slots__ = ("func", "branch", "join", "workers", "throttle", "multiprocess",
                 "is_async", "is_gen", "retries", "ordered", "timeout")

    def __init__(self, func: Callable, branch: bool = False, join: bool = False,
                 workers: int = 1, throttle: int = 0, multiprocess: bool = False,
                 bind: Optional[Tuple[Tuple, Dict]] = None, retries: int = 0,
                 ordered: bool = False, timeout: Optional[float] = None):
        # `bool` is an `int` in Python, and Pyper accepts it too.
        if not isinstance(workers, int):
            raise TypeError("workers must be an integer")
        if workers < 1:
            raise ValueError("workers cannot be less than 1")
        if not isinstance(throttle, int):
            raise TypeError("throttle must be an integer")
        if throttle < 0:
            raise ValueError("throttle cannot be less than 0")
        if not isinstance(retries, int):
            raise TypeError("retries must be an integer")
        if retries < 0:
            raise ValueError("retries cannot be less than 0")
        if not callable(func):
            raise TypeError("A task function must be a callable object")
        self.is_gen = _is_gen(func)
        self.is_async = _is_async(func)
        if multiprocess:
            if self.is_async:
                raise ValueError("multiprocess cannot be True for an async task")
            try:
                pickle.dumps(func)
            except (pickle.PicklingError, AttributeError, TypeError):
                raise RuntimeError(
                    f"{func} cannot be pickled and so cannot be multiprocessed"
                    " -- ensure that the function is globally accessible and that its"
                    " definition has not changed") from None
        self.func = func if bind is None else functools.partial(func, *bind[0], **bind[1])
        self.branch = branch
        self.join = join
        self.workers = workers
        self.throttle = throttle
        if ordered and (join or multiprocess or self.is_async):
            raise ValueError("ordered applies to a sync task called once per item in threads"
                             " (not to a join, multiprocess or async task)")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError("timeout must be a number of seconds")
            if not timeout > 0:
                raise ValueError("timeout must be longer than zero")
            if self.is_gen or join or multiprocess:
                raise ValueError("timeout applies to a function called once per item, in"
                                 " threads or as a coroutine (not to a generator, join or"
                                 " multiprocess task)")
            self.func = _timed(self.func, timeout, self.is_async)
        self.multiprocess = multiprocess
        self.retries = retries
        self.ordered = ordered
        self.timeout = timeout

    def __repr__(self):
        return f"<Task {self.func!r}>"


class task:
    """Makes a one-task ``Pipeline`` of ``func``; without ``func``, a decorator.

    Args:
        func: the task's function (omitted when used as ``@task(...)``).
        branch: the function returns an iterable (a generator, say) whose every element
            is an output.
        join: the function receives an iterator over every input, not one input.
        workers: how many workers run the function at once.
        throttle: the most outputs waiting for the next task (0: no limit).
        multiprocess: run the function in worker processes (it must be picklable).
        bind: extra arguments, from ``task.bind(*args, **kwargs)``.
        retries: extension (not in Pyper): how many times a call that raised is made
            again (after 10 ms, doubling up to 1 s) before its exception stops the run.
            Not for ``multiprocess`` tasks.
        ordered: extension (not in Pyper): with several workers, outputs leave in the
            order of their inputs (each batch's outputs are collected, then released in
            turn). Not for ``join``, ``multiprocess`` or async tasks.
        timeout: extension (not in Pyper): seconds a call may take before it fails with
            ``TimeoutError`` (retried if ``retries`` allows). A coroutine is cancelled; a
            sync call runs on a thread of its own and is abandoned, and goes on until it
            returns. Not for generators, ``join`` or ``multiprocess`` tasks.
    """

    def __new__(cls, func: Optional[Callable] = None, /, *, branch: bool = False,
                join: bool = False, workers: int = 1, throttle: int = 0,
                multiprocess: bool = False, bind=None, retries: int = 0,
                ordered: bool = False, timeout: Optional[float] = None):
        from ._pipeline import Pipeline

        if func is None:
            return functools.partial(cls, branch=branch, join=join, workers=workers,
                                     throttle=throttle, multiprocess=multiprocess, bind=bind,
                                     retries=retries, ordered=ordered, timeout=timeout)
        return Pipeline([Task(func=func, branch=branch, join=join, workers=workers,
                              throttle=throttle, multiprocess=multiprocess, bind=bind,
                              retries=retries, ordered=ordered, timeout=timeout)])

    @staticmethod
    def bind(*args, **kwargs):
        """Extra arguments for a task: ``bind=task.bind(1, key=2)`` calls the function as
        ``f(1, item, key=2)``."""
        if not args and not kwargs:
            return None
        return args, kwargs
