"""``Pipeline`` and ``AsyncPipeline``: tasks composed with ``|``, consumed with ``>``.

Both are generic for type checkers: ``Pipeline[P, R]`` is called with the first task's
arguments ``P`` and outputs ``R``; ``p1 | p2`` checks that ``p2`` takes what ``p1``
outputs.
"""

from __future__ import annotations

import inspect
from typing import (
    TYPE_CHECKING,
    Any,
    AsyncGenerator,
    Awaitable,
    Callable,
    Generator,
    Generic,
    List,
    overload,
)

from ._task import Task
from ._typing import P, R, S

if TYPE_CHECKING:
    from ._engine import Run
    from ._run import AsyncRun


class Pipeline(Generic[P, R]):
    """A sequence of at least one task. ``p1 | p2`` (or ``p1.pipe(p2)``) composes, and
    ``p > consumer`` (or ``p.consume(consumer)``) hands the output to a consumer.
    Calling a pipeline starts a run and returns a generator of its outputs."""

    tasks: List[Task]

    def __new__(cls, tasks: List[Task]) -> Pipeline[P, R]:
        if any(task.is_async for task in tasks):
            instance: Pipeline[P, R] = object.__new__(AsyncPipeline)
        else:
            instance = object.__new__(cls)
        instance.__init__(tasks=tasks)  # type: ignore[misc] # __init__ runs once, here
        return instance

    def __init__(self, tasks: List[Task]):
        self.tasks = tasks

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Generator[R, None, None]:
        """Runs the pipeline: the arguments go to the first task; yields the outputs."""
        from ._run import outputs

        return outputs(self.tasks, args, kwargs)

    def start(self, *args: P.args, **kwargs: P.kwargs) -> Run[R]:
        """Extension (not in Pyper): starts a run and returns it, where a call returns a
        bare generator. The run is an iterator of the outputs, starts on the first
        ``next``, and has ``report()``: the engine's end-of-run report (each stage
        classified as CPU-bound, waiting, starved or blocked, the bottleneck, advice),
        live while it goes on, and ``metrics()``: its figures as plain data.
        ``close()``, or leaving a ``with`` block, ends it.

            with (task(get_data, branch=True) | task(work, workers=4)).start(100) as run:
                total = sum(run)
            print(run.report())
        """
        from ._run import start

        return start(self.tasks, args, kwargs)

    # The next pipeline must take what this one outputs; an async one makes it async.
    @overload
    def pipe(self, other: AsyncPipeline[[R], S]) -> AsyncPipeline[P, S]: ...
    @overload
    def pipe(self, other: Pipeline[[R], S]) -> Pipeline[P, S]: ...

    def pipe(self, other: Pipeline[Any, Any]) -> Pipeline[Any, Any]:
        """Connects two pipelines, returning a new one."""
        if not isinstance(other, Pipeline):
            raise TypeError(f"{other} of type {type(other)} cannot be piped into a Pipeline")
        return Pipeline(self.tasks + other.tasks)

    @overload
    def __or__(self, other: AsyncPipeline[[R], S]) -> AsyncPipeline[P, S]: ...
    @overload
    def __or__(self, other: Pipeline[[R], S]) -> Pipeline[P, S]: ...

    def __or__(self, other: Pipeline[Any, Any]) -> Pipeline[Any, Any]:
        return self.pipe(other)

    # A fork with an async task is async.
    @overload
    def __and__(self, other: AsyncPipeline[P, Any]) -> AsyncPipeline[P, List[Any]]: ...
    @overload
    def __and__(self, other: Pipeline[P, Any]) -> Pipeline[P, List[Any]]: ...

    def __and__(self, other: Pipeline[Any, Any]) -> Pipeline[Any, List[Any]]:
        """Extension (Pyper's unreleased ``&``): a fork of two tasks, one stage that
        calls both at once on each input and outputs ``[f(x), g(x)]``. See ``pyper.fork``
        for the fork's own options."""
        from ._fork import fork

        return fork(self, other)

    def consume(self, other: Callable[[Generator[R, None, None]], S]) -> Callable[P, S]:
        """A function that runs the pipeline and hands its output to ``other``."""
        if callable(other):
            def consumer(*args: P.args, **kwargs: P.kwargs) -> S:
                return other(self(*args, **kwargs))
            return consumer
        raise TypeError(f"{other} must be a callable that takes a generator")

    def __gt__(self, other: Callable[[Generator[R, None, None]], S]) -> Callable[P, S]:
        return self.consume(other)

    def __repr__(self) -> str:
        return f"<{self.__class__.__name__} {[task.func for task in self.tasks]}>"


# An AsyncPipeline is a Pipeline (Pyper's own tests check it), whose calls return async
# generators: its methods' types differ from Pipeline's, hence the `override` ignores.
class AsyncPipeline(Pipeline[P, R]):
    """A pipeline with at least one async task. Calling it returns an async generator;
    its async tasks run on the caller's event loop, its sync tasks on the engine's
    threads (or processes)."""

    def __call__(  # type: ignore[override]
        self, *args: P.args, **kwargs: P.kwargs
    ) -> AsyncGenerator[R, None]:
        from ._run import async_outputs

        return async_outputs(self.tasks, args, kwargs)

    def start(self, *args: P.args, **kwargs: P.kwargs) -> AsyncRun[R]:  # type: ignore[override]
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

    # What follows an async pipeline is async too.
    def pipe(self, other: Pipeline[[R], S]) -> AsyncPipeline[P, S]:
        """Connects two pipelines, returning a new one."""
        piped: AsyncPipeline[P, S] = super().pipe(other)  # type: ignore[assignment]
        return piped

    def __or__(self, other: Pipeline[[R], S]) -> AsyncPipeline[P, S]:
        return self.pipe(other)

    def __and__(self, other: Pipeline[P, Any]) -> AsyncPipeline[P, List[Any]]:
        piped: AsyncPipeline[P, List[Any]] = super().__and__(other)  # type: ignore[assignment]
        return piped

    def consume(  # type: ignore[override]
        self, other: Callable[[AsyncGenerator[R, None]], Awaitable[S]]
    ) -> Callable[P, Awaitable[S]]:
        """An async function that runs the pipeline and hands its output to ``other``."""
        method = getattr(other, "__call__", None)  # noqa: B004 - a callable object's method
        if callable(other) and (inspect.iscoroutinefunction(other)
                                or inspect.iscoroutinefunction(method)):
            async def consumer(*args: P.args, **kwargs: P.kwargs) -> S:
                return await other(self(*args, **kwargs))
            return consumer
        raise TypeError(f"{other} must be an async callable that takes an async generator")

    def __gt__(  # type: ignore[override]
        self, other: Callable[[AsyncGenerator[R, None]], Awaitable[S]]
    ) -> Callable[P, Awaitable[S]]:
        return self.consume(other)
