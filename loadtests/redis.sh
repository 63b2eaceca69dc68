#!/usr/bin/env bash
# The Redis store in one run: hit req/s with the tiered store (Redis + the default L1),
# Redis only (store.l1.max_size: 0B, every hit reads Redis) and the memory store, beside
# `redis-benchmark -t get` at the same concurrency against the same redis-server; then
# all-miss req/s (every request a never-seen key: fetch, lease, write) for the same three.
# Rounds are interleaved (each round runs every cell once, the order rotated per round),
# and every ratio is taken within a round, then the median over rounds is reported: on a
# shared machine only those ratios mean anything.
#
#   loadtests/redis.sh                 # builds target/release/cachegate; ~4 minutes
#   CACHEGATE_BIN=/tmp/cachegate-abc ROUNDS=5 DURATION=5s loadtests/redis.sh
#
# Env (defaults in brackets): ROUNDS [3] DURATION [8s, whole seconds] CONNECTIONS [64] THREADS [2]
#   HIT_PATH [/hit/1?cc=max-age%3D3600] RB_REQUESTS [300000] (redis-benchmark -n)
#   CACHEGATE_BIN [target/release/cachegate, built unless SKIP_BUILD=1] SKIP_INSTALL=1
#   RESULTS [unset]: also copy the raw TSV and wrk output to this directory
# The routes file is compare.sh's (loadtests/conf/cachegate.yaml.in); misses use
# loadtests/conf/miss.lua. Ports are free loopback ports picked at start (never 6379).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF="$ROOT/loadtests/conf"
BIN=${CACHEGATE_BIN:-$ROOT/target/release/cachegate}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
HIT_PATH=${HIT_PATH:-/hit/1?cc=max-age%3D3600}
RB_REQUESTS=${RB_REQUESTS:-300000}
export RUST_LOG=${RUST_LOG:-warn}

log() { echo "[redis.sh $(date +%T)] $*" >&2; }

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v curl >/dev/null || missing+=(curl)
command -v python3 >/dev/null || missing+=(python3)
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

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cachegate-redis.XXXXXX")
mkdir -p "$WORK/out"
# shellcheck source=loadtests/lib.sh
source "$ROOT/loadtests/lib.sh"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  stop_all "${PIDS[@]}"
  if [[ -n ${RESULTS:-} ]]; then mkdir -p "$RESULTS" && cp -r "$WORK/results.tsv" "$WORK/out" "$RESULTS/"; fi
  if [[ $rc == 0 ]]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

render() { # render TEMPLATE OUT KEY=VALUE...
  local template=$1 out=$2 kv k v
  shift 2
  cp "$template" "$out"
  for kv in "$@"; do
    k=${kv%%=*} v=${kv#*=}
    v=${v//\\/\\\\}; v=${v//|/\\|}; v=${v//&/\\&}
    sed -i "s|@$k@|$v|g" "$out"
  done
}
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }

ORIGIN_PORT=$(free_port)
"$BIN" origin --listen "127.0.0.1:$ORIGIN_PORT" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
wait_http origin "$!" "http://127.0.0.1:$ORIGIN_PORT/__stats"

REDIS_PORT=$(free_port)
[[ $REDIS_PORT != 6379 ]] || REDIS_PORT=$(free_port)
redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" \
  >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis_url="redis://127.0.0.1:$REDIS_PORT"

declare -A URL CPID
TARGETS=(memory tiered redis-l2)
start_cachegate() { # start_cachegate NAME STORE_YAML
  local port
  port=$(free_port)
  render "$CONF/cachegate.yaml.in" "$WORK/$1.yaml" PORT="$port" ORIGIN_PORT="$ORIGIN_PORT" \
    STORE="$2" ROUTE_EXTRA=""
  # No drain grace: the script stops it only when done, and stop_all waits 5 s at most.
  echo "shutdown: { grace: 0s }" >>"$WORK/$1.yaml"
  "$BIN" --config "$WORK/$1.yaml" >"$WORK/$1.log" 2>&1 &
  PIDS+=($!)
  CPID[$1]=$!
  wait_http "$1" "$!" "http://127.0.0.1:$port/__ready"
  URL[$1]="http://127.0.0.1:$port"
}
start_cachegate memory "{ backend: memory }"
start_cachegate tiered "{ backend: redis, redis: { url: \"$redis_url\", key_prefix: \"rb-l1:\" } }"
start_cachegate redis-l2 "{ backend: redis, redis: { url: \"$redis_url\", key_prefix: \"rb-l2:\" }, l1: { max_size: 0B } }"

RESULTS_TSV="$WORK/results.tsv"
: >"$RESULTS_TSV"
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >>"$RESULTS_TSV"; } # scenario target round metric value

