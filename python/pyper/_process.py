"""`multiprocess=True`: worker processes started with multiprocessing's forkserver context
(spawn where there is none): never a plain `fork`, as the process has Rust threads.

* **Warm processes.** Worker processes outlive a run: when a stage ends, its processes go
  back to a pool of idle ones, and the next stage (of this run or a later one) takes them
  and sends them its function. A program that runs pipelines in turn starts its
  processes once. The idle ones are stopped at exit.
* **Streaming.** Each engine worker of the stage holds one process, and sends it lists of
  items. The process answers as it goes: the outputs of an item that took a while, or of
  a `branch` generator's elements, leave at once, in chunks the parent acknowledges, so a
  generator runs at most [`AHEAD`] chunks ahead of what the pipeline has taken.
* **Options.** `timeout` kills the process at an item's deadline and starts a fresh one;
  `retries` calls a failed item again, in the parent's loop, after the engine's backoff.
* **Ending with the program.** Each process holds the read end of a pipe (the lifeline)
  whose only write end is the program's; a thread of the process waits on it and ends
  the process when it reads the end of the pipe, which happens however the program ends
  (SIGTERM, SIGKILL, a crash), even while the process is inside a long call. The fork
  server and the resource tracker end when their own pipes from the program close.

A process that dies is a `WorkerDied` error naming the stage."""

from __future__ import annotations

import atexit
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, Generator, List, Optional, Tuple

# How many answers a worker process sends ahead of the parent's acknowledgements.
AHEAD = 2
# An item (or a generator's element) that took this long has its outputs sent at once:
# it was slow, so the next may be too (the engine's thread workers hand over alike).
SLOW = 100e-6
# Outputs gathered for this long are sent.
HAND_OVER = 1e-3
# The most outputs in one answer.
CHUNK = 256
# How often, at most, a generator's process looks whether the parent has taken its last
# answer.
POLL = 100e-6


class WorkerDied(RuntimeError):
    """A worker process of a `multiprocess=True` task ended without answering (a crash,
    ``os._exit``, a signal)."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process."""

    def __str__(self) -> str:
        return str(self.args[0])


# ---------------------------------------------------------------- in the worker process


def _call(func: Callable[..., Any], item: Any, star_args: bool) -> Any:
    return func(*item[0], **item[1]) if star_args else func(item)


def _elements(func: Callable[..., Any], result: Any) -> Iterable[Any]:
    if not isinstance(result, Iterable):
        raise TypeError(
            f"got object of type {type(result)} from branching task {func} which could not"
            " be iterated over. (the task should be a generator, or return an iterable)")
    return result


def outputs_of(func: Callable[..., Any], item: Any, branch: bool, star_args: bool
               ) -> List[Any]:
    """One item's outputs, as a list (what a remote worker answers)."""
    result = _call(func, item, star_args)
    return list(_elements(func, result)) if branch else [result]


class _Conduit:
    """The worker process's end of its connection, during a batch: answers, and the
    acknowledgements that pace them."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.unacked = 0
        self.next_poll = 0.0

    def send(self, message: Tuple[Any, ...]) -> None:
        self.connection.send_bytes(pickle.dumps(message))

    def stream(self, outputs: List[Any], done: int) -> None:
        """Sends outputs mid-batch, once fewer than `AHEAD` answers await their ack."""
        while self.unacked >= AHEAD:
            self.receive_ack()
        self.send(("out", outputs, done, False))
        self.unacked += 1

    def idle(self) -> bool:
        """Whether the parent has taken every answer sent: then what is gathered goes at
        once, as the pipeline may be waiting for it. Acks are looked for at most every
        `POLL` (a system call)."""
        if self.unacked and time.perf_counter() >= self.next_poll:
            self.next_poll = time.perf_counter() + POLL
            while self.unacked and self.connection.poll(0):
                self.receive_ack()
        return self.unacked == 0

    def receive_ack(self) -> None:
        message = pickle.loads(self.connection.recv_bytes())
        if message[0] != "ack":
            raise RuntimeError(f"pyper worker process: unexpected message {message[0]!r}")
        self.unacked -= 1


class _Stage:
    """A stage's function, installed in a worker process."""

    def __init__(self, func: Callable[..., Any], branch: bool, star_args: bool,
                 each: bool, chunk: int):
        self.func, self.branch, self.star_args = func, branch, star_args
        # With a timeout, every finished item is reported at once: the parent times each.
        self.each = each
        self.chunk = chunk

    def run(self, items: List[Any], conduit: _Conduit) -> None:
        pending: List[Any] = []
        oldest = 0.0
        done = 0

        def gather(output: Any, took: float) -> None:
            nonlocal pending, oldest
            now = time.perf_counter()
            if not pending:
                oldest = now
            pending.append(output)
            if (took >= SLOW or len(pending) >= self.chunk or now - oldest >= HAND_OVER
                    or (self.branch and conduit.idle())):
                flush()

        def flush() -> None:
            nonlocal pending
            if pending:
                conduit.stream(pending, done)
                pending = []

        try:
            for item in items:
                started = time.perf_counter()
                result = _call(self.func, item, self.star_args)
                if not self.branch:
                    done += 1
                    gather(result, time.perf_counter() - started)
                else:
                    asked = started
                    for element in _elements(self.func, result):
                        gather(element, time.perf_counter() - asked)
                        asked = time.perf_counter()
                    done += 1
                    if time.perf_counter() - started >= SLOW:
                        flush()
                if self.each:
                    flush()
            conduit.send(("out", pending, done, True))
        except BaseException as error:  # noqa: B902 - every failure goes to the parent
            conduit.connection.send_bytes(_failure(error, pending, done))


