#!/usr/bin/env bash
# Instructions per cache hit and per miss of a cachegate binary, counted by callgrind
# (repeatable on a shared machine, unlike req/s). Each figure is the difference between
# a run of N1 and a run of N2 sequential requests over one keep-alive connection,
# divided by N2-N1, so start-up and shutdown cancel out (the metrics recorder's clock
# calibration, which does not, is subtracted).
#
#   loadtests/callgrind.sh [--store memory|tiered|redis-l2] BIN [N1 N2]
#   loadtests/callgrind.sh --nginx BIN [N1 N2]
#
# The dev origin (`BIN origin`, 70-byte JSON, max-age=3600), tracing at the default level
# (access log on), OTel off. Misses use distinct ids on a route keyed by `id`; hits are
# one key, warmed by the first request of every run. Every response is checked: a hit run
# fails unless each measured request was a hit, a miss run unless each was a miss.
# Only the proxy runs under valgrind: the origin, redis-server and the client are not
# counted, and neither is kernel time (syscalls, file and socket I/O).
#
#   --store memory     (default) the memory store, max_size 256MiB
#   --store tiered     Redis with the default L1 (64 MiB, max_ttl 2s) in front
#   --store redis-l2   Redis only (store.l1.max_size: 0B): every hit reads Redis
#                      Both Redis modes start their own redis-server on a free loopback
#                      port, and each run gets its own key_prefix (nothing carries over).
#   --nginx            nginx as the reference: proxy_cache keyed like the cachegate route
#                      (path and the `id` query parameter), the proxy_cache settings of
#                      compare.sh's nginx, `master_process off; daemon off;` (one process
#                      doing everything), cache files in a temp dir. NGINX_ACCESS_LOG
#                      [both] = on | off | both: the combined access log to a file, or none.
# Env: EXTRA_YAML (appended to cachegate's routes file, e.g. `log: { access: false }`),
#      KEEP=DIR (copy each run's callgrind.out there, for callgrind_annotate --inclusive=yes),
#      SKIP_INSTALL=1 (fail instead of apt-get installing valgrind, nginx, redis-server).
set -euo pipefail

MODE=cachegate
STORE=memory
while [[ ${1:-} == --* ]]; do
  case $1 in
    --nginx) MODE=nginx; shift ;;
    --store) STORE=${2:?--store needs memory, tiered or redis-l2}; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
BIN=${1:?usage: callgrind.sh [--nginx | --store memory|tiered|redis-l2] BIN [N1 N2]}
N1=${2:-200}
N2=${3:-1200}
NGINX_ACCESS_LOG=${NGINX_ACCESS_LOG:-both}
case $STORE in memory | tiered | redis-l2) ;; *) echo "--store: memory, tiered or redis-l2" >&2; exit 2 ;; esac

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v python3 >/dev/null || missing+=(python3)
[[ $MODE != nginx ]] || command -v nginx >/dev/null || missing+=(nginx)
[[ $STORE == memory ]] || command -v redis-server >/dev/null || missing+=(redis-server)
if ((${#missing[@]})); then
  if [[ ${SKIP_INSTALL:-0} == 1 ]]; then echo "missing: ${missing[*]} (SKIP_INSTALL=1)" >&2; exit 2; fi
  echo "installing ${missing[*]} from the system packages" >&2
  SUDO=; [[ $(id -u) == 0 ]] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

dir=$(mktemp -d)
chmod 755 "$dir"
PIDS=()
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# shellcheck source=loadtests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
wait_port() { # wait_port PORT: until something accepts on it, at most 30 s
  local _
  for _ in $(seq 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "nothing listens on 127.0.0.1:$1" >&2
  return 1
}

OPORT=$(free_port)
"$BIN" origin --listen "127.0.0.1:$OPORT" --cache-control max-age=3600 >/dev/null 2>&1 &
PIDS+=($!)
wait_port "$OPORT"

REDIS_PORT=
if [[ $MODE == cachegate && $STORE != memory ]]; then
  REDIS_PORT=$(free_port)
  [[ $REDIS_PORT != 6379 ]] || REDIS_PORT=$(free_port)
  redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$dir" >"$dir/redis.log" 2>&1 &
  PIDS+=($!)
  wait_port "$REDIS_PORT"
fi

# store_yaml PREFIX: the store block for --store (PREFIX: this run's Redis key prefix).
store_yaml() {
  case $STORE in
    memory) echo "store: { memory: { max_size: 256MiB } }" ;;
    tiered) echo "store: { backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS_PORT\", key_prefix: \"$1:\" } }" ;;
    redis-l2) echo "store: { backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS_PORT\", key_prefix: \"$1:\" }, l1: { max_size: 0B } }" ;;
  esac
}

# cachegate_config PORT PREFIX: the routes file of a cachegate run.
cachegate_config() {
  cat <<YAML
listen: 127.0.0.1:$1
upstreams:
  origin: { url: "http://127.0.0.1:$OPORT", timeout: 10s }
defaults: { ttl: 3600s, jitter: 0 }
$(store_yaml "$2")
${EXTRA_YAML:-}
routes:
  - path: /{*rest}
    upstream: origin
    key: { query: [id] }
YAML
}

# nginx_config PORT RUNDIR ACCESS_LOG: nginx keyed like the cachegate route (path + id).
nginx_config() {
  local port=$1 run=$2 access
  if [[ $3 == on ]]; then access="access_log $run/access.log combined;"; else access="access_log off;"; fi
  cat <<NGINX
master_process off;
daemon off;
worker_processes 1;
pid $run/nginx.pid;
error_log $run/error.log warn;
events { worker_connections 1024; }
http {
    $access
    keepalive_requests 1000000;
    keepalive_timeout 65s;
    client_body_temp_path $run/client_body;
    proxy_temp_path $run/proxy_temp;
    fastcgi_temp_path $run/fastcgi_temp;
    uwsgi_temp_path $run/uwsgi_temp;
    scgi_temp_path $run/scgi_temp;
    proxy_cache_path $run/cache levels=1:2 keys_zone=cg:64m max_size=2g inactive=10m use_temp_path=off;
    upstream origin {
        server 127.0.0.1:$OPORT;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache cg;
            proxy_cache_key "\$uri|\$arg_id";
            proxy_cache_lock on;
            proxy_cache_lock_timeout 10s;
            proxy_cache_lock_age 10s;
            proxy_cache_use_stale updating error timeout http_500 http_502 http_503 http_504;
            proxy_cache_background_update on;
            proxy_cache_revalidate on;
            add_header X-Cache-Status \$upstream_cache_status;
        }
    }
}
NGINX
}