# wrk_cell SCENARIO TARGET ROUND [wrk args]: one wrk run, with the CPU that the target and
# redis-server used during it (percent of one core).
wrk_cell() {
  local scen=$1 t=$2 round=$3 out c0 r0 c1 r1 secs
  shift 3
  out="$WORK/out/$scen-$t-$round.wrk"
  c0=$(cpu_ticks "${CPID[$t]}"); r0=$(cpu_ticks "$REDIS_PID")
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" >"$out" 2>&1 || true
  c1=$(cpu_ticks "${CPID[$t]}"); r1=$(cpu_ticks "$REDIS_PID")
  secs=$(awk -v d="$DURATION" 'BEGIN { sub(/s$/, "", d); print d }')
  python3 - "$out" "$scen" "$t" "$round" >>"$RESULTS_TSV" <<'PY'
import re, sys
path, scen, t, rnd = sys.argv[1:5]
text = open(path).read()
def ms(s):
    m = re.match(r"([\d.]+)(us|ms|s)", s)
    if not m: return float("nan")
    return float(m[1]) * {"us": 0.001, "ms": 1, "s": 1000}[m[2]]
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(non2xx[1]) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
for k, v in (("rps", rps[1] if rps else "nan"), ("p99", ms(p99[1]) if p99 else "nan"), ("errors", errors)):
    print(f"{scen}\t{t}\t{rnd}\t{k}\t{v}")
PY
  record "$scen" "$t" "$round" cpu "$(((c1 - c0) * 100 / $(getconf CLK_TCK) / secs))"
  record "$scen" "$t" "$round" redis_cpu "$(((r1 - r0) * 100 / $(getconf CLK_TCK) / secs))"
  log "$scen $t round $round: $(grep -E 'Requests/sec' "$out" | tr -s ' ')"
}

rb_cell() { # rb_cell ROUND: redis-benchmark GET, 70-byte values, same connection count
  local round=$1 rb r0 r1 t0 t1
  r0=$(cpu_ticks "$REDIS_PID"); t0=$(date +%s%N)
  rb=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t get -c "$CONNECTIONS" -n "$RB_REQUESTS" -d 70 --csv 2>/dev/null \
    | awk -F'","' '/GET/ { gsub(/"/, "", $2); print $2; exit }')
  r1=$(cpu_ticks "$REDIS_PID"); t1=$(date +%s%N)
  record hit redis-benchmark "$round" rps "${rb:-nan}"
  record hit redis-benchmark "$round" errors 0
  record hit redis-benchmark "$round" redis_cpu "$(((r1 - r0) * 100 * 1000000000 / $(getconf CLK_TCK) / (t1 - t0 + 1)))"
  log "hit redis-benchmark GET round $round: ${rb:-?} req/s"
}

# Warm the hit key everywhere; the first request fills, the rest must be hits.
for t in "${TARGETS[@]}"; do
  for _ in 1 2 3; do curl -s -o /dev/null "${URL[$t]}$HIT_PATH"; done
  status=$(curl -s -D - -o /dev/null "${URL[$t]}$HIT_PATH" | tr -d '\r' | awk -F': ' 'tolower($1) == "cache-status" { print $2 }')
  log "[$t] $status"
  [[ $status == *"; hit"* ]] || { log "$t does not answer $HIT_PATH from its cache"; exit 1; }