def _failure(error: BaseException, pending: List[Any], done: int) -> bytes:
    """The answer that carries `error` (being handled) to the parent, with the outputs
    gathered before it."""
    text = traceback.format_exc()
    for answer in (("err", pending, done, error, text), ("err", [], done, error, text)):
        try:
            return pickle.dumps(answer)
        except Exception:  # noqa: S112 - the next answer carries less
            continue
    return pickle.dumps(("err", [], done, None, text))


def _watch(lifeline: Connection) -> None:
    """Ends this process when the program that started it has ended."""
    def wait() -> None:
        try:
            lifeline.recv_bytes()
        except (EOFError, OSError):
            pass
        os._exit(1)

    threading.Thread(target=wait, name="pyper-lifeline", daemon=True).start()


def _serve(connection: Connection, lifeline: Connection) -> None:
    """A worker process's loop: a stage's function, then batches of its items."""
    # Ctrl-C is the parent's to handle: it stops the run, which ends this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _watch(lifeline)
    conduit = _Conduit(connection)
    stage: Optional[_Stage] = None
    broken: Optional[bytes] = None
    while True:
        try:
            message = pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return
        if message[0] == "ack":
            conduit.unacked -= 1
        elif message[0] == "task":
            stage, broken = None, None
            try:
                stage = _Stage(*pickle.loads(message[1]))
            except BaseException as error:  # noqa: B902 - e.g. a function not found here
                broken = _failure(error, [], 0)
        elif message[0] == "items":
            if stage is not None:
                stage.run(message[1], conduit)
            else:
                connection.send_bytes(broken or _failure(RuntimeError("no function"), [], 0))


# ---------------------------------------------------------------- in the program


def _context() -> Any:
    # The fork server is a fresh single-threaded process (started with exec), so forking
    # from it is safe; once it runs, a worker starts in milliseconds rather than the
    # hundred of a spawned interpreter.
    if "forkserver" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("forkserver")
    return multiprocessing.get_context("spawn")


_lifeline: Optional[Tuple[int, Connection, Connection]] = None
_lifeline_lock = threading.Lock()


def _lifeline_end() -> Connection:
    """The read end of this program's lifeline (made once per process)."""
    global _lifeline
    with _lifeline_lock:
        if _lifeline is None or _lifeline[0] != os.getpid():
            read_end, write_end = _context().Pipe(duplex=False)
            _lifeline = (os.getpid(), read_end, write_end)
        return _lifeline[1]


class _Process:
    """One worker process, which serves stage after stage."""

    def __init__(self) -> None:
        context = _context()
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, _lifeline_end()),
                                       daemon=True, name="pyper-worker")
        self.process.start()
        child.close()
        self.pid: int = self.process.pid or 0

    def send(self, message: Tuple[Any, ...]) -> None:
        self.connection.send_bytes(pickle.dumps(message))

    def stop(self) -> None:
        """Asks the process to end (its input ends), and waits for it."""
        self.connection.close()
        self.process.join(timeout=5)
        self.kill()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.connection.close()


class _Pool:
    """The program's idle worker processes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.idle: List[_Process] = []
        self.closed = False

    def take(self) -> _Process:
        while True:
            with self.lock:
                process = self.idle.pop() if self.idle else None
            if process is None:
                return _Process()
            if process.process.is_alive():
                return process
            process.kill()

    def give_back(self, process: _Process) -> None:
        with self.lock:
            if not self.closed and len(self.idle) < max(4, os.cpu_count() or 1):
                self.idle.append(process)
                return
        process.stop()

    def close(self) -> None:
        with self.lock:
            self.closed = True
            idle, self.idle = self.idle, []
        for process in idle:
            process.connection.close()
        for process in idle:
            process.stop()


_pool = _Pool()
atexit.register(_pool.close)


def backoff(attempt: int) -> float:
    """The engine's wait before retry `attempt` (from 1): 10 ms, doubling up to 1 s (also
    a fork's, `_fork.py`)."""
    return float(min(0.01 * 2 ** (attempt - 1), 1.0))


# (items done before it, the error, whether the failed item had produced outputs)
Failure = Tuple[int, BaseException, bool]


