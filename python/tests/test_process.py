"""`multiprocess=True`: exceptions come back as themselves, a crashed worker process is an
error naming its stage."""

import ctypes
import os
import time

import pytest
from conftest import wait_until

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


def own_pid(x):
    return os.getpid()


def test_worker_processes_are_kept_warm_for_the_next_run(no_threads_left):
    from pyper import _process

    p = task(numbers, branch=True) | task(own_pid, workers=2, multiprocess=True)
    first = set(p(20))
    idle = {process.pid for process in _process._pool.idle}
    assert first <= idle
    # The next run takes the same processes, and starts none.
    assert set(p(20)) <= idle


def test_only_idle_worker_processes_outlive_a_run(no_threads_left):
    import multiprocessing

    from pyper import _process

    p = task(numbers, branch=True) | task(square, workers=3, multiprocess=True)
    assert sum(p(30)) == sum(x * x for x in range(30))
    with pytest.raises(WorkerDied):
        list((task(numbers, branch=True) | task(exit_abruptly, workers=2, multiprocess=True))(5))
    idle = {process.pid for process in _process._pool.idle}
    assert {child.pid for child in multiprocessing.active_children()} == idle


def wait_for_file(path, limit=20.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def first_then_wait(flag, x):
    # Its second output comes only once the test has seen its first.
    yield "first"
    yield "released" if wait_for_file(flag) else "not streamed"


def test_a_branch_in_a_worker_process_streams_its_outputs(tmp_path):
    flag = str(tmp_path / "flag")
    p = task(numbers, branch=True) | task(first_then_wait, branch=True, multiprocess=True,
                                          bind=task.bind(flag))
    outputs = p(1)
    assert next(outputs) == "first"
    open(flag, "w").close()
    assert list(outputs) == ["released"]


def count_forever(progress, x):
    # Writes how far it has got, for the test to see how far ahead of the reader it runs.
    with open(progress, "w") as file:
        n = 0
        while True:
            n += 1
            if n % 8 == 0:
                file.seek(0)
                file.write(f"{n:12d}")
                file.flush()
            yield n


@pytest.mark.parametrize("throttle", [1, 4])
def test_an_endless_branch_in_a_worker_process_runs_only_a_little_ahead(tmp_path, throttle):
    progress = str(tmp_path / "progress")
    p = task(numbers, branch=True) | task(count_forever, branch=True, multiprocess=True,
                                          throttle=throttle, bind=task.bind(progress))
    outputs = p(1)
    assert [next(outputs) for _ in range(10)] == list(range(1, 11))
    # Given time to run ahead (unbounded, it would be millions of elements ahead).
    time.sleep(1.0)
    with open(progress) as file:
        reached = int(file.read() or 0)
    outputs.close()
    assert reached - 10 <= 64 * throttle, reached


def slow_or_quick(flag, x):
    # The slow item waits until the test has seen every quick one.
    if x == 1:
        return "released" if wait_for_file(flag) else "a quick item waited"
    time.sleep(0.001)
    return x


def test_a_quick_item_does_not_wait_behind_a_slow_one(tmp_path):
    flag = str(tmp_path / "flag")
    p = task(numbers, branch=True) | task(slow_or_quick, workers=2, throttle=4,
                                          multiprocess=True, bind=task.bind(flag))
    outputs = p(12)
    quick = [next(outputs) for _ in range(11)]
    assert sorted(quick) == [x for x in range(12) if x != 1]
    open(flag, "w").close()
    assert list(outputs) == ["released"]


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


def stuck_at(which, pids, x):
    # Item `which` sleeps for an hour; the process says who it is first. The others
    # return at once.
    if x == which:
        with open(pids, "a") as file:
            file.write(f"{os.getpid()}\n")
        time.sleep(3600)
    return x


def test_a_timeout_kills_the_worker_process_at_the_deadline(tmp_path):
    pids = str(tmp_path / "pids")
    p = task(numbers, branch=True) | task(stuck_at, multiprocess=True, timeout=0.5,
                                          bind=task.bind(2, pids))
    with pytest.raises(TimeoutError, match="stuck_at did not return within 0.5 s"):
        list(p(5))
    with open(pids) as file:
        stuck = int(file.read())
    # Killed, not abandoned: the hour-long call is gone.
    assert wait_until(lambda: not os.path.exists(f"/proc/{stuck}"))


def fails_first_time(marks, x):
    # Each item fails (or hangs) on its first call, in whichever process, then succeeds.
    mark = os.path.join(marks, str(x))
    if not os.path.exists(mark):
        open(mark, "w").close()
        if x % 2:
            time.sleep(3600)
        raise Custom(f"first call of {x}")
    return x * 10


def test_retries_call_a_failed_or_timed_out_item_again_in_a_fresh_process(tmp_path):
    p = task(numbers, branch=True) | task(fails_first_time, workers=2, multiprocess=True,
                                          timeout=1, retries=1, bind=task.bind(str(tmp_path)))
    assert sorted(p(6)) == [x * 10 for x in range(6)]


def test_without_retries_the_first_failure_stops_the_run(tmp_path):
    p = task(numbers, branch=True) | task(fails_first_time, multiprocess=True, timeout=5,
                                          bind=task.bind(str(tmp_path)))
    with pytest.raises(Custom, match="first call of 0"):
        list(p(6))


def jittery(x):
    time.sleep((x * 7 % 5) / 1000)
    return x


@pytest.mark.parametrize("workers", [2, 4])
def test_ordered_outputs_of_worker_processes_keep_their_inputs_order(workers):
    p = task(numbers, branch=True) | task(jittery, workers=workers, multiprocess=True,
                                          ordered=True)
    assert list(p(200)) == list(range(200))


def test_ordered_branch_in_worker_processes():
    p = task(numbers, branch=True) | task(pairs, branch=True, workers=3, multiprocess=True,
                                          ordered=True)
    assert list(p(300)) == [x for x in range(300) for _ in range(2)]


def _whole_line_in(path: str) -> bool:
    try:
        with open(path) as file:
            return file.read().endswith("\n")
    except FileNotFoundError:
        return False


def ended_within(action, limit=30.0):
    """Runs `action` on a thread; whether it ended within `limit` (a hang detector)."""
    import threading

    done = threading.Thread(target=action, daemon=True)
    done.start()
    done.join(limit)
    return not done.is_alive()


def test_closing_the_output_kills_a_worker_process_in_a_long_call(tmp_path):
    pids = str(tmp_path / "pids")
    p = task(numbers, branch=True) | task(stuck_at, workers=2, multiprocess=True,
                                          bind=task.bind(1, pids))
    outputs = p(4)
    assert next(outputs) in (0, 2, 3)
    # The process creates the file before it writes its pid: wait for the whole line.
    assert wait_until(lambda: _whole_line_in(pids))
    assert ended_within(outputs.close)
    with open(pids) as file:
        stuck = int(file.read())
    assert wait_until(lambda: not os.path.exists(f"/proc/{stuck}"))


def fails_on_zero(x):
    if x == 0:
        raise Custom("downstream failed")
    return x


def test_an_error_elsewhere_stops_a_worker_process_in_a_long_call(tmp_path):
    pids = str(tmp_path / "pids")
    p = (task(numbers, branch=True)
         | task(stuck_at, workers=2, multiprocess=True, bind=task.bind(1, pids))
         | task(fails_on_zero))
    raised = []

    def run():
        try:
            list(p(2))
        except Custom as error:
            raised.append(error)

    assert ended_within(run)
    assert [str(error) for error in raised] == ["downstream failed"]
