"""Remote tasks, the Python half: ``task(f, remote=cluster)`` runs ``f`` on worker processes
on any host (``python -m pyper.worker URL``), through the engine's remote stage kind and a
NATS server with JetStream. The engine moves the items; this module finds the function
(by module and qualified name, as multiprocessing's spawn does), and, in a worker, calls
it on one pickled item and pickles what comes of it.

A pickle runs code when it is loaded: whoever can publish to the server can run code on
the workers. Require credentials on the server (README, "Remote tasks").
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import pickle
import traceback
from typing import Any, Callable, List, Tuple, Union

from . import _engine
from ._process import RemoteTraceback, outputs_of

Cluster = _engine.Cluster


class RemoteError(RuntimeError):
    """An exception raised by a remote task's function that could not be pickled: its
    type and message, and the worker's traceback."""

    def __init__(self, message: str, traceback_text: str):
        # Both in `args`, so that it pickles.
        super().__init__(message, traceback_text)
        self.traceback = traceback_text

    def __str__(self) -> str:
        return f"{self.args[0]}\n\nThe worker's traceback:\n{self.traceback}"


def cluster_of(remote: Union[_engine.Cluster, str]) -> _engine.Cluster:
    """A task's ``remote=``: a `Cluster`, or the URL of one."""
    if isinstance(remote, _engine.Cluster):
        return remote
    if isinstance(remote, str):
        return _engine.Cluster(remote)
    raise TypeError(f"remote must be a Cluster or a URL, not {type(remote).__name__}")


def locate(func: Callable[..., Any]) -> Tuple[str, str]:
    """Where workers import ``func`` from: its module and qualified name. A function
    they could not import (a lambda, a closure, one defined in a script run as
    ``__main__``, a bound method or a partial) is refused, with how to fix it."""
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        raise ValueError(f"{func!r} has no module and name to import it by: a remote task"
                         " takes a function defined at the top level of a module")
    fix = ("define it at the top level of a module that the workers can import (a file"
           " beside the script, or an installed package), and import it from there")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise ValueError(f"{module}.{qualname} is a lambda or a function defined inside"
                         f" another: remote workers cannot import it; {fix}")
    if module == "__main__":
        raise ValueError(f"{qualname} is defined in the script being run (`__main__`):"
                         f" remote workers cannot import it; {fix}")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    if found is not func:
        raise ValueError(f"{func!r} is not what {module}.{qualname} names: remote workers"
                         f" would import another object; {fix}")
    return module, qualname


def dumps(value: Any) -> bytes:
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def loads(payload: bytes) -> Any:
    return pickle.loads(payload)


def _run_to_end(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` as a plain function: an async one's call is run to its end on a loop of its
    own (an async generator's gathered into a list), so that it is called as any other."""
    if inspect.isasyncgenfunction(func):
        async def gather(*args: Any, **kwargs: Any) -> List[Any]:
            return [output async for output in func(*args, **kwargs)]
        return lambda *args, **kwargs: asyncio.run(gather(*args, **kwargs))
    if inspect.iscoroutinefunction(func):
        return lambda *args, **kwargs: asyncio.run(func(*args, **kwargs))
    return func


def load(module: str, qualname: str, branch: bool, star_args: bool
         ) -> Callable[[bytes], Tuple[bool, bytes, str]]:
    """In a worker: imports the function, and gives its call on one pickled item, which
    answers ``(True, pickled outputs, "")`` or ``(False, pickled exception, message)``."""
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    func = _run_to_end(found)

    def serve(payload: bytes) -> Tuple[bool, bytes, str]:
        try:
            outputs = outputs_of(func, pickle.loads(payload), branch, star_args)
            return True, dumps(outputs), ""
        except BaseException as error:  # noqa: B902 - every failure goes to the program
            text = traceback.format_exc()
            message = f"{type(error).__name__}: {error}"
            try:
                exception = dumps((error, text))
            except Exception:
                exception = dumps((RemoteError(message, text), text))
            return False, exception, message

    return serve


def raised(payload: bytes) -> BaseException:
    """In the program: the exception a worker raised, with its traceback as the cause."""
    error, text = pickle.loads(payload)
    exception: BaseException = (error if isinstance(error, BaseException)
                                else RemoteError(repr(error), text))
    exception.__cause__ = RemoteTraceback(text)
    return exception
