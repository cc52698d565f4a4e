#!/usr/bin/env bash
# Side-by-side load test: Wharf and CNCF distribution (Debian's
# docker-registry) on loopback, fresh data folders, the same scenarios
# against each in turn, one table of ratios at the end.
#
#   loadtest/compare.sh            full run (a few minutes)
#   QUICK=1 loadtest/compare.sh    fewer operations per scenario
#   ONLY="pull push-mono" ...      a subset of scenarios
#
# Needs: cargo, and docker-registry (installed here with apt if missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v docker-registry >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's service from starting: we run our own instance.
  had_policy=0; [ -e /usr/sbin/policy-rc.d ] && had_policy=1
  [ $had_policy = 1 ] || { printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends docker-registry
  [ $had_policy = 1 ] || rm -f /usr/sbin/policy-rc.d
  systemctl stop docker-registry 2>/dev/null || true
fi

cargo build --release -q -p wharf -p wharf-load
WHARF=target/release/wharf
LOAD=target/release/wharf-load
WPORT=${WPORT:-5101}
DPORT=${DPORT:-5102}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/wharf-compare.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

WHARF_LOG=warn "$WHARF" serve --addr "127.0.0.1:$WPORT" --root "$tmp/wharf" >"$tmp/wharf.log" 2>&1 &
wpid=$!; pids+=("$wpid")
cat >"$tmp/dist.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $tmp/dist}
  delete: {enabled: true}
http: {addr: 127.0.0.1:$DPORT}
YML
docker-registry serve "$tmp/dist.yml" >"$tmp/dist.log" 2>&1 &
dpid=$!; pids+=("$dpid")
for port in "$WPORT" "$DPORT"; do
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/v2/" >/dev/null 2>&1 && break
    sleep 0.1
  done
done

q() { if [ "${QUICK:-0}" = 1 ]; then echo "$2"; else echo "$1"; fi; }
MIB=1048576
# label | scenario | metric | args
scenarios=(
  "push-mono 16MiB x8|push-mono|mb_s|--clients 8 --size $((16*MIB)) --ops $(q 160 48)"
  "push-chunked 16MiB/4MiB x8|push-chunked|mb_s|--clients 8 --size $((16*MIB)) --chunk $((4*MIB)) --ops $(q 160 48)"
  "push-mono 1MiB x32|push-mono|ops_s|--clients 32 --size $MIB --ops $(q 2048 512)"
  "push-same 16MiB x32|push-same|mb_s|--clients 32 --size $((16*MIB)) --ops $(q 256 96)"
  "pull 16MiB x32|pull|mb_s|--clients 32 --size $((16*MIB)) --ops $(q 768 256)"
  "pull-range 1MiB x32|pull-range|mb_s|--clients 32 --size $((16*MIB)) --chunk $MIB --ops $(q 8192 2048)"
  "manifest-put x32|manifest-put|ops_s|--clients 32 --ops $(q 3000 800)"
  "manifest-get x32|manifest-get|ops_s|--clients 32 --ops $(q 20000 5000)"
  "manifest-head x32|manifest-head|ops_s|--clients 32 --ops $(q 20000 5000)"
  "blob-get 4KiB x64|blob-get|ops_s|--clients 64 --size 4096 --ops $(q 40000 10000)"
  "build-farm x16|build-farm|ops_s|--clients 16 --size $((4*MIB)) --chunk $((512*1024)) --ops $(q 96 32)"
)

field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
run() { # host pid label scenario args -> RESULT line
  local out
  # shellcheck disable=SC2086
  if ! out=$("$LOAD" --host "$1" --pid "$2" --run "$3" --scenario "$4" $5 2>"$tmp/load.err"); then
    echo "RESULT errors=FAILED" ; sed 's/^/    /' "$tmp/load.err" >&2; return 0
  fi
  echo "$out" | grep '^RESULT'
}

printf '\n%-28s %-6s %12s %12s %7s | %9s %9s | %8s %8s | %5s\n' \
  "scenario" "unit" "wharf" "distrib." "ratio" "w ms/MB" "d ms/MB" "w p99" "d p99" "errs"
n=0
for s in "${scenarios[@]}"; do
  IFS='|' read -r label scen metric args <<<"$s"
  if [ -n "${ONLY:-}" ] && ! grep -qw -- "$scen" <<<"$ONLY"; then continue; fi
  n=$((n+1))
  w=$(run "127.0.0.1:$WPORT" "$wpid" "w$n" "$scen" "$args")
  d=$(run "127.0.0.1:$DPORT" "$dpid" "d$n" "$scen" "$args")
  wv=$(field "$metric" <<<"$w"); dv=$(field "$metric" <<<"$d")
  ratio=$(awk -v a="${wv:-0}" -v b="${dv:-0}" 'BEGIN{ if (b>0) printf "%.2fx", a/b; else print "-" }')
  unit=$([ "$metric" = mb_s ] && echo MB/s || echo op/s)
  printf '%-28s %-6s %12s %12s %7s | %9s %9s | %8s %8s | %s/%s\n' "$label" "$unit" "${wv:--}" "${dv:--}" "$ratio" \
    "$(field cpu_ms_per_mb <<<"$w")" "$(field cpu_ms_per_mb <<<"$d")" \
    "$(field p99_ms <<<"$w")" "$(field p99_ms <<<"$d")" "$(field errors <<<"$w")" "$(field errors <<<"$d")"
done
if [ -z "${ONLY:-}" ] || grep -qw tcp <<<"$ONLY"; then
  t=$("$LOAD" --scenario tcp --clients 32 --size $((16*MIB)) --ops "$(q 768 256)" | grep '^RESULT')
  printf '%-28s %-6s %12s   (loopback HTTP ceiling, same machine, same run)\n' "loopback 16MiB x32" "MB/s" "$(field mb_s <<<"$t")"
fi
echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); distribution: $(docker-registry --version 2>/dev/null | head -1)"
