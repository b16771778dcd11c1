"""Pyper's API (``task``, ``Pipeline``, ``AsyncPipeline``) on the pyper Rust engine.

A drop-in for python-pyper 0.4.4: the same functions, options, operators and
exceptions, run by the engine's queues, worker threads and shutdown protocol. See the
repository's README ("Python") for what it adds: the first error in time, no thread cap,
prompt Ctrl-C and early close, ``Run.report()`` and ``Run.metrics()``. It is typed:
``Pipeline[P, R]`` is called with arguments ``P`` and outputs ``R``.
"""

import atexit as _atexit

from . import _engine
from ._fork import fork
from ._metrics import Metrics, StageMetrics
from ._pipeline import AsyncPipeline, Pipeline
from ._process import WorkerDied
from ._remote import RemoteError
from ._task import task

Cluster = _engine.Cluster
DeadLetter = _engine.DeadLetter

__all__ = ["task", "fork", "Pipeline", "AsyncPipeline", "WorkerDied", "Metrics", "StageMetrics",
           "Cluster", "DeadLetter", "RemoteError"]

# Every run still going is cancelled, and its workers waited for, before the interpreter
# finalizes: a worker thread must never find the interpreter gone.
_atexit.register(_engine.end_all_runs)
