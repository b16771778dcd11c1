#!/usr/bin/env bash
# Builds and runs fresh Cargo projects whose `[dependencies]` are the README's, exactly as
# printed, laid out as the README says: the projects sit beside a folder named `pyper`
# (here a link to this checkout), so `path = "../pyper/pyper"` finds the crate.
#
# 1. The install lines (between `dependency:start` and `dependency:end`), with a small
#    program of sync and async tasks.
# 2. The async example's lines (between `async-dependencies:start` and
#    `async-dependencies:end`), with the example itself: the README's first `rust` block
#    after them. So the crates and features that example lists are the ones it needs.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
readme="$root/README.md"
work="$root/target/dependency-line"
rm -rf "$work" && mkdir -p "$work"
ln -s "$root" "$work/pyper"

# The lines of the TOML block between two markers, fences left out, unchanged.
toml_between() {
    local lines
    lines=$(sed -n "/<!-- $1:start -->/,/<!-- $1:end -->/p" "$readme" | sed '1,2d;$d' | sed '$d')
    [ -n "$lines" ] || { echo "README.md has no block between the $1 markers" >&2; exit 1; }
    grep -q '^\[dependencies\]$' <<<"$lines" ||
        { echo "the $1 block has no [dependencies] table: $lines" >&2; exit 1; }
    printf '%s\n' "$lines"
}

# The first `rust` block after a marker, fences left out. (awk reads to the end rather than
# exiting early: an early exit would kill sed with SIGPIPE, which `pipefail` makes fatal.)
rust_after() {
    sed -n "/<!-- $1:end -->/,\$p" "$readme" |
        awk '!done && /^```rust$/ { open = 1; next } open && /^```$/ { open = 0; done = 1 } open { print }'
}

# A project named $1 with the given dependencies and main.rs, built and run with the
# workspace's lock file (the versions the crate is tested with) and target folder.
run_project() {
    local name=$1 dependencies=$2 main=$3
    mkdir -p "$work/$name/src"
    {
        printf '[package]\nname = "%s"\nversion = "0.0.0"\nedition = "2021"\npublish = false\n\n' "$name"
        printf '# Not part of the workspace this folder happens to be in.\n[workspace]\n\n'
        printf '%s\n' "$dependencies"
    } >"$work/$name/Cargo.toml"
    printf '%s\n' "$main" >"$work/$name/src/main.rs"
    cp "$root/Cargo.lock" "$work/$name/Cargo.lock"
    CARGO_TARGET_DIR="$root/target" cargo run --quiet --manifest-path "$work/$name/Cargo.toml"
}

install_lines=$(toml_between dependency)
run_project my-project "$install_lines" "$(
    cat <<'RUST'
use pyper::{async_task, task};

fn main() {
    let pipeline = async_task(|x: u64| async move { x + 1 }).workers(4) | task(|x: u64| x * 2);
    let total: u64 = pipeline.feed(0..100).map(Result::unwrap).sum();
    assert_eq!(total, (1..=100).map(|x| x * 2).sum::<u64>());
}
RUST
)"
echo "the README's install lines build and run:"
sed 's/^/    /' <<<"$install_lines"

async_lines=$(toml_between async-dependencies)
async_example=$(rust_after async-dependencies)
grep -q 'async fn main' <<<"$async_example" ||
    { echo "no async example after the async-dependencies block" >&2; exit 1; }
run_project async-example "$async_lines" "$async_example"
echo "the README's async example builds and runs with the lines it lists:"
sed 's/^/    /' <<<"$async_lines"
