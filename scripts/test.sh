#!/usr/bin/env bash
# The whole test suite: unit, integration and doc tests of the sync-only build, the same
# with the `async` feature (async tests, async doc tests and the README's examples), the
# same with the `process` feature (process tasks: worker processes, crashes, timeouts) and
# the process tests once more with async stages around process stages, the
# benchmark harness's own tests, and the shuttle model check of the queue and shutdown
# protocol (a build of its own, since shuttle replaces the engine's locks and threads).
#
# Each package is tested on its own: in a workspace build, the harness's use of `async`
# would switch it on for the library too, and the sync-only build would go untested.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo test -p pyper
cargo test -p pyper --features async
cargo test -p pyper --features process
cargo test -p pyper --features async,process --test process
cargo test -p pyper --features async,process --test reliability
cargo test -p pyper --features async,process --test chaos
cargo test -p pyper-bench
cargo test -p pyper --features shuttle --test model_check --release
