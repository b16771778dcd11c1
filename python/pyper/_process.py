"""`multiprocess=True`: worker processes started with multiprocessing's forkserver context
(spawn where there is none): never a plain `fork`, as the process has Rust threads.

Each engine worker of the stage starts one process when it starts, sends it the function
once, then lists of items (pickled), and receives lists of outputs or the exception. A
process that dies is a `WorkerDied` error naming the stage."""

from __future__ import annotations

import multiprocessing
import pickle
import signal
import traceback
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import Any, Callable, List, Optional, Tuple


class WorkerDied(RuntimeError):
    """A worker process of a `multiprocess=True` task ended without answering (a crash,
    ``os._exit``, a signal)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process."""

    def __str__(self) -> str:
        return str(self.args[0])


def _call(func: Callable[..., Any], item: Any, branch: bool, star_args: bool) -> List[Any]:
    result = func(*item[0], **item[1]) if star_args else func(item)
    if not branch:
        return [result]
    if not isinstance(result, Iterable):
        raise TypeError(
            f"got object of type {type(result)} from branching task {func} which could not"
            " be iterated over. (the task should be a generator, or return an iterable)")
    return list(result)


def _serve(connection: Connection, payload: bytes) -> None:
    """A worker process's loop."""
    # Ctrl-C is the parent's to handle: it stops the run, which ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        func, branch, star_args = pickle.loads(payload)
        broken: Optional[bytes] = None
    except BaseException as error:  # noqa: B902 - e.g. a function this process cannot find
        broken = _failure(error)
    while True:
        try:
            items = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        if broken is not None:
            connection.send_bytes(broken)
            continue
        try:
            outputs: List[Any] = []
            for item in items:
                outputs.extend(_call(func, item, branch, star_args))
            answer = pickle.dumps((True, outputs))
        except BaseException as error:  # noqa: B902 - every failure goes to the parent
            answer = _failure(error)
        connection.send_bytes(answer)


def _failure(error: BaseException) -> bytes:
    """The answer that carries `error` (being handled) to the parent."""
    text = traceback.format_exc()
    try:
        return pickle.dumps((False, error, text))
    except Exception:
        return pickle.dumps((False, None, text))


def _context() -> Any:
    # The fork server is a fresh single-threaded process (started with exec), so forking
    # from it is safe; once it runs, a worker starts in milliseconds rather than the
    # hundred of a spawned interpreter.
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


class _Worker:
    def __init__(self, func: Callable[..., Any], branch: bool, star_args: bool, stage: str):
        context = _context()
        self._stage = stage
        self._connection, child = context.Pipe()
        payload = pickle.dumps((func, branch, star_args))
        self._process = context.Process(target=_serve, args=(child, payload), daemon=True,
                                        name=f"pyper:{stage}")
        self._process.start()
        child.close()
        # The engine reads the process's CPU time by its pid, for the stage's metrics.
        self.pid = self._process.pid

    def __call__(self, items: List[Any]) -> List[Any]:
        try:
            self._connection.send_bytes(pickle.dumps(items))
            answer = self._connection.recv_bytes()
        except (EOFError, OSError):
            self._process.join(timeout=1)
            raise WorkerDied(
                f"a worker process of stage {self._stage!r} died"
                f" (exit code {self._process.exitcode})") from None
        outcome: Tuple[Any, ...] = pickle.loads(answer)
        if outcome[0]:
            outputs: List[Any] = outcome[1]
            return outputs
        _, error, text = outcome
        if error is None:
            raise RuntimeError(f"a worker process of stage {self._stage!r} failed:\n{text}")
        raise error from RemoteTraceback(text)

    def close(self) -> None:
        self._connection.close()
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()


def process_worker(func: Callable[..., Any], branch: bool, star_args: bool, stage: str
                   ) -> _Worker:
    """Starts a worker process; returns the callable the engine's worker feeds it with."""
    return _Worker(func, branch, star_args, stage)
