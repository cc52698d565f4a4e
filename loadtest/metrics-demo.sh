#!/usr/bin/env bash
# Shows the metrics moving under load: starts Wharf with a metrics listener,
# curls /metrics, runs load scenarios (with the access log on, as in
# production), curls again and prints what changed.
#
#   loadtest/metrics-demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p wharf -p wharf-load
WPORT=${WPORT:-5111}
MPORT=${MPORT:-9111}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/wharf-metrics.XXXXXX")
cat >"$tmp/wharf.toml" <<TOML
[metrics]
addr = "127.0.0.1:$MPORT"
TOML
target/release/wharf serve --config "$tmp/wharf.toml" --addr "127.0.0.1:$WPORT" --root "$tmp/data" >"$tmp/wharf.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$MPORT/readyz" >/dev/null && break; sleep 0.1; done

pick='^wharf_(http_requests_total|http_received_bytes_total|http_sent_bytes_total|blob_commits_total|store_bytes|store_blobs|upload_sessions_open|blob_commit_duration_seconds_count|connections_open)'
curl -fs "http://127.0.0.1:$MPORT/metrics" | grep -E "$pick" | sort >"$tmp/before"
load() { target/release/wharf-load --host "127.0.0.1:$WPORT" --pid "$pid" --run "m$1" --scenario "$1" "${@:2}" | grep '^RESULT'; }
load push-mono --clients 8 --size $((4 * 1048576)) --ops 64
load push-same --clients 8 --size $((4 * 1048576)) --ops 32
load pull --clients 8 --size $((4 * 1048576)) --ops 64
curl -fs "http://127.0.0.1:$MPORT/metrics" | grep -E "$pick" | sort >"$tmp/after"
echo
printf '%-90s %14s %14s\n' metric before after
join -a2 -e 0 -o '0,1.2,2.2' <(sed 's/ \([^ ]*\)$/\t\1/' "$tmp/before" | tr '\t' ' ' | sort -k1,1) \
  <(sed 's/ \([^ ]*\)$/\t\1/' "$tmp/after" | tr '\t' ' ' | sort -k1,1) |
  awk '$2 != $3 { printf "%-90s %14s %14s\n", $1, $2, $3 }'
echo
echo "access log lines written: $(grep -c 'wharf::access' "$tmp/wharf.log")"
