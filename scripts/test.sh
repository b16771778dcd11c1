#!/usr/bin/env bash
# The whole test suite: unit, integration and doc tests, then the shuttle model check of
# the queue and shutdown protocol (a separate build, since shuttle replaces the engine's
# locks and threads).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace
cargo test -p pyper --features shuttle --test model_check --release
