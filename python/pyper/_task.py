"""``task``: a function and its options, validated as Pyper validates them."""

from __future__ import annotations

import functools
import inspect
import pickle
from typing import Callable, Dict, Optional, Tuple


def _is_gen(func) -> bool:
    call = getattr(func, "__call__", None)
    return (inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)
            or inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call))


def _is_async(func) -> bool:
    call = getattr(func, "__call__", None)
    return (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
            or inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call))


class Task:
    """One function of a pipeline, with its options."""

    __slots__ = ("func", "branch", "join", "workers", "throttle", "multiprocess",
                 "is_async", "is_gen", "retries", "ordered")

    def __init__(self, func: Callable, branch: bool = False, join: bool = False,
                 workers: int = 1, throttle: int = 0, multiprocess: bool = False,
                 bind: Optional[Tuple[Tuple, Dict]] = None, retries: int = 0,
                 ordered: bool = False):
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
        self.multiprocess = multiprocess
        self.retries = retries
        self.ordered = ordered

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
    """

    def __new__(cls, func: Optional[Callable] = None, /, *, branch: bool = False,
                join: bool = False, workers: int = 1, throttle: int = 0,
                multiprocess: bool = False, bind=None, retries: int = 0,
                ordered: bool = False):
        from ._pipeline import Pipeline

        if func is None:
            return functools.partial(cls, branch=branch, join=join, workers=workers,
                                     throttle=throttle, multiprocess=multiprocess, bind=bind,
                                     retries=retries, ordered=ordered)
        return Pipeline([Task(func=func, branch=branch, join=join, workers=workers,
                              throttle=throttle, multiprocess=multiprocess, bind=bind,
                              retries=retries, ordered=ordered)])

    @staticmethod
    def bind(*args, **kwargs):
        """Extra arguments for a task: ``bind=task.bind(1, key=2)`` calls the function as
        ``f(1, item, key=2)``."""
        if not args and not kwargs:
            return None
        return args, kwargs
