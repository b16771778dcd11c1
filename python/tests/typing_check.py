"""What a type checker infers from the package's generics: checked by mypy (strict) in
scripts/test-python.sh, never run.

`assert_type` fails the check if the inferred type differs. The lines marked
`# type: ignore[...]` must fail: mypy's `warn_unused_ignores` (part of strict) reports an
ignore that is not needed, so a mistake that stopped being caught fails the check too.
"""

from __future__ import annotations

from typing import Any, AsyncGenerator, AsyncIterator, Awaitable, Generator, Iterator

from typing_extensions import assert_type

from pyper import AsyncPipeline, Pipeline, fork, task
from pyper._engine import Run
from pyper._metrics import Metrics
from pyper._run import AsyncRun


def numbers(limit: int) -> Iterator[int]:
    yield from range(limit)


def parse(line: int) -> str:
    return str(line)


def size(text: str) -> float:
    return float(len(text))


async def fetch(text: str) -> bytes:
    return text.encode()


def total(sizes: Iterator[float]) -> float:
    return sum(sizes)


def pairs(text: str) -> list[tuple[str, int]]:
    return [(text, 1)]


# One task: input from the function's parameters, output from its return type. (A
# pipeline's parameters keep their names, so pipelines are checked by assignment, and
# what they output exactly.)
one: Pipeline[[int], str] = task(parse)
assert_type(next(task(parse)(1)), str)
# A branch task outputs the elements of what it returns.
branched: Pipeline[[int], int] = task(numbers, branch=True)
assert_type(next(task(pairs, branch=True)("a")), tuple[str, int])
# A coroutine function makes an AsyncPipeline.
fetched: AsyncPipeline[[str], bytes] = task(fetch)
# A join task takes an iterator of its inputs: its stage's input is one of them.
assert_type(task(total, join=True), Pipeline[[float], float])

# Piping: the first task's arguments, the last task's output.
pipeline = task(numbers, branch=True) | task(parse, workers=4) | task(size)
piped: Pipeline[[int], float] = pipeline
assert_type(pipeline(10), Generator[float, None, None])
assert_type(pipeline.start(10), Run[float])
# An async task anywhere makes the pipeline async.
mixed = task(numbers, branch=True) | task(parse) | task(fetch)
mixed_piped: AsyncPipeline[[int], bytes] = mixed
assert_type(mixed(3), AsyncGenerator[bytes, None])
assert_type(mixed.start(3), AsyncRun[bytes])
assert_type(next(task(parse)(1)), str)
longer: AsyncPipeline[[int], int] = mixed | task(len)



# A fork: each task takes the same input; the stage outputs the list of their outputs.
def digits(line: int) -> int:
    return len(str(line))


forked: Pipeline[[int], list[Any]] = task(parse) & task(digits)
async_forked: AsyncPipeline[[str], list[Any]] = task(size) & task(fetch)
assert_type(fork(task(parse), task(digits), workers=2), Pipeline[Any, list[Any]])

# Decorators.
@task(branch=True)
def lines(count: int) -> Iterator[str]:
    yield from map(str, range(count))


@task(workers=2)
def shout(text: str) -> str:
    return text.upper()


assert_type((lines | shout)(3), Generator[str, None, None])


# Consumers.
def add(sizes: Generator[float, None, None]) -> float:
    return sum(sizes)


assert_type((pipeline > add)(10), float)


async def collect(outputs: AsyncGenerator[bytes, None]) -> list[bytes]:
    return [output async for output in outputs]


assert_type((mixed > collect)(3), Awaitable[list[bytes]])


async def read(count: AsyncIterator[int]) -> int:
    return 0


assert_type(task(read, join=True), AsyncPipeline[[int], int])

# With `bind`, the function takes more than the item: its arguments are not checked.
assert_type(task(parse, bind=task.bind(), workers=2), Pipeline[..., Any])


def metrics_of(run: Run[float]) -> float:
    metrics = run.metrics()
    assert_type(metrics, Metrics)
    return metrics["stages"][0]["busy"]


# Mistakes a type checker catches.
task(numbers, branch=True) | task(size)  # type: ignore[arg-type] # int into a str input
task(parse).start("ten")  # type: ignore[arg-type] # the first task takes an int
for _ in mixed(3):  # type: ignore[attr-defined] # an async pipeline's outputs are async
    pass
