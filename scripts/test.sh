#!/usr/bin/env bash
# The whole test suite: unit, integration and doc tests of the sync-only build, the same
# with the `async` feature (async tests, async doc tests and the README's examples), and the
# shuttle model check of the queue and shutdown protocol (a build of its own, since shuttle
# replaces the engine's locks and threads).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test --workspace
cargo test -p pyper --features async
cargo test -p pyper --features shuttle --test model_check --release