class _Worker:
    """An engine worker's process, fed lists of items; yields lists of outputs."""

    def __init__(self, payload: bytes, stage: str, overran: Optional[str], retries: int,
                 timeout: Optional[float]):
        self._payload, self._stage, self._overran = payload, stage, overran
        self._timeout, self._retries = timeout, retries
        # Set while a batch is in the process: a worker stopped then is not reused.
        self._busy = False
        # Set when the run stops (`cancel`, from another thread).
        self._cancelled = False
        # Taken when the stage starts, so that items find it ready; after a timeout or a
        # death, the next batch takes another.
        self._process: Optional[_Process] = self._started()
        self._pid = self._process.pid

    @property
    def pid(self) -> int:
        """The process's pid: the engine reads its CPU time for the metrics."""
        return self._pid

    def _started(self) -> _Process:
        process = _pool.take()
        try:
            process.send(("task", self._payload))
        except OSError:
            process.kill()
            process = _Process()
            process.send(("task", self._payload))
        return process

    def _discard(self) -> None:
        if self._process is not None:
            self._process.kill()
        self._busy, self._process = False, None

    def __call__(self, items: List[Any]) -> Generator[List[Any], None, None]:
        """The outputs of `items`, list by list as the process sends them."""
        position, attempts = 0, 0
        while position < len(items):
            failure = yield from self._batch(items[position:] if position else items)
            if failure is None:
                return
            done, error, produced = failure
            if done:
                attempts = 0
            position += done
            if attempts >= self._retries or produced or self._cancelled:
                raise error
            attempts += 1
            time.sleep(backoff(attempts))

    def _batch(self, items: List[Any]) -> Generator[List[Any], None, Optional[Failure]]:
        if self._process is None:
            self._process = self._started()
            self._pid = self._process.pid
        self._busy = True
        try:
            self._process.send(("items", items))
        except OSError:
            return 0, self._died(), False
        done, produced = 0, False
        deadline = self._deadline()
        while True:
            answer = self._receive(deadline)
            if isinstance(answer, BaseException):
                return done, answer, produced
            kind, outputs, now_done, *rest = answer
            produced = produced or (bool(outputs) and now_done == done)
            if now_done != done:
                done, produced, deadline = now_done, False, self._deadline()
            if outputs:
                yield outputs
            if kind == "err":
                self._busy = False
                error, text = rest
                return done, _raised(error, text, self._stage), produced
            if rest[0]:  # the batch's end
                self._busy = False
                return None
            assert self._process is not None
            try:
                self._process.send(("ack",))
            except OSError:
                return done, self._died(), produced

    def _deadline(self) -> Optional[float]:
        return None if self._timeout is None else time.monotonic() + self._timeout

    def _receive(self, deadline: Optional[float]) -> Any:
        """The next answer; or, the error: the item overran its deadline (the process is
        killed and replaced), or the process died."""
        assert self._process is not None
        connection = self._process.connection
        try:
            if deadline is not None and not connection.poll(
                    max(0.0, deadline - time.monotonic())):
                self._discard()
                return TimeoutError(self._overran)
            return pickle.loads(connection.recv_bytes())
        except (EOFError, OSError):
            return self._died()

    def _died(self) -> WorkerDied:
        assert self._process is not None
        process = self._process.process
        process.join(timeout=1)
        error = WorkerDied(f"a worker process of stage {self._stage!r} died"
                           f" (exit code {process.exitcode})")
        self._discard()
        return error

    def cancel(self) -> None:
        """The run stopped (the engine calls this from whichever thread stops it): a
        process in the middle of a batch is killed, so that the engine's worker waiting
        for its answer is free at once (it then finds the process gone)."""
        self._cancelled = True
        process = self._process
        if process is not None and self._busy:
            process.process.kill()

    def close(self) -> None:
        """Gives the process back to the pool; one stopped mid-batch is killed."""
        if self._busy:
            self._discard()
        elif self._process is not None:
            _pool.give_back(self._process)
            self._process = None


def _raised(error: Optional[BaseException], text: str, stage: str) -> BaseException:
    if error is None:
        return RuntimeError(f"a worker process of stage {stage!r} failed:\n{text}")
    error.__cause__ = RemoteTraceback(text)
    return error


def process_worker(payload: bytes, stage: str, overran: Optional[str], retries: int,
                   timeout: Optional[float]) -> _Worker:
    """Takes a worker process (a warm one if there is one) and installs the stage's
    function; returns the callable the engine's worker feeds it with. `overran` is the
    message of a call that overran `timeout`."""
    return _Worker(payload, stage, overran, retries, timeout)


def call_once(payload: bytes, stage: str, overran: Optional[str], retries: int,
              timeout: Optional[float], args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Any:
    """One call in a worker process, whose one output it returns: a `multiprocess` task
    inside a fork. The process is taken from the pool, and goes back to it."""
    worker = _Worker(payload, stage, overran, retries, timeout)
    try:
        outputs = [output for chunk in worker([(args, kwargs)]) for output in chunk]
    finally:
        worker.close()
    return outputs[0]


def stage_payload(func: Callable[..., Any], branch: bool, star_args: bool,
                  timeout: Optional[float], throttle: int) -> bytes:
    """The stage's function and how to call it, pickled once for all its processes."""
    chunk = min(throttle, CHUNK) if throttle else CHUNK
    return pickle.dumps((func, branch, star_args, timeout is not None, chunk))
