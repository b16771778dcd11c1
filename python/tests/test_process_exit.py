"""`multiprocess=True`: the worker processes, the fork server and the resource tracker end
with the program, however it ends, even while a worker is inside a long call."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from conftest import wait_until

PROGRAM = textwrap.dedent("""
    import os, sys, time
    from pyper import task

    def numbers(n):
        yield from range(n)

    def stuck(x):
        # Inside a long call when the program ends.
        with open(sys.argv[1], "a") as file:
            file.write(f"{os.getpid()}\\n")
        time.sleep(120)
        return x

    def square(x):
        return x * x

    if __name__ == "__main__":
        if sys.argv[2] == "normal":
            # Ends normally with warm worker processes in the pool.
            print(sum((task(numbers, branch=True) | task(square, workers=2,
                                                          multiprocess=True))(10)))
        else:
            list((task(numbers, branch=True) | task(stuck, workers=2, multiprocess=True))(4))
""")


def descendants(pid):
    """The live processes started from `pid`, at any depth."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as file:
            stat = file.read()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # a zombie has ended


def start(tmp_path, how):
    script = tmp_path / "program.py"
    script.write_text(PROGRAM)
    pids = tmp_path / "pids"
    program = subprocess.Popen([sys.executable, str(script), str(pids), how],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return program, pids


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_no_process_outlives_a_program_killed_mid_call(tmp_path, how):
    program, pids = start(tmp_path, "stuck")
    try:
        # Both workers are inside their long call.
        assert wait_until(lambda: pids.exists() and len(pids.read_text().split()) == 2,
                          limit=60)
        started = descendants(program.pid)
        workers = [int(pid) for pid in pids.read_text().split()]
        assert set(workers) <= set(started)
        # The workers, the fork server and the resource tracker.
        assert len(started) >= 4, started
        program.send_signal(how)
        program.wait(timeout=30)
        assert wait_until(lambda: not any(alive(pid) for pid in started), limit=5), \
            [pid for pid in started if alive(pid)]
    finally:
        program.kill()
        program.wait()


def test_no_process_outlives_a_program_that_ends_normally(tmp_path):
    program, _ = start(tmp_path, "normal")
    started = []
    # Gathered while it runs (its processes are gone by the time it has ended).
    deadline = time.monotonic() + 60
    while program.poll() is None and time.monotonic() < deadline:
        started = sorted(set(started) | set(descendants(program.pid)))
        time.sleep(0.01)
    out, err = program.communicate(timeout=60)
    assert program.returncode == 0, err
    assert out.strip() == str(sum(x * x for x in range(10)))
    assert wait_until(lambda: not any(alive(pid) for pid in started), limit=5), \
        [pid for pid in started if alive(pid)]
