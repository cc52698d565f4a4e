#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each).
#   fuzz/run.sh [SECONDS]
# Needs cargo-fuzz (`cargo install cargo-fuzz`) and a nightly toolchain, or
# stable with RUSTC_BOOTSTRAP=1 (used when no nightly is installed).
# A crash leaves its input in fuzz/artifacts/<target>/; turn it into a unit
# test beside the parser it broke, then fix the parser.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
toolchain=()
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
else
  export RUSTC_BOOTSTRAP=1
fi
for t in route_parse digest_range_parse manifest_parse; do
  mkdir -p "corpus/$t"
  echo "fuzz: $t for ${secs}s"
  log=$(mktemp)
  if ! cargo "${toolchain[@]}" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -max_len=65536 -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "fuzz: $t failed (build error, or a failing input in fuzz/artifacts/$t)" >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done)' "$log" || true
  rm -f "$log"
done
echo "fuzz: all targets clean"
