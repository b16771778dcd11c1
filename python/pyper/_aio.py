"""Async tasks in an `AsyncPipeline`: coroutines on the caller's event loop, called by
the engine's worker threads through a `Bridge`."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

# How often a worker waiting for a coroutine looks whether the run has stopped.
_POLL = 0.05


class _Stopped(Exception):
    """The run stopped, or its event loop closed, while a worker waited for a coroutine."""


class Bridge:
    """Runs coroutines on one event loop for threads that wait for their results."""

    def __init__(self, loop):
        self.loop = loop
        self._stopped = threading.Event()

    def stop(self):
        self._stopped.set()

    def wait(self, coroutine):
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        while True:
            try:
                return future.result(timeout=_POLL)
            except concurrent.futures.TimeoutError:
                if self._stopped.is_set() or self.loop.is_closed():
                    future.cancel()
                    raise _Stopped() from None


async def _anext(iterator):
    return await iterator.__anext__()


class _AsyncUpstream:
    """A join task's input as an async iterator: each wait for the next item happens on
    a thread of the loop's executor."""

    def __init__(self, upstream, loop):
        self._upstream = upstream
        self._loop = loop

    def __aiter__(self):
        return self

    async def __anext__(self):
        item = await self._loop.run_in_executor(None, next, self._upstream, _END)
        if item is _END:
            raise StopAsyncIteration
        return item


_END = object()


def bridged(func, task, bridge):
    """A sync function the engine's threads call for the async `func`."""
    if bridge is None:
        raise RuntimeError("an async task runs only in an AsyncPipeline")
    loop = bridge.loop

    def upstream(args):
        if not task.join:
            return args
        return (_AsyncUpstream(args[0], loop),) + tuple(args[1:])

    if task.is_gen:
        def generator(*args, **kwargs):
            agen = func(*upstream(args), **kwargs)
            while True:
                try:
                    yield bridge.wait(_anext(agen))
                except StopAsyncIteration:
                    return
        return generator

    def call(*args, **kwargs):
        return bridge.wait(func(*upstream(args), **kwargs))
    return call
