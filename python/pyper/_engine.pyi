"""Types of `pyper._engine`, the compiled half of the package (`python/src/lib.rs`)."""

from __future__ import annotations

from typing import Any, Generic, Iterator, List, Optional, Protocol, TypeVar

from ._metrics import Metrics

_T = TypeVar("_T")

class _StageSpec(Protocol):
    """One stage, as `pyper/_run.py` describes it."""

    function: Any
    name: str
    workers: int
    auto: bool
    throttle: int
    branch: bool
    join: bool
    star_args: bool
    per_worker: bool
    retries: int
    driver: bool
    ordered: bool
    concurrency: int
    remote: Optional[Cluster]
    module: Optional[str]
    qualname: Optional[str]
    timeout: Optional[float]

class Cluster:
    """A NATS server with JetStream that remote tasks send their items through."""

    def __init__(self, url: str, *, user: Optional[str] = None,
                 password: Optional[str] = None, token: Optional[str] = None,
                 ack_wait: Optional[float] = None, max_deliver: Optional[int] = None,
                 lease: Optional[float] = None, no_worker_notice: Optional[float] = None,
                 fail_without_workers: Optional[float] = None) -> None: ...
    def run_streams(self) -> List[str]:
        """The streams of runs on the server now: none once every run has ended."""

class DeadLetter(RuntimeError):
    """An item of a remote task that went to the dead letters."""

class Engine:
    """A pipeline of Python stages, built once and run any number of times."""

    def __init__(self, stages: List[_StageSpec]) -> None: ...
    def run(self, input: Any, metrics: bool = True) -> Run[Any]:
        """Starts a run (lazily: on the first `next`) with one input: for the first
        stage, the pair `(args, kwargs)`."""

class Run(Generic[_T]):
    """The outputs of one run, an iterator; `report()` and `metrics()` describe it."""

    def __iter__(self) -> Iterator[_T]: ...
    def __next__(self) -> _T: ...
    def __enter__(self) -> Run[_T]: ...
    def __exit__(self, *exception: object) -> None: ...
    def next_or(self, default: _T) -> _T:
        """The next output, or `default` at the end."""
    def ready(self) -> List[_T]:
        """Every output already handed over, without waiting."""
    def close(self) -> None:
        """Cancels the run if it is still going, and waits for its workers."""
    def cancel(self) -> None:
        """Cancels the run at once, without waiting for anything."""
    def report(self) -> str:
        """The engine's report: each stage classified, the bottleneck, advice."""
    def metrics(self) -> Metrics:
        """The report's figures as plain data, live while the run goes on."""

def serve_worker(url: str) -> None:
    """Serves remote tasks from the server at `url`, for ever; raises why it cannot."""

def end_all_runs() -> None:
    """Cancels every run still going and waits for its workers (at exit)."""
