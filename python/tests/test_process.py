"""`multiprocess=True`: exceptions come back as themselves, a crashed worker process is an
error naming its stage."""

import ctypes
import os

import pytest

from pyper import WorkerDied, task


class Custom(Exception):
    pass


def square(x):
    return x * x


def numbers(n):
    yield from range(n)


def raise_custom(x):
    raise Custom(f"custom {x}")


class Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("not picklable")


def raise_unpicklable(x):
    raise Unpicklable("cannot travel")


def exit_abruptly(x):
    os._exit(3)


def segfault(x):
    ctypes.string_at(0)


def pairs(x):
    return [x, x]


def test_items_go_through_worker_processes(no_threads_left):
    p = task(numbers, branch=True) | task(square, workers=2, multiprocess=True)
    assert sorted(p(100)) == [x * x for x in range(100)]


def test_branch_in_a_worker_process():
    p = task(numbers, branch=True) | task(pairs, branch=True, multiprocess=True)
    assert sorted(p(5)) == sorted(list(range(5)) * 2)


def test_an_exception_comes_back_as_itself():
    p = task(numbers, branch=True) | task(raise_custom, multiprocess=True)
    with pytest.raises(Custom, match="custom"):
        list(p(3))


def test_an_unpicklable_exception_comes_back_as_its_traceback():
    p = task(numbers, branch=True) | task(raise_unpicklable, multiprocess=True)
    with pytest.raises(RuntimeError, match="cannot travel"):
        list(p(3))


@pytest.mark.parametrize("crash", [exit_abruptly, segfault])
def test_a_crashed_worker_process_is_an_error_naming_the_stage(crash, no_threads_left):
    p = task(numbers, branch=True) | task(crash, workers=2, multiprocess=True)
    with pytest.raises(WorkerDied, match=crash.__name__):
        list(p(10))


def test_no_worker_process_is_left_behind(no_threads_left):
    import multiprocessing

    p = task(numbers, branch=True) | task(square, workers=3, multiprocess=True)
    assert sum(p(30)) == sum(x * x for x in range(30))
    with pytest.raises(WorkerDied):
        list((task(numbers, branch=True) | task(exit_abruptly, workers=2, multiprocess=True))(5))
    assert multiprocessing.active_children() == []


def test_a_function_the_worker_process_cannot_find_is_reported(tmp_path):
    # `python -c` has no main module file: its functions cannot be found by a worker
    # process, and the error says so, rather than only that the process died.
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", (
        "from pyper import task\n"
        "def square(x):\n"
        "    return x * x\n"
        "print(list(task(square, multiprocess=True)(3)))\n")],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "AttributeError" in done.stderr and "square" in done.stderr
