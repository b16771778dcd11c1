"""The interpreter's exit and garbage collection never hang, whatever a run is doing."""

import json
import subprocess
import sys
import textwrap


def run_script(source, limit=30):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(source)],
                          capture_output=True, text=True, timeout=limit)


def run_file(folder, source, limit=30):
    script = folder / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=limit)


def test_interpreter_exit_mid_run():
    done = run_script("""
        import itertools, time
        from pyper import task

        def endless(_):
            yield from itertools.count()

        def slow(x):
            time.sleep(0.001)
            return x

        outputs = (task(endless, branch=True, throttle=1) | task(slow, workers=4, throttle=1))(None)
        next(outputs)
        print("exiting")
    """)
    assert done.returncode == 0, done.stderr
    assert "exiting" in done.stdout


def test_interpreter_exit_with_a_run_never_read():
    done = run_script("""
        from pyper import task
        outputs = task(abs)(-1)
        other = (task(range, branch=True) | task(abs, workers=3))(10**9)
        next(other)
        import sys
        sys.exit(3)
    """)
    assert done.returncode == 3, done.stderr


def test_garbage_collection_of_a_run_in_a_cycle():
    done = run_script("""
        import gc, itertools
        from pyper import task

        def endless(_):
            yield from itertools.count()

        class Holder:
            pass

        for _ in range(20):
            holder = Holder()
            holder.me = holder
            holder.outputs = (task(endless, branch=True, throttle=1) | task(abs, workers=2))(None)
            next(holder.outputs)
            del holder
            gc.collect()
        print("collected")
    """)
    assert done.returncode == 0, done.stderr
    assert "collected" in done.stdout


def test_the_engine_trace_switch_applies_to_python_runs(tmp_path):
    trace = tmp_path / "run.json"
    done = subprocess.run(
        [sys.executable, "-c", "from pyper import task; print(sum(task(range, branch=True)(10)))"],
        capture_output=True, text=True, timeout=30,
        env={**__import__("os").environ, "PYPER_TRACE": str(trace)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "45"
    json.loads(trace.read_text())  # valid JSON
    assert "range" in trace.read_text()  # the stage, named after its function


def test_interpreter_exit_mid_run_with_worker_processes(tmp_path):
    # A script file: worker processes find the functions of `__main__` by its path.
    done = run_file(tmp_path, """
        import itertools
        from pyper import task

        def endless(_):
            yield from itertools.count()

        def square(x):
            return x * x

        if __name__ == "__main__":
            outputs = (task(endless, branch=True, throttle=1)
                       | task(square, workers=2, multiprocess=True, throttle=1))(None)
            print(next(outputs), next(outputs))
    """)
    assert done.returncode == 0, done.stderr
    outputs = [int(x) for x in done.stdout.split()]
    assert len(outputs) == 2 and all(round(x ** 0.5) ** 2 == x for x in outputs)


def test_a_run_finalized_on_a_thread_it_waits_for_never_hangs():
    # Garbage collection finalizes a generator on whichever thread it runs: here the last
    # reference goes on one of the run's own workers, and on a pool thread of a fork.
    done = run_script("""
        import time
        from pyper import task

        holder = {}

        def let_go(x):
            holder.pop("outputs", None)
            return x

        def identity(x):
            return x

        for pipeline in (task(range, branch=True) | task(let_go, workers=2),
                         task(range, branch=True) | (task(let_go) & task(identity))):
            outputs = pipeline(10**9)
            next(outputs)
            holder["outputs"] = outputs
            del outputs
            while "outputs" in holder:
                time.sleep(0.01)
        print("let go")
    """)
    assert done.returncode == 0, done.stderr
    assert "let go" in done.stdout
