"""Remote tasks (`task(f, remote=cluster)`) against a real nats-server with JetStream, with
workers started as a user starts them (`python -m pyper.worker URL`). The test script
starts the server and passes its URL in PYPER_NATS_URL (scripts/test-python.sh)."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pyper import Cluster, task
from pyper._process import RemoteTraceback

URL = os.environ.get("PYPER_NATS_URL")
pytestmark = pytest.mark.skipif(URL is None, reason="needs PYPER_NATS_URL (a nats-server)")

FUNCTIONS = """
import os
import time


def double(x):
    return 2 * x


def slow_double(x):
    time.sleep(0.002)
    return 2 * x


def pair(x):
    return [x, -x]


class Picky(Exception):
    pass


def picky(x):
    if x == 3:
        raise Picky(f"bad item {x}")
    return x


def unpicklable(x):
    error = ValueError(f"cannot ship {x}")
    error.lock = __import__("threading").Lock()
    raise error


def where(x):
    return os.getpid()


def sleepy(x):
    time.sleep(5 if x == 2 else 0)
    return x


async def later(x):
    return x + 1


attempts = {}


def flaky(x):
    # Fails on its first call for each item in this worker process.
    attempts[x] = attempts.get(x, 0) + 1
    if attempts[x] == 1:
        raise OSError(f"flaky {x}")
    return x


def abort_on_7(x):
    if x == 7:
        os.abort()
    return x
