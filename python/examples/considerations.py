"""Pyper's user guide's "Considerations" example, on pyperflow: runs unchanged.

    python3 -m venv .venv && .venv/bin/pip install ./python
    .venv/bin/python python/examples/considerations.py
"""

import time

from pyper import task


def get_data(limit: int):
    for i in range(limit):
        yield i


def long_computation(data: int):
    for i in range(1_000_000):
        data += i
    return data


def print_sum(data):
    total = 0
    for i in data:
        total += i
    print(total)


def main():
    for multiprocess in (False, True):
        run = (
            task(get_data, branch=True)
            | task(long_computation, workers=2, multiprocess=multiprocess)
            > print_sum
        )
        started = time.perf_counter()
        run(20)
        mode = "processes" if multiprocess else "threads"
        print(f"{mode}: {time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