done

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
HIT_CELLS=(memory tiered redis-l2 redis-benchmark)
MISS_CELLS=(memory tiered redis-l2)
for round in $(seq "$ROUNDS"); do
  shift_by=$(((round - 1) % ${#HIT_CELLS[@]}))
  for cell in "${HIT_CELLS[@]:shift_by}" "${HIT_CELLS[@]:0:shift_by}"; do
    if [[ $cell == redis-benchmark ]]; then rb_cell "$round"; else wrk_cell hit "$cell" "$round" "${URL[$cell]}$HIT_PATH"; fi
  done
  shift_by=$(((round - 1) % ${#MISS_CELLS[@]}))
  for cell in "${MISS_CELLS[@]:shift_by}" "${MISS_CELLS[@]:0:shift_by}"; do
    RUN_ID="$cell-$round-$RANDOM" wrk_cell miss "$cell" "$round" -s "$CONF/miss.lua" "${URL[$cell]}"
  done
done

{
  echo
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(uname -r)"
  echo "versions: $("$BIN" --version | head -1), $(redis-server --version | grep -o 'v=[0-9.]*'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
  echo "load average (1, 5, 15 min) at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION; redis-benchmark -t get -c $CONNECTIONS -n $RB_REQUESTS -d 70; rounds: $ROUNDS"
  echo "redis used_memory: $(redis-cli -p "$REDIS_PORT" info memory | tr -d '\r' | awk -F: '$1 == "used_memory_human" { print $2 }'), keys: $(redis-cli -p "$REDIS_PORT" dbsize)"
  echo
} >&2
python3 - "$RESULTS_TSV" <<'PY'
import math, statistics, sys
from collections import defaultdict
v = defaultdict(dict)  # (scen, target, metric) -> {round: value}
for line in open(sys.argv[1]):
    s, t, r, m, x = line.rstrip("\n").split("\t")
    try:
        v[(s, t, m)][r] = float(x)
    except ValueError:
        pass
def med(s, t, m):
    xs = [x for x in v.get((s, t, m), {}).values() if not math.isnan(x)]
    return statistics.median(xs) if xs else None
def f(x, d=0):
    return "–" if x is None else f"{x:,.{d}f}"
def ratio(s, t, ref, m="rps"):
    a, b = v.get((s, t, m), {}), v.get((s, ref, m), {})
    rs = [a[r] / b[r] for r in a if r in b and b[r] and not math.isnan(a[r]) and not math.isnan(b[r])]
    if not rs:
        return "–"
    out = f"{statistics.median(rs):.2f}"
    return out + (f" ({min(rs):.2f}–{max(rs):.2f})" if len(rs) > 1 and t != ref else "")
def rounds(s, t):
    d = v.get((s, t, "rps"), {})
    return " / ".join(f"{d[r] / 1000:.1f}k" for r in sorted(d, key=int))
cols = ["memory", "tiered", "redis-l2", "redis-benchmark"]
rows = [
    ("hit req/s (median)", lambda t: f(med("hit", t, "rps"))),
    ("hit req/s per round", lambda t: rounds("hit", t)),
    ("hit ÷ memory store", lambda t: ratio("hit", t, "memory")),
    ("hit ÷ redis-benchmark GET", lambda t: ratio("hit", t, "redis-benchmark")),
    ("hit p99 ms", lambda t: f(med("hit", t, "p99"), 2)),
    ("hit errors", lambda t: f(med("hit", t, "errors"))),
    ("hit: proxy CPU % of a core", lambda t: f(med("hit", t, "cpu"))),
    ("hit: redis-server CPU %", lambda t: f(med("hit", t, "redis_cpu"))),
    ("all-miss req/s (median)", lambda t: f(med("miss", t, "rps"))),
    ("all-miss req/s per round", lambda t: rounds("miss", t)),
    ("all-miss ÷ memory store", lambda t: ratio("miss", t, "memory")),
    ("all-miss p99 ms", lambda t: f(med("miss", t, "p99"), 2)),
    ("all-miss errors", lambda t: f(med("miss", t, "errors"))),
    ("all-miss: proxy CPU % of a core", lambda t: f(med("miss", t, "cpu"))),
    ("all-miss: redis-server CPU %", lambda t: f(med("miss", t, "redis_cpu"))),
]
print("| | " + " | ".join(cols) + " |")
print("|---|" + "---:|" * len(cols))
for label, fn in rows:
    cells = [fn(t) for t in cols]
    print("| " + label + " | " + " | ".join(c if c else "–" for c in cells) + " |")
PY