"""


@pytest.fixture(scope="module")
def functions(tmp_path_factory):
    """The module the workers import, in their working directory, and here on sys.path."""
    folder = tmp_path_factory.mktemp("remote")
    (folder / "remote_functions.py").write_text(textwrap.dedent(FUNCTIONS))
    sys.path.insert(0, str(folder))
    import remote_functions

    yield folder, remote_functions
    sys.path.remove(str(folder))


SCRIPT = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "nats-server.sh")


def nats_server(*args):
    """scripts/nats-server.sh, as the Rust tests run it: what it prints (a URL on start)."""
    done = subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, check=True)
    return done.stdout.strip()


class Workers:
    """Worker processes, as `python -m pyper.worker URL` in `folder`; all killed at the end."""

    def __init__(self, folder, url=None):
        self.folder = folder
        self.url = url or URL
        self.processes = []

    def start(self, count=1):
        for _ in range(count):
            self.processes.append(subprocess.Popen(
                [sys.executable, "-m", "pyper.worker", self.url], cwd=self.folder,
                stderr=subprocess.DEVNULL))
        return [process.pid for process in self.processes[-count:]]

    def kill(self, pid):
        os.kill(pid, signal.SIGKILL)

    def restart_dead(self):
        """Starts a new worker for each that died, as systemd would."""
        for process in list(self.processes):
            if process.poll() is not None:
                self.processes.remove(process)
                self.start()

    def stop(self):
        for process in self.processes:
            process.kill()
            process.wait()


@pytest.fixture
def workers(functions):
    started = Workers(functions[0])
    yield started
    started.stop()


def test_every_output_comes_once_when_a_worker_is_killed(functions, workers):
    module = functions[1]
    cluster = Cluster(URL, ack_wait=2)
    victim, _ = workers.start(2)
    n = 3000
    pipeline = task(range, branch=True) | task(module.slow_double, workers=2, remote=cluster)
    outputs = []
    for output in pipeline(n):
        outputs.append(output)
        if len(outputs) == 300:
            workers.kill(victim)
    assert len(outputs) == n
    assert sorted(outputs) == [2 * x for x in range(n)]
    assert cluster.run_streams() == []


def test_branch_and_a_url_for_the_cluster(functions, workers):
    workers.start()
    pipeline = task(range, branch=True) | task(functions[1].pair, branch=True, remote=URL)
    assert sorted(pipeline(50)) == sorted([x for x in range(50)] + [-x for x in range(50)])


def test_an_exception_crosses_with_its_type_message_and_traceback(functions, workers):
    workers.start()
    pipeline = task(range, branch=True) | task(functions[1].picky, remote=URL)
    with pytest.raises(functions[1].Picky, match="bad item 3") as raised:
        list(pipeline(10))
    cause = raised.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise Picky" in str(cause)


def test_an_exception_that_does_not_pickle_is_a_remote_error(functions, workers):
    from pyper import RemoteError

    workers.start()
    pipeline = task(range, branch=True) | task(functions[1].unpicklable, remote=URL)
    with pytest.raises(RemoteError, match="ValueError: cannot ship 0") as raised:
        list(pipeline(3))
    assert "in unpicklable" in raised.value.traceback


def test_a_function_the_workers_cannot_import_fails_the_run_naming_it(functions, tmp_path):
    # Importable here, but not from the workers' directory.
    (tmp_path / "only_here.py").write_text("def triple(x):\n    return 3 * x\n")
    sys.path.insert(0, str(tmp_path))
    elsewhere = Workers(functions[0])
    try:
        import only_here

        elsewhere.start()
        pipeline = task(range, branch=True) | task(only_here.triple, remote=URL)
        with pytest.raises(RuntimeError) as raised:
            list(pipeline(5))
        message = str(raised.value)
        assert "only_here:triple" in message and "worker host" in message, message
    finally:
        elsewhere.stop()
        sys.path.remove(str(tmp_path))


def test_what_workers_cannot_import_is_refused_when_the_task_is_built(functions):
    def local(x):
        return x

    with pytest.raises(ValueError, match="lambda"):
        task(lambda x: x, remote=URL)
    with pytest.raises(ValueError, match="inside"):
        task(local, remote=URL)
    with pytest.raises(ValueError, match="join"):
        task(functions[1].double, join=True, remote=URL)
    with pytest.raises(ValueError, match="multiprocess"):
        task(functions[1].double, multiprocess=True, remote=URL)


def test_closing_a_run_mid_way_leaves_no_streams(functions, workers):
    cluster = Cluster(URL)
    workers.start()
    outputs = (task(range, branch=True) | task(functions[1].slow_double, remote=cluster))(10**6)
    assert next(outputs) % 2 == 0
    outputs.close()
    deadline = time.monotonic() + 30
    while cluster.run_streams() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert cluster.run_streams() == []


def test_an_item_that_kills_every_worker_is_a_dead_letter(functions, workers):
    import threading

    from pyper import DeadLetter

    cluster = Cluster(URL, ack_wait=1, max_deliver=2)
    workers.start(2)
    done = threading.Event()

    def supervise():
        while not done.wait(0.1):
            workers.restart_dead()

    supervisor = threading.Thread(target=supervise)
    supervisor.start()
    try:
        pipeline = task(range, branch=True) | task(functions[1].abort_on_7, remote=cluster)
        with pytest.raises(DeadLetter, match="item 7"):
            list(pipeline(20))
    finally:
        done.set()
        supervisor.join()
    assert cluster.run_streams() == []


def test_a_restarted_server_loses_nothing(functions, tmp_path):
    store = str(tmp_path / "nats")
    url = nats_server("start", store)
    port = url.rsplit(":", 1)[1]
    workers = Workers(functions[0], url)
    try:
        cluster = Cluster(url, ack_wait=2)
        workers.start(2)
        n = 3000
        pipeline = (task(range, branch=True)
                    | task(functions[1].slow_double, workers=2, remote=cluster))
        outputs = []
        for output in pipeline(n):
            outputs.append(output)
            if len(outputs) == n // 4:
                nats_server("stop", store)
                nats_server("start", store, port)
        assert sorted(outputs) == [2 * x for x in range(n)]
        assert cluster.run_streams() == []
    finally:
        workers.stop()
        nats_server("stop", store)


def test_a_server_that_requires_a_password(functions, tmp_path):
    store = str(tmp_path / "nats")
    url = nats_server("start", store, "", "", "pyper:s3cret")
    host = url.split("://", 1)[1]
    workers = Workers(functions[0], f"nats://pyper:s3cret@{host}")
    try:
        with pytest.raises(RuntimeError):
            Cluster(url)  # no credentials: refused
        cluster = Cluster(url, user="pyper", password="s3cret")
        assert "s3cret" not in repr(Cluster(f"nats://pyper:s3cret@{host}"))
        workers.start()
        pipeline = task(range, branch=True) | task(functions[1].double, remote=cluster)
        assert sorted(pipeline(20)) == [2 * x for x in range(20)]
    finally:
        workers.stop()
        nats_server("stop", store)


def test_timeout_and_retries_apply_in_the_worker(functions, workers):
    workers.start()
    module = functions[1]
    timed = task(range, branch=True) | task(module.sleepy, timeout=0.5, remote=URL)
    with pytest.raises(TimeoutError):
        list(timed(5))
    retried = task(range, branch=True) | task(module.flaky, retries=1, remote=URL)
    assert sorted(retried(20)) == list(range(20))


def test_an_async_pipeline_with_remote_tasks(functions, workers):
    import asyncio

    from pyper import AsyncPipeline

    module = functions[1]
    workers.start()

    async def plus_one(x):
        await asyncio.sleep(0)
        return x + 1

    pipeline = (task(range, branch=True) | task(plus_one, workers=4)
                | task(module.double, remote=URL) | task(module.later, remote=URL))
    assert isinstance(pipeline, AsyncPipeline)

    async def collect():
        return sorted([x async for x in pipeline(20)])

    assert asyncio.run(collect()) == sorted(2 * (x + 1) + 1 for x in range(20))
