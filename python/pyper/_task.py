"""``task``: a function and its options, validated as Pyper validates them."""

from __future__ import annotations

import functools
import inspect
import pickle
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Dict,
    Iterable,
    Iterator,
    Literal,
    Optional,
    Protocol,
    Tuple,
    Union,
    overload,
)

from . import _engine, _remote
from ._timeout import timed
from ._typing import I, P, R

if TYPE_CHECKING:
    from ._pipeline import AsyncPipeline, Pipeline

# What `task.bind` returns: extra positional and keyword arguments.
Bind = Optional[Tuple[Tuple[Any, ...], Dict[str, Any]]]

# What `remote=` takes: a cluster, or its URL.
Remote = Union[_engine.Cluster, str, None]

# What `workers=` takes: a count, or "auto" (the run tunes the count, up to `AUTO_MAX`).
Workers = Union[int, Literal["auto"]]

# The most workers a task with `workers="auto"` may have: threads, all started with the
# run, those not needed parked.
AUTO_MAX = 64


def _is_gen(func: object) -> bool:
    call = getattr(func, "__call__", None)  # noqa: B004 - a callable object's method
    return (inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)
            or inspect.isgeneratorfunction(call) or inspect.isasyncgenfunction(call))


def _is_async(func: object) -> bool:
    call = getattr(func, "__call__", None)  # noqa: B004 - a callable object's method
    return (inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
            or inspect.iscoroutinefunction(call) or inspect.isasyncgenfunction(call))


def _check_auto(is_async: bool, join: bool, multiprocess: bool, remote: Remote) -> None:
    """Refuses `workers="auto"` where the engine cannot tune the count, saying why."""
    why = None
    if join:
        why = ("a join task: each worker receives a share of the stream, so workers cannot"
               " be parked and resumed")
    elif is_async:
        why = ("an async task: its workers are coroutines on the event loop, which cost"
               " next to nothing while they wait; give it as many as may wait at once")
    elif multiprocess:
        why = ("a multiprocess task: its workers are processes; for work that computes,"
               " give it one per core (os.cpu_count())")
    elif remote is not None:
        why = ("a remote task: its workers are processes on other hosts, and workers is"
               " how many items each runs at once")
    if why is not None:
        raise ValueError(f'workers="auto" does not apply to {why}: use workers=n')


class Task:
    """One function of a pipeline, with its options."""

    __slots__ = ("func", "branch", "join", "workers", "auto", "throttle", "multiprocess",
                 "is_async", "is_gen", "retries", "ordered", "timeout", "remote", "located")

    def __init__(self, func: Callable[..., Any], branch: bool = False, join: bool = False,
                 workers: Workers = 1, throttle: int = 0, multiprocess: bool = False,
                 bind: Bind = None, retries: int = 0, ordered: bool = False,
                 timeout: Optional[float] = None, remote: Remote = None):
        # `bool` is an `int` in Python, and Pyper accepts it too.
        self.auto = False
        if isinstance(workers, str):
            if workers != "auto":
                # A TypeError, as Pyper raises for any string (its suite checks `'1'`).
                raise TypeError(f'workers must be an integer or "auto", not {workers!r}')
            _check_auto(_is_async(func), join, multiprocess, remote)
            # A most: the engine starts them all, and tunes how many take input.
            self.auto, workers = True, AUTO_MAX
        elif not isinstance(workers, int):
            raise TypeError('workers must be an integer or "auto"')
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
        self.remote: Optional[_engine.Cluster] = None
        self.located: Optional[Tuple[str, str]] = None
        if remote is not None:
            if join or multiprocess or bind is not None:
                raise ValueError("a remote task cannot be a join or multiprocess task, nor"
                                 " take bind: its workers call the function on one item")
            self.located = _remote.locate(func)
            self.remote = _remote.cluster_of(remote)
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
        if ordered and join:
            raise ValueError("ordered applies to a task called once per item, not to a join:"
                             " a join receives the whole stream, so its outputs have no"
                             " inputs to keep the order of")
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise TypeError("timeout must be a number of seconds")
            if not timeout > 0:
                raise ValueError("timeout must be longer than zero")
            # A worker process is killed at its deadline; a remote worker times its calls.
            if remote is None and not multiprocess:
                self.func = timed(self.func, timeout, self.is_async, self.is_gen, branch,
                                   join)
        self.multiprocess = multiprocess
        self.retries = retries
        self.ordered = ordered
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<Task {self.func!r}>"


class _Decorator(Protocol):
    """What ``@task(...)`` returns: a decorator that makes a one-task pipeline."""

    @overload
    def __call__(self, func: Callable[P, Awaitable[R]], /) -> AsyncPipeline[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, R], /) -> Pipeline[P, R]: ...


