#!/usr/bin/env bash
# The Python package's tests (pyperflow, import name `pyper`), from nothing:
#
# 1. a virtualenv of tools in target/python-venv (python3 -m venv): maturin, pytest,
#    pytest-asyncio, pytest-timeout, ruff and mypy;
# 2. ruff, and mypy --strict, on the package (settings in python/pyproject.toml);
# 3. the abi3 wheel, built with `maturin build --release` into target/wheels, and
#    installed into the tools venv too (the benchmark's Python rows run there), where
#    mypy checks python/tests/typing_check.py against it;
# 4. a fresh virtualenv, target/python-wheel-venv, with no Rust toolchain on PATH, where
#    the wheel is installed as a user would install it, and where run:
#    - python-pyper 0.4.4's own test suite, taken at test time from its source
#      distribution on PyPI (only its tests/ folder), unmodified, against this package;
#    - this package's own suite (python/tests/), each test under a watchdog so a hang
#      fails; each pytest process has a limit too (15 min), for a hang at the
#      interpreter's exit.
#
# A second run reuses the tools venv, the download and cargo's build; the test venv is
# made afresh each time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
venv=$root/target/python-venv
python=$venv/bin/python

make_venv() {
    if ! python3 -m venv "$1"; then
        # Debian and Ubuntu ship venv's pip bootstrap as a package of its own.
        rm -rf "$1"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            apt-get install -y -q python3-venv >/dev/null ||
                { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
        fi
        python3 -m venv "$1"
    fi
}

[ -x "$python" ] || make_venv "$venv"
test_tools=(pytest pytest-asyncio pytest-timeout)
"$python" -m pip install -q --disable-pip-version-check maturin "${test_tools[@]}" \
    mypy ruff typing_extensions

echo "ruff and mypy:"
(cd python && "$venv/bin/ruff" check --quiet . && "$python" -m mypy pyper)

# The wheel a user installs: one for CPython 3.9 and later (abi3), a release build.
wheels=$root/target/wheels
rm -f "$wheels"/pyperflow-*.whl
PATH=$venv/bin:$PATH maturin build --release -q -m python/Cargo.toml --out "$wheels"
wheel=$(ls "$wheels"/pyperflow-*.whl)
echo "built $(basename "$wheel")"
"$python" -m pip install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel"
# What an editor infers from the installed wheel (its py.typed and stub): mypy run outside
# the source tree, so that `import pyper` is the wheel's.
echo "the wheel's types (python/tests/typing_check.py):"
(cd "$root/target" && "$python" -m mypy --config-file "$root/python/pyproject.toml" \
    "$root/python/tests/typing_check.py")

# A fresh venv, run with no cargo or rustc on PATH: the wheel must need no Rust toolchain.
# rustup's toolchain has a directory of its own (~/.cargo/bin), which is dropped; one
# installed among the system's tools (/usr/bin) cannot be, and the check says so.
no_rust_path=$(
    IFS=:
    for dir in $PATH; do
        if { [ -x "$dir/cargo" ] || [ -x "$dir/rustc" ]; } && [ ! -x "$dir/sh" ]; then
            continue
        fi
        printf '%s:' "$dir"
    done
)
users=$root/target/python-wheel-venv
rm -rf "$users"
make_venv "$users"
in_users() { env -u VIRTUAL_ENV PATH="$users/bin:${no_rust_path%:}" "$@"; }
if ! in_users sh -c '! command -v cargo && ! command -v rustc' >/dev/null; then
    echo "note: a Rust toolchain beside the system's tools stays on PATH for the wheel's tests"
fi
in_users python -m pip install -q --disable-pip-version-check "$wheel" "${test_tools[@]}"
# The package is the wheel's, not the source tree's.
in_users python -c 'import pyper, sys; sys.exit(0 if "python-wheel-venv" in pyper.__file__ else pyper.__file__)'

pyper_tests=$root/target/python-pyper-0.4.4
if [ ! -d "$pyper_tests/tests" ]; then
    rm -rf "$pyper_tests" && mkdir -p "$pyper_tests/download"
    "$python" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
        python-pyper==0.4.4 -d "$pyper_tests/download"
    tar -xzf "$pyper_tests"/download/python_pyper-0.4.4.tar.gz -C "$pyper_tests" \
        --strip-components=1 python_pyper-0.4.4/tests
fi
# Their tests must import this package, not theirs.
(cd "$pyper_tests" && in_users python -c 'import pyper, sys; sys.exit(0 if hasattr(pyper, "_engine") else "not our pyper")')
# The remote tasks' tests need a nats-server: scripts/test.sh passes its own; run alone,
# this script starts one (scripts/nats-server.sh installs it if missing).
if [ -z "${PYPER_NATS_URL:-}" ]; then
    nats_dir=$(mktemp -d)
    trap 'bash "$root/scripts/nats-server.sh" stop "$nats_dir"; rm -rf "$nats_dir"' EXIT
    PYPER_NATS_URL=$(bash scripts/nats-server.sh start "$nats_dir")
    export PYPER_NATS_URL
fi

echo "python-pyper 0.4.4's own tests, against the pyperflow wheel:"
(cd "$pyper_tests" && in_users timeout -k 10 900 python -m pytest -q -p no:cacheprovider tests --timeout 120 \
    -o asyncio_default_fixture_loop_scope=function)

echo "pyperflow's own tests, against the wheel:"
in_users timeout -k 10 900 python -m pytest -q -p no:cacheprovider python/tests --timeout 60 \
    -o asyncio_default_fixture_loop_scope=function
