"""``Pipeline`` and ``AsyncPipeline``: tasks composed with ``|``, consumed with ``>``."""

from __future__ import annotations

import inspect
from typing import Callable, List

from ._task import Task


class Pipeline:
    """A sequence of at least one task. ``p1 | p2`` (or ``p1.pipe(p2)``) composes, and
    ``p > consumer`` (or ``p.consume(consumer)``) hands the output to a consumer.
    Calling a pipeline starts a run and returns a generator of its outputs."""

    def __new__(cls, tasks: List[Task]):
        if any(task.is_async for task in tasks):
            instance = object.__new__(AsyncPipeline)
        else:
            instance = object.__new__(cls)
        instance.__init__(tasks=tasks)
        return instance

    def __init__(self, tasks: List[Task]):
        self.tasks = tasks

    def __call__(self, *args, **kwargs):
        """Runs the pipeline: the arguments go to the first task; yields the outputs."""
        from ._run import outputs

        return outputs(self.tasks, args, kwargs)

    def start(self, *args, **kwargs):
        """Extension (not in Pyper): starts a run and returns it, where a call returns a
        bare generator. The run is an iterator of the outputs, starts on the first
        ``next``, and has ``report()``: the engine's end-of-run report (each stage
        classified as CPU-bound, waiting, starved or blocked, the bottleneck, advice),
        live while it goes on. ``close()``, or leaving a ``with`` block, ends it.

            with (task(get_data, branch=True) | task(work, workers=4)).start(100) as run:
                total = sum(run)
            print(run.report())
        """
        from ._run import start

        return start(self.tasks, args, kwargs)

    def pipe(self, other: "Pipeline") -> "Pipeline":
        """Connects two pipelines, returning a new one."""
        if not isinstance(other, Pipeline):
            raise TypeError(f"{other} of type {type(other)} cannot be piped into a Pipeline")
        return Pipeline(self.tasks + other.tasks)

    def __or__(self, other: "Pipeline") -> "Pipeline":
        return self.pipe(other)

    def consume(self, other: Callable):
        """A function that runs the pipeline and hands its output to ``other``."""
        if callable(other):
            def consumer(*args, **kwargs):
                return other(self(*args, **kwargs))
            return consumer
        raise TypeError(f"{other} must be a callable that takes a generator")

    def __gt__(self, other: Callable):
        return self.consume(other)

    def __repr__(self):
        return f"<{self.__class__.__name__} {[task.func for task in self.tasks]}>"


class AsyncPipeline(Pipeline):
    """A pipeline with at least one async task. Calling it returns an async generator;
    its async tasks run on the caller's event loop, its sync tasks on the engine's
    threads (or processes)."""

    def __call__(self, *args, **kwargs):
        from ._run import async_outputs

        return async_outputs(self.tasks, args, kwargs)

    def start(self, *args, **kwargs):
        """Extension (not in Pyper): starts a run and returns it, where a call returns a
        bare async generator: an async iterator of the outputs with ``report()`` and
        ``metrics()``, as ``Pipeline.start``'s run has. It starts on the first
        ``__anext__``; ``aclose()``, or leaving an ``async with`` block, ends it.

            async with pipeline.start(100) as run:
                async for output in run:
                    ...
            print(run.report())
        """
        from ._run import AsyncRun

        return AsyncRun(self.tasks, args, kwargs)

    def consume(self, other: Callable):
        """An async function that runs the pipeline and hands its output to ``other``."""
        if callable(other) and (inspect.iscoroutinefunction(other)
                                or inspect.iscoroutinefunction(getattr(other, "__call__", None))):
            async def consumer(*args, **kwargs):
                return await other(self(*args, **kwargs))
            return consumer
        raise TypeError(f"{other} must be an async callable that takes an async generator")