class _BranchDecorator(Protocol):
    """What ``@task(branch=True, ...)`` returns."""

    @overload
    def __call__(self, func: Callable[P, AsyncIterable[R]], /) -> AsyncPipeline[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, Awaitable[Iterable[R]]], /) -> AsyncPipeline[P, R]:
        ...
    @overload
    def __call__(self, func: Callable[P, Iterable[R]], /) -> Pipeline[P, R]: ...


class _JoinDecorator(Protocol):
    """What ``@task(join=True, ...)`` returns."""

    @overload
    def __call__(self, func: Callable[[AsyncIterator[I]], Awaitable[R]], /
                 ) -> AsyncPipeline[[I], R]: ...
    @overload
    def __call__(self, func: Callable[[Iterator[I]], R], /) -> Pipeline[[I], R]: ...


class _TaskFactory:
    """Makes a one-task ``Pipeline`` of ``func``; without ``func``, a decorator.

    Args:
        func: the task's function (omitted when used as ``@task(...)``).
        branch: the function returns an iterable (a generator, say) whose every element
            is an output.
        join: the function receives an iterator over every input, not one input.
        workers: how many workers run the function at once; extension (not in Pyper):
            ``"auto"``, for a sync task on threads (not a join, async, multiprocess or
            remote task, nor the first task), lets the run tune the count from its
            throughput, up to 64 threads.
        throttle: the most outputs waiting for the next task (0: no limit).
        multiprocess: run the function in worker processes (it must be picklable). The
            processes are kept warm for the program's next stages and runs, and end with
            the program however it ends.
        bind: extra arguments, from ``task.bind(*args, **kwargs)``.
        retries: extension (not in Pyper): how many times a call that raised is made
            again (after 10 ms, doubling up to 1 s) before its exception stops the run.
            A ``branch`` call that has handed on an output is not made again.
        ordered: extension (not in Pyper): with several workers, outputs leave in the
            order of their inputs (each batch's outputs are collected, then released in
            turn; an async task's items are numbered as they start, the oldest one's
            outputs stream on as they come and the others' wait their turn). Not for
            ``join`` tasks, which receive the whole stream.
        timeout: extension (not in Pyper): seconds a call may take before it fails with
            ``TimeoutError`` (retried if ``retries`` allows). A coroutine is cancelled; a
            sync call runs on a thread of its own and is abandoned, and goes on until it
            returns. A sync ``branch`` function's iterable is consumed within the limit, and
            its outputs handed on once it has ended (an endless generator times out); an
            async generator's outputs are handed on as they come, and the limit covers it
            from its first step to its end. A ``join`` must end within ``timeout`` of its
            last input (from when its input iterator is exhausted; not before), handing on
            a generator's outputs as they come. A ``multiprocess`` task's worker process
            is killed at the deadline and replaced (its outputs are handed on as they come).
        remote: extension (not in Pyper): a `Cluster` (or its URL): the function runs on
            remote workers (``python -m pyper.worker URL``, on any host) that import it by
            module and name, with ``workers`` items at once in each worker process; items
            and outputs are pickled. ``timeout`` and ``retries`` apply in the worker. Not
            for ``join`` or ``multiprocess`` tasks, nor with ``bind``, nor for a function
            the workers cannot import (a lambda, a closure, one defined in the script).
    """

    # The overloads tell a type checker each stage's input and output: a function
    # `(P) -> R` makes a `Pipeline[P, R]`, a coroutine function an `AsyncPipeline`, a
    # `branch` function's iterable its elements, and a `join` function, which takes an
    # iterator of `I`, a stage whose input is `I`. With `bind`, the arguments are not
    # checked.

    @overload
    def __call__(self, func: Callable[[AsyncIterator[I]], AsyncIterable[R]], /, *,
                branch: Literal[True], join: Literal[True], workers: Workers = ...,
                throttle: int = ..., multiprocess: bool = ...,
                retries: int = ..., ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...
                ) -> AsyncPipeline[[I], R]: ...
    @overload
    def __call__(self, func: Callable[[AsyncIterator[I]], Awaitable[R]], /, *,
                branch: Literal[False] = ..., join: Literal[True], workers: Workers = ...,
                throttle: int = ..., multiprocess: bool = ...,
                retries: int = ..., ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...
                ) -> AsyncPipeline[[I], R]: ...
    @overload
    def __call__(self, func: Callable[[Iterator[I]], Iterable[R]], /, *,
                branch: Literal[True], join: Literal[True], workers: Workers = ...,
                throttle: int = ..., multiprocess: bool = ...,
                retries: int = ..., ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...
                ) -> Pipeline[[I], R]: ...
    @overload
    def __call__(self, func: Callable[[Iterator[I]], R], /, *,
                branch: Literal[False] = ..., join: Literal[True], workers: Workers = ...,
                throttle: int = ..., multiprocess: bool = ...,
                retries: int = ..., ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...
                ) -> Pipeline[[I], R]: ...
    @overload
    def __call__(self, func: Callable[P, AsyncIterable[R]], /, *, branch: Literal[True],
                join: Literal[False] = ..., workers: Workers = ..., throttle: int = ...,
                multiprocess: bool = ..., retries: int = ...,
                ordered: bool = ..., timeout: Optional[float] = ..., remote: Remote = ...
                ) -> AsyncPipeline[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, Awaitable[Iterable[R]]], /, *,
                branch: Literal[True], join: Literal[False] = ..., workers: Workers = ...,
                throttle: int = ..., multiprocess: bool = ...,
                retries: int = ..., ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...
                ) -> AsyncPipeline[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, Awaitable[R]], /, *, branch: Literal[False] = ...,
                join: Literal[False] = ..., workers: Workers = ..., throttle: int = ...,
                multiprocess: bool = ..., retries: int = ...,
                ordered: bool = ..., timeout: Optional[float] = ..., remote: Remote = ...
                ) -> AsyncPipeline[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, Iterable[R]], /, *, branch: Literal[True],
                join: Literal[False] = ..., workers: Workers = ..., throttle: int = ...,
                multiprocess: bool = ..., retries: int = ...,
                ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...) -> Pipeline[P, R]: ...
    @overload
    def __call__(self, func: Callable[P, R], /, *, branch: Literal[False] = ...,
                join: Literal[False] = ..., workers: Workers = ..., throttle: int = ...,
                multiprocess: bool = ..., retries: int = ...,
                ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...) -> Pipeline[P, R]: ...
    @overload
    def __call__(self, func: Callable[..., Union[Awaitable[Any], AsyncIterable[Any]]], /, *,
                branch: bool = ..., join: bool = ..., workers: Workers = ...,
                throttle: int = ..., multiprocess: bool = ..., bind: Bind,
                retries: int = ..., ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...
                ) -> AsyncPipeline[..., Any]: ...
    @overload
    def __call__(self, func: Callable[..., Any], /, *, branch: bool = ..., join: bool = ...,
                workers: Workers = ..., throttle: int = ..., multiprocess: bool = ...,
                bind: Bind, retries: int = ..., ordered: bool = ...,
                timeout: Optional[float] = ..., remote: Remote = ...) -> Pipeline[..., Any]: ...
    @overload
    def __call__(self, func: None = ..., /, *, branch: Literal[True], join: bool = ...,
                workers: Workers = ..., throttle: int = ..., multiprocess: bool = ...,
                bind: Bind = ..., retries: int = ..., ordered: bool = ...,
                timeout: Optional[float] = ..., remote: Remote = ...) -> _BranchDecorator: ...
    @overload
    def __call__(self, func: None = ..., /, *, branch: Literal[False] = ...,
                join: Literal[True], workers: Workers = ..., throttle: int = ...,
                multiprocess: bool = ..., bind: Bind = ..., retries: int = ...,
                ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...) -> _JoinDecorator: ...
    @overload
    def __call__(self, func: None = ..., /, *, branch: Literal[False] = ...,
                join: Literal[False] = ..., workers: Workers = ..., throttle: int = ...,
                multiprocess: bool = ..., bind: Bind = ..., retries: int = ...,
                ordered: bool = ..., timeout: Optional[float] = ...,
                remote: Remote = ...) -> _Decorator: ...

    def __call__(self, func: Optional[Callable[..., Any]] = None, /, *, branch: bool = False,
                join: bool = False, workers: Workers = 1, throttle: int = 0,
                multiprocess: bool = False, bind: Bind = None, retries: int = 0,
                ordered: bool = False, timeout: Optional[float] = None,
                remote: Remote = None) -> Any:
        from ._pipeline import Pipeline

        if func is None:
            return functools.partial(self, branch=branch, join=join, workers=workers,
                                     throttle=throttle, multiprocess=multiprocess, bind=bind,
                                     retries=retries, ordered=ordered, timeout=timeout,
                                     remote=remote)
        return Pipeline([Task(func=func, branch=branch, join=join, workers=workers,
                              throttle=throttle, multiprocess=multiprocess, bind=bind,
                              retries=retries, ordered=ordered, timeout=timeout,
                              remote=remote)])

    @staticmethod
    def bind(*args: Any, **kwargs: Any) -> Bind:
        """Extra arguments for a task: ``bind=task.bind(1, key=2)`` calls the function as
        ``f(1, item, key=2)``."""
        if not args and not kwargs:
            return None
        return args, kwargs

    def __repr__(self) -> str:
        return "pyper.task"


# `task` is an object, not a class as in Pyper, so that a type checker can read its
# overloads (a class's `__new__` must return the class); it is used the same way.
task = _TaskFactory()
