#!/usr/bin/env bash
# The Python package's tests (pyperflow, import name `pyper`), from nothing:
#
# 1. a virtualenv in target/python-venv (python3 -m venv), with maturin, pytest,
#    pytest-asyncio and pytest-timeout;
# 2. the package built from python/ and installed into it (maturin develop);
# 3. python-pyper 0.4.4's own test suite, taken at test time from its source distribution
#    on PyPI (only its tests/ folder), run unmodified against this package as `pyper`;
# 4. this package's own suite (python/tests/), each test under a watchdog so a hang fails.
#
# Idempotent: a second run reuses the venv, the download and the build.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/target/python-venv
python=$venv/bin/python

if [ ! -x "$python" ]; then
    if ! python3 -m venv "$venv"; then
        # Debian and Ubuntu ship venv's pip bootstrap as a package of its own.
        rm -rf "$venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get install -y -q python3-venv >/dev/null ||
                { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
        fi
        python3 -m venv "$venv"
    fi
fi
"$python" -m pip install -q --disable-pip-version-check maturin pytest pytest-asyncio pytest-timeout \
    mypy ruff typing_extensions

# The Python code is typed and linted (settings in python/pyproject.toml): mypy --strict on
# the package, and on a file of what an editor must infer from its generics.
echo "ruff and mypy:"
(cd python && "$venv/bin/ruff" check --quiet . && "$python" -m mypy pyper tests/typing_check.py)

# A release build: the suite is quicker with it, and so are the benchmark's Python rows.
(cd python && VIRTUAL_ENV=$venv PATH=$venv/bin:$PATH maturin develop -q --release)

pyper_tests=$root/target/python-pyper-0.4.4
if [ ! -d "$pyper_tests/tests" ]; then
    rm -rf "$pyper_tests" && mkdir -p "$pyper_tests/download"
    "$python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        python-pyper==0.4.4 -d "$pyper_tests/download"
    tar -xzf "$pyper_tests"/download/python_pyper-0.4.4.tar.gz -C "$pyper_tests" \
        --strip-components=1 python_pyper-0.4.4/tests
fi
# Their tests must import this package, not theirs.
(cd "$pyper_tests" && "$python" -c 'import pyper, sys; sys.exit(0 if hasattr(pyper, "_engine") else "not our pyper")')
echo "python-pyper 0.4.4's own tests, against pyperflow:"
(cd "$pyper_tests" && "$python" -m pytest -q -p no:cacheprovider tests --timeout 120 \
    -o asyncio_default_fixture_loop_scope=function)

echo "pyperflow's own tests:"
"$python" -m pytest -q -p no:cacheprovider python/tests --timeout 60 \
    -o asyncio_default_fixture_loop_scope=function
