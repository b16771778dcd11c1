#!/usr/bin/env bash
# Builds and runs a fresh Cargo project whose only dependency is the README's dependency
# line (between the `dependency:start` and `dependency:end` markers), with the crate taken
# from this checkout by path instead of from crates.io: the line a user copies must work.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
project="$root/target/dependency-line"
rm -rf "$project" && mkdir -p "$project/src"

line=$(sed -n '/<!-- dependency:start -->/,/<!-- dependency:end -->/p' "$root/README.md" |
    grep -E '^pyperflow *=')
[ -n "$line" ] || { echo "no dependency line found in README.md" >&2; exit 1; }
local_line=${line/version = \"0.1\"/path = \"$root/pyper\"}
[ "$local_line" != "$line" ] || { echo "the line has no 'version = \"0.1\"': $line" >&2; exit 1; }

cat > "$project/Cargo.toml" <<TOML
[package]
name = "dependency-line"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
$local_line
TOML
cat > "$project/src/main.rs" <<'RUST'
use pyper::{async_task, task};

fn main() {
    let pipeline = async_task(|x: u64| async move { x + 1 }).workers(4) | task(|x: u64| x * 2);
    let total: u64 = pipeline.feed(0..100).map(Result::unwrap).sum();
    assert_eq!(total, (1..=100).map(|x| x * 2).sum::<u64>());
    println!("the README's dependency line builds and runs: {line}", line = env!("LINE"));
}
RUST
# The workspace's lock file keeps the versions the project is tested with.
cp "$root/Cargo.lock" "$project/Cargo.lock"
LINE="$line" CARGO_TARGET_DIR="$root/target" cargo run --quiet --manifest-path "$project/Cargo.toml"
