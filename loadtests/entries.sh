#!/usr/bin/env bash
# What cached entries cost in RSS, and whether the memory store's byte bound holds under churn.
#
#   loadtests/entries.sh [fill] [churn]        # both by default; ~4 minutes on 2 cores
#
# fill: for the memory store and for the L1 of the tiered store (Redis behind it, its own
#   redis-server), both sized so nothing is evicted (FILL_MAX, L1 max_ttl 1h so nothing
#   expires), ENTRIES distinct keys with BODY-byte bodies are fetched through the proxy
#   (`cachegate warm`, CONCURRENCY requests in flight). VmRSS (/proc/PID/status) is read
#   after a first 1,000 keys (the baseline: runtime, pools and connection buffers already
#   warm) and after the ENTRIES more; the counted bytes and entries come from the admin
#   /metrics (cachegate_store_bytes, cachegate_store_entries). Reported per entry and as a
#   ratio to the payload (ENTRIES x BODY).
# churn: the memory store with max_size CHURN_MAX, CHURN_ENTRIES distinct keys written
#   through it; once a second the counted bytes, entries and VmRSS are sampled
#   (loadtests/rss.sh), then again 5 s after the writes end. The bound holds when the
#   counted bytes stay within 10% of max_size, and RSS above the baseline too.
#
# Env (defaults in brackets): ENTRIES [100000] BODY [1024] FILL_MAX [2GiB] CONCURRENCY [16]
#   CHURN_ENTRIES [300000] CHURN_MAX [32MiB] CACHEGATE_BIN [target/release/cachegate, built
#   unless SKIP_BUILD=1] SKIP_INSTALL=1 RESULTS [unset: directory for the raw samples]
# Ports are free loopback ports picked at start (never 6379).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${CACHEGATE_BIN:-$ROOT/target/release/cachegate}
ENTRIES=${ENTRIES:-100000}
BODY=${BODY:-1024}
FILL_MAX=${FILL_MAX:-2GiB}
CONCURRENCY=${CONCURRENCY:-16}
CHURN_ENTRIES=${CHURN_ENTRIES:-300000}
CHURN_MAX=${CHURN_MAX:-32MiB}
BASE_KEYS=1000
PARTS=("$@")
((${#PARTS[@]})) || PARTS=(fill churn)
export RUST_LOG=${RUST_LOG:-warn}

log() { echo "[entries.sh $(date +%T)] $*" >&2; }
want() { [[ " ${PARTS[*]} " == *" $1 "* ]]; }

missing=()
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
if want fill; then command -v redis-server >/dev/null || missing+=(redis-server); fi
if ((${#missing[@]})); then
  if [[ ${SKIP_INSTALL:-0} == 1 ]]; then echo "missing: ${missing[*]} (SKIP_INSTALL=1)" >&2; exit 2; fi
  log "installing ${missing[*]} from the system packages"
  SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ ${SKIP_BUILD:-0} != 1 && -z ${CACHEGATE_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release --bin cachegate)
fi
[[ -x $BIN ]] || { echo "$BIN missing" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cachegate-entries.XXXXXX")
# shellcheck source=loadtests/lib.sh
source "$ROOT/loadtests/lib.sh"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  stop_all "${PIDS[@]}"
  if [[ -n ${RESULTS:-} ]]; then mkdir -p "$RESULTS" && cp "$WORK"/*.samples "$WORK"/*.txt "$RESULTS/" 2>/dev/null; fi
  if [[ $rc == 0 ]]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rss() { awk '/^VmRSS:/ { print $2 * 1024 }' "/proc/$1/status"; }
gauge() { # gauge ADMIN_URL NAME: the first sample of NAME, 0 when absent
  curl -s --max-time 5 "$1/metrics" | awk -v n="$2" '$1 ~ "^"n"[{ ]" || $1 == n { printf "%d\n", $2; found=1; exit } END { if (!found) print 0 }'
}
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

ORIGIN_PORT=$(free_port)
"$BIN" origin --listen "127.0.0.1:$ORIGIN_PORT" --body-size "$BODY" --cache-control max-age=3600 \
  >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
wait_http origin "$!" "http://127.0.0.1:$ORIGIN_PORT/__stats"
got=$(curl -s "http://127.0.0.1:$ORIGIN_PORT/probe" | wc -c)
[[ $got == "$BODY" ]] || { log "the origin answers $got bytes, not $BODY"; exit 1; }

# start_cachegate NAME STORE_YAML: sets PROXY, ADMIN, CG_PID
start_cachegate() {
  local port admin
  port=$(free_port); admin=$(free_port)
  cat >"$WORK/$1.yaml" <<YAML
listen: 127.0.0.1:$port
admin: { listen: 127.0.0.1:$admin }
upstreams:
  origin: { url: "http://127.0.0.1:$ORIGIN_PORT", timeout: 10s }
defaults: { ttl: 3600s, jitter: 0 }
store: $2
shutdown: { grace: 0s }
routes:
  - path: /{*rest}
    upstream: origin
YAML
  "$BIN" --config "$WORK/$1.yaml" >"$WORK/$1.log" 2>&1 &
  CG_PID=$!
  PIDS+=("$CG_PID")
  PROXY="http://127.0.0.1:$port"
  ADMIN="http://127.0.0.1:$admin"
  wait_http "$1" "$CG_PID" "$PROXY/__ready"
}

# warm_range NAME FROM TO: fetches /e/NAME/FROM .. /e/NAME/TO-1 through the proxy.
warm_range() {
  seq "$2" "$(($3 - 1))" | sed "s|^|/e/$1/|" >"$WORK/urls"
  "$BIN" warm --proxy "$PROXY" --file "$WORK/urls" --concurrency "$CONCURRENCY" >>"$WORK/warm.log" 2>&1 \
    || { log "cachegate warm failed:"; tail -n 5 "$WORK/warm.log" >&2; exit 1; }
}

stop_cachegate() {
  local pid keep=()
  stop_all "$CG_PID"
  for pid in "${PIDS[@]}"; do [[ $pid == "$CG_PID" ]] || keep+=("$pid"); done
  PIDS=("${keep[@]}")
}

FILL_TSV="$WORK/fill.txt"
: >"$FILL_TSV"
fill() { # fill NAME STORE_YAML
  local name=$1 r0 r1 bytes entries wall
  start_cachegate "$name" "$2"
  warm_range "$name" 0 "$BASE_KEYS"
  sleep 1
  r0=$(rss "$CG_PID")
  wall=$(date +%s)
  warm_range "$name" "$BASE_KEYS" "$((BASE_KEYS + ENTRIES))"
  wall=$(($(date +%s) - wall))
  sleep 2
  r1=$(rss "$CG_PID")
  bytes=$(gauge "$ADMIN" cachegate_store_bytes)
  entries=$(gauge "$ADMIN" cachegate_store_entries)
  log "$name: rss $(mib "$r0") after $BASE_KEYS keys, $(mib "$r1") after $ENTRIES more (${wall}s); counted $(mib "$bytes") in $entries entries"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$r0" "$r1" "$bytes" "$entries" >>"$FILL_TSV"
  stop_cachegate
}

if want fill; then
  fill memory "{ backend: memory, memory: { max_size: $FILL_MAX } }"
  REDIS_PORT=$(free_port)
  [[ $REDIS_PORT != 6379 ]] || REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
  REDIS_PID=$!
  PIDS+=("$REDIS_PID")
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  fill l1 "{ backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS_PORT\" }, l1: { max_size: $FILL_MAX, max_ttl: 1h } }"
  redis_mem=$(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | awk -F: '$1 == "used_memory" { print $2 }')
  redis_keys=$(redis-cli -p "$REDIS_PORT" dbsize)
  stop_all "$REDIS_PID"
  python3 - "$FILL_TSV" "$ENTRIES" "$BODY" "$redis_mem" "$redis_keys" <<'PY'
import sys
path, n, body, redis_mem, redis_keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
payload = n * body
print(f"\n{n:,} entries of {body} B (payload {payload / 2**20:.1f} MiB), VmRSS after the first 1,000 keys and after {n:,} more:\n")
print("| store | RSS before | RSS after | RSS growth per entry | RSS growth ÷ payload | counted bytes (entries) | counted per entry | RSS growth ÷ counted |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for line in open(path):
    name, r0, r1, b, e = line.split("\t")
    r0, r1, b, e = int(r0), int(r1), int(b), int(e)
    grow = r1 - r0
    label = {"memory": "memory", "l1": "L1 (tiered, Redis behind)"}[name]
    print(f"| {label} | {r0 / 2**20:.1f} MiB | {r1 / 2**20:.1f} MiB | {grow / n:,.0f} B | {grow / payload:.2f} | "
          f"{b / 2**20:.1f} MiB ({e:,}) | {b / max(e, 1):,.0f} B | {grow / b if b else float('nan'):.2f} |")
stored = n + 1000
print(f"\nredis-server behind the L1: used_memory {redis_mem / 2**20:.1f} MiB for {stored:,} cached entries "
      f"({redis_keys:,} Redis keys): {redis_mem / stored:,.0f} B per entry, {redis_mem / stored / body:.2f}x the body")
PY
fi

if want churn; then
  start_cachegate churn "{ backend: memory, memory: { max_size: $CHURN_MAX } }"
  max_bytes=$(python3 -c "import sys; s=sys.argv[1]; u={'KiB':1<<10,'MiB':1<<20,'GiB':1<<30}; print(int(s[:-3]) * u[s[-3:]])" "$CHURN_MAX")
  warm_range churn 0 "$BASE_KEYS"
  sleep 1
  base=$(rss "$CG_PID")
  samples="$WORK/churn.samples"
  "$ROOT/loadtests/rss.sh" "$CG_PID" "$max_bytes" "$ADMIN" "$samples" &
  sampler=$!
  PIDS+=("$sampler")
  wall=$(date +%s)
  warm_range churn "$BASE_KEYS" "$((BASE_KEYS + CHURN_ENTRIES))"
  wall=$(($(date +%s) - wall))
  sleep 5
  kill -TERM "$sampler" 2>/dev/null || true
  wait "$sampler" 2>/dev/null || true
  after_rss=$(rss "$CG_PID")
  after_bytes=$(gauge "$ADMIN" cachegate_store_bytes)
  after_entries=$(gauge "$ADMIN" cachegate_store_entries)
  evictions=$(curl -s "$ADMIN/metrics" | awk '$1 ~ /^cachegate_store_evictions/ { s += $2 } END { printf "%d\n", s }')
  log "churn: $CHURN_ENTRIES keys in ${wall}s"
  "$ROOT/loadtests/rss.sh" --report "$samples" "$max_bytes" "$base" | tee "$WORK/churn.txt"
  python3 - "$samples" "$max_bytes" "$base" "$after_rss" "$after_bytes" "$after_entries" "$evictions" <<'PY' | tee -a "$WORK/churn.txt"
import sys
path = sys.argv[1]
mx, base, a_rss, a_bytes, a_n, ev = map(int, sys.argv[2:])
rows = [list(map(int, l.split())) for l in open(path) if l.strip()]
counted = [r[2] for r in rows]
rss = [r[1] for r in rows]
over = sum(1 for c in counted if c > mx * 1.1)
print(f"\nmax_size {mx / 2**20:.1f} MiB; {len(rows)} samples while writing")
print("| | counted (cachegate_store_bytes) | ÷ max_size | VmRSS | (RSS - baseline) ÷ max_size | entries |")
print("|---|---:|---:|---:|---:|---:|")
print(f"| baseline (after 1,000 keys) | | | {base / 2**20:.1f} MiB | | |")
print(f"| peak while writing | {max(counted) / 2**20:.1f} MiB | {max(counted) / mx:.3f} | {max(rss) / 2**20:.1f} MiB | {(max(rss) - base) / mx:.2f} | {max(r[3] for r in rows):,} |")
print(f"| 5 s after the writes | {a_bytes / 2**20:.1f} MiB | {a_bytes / mx:.3f} | {a_rss / 2**20:.1f} MiB | {(a_rss - base) / mx:.2f} | {a_n:,} |")
print(f"\nsamples with counted > 1.1 x max_size: {over} of {len(rows)}; evictions (size): {ev:,}; "
      f"counted per entry after: {a_bytes / max(a_n, 1):,.0f} B; RSS above baseline per entry held: {(a_rss - base) / max(a_n, 1):,.0f} B")
PY
  stop_cachegate
fi