# count MODE N [ACCESS_LOG]: total instructions of a proxy that served N requests of MODE.
count() {
  local mode=$1 n=$2 access=${3:-on} port out run pid
  port=$(free_port)
  run="$dir/run-$mode-$n-$access"
  mkdir -p "$run"
  out="$run/callgrind.out"
  if [[ $MODE == nginx ]]; then
    nginx_config "$port" "$run" "$access" >"$run/nginx.conf"
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      nginx -p "$run" -c "$run/nginx.conf" -e "$run/error.log" >"$run/proxy.log" 2>&1 &
  else
    cachegate_config "$port" "cg-$mode-$n-$RANDOM" >"$run/routes.yaml"
    valgrind --tool=callgrind --callgrind-out-file="$out" \
      "$BIN" --config "$run/routes.yaml" >/dev/null 2>"$run/proxy.log" &
  fi
  pid=$!
  PIDS+=("$pid")
  python3 - "$port" "$mode" "$n" "$MODE" <<'PY' || { tail -n 20 "$run/proxy.log" >&2; exit 1; }
import http.client, sys, time
port, mode, n, proxy = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60); c.connect(); break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the proxy did not start")
def outcome(r):
    # cachegate: `Cache-Status: cachegate; hit; ...` or `...; fwd=miss; ...`; nginx: X-Cache-Status.
    if proxy == "nginx":
        return (r.getheader("x-cache-status") or "").lower()
    s = r.getheader("cache-status") or ""
    return "hit" if "; hit" in s else "miss" if "fwd=miss" in s else s
def get(path):
    c.request("GET", path, headers={"Host": "bench.test"}); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    return outcome(r)
get("/hit/1?id=0")  # warm the key (and the connection) in every run
for i in range(n):
    got = get("/hit/1?id=0" if mode == "hit" else f"/miss/1?id={i + 1}")
    if got != mode:
        sys.exit(f"request {i + 1} of a {mode} run was {got!r}")
PY
  if [[ $MODE == nginx ]]; then kill -TERM "$pid"; else kill -INT "$pid"; fi
  wait "$pid" || true
  if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$out" "$KEEP/callgrind.$MODE-$STORE-$mode-$n-$access.out"; fi
  # Less cachegate's metrics recorder start-up: quanta calibrates its clock there, and
  # that loop's length varies by millions of instructions from run to run.
  local total calib
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' | head -1)
  calib=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null | awk '/telemetry::init_metrics \[/ { gsub(",", "", $1); print $1; exit }')
  echo $((total - ${calib:-0}))
}

report() { # report MODE LABEL [ACCESS_LOG]
  local a b
  a=$(count "$1" "$N1" "${3:-on}")
  b=$(count "$1" "$N2" "${3:-on}")
  echo "$2$1: $(((b - a) / (N2 - N1))) instructions per request ($N1: $a, $N2: $b)"
}

if [[ $MODE == nginx ]]; then
  echo "nginx $(nginx -v 2>&1 | sed 's/.*: //'), master_process off, one process" >&2
  logs=(on off)
  [[ $NGINX_ACCESS_LOG == both ]] || logs=("$NGINX_ACCESS_LOG")
  for access in "${logs[@]}"; do
    for mode in hit miss; do report "$mode" "nginx, access log $access, " "$access"; done
  done
else
  [[ $STORE == memory ]] || echo "store: $STORE, redis-server $(redis-server --version | grep -o 'v=[0-9.]*')" >&2
  for mode in hit miss; do report "$mode" ""; done
fi
