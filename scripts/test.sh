#!/usr/bin/env bash
# The whole test suite: unit, integration and doc tests of the sync-only build, the same
# with the `async` feature (async tests, async doc tests and the README's examples), the
# same with the `process` feature (process tasks: worker processes, crashes, timeouts) and
# the process tests once more with async stages around process stages, the reliability
# tests and the chaos suite with every kind of stage, the report's verdicts in a stress loop
# under competing load, the benchmark harness's own tests, the remote tasks against a real
# nats-server with JetStream (installed with apt if missing, started on a free loopback port
# with a store of its own, stopped at the end),
# the README's dependency line in a fresh project, and the shuttle model check of the
# queue and shutdown protocol (a build of its own, since shuttle replaces the engine's
# locks and threads), and the Python package's tests (scripts/test-python.sh).
#
# Each package is tested on its own: in a workspace build, the harness's use of `async`
# would switch it on for the library too, and the sync-only build would go untested.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test -p pyperflow
cargo test -p pyperflow --features async
cargo test -p pyperflow --features process
cargo test -p pyperflow --features async,process --test process
cargo test -p pyperflow --features async,process --test reliability
cargo test -p pyperflow --features async,process --test chaos
# The report's verdicts on the guides' cases, 20 times over, with threads hogging every core.
cargo test -p pyperflow --features async,process --test verdicts -- --ignored
cargo test -p pyper-bench

nats_dir=$(mktemp -d)
trap 'bash scripts/nats-server.sh stop "$nats_dir"; rm -rf "$nats_dir"' EXIT
PYPER_NATS_URL=$(bash scripts/nats-server.sh start "$nats_dir")
export PYPER_NATS_URL
cargo test -p pyperflow --features remote --lib --test remote --test remote_lifecycle --test remote_report \
    --test trust
# The remote kind's doc examples (the rest ran with `--features async` above).
cargo test -p pyperflow --features remote --doc remote
cargo run -p pyperflow --features remote --example remote_crawl -- --pages 40
bash scripts/check-dependency-line.sh
cargo test -p pyperflow --features shuttle --test model_check --release
# The Python package: a venv under target/, Pyper 0.4.4's own suite and ours (pytest).
bash scripts/test-python.sh
