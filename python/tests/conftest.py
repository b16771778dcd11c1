import os
import threading
import time

import pytest


def thread_count():
    """Threads of this process, as the kernel sees them (Rust threads included)."""
    return len(os.listdir("/proc/self/task"))


def wait_until(condition, limit=10.0):
    """Waits for `condition` (a bound that only detects a hang, never a timing)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def no_threads_left():
    """Fails the test if it leaves a thread behind (Python's or the engine's)."""
    before = thread_count()
    python_before = threading.active_count()
    yield
    assert wait_until(lambda: thread_count() <= before), \
        f"{thread_count() - before} thread(s) left behind"
    assert threading.active_count() <= python_before
