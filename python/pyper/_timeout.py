"""`timeout=seconds` on a task: the wrappers that give a call, a generator or a join a
deadline (for tasks run in threads or as coroutines; a `multiprocess` task's worker
process is killed at its deadline instead, see `_process.py`)."""

from __future__ import annotations

import asyncio
import functools
import queue
import threading
import time
from typing import (
    Any,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    List,
    Optional,
    Tuple,
)

from ._typing import R

# What a timed call's side thread replies: an output (of a join generator), the call's
# return, its exception; and, from the caller's own side, the start of the deadline.
_OUTPUT, _RETURN, _RAISE, _START = range(4)


class _Watched:
    """A join's input, calling ``on_end`` once it is exhausted (when the deadline of a timed
    join starts)."""

    __slots__ = ("_inner", "_on_end")

    def __init__(self, inner: Iterable[Any], on_end: Callable[[], None]):
        self._inner = iter(inner)
        self._on_end = on_end

    def __iter__(self) -> _Watched:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._inner)
        except StopIteration:
            self._on_end()
            raise


class _AsyncWatched:
    """An async join's input, calling ``on_end`` once it is exhausted."""

    __slots__ = ("_inner", "_on_end")

    def __init__(self, inner: AsyncIterable[Any], on_end: Callable[[], None]):
        self._inner = inner.__aiter__()
        self._on_end = on_end

    def __aiter__(self) -> _AsyncWatched:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self._on_end()
            raise


class _Deadline:
    """The replies of a sync call running on a thread of its own, waited for until
    ``timeout`` after ``start()`` (called from any thread; before it, without a limit)."""

    __slots__ = ("_timeout", "_message", "_replies", "_deadline", "abandoned")

    def __init__(self, timeout: float, message: str):
        self._timeout = timeout
        self._message = message
        self._replies: queue.SimpleQueue[Tuple[int, Any]] = queue.SimpleQueue()
        self._deadline: Optional[float] = None
        # Set when the caller gives up: the thread takes no further element.
        self.abandoned = threading.Event()

    def start(self) -> None:
        self._replies.put((_START, None))

    def reply(self, kind: int, value: Any) -> None:
        self._replies.put((kind, value))

    def wait(self) -> Tuple[int, Any]:
        """The thread's next reply: ``(_OUTPUT, output)``, ``(_RETURN, value)`` or
        ``(_RAISE, exception)``; ``TimeoutError`` once the deadline has passed."""
        while True:
            try:
                if self._deadline is None:
                    kind, value = self._replies.get()
                else:
                    left = self._deadline - time.monotonic()
                    kind, value = self._replies.get(timeout=max(left, 0.0))
            except queue.Empty:
                self.abandoned.set()
                raise TimeoutError(self._message) from None
            if kind != _START:
                return kind, value
            if self._deadline is None:
                self._deadline = time.monotonic() + self._timeout


def _drain(iterable: Iterable[Any], abandoned: threading.Event) -> List[Any]:
    """Every element of ``iterable``, until the caller abandons the call (then the iterator
    is refused its next element, and closed)."""
    iterator = iter(iterable)
    outputs = []
    while not abandoned.is_set():
        try:
            outputs.append(next(iterator))
        except StopIteration:
            return outputs
    close = getattr(iterator, "close", None)
    if close is not None:
        close()
    return outputs


class _AsyncDeadline:
    """A deadline on the loop, ``timeout`` after ``start()``: the steps awaited ``within`` it
    are cancelled when it passes (before ``start()``, they are not limited)."""

    __slots__ = ("_timeout", "_message", "_loop", "_started", "_deadline")

    def __init__(self, timeout: float, message: str):
        self._timeout = timeout
        self._message = message
        self._loop = asyncio.get_running_loop()
        self._started: asyncio.Future[None] = self._loop.create_future()
        self._deadline = 0.0

    def start(self) -> None:
        if not self._started.done():
            self._deadline = self._loop.time() + self._timeout
            self._started.set_result(None)

    async def within(self, step: Awaitable[R]) -> R:
        """``await step``, cancelled and failing with ``TimeoutError`` at the deadline."""
        running: asyncio.Future[R] = asyncio.ensure_future(step)
        try:
            if not self._started.done():
                either: List[asyncio.Future[Any]] = [running, self._started]
                await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not running.done():
                left = self._deadline - self._loop.time()
                await asyncio.wait([running], timeout=max(left, 0.0))
            if not running.done():
                raise TimeoutError(self._message)
            return running.result()
        finally:
            if not running.done():
                running.cancel()
                # Nothing of the call outlives it.
                await asyncio.wait([running])


