#!/usr/bin/env bash
# Short bounded fuzz run of every target in fuzz/ (issue 8). Needs the nightly toolchain
# and cargo-fuzz; CI does not install cargo-fuzz (it took 9.5 min to build on the shared
# 2-core machine), so without them this is a no-op.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

if ! cargo +nightly --version >/dev/null 2>&1 || ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "skipped: nightly/cargo-fuzz not installed"
  exit 0
fi

seconds="${FUZZ_SECONDS:-20}"
cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
  # The seed corpus is committed; what a run adds goes to a scratch copy.
  work="target/corpus/$target"
  mkdir -p "$work"
  cp -n corpus/"$target"/* "$work"/ 2>/dev/null || true
  echo "fuzzing $target for ${seconds}s"
  cargo +nightly fuzz run -O "$target" "$work" -- -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048
done