async def _step(generator: AsyncIterator[Any]) -> Tuple[bool, Any]:
    """The next element of ``generator``, as ``(True, element)``; ``(False, None)`` at its
    end."""
    try:
        return True, await generator.__anext__()
    except StopAsyncIteration:
        return False, None


def name_of(func: Callable[..., Any]) -> str:
    """The function's name, for messages (a task with `bind` is a partial)."""
    while isinstance(func, functools.partial):
        func = func.func
    return str(getattr(func, "__name__", repr(func)))


def overran(func: Callable[..., Any], timeout: float) -> str:
    """The message of a call of `func` that overran `timeout`."""
    return f"{name_of(func)} did not return within {timeout} s"


def timed(func: Callable[..., Any], timeout: float, is_async: bool, is_gen: bool,
           branch: bool, join: bool) -> Callable[..., Any]:
    """``func``, failing with ``TimeoutError`` when a call takes longer than ``timeout``.

    A coroutine (an async generator's step, an async join) is cancelled at the deadline.
    A sync call cannot be interrupted, so it runs on a thread of its own and is abandoned
    at the deadline (it goes on until it returns, as a Rust task's timed-out call does);
    that costs a thread start per call. A sync ``branch`` call's iterable is consumed on
    that thread, within the limit (an abandoned one is refused its next element).

    A join's limit starts when its input ends (the function exhausts the iterator it
    receives): it must finish within ``timeout`` of its last input. A sync join generator
    hands its outputs on as they come, as an async generator does.

    The wrapper has the shape the engine calls: an async generator function for an async
    generator one, a generator function for a sync join generator, a function returning
    the list of outputs for any other sync ``branch`` function.
    """
    name = name_of(func)
    message = overran(func, timeout)

    if is_async and is_gen:
        @functools.wraps(func)
        async def timed_generator(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            deadline = _AsyncDeadline(timeout, message)
            if join:
                args = (_AsyncWatched(args[0], deadline.start), *args[1:])
            else:
                deadline.start()
            generator = func(*args, **kwargs)
            try:
                while True:
                    more, output = await deadline.within(_step(generator))
                    if not more:
                        return
                    yield output
            finally:
                close = getattr(generator, "aclose", None)
                if close is not None:
                    await close()
        return timed_generator

    if is_async:
        @functools.wraps(func)
        async def timed_coroutine(*args: Any, **kwargs: Any) -> Any:
            deadline = _AsyncDeadline(timeout, message)
            if join:
                args = (_AsyncWatched(args[0], deadline.start), *args[1:])
            else:
                deadline.start()
            return await deadline.within(func(*args, **kwargs))
        return timed_coroutine

    def on_thread(target: Callable[[], None]) -> None:
        threading.Thread(target=target, name=f"pyper-timed:{name}", daemon=True).start()

    if join and branch:
        @functools.wraps(func)
        def timed_join_generator(upstream: Iterable[Any]) -> Iterator[Any]:
            deadline = _Deadline(timeout, message)
            # `True`: the next element; `False`: stop, and close the generator.
            asked: queue.SimpleQueue[bool] = queue.SimpleQueue()

            def steps() -> None:
                try:
                    iterator = iter(func(_Watched(upstream, deadline.start)))
                except BaseException as error:  # noqa: B902 - handed to the caller as is
                    deadline.reply(_RAISE, error)
                    return
                try:
                    while asked.get():
                        try:
                            deadline.reply(_OUTPUT, next(iterator))
                        except StopIteration:
                            deadline.reply(_RETURN, None)
                            return
                        except BaseException as error:  # noqa: B902
                            deadline.reply(_RAISE, error)
                            return
                finally:
                    close = getattr(iterator, "close", None)
                    if close is not None:
                        close()

            on_thread(steps)
            try:
                while True:
                    asked.put(True)
                    kind, value = deadline.wait()
                    if kind == _RETURN:
                        return
                    if kind == _RAISE:
                        raise value
                    yield value
            finally:
                asked.put(False)
        return timed_join_generator

    consume = branch

    @functools.wraps(func)
    def timed_call(*args: Any, **kwargs: Any) -> Any:
        deadline = _Deadline(timeout, message)
        if join:
            args = (_Watched(args[0], deadline.start), *args[1:])
        else:
            deadline.start()

        def call() -> None:
            try:
                result = func(*args, **kwargs)
                if consume:
                    result = _drain(result, deadline.abandoned)
                deadline.reply(_RETURN, result)
            except BaseException as error:  # noqa: B902 - handed to the caller as is
                deadline.reply(_RAISE, error)

        on_thread(call)
        kind, value = deadline.wait()
        if kind == _RAISE:
            raise value
        return value
    return timed_call
