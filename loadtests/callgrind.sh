#!/usr/bin/env bash
# Instructions per cache hit and per miss of a cachegate binary, counted by callgrind
# (repeatable on a shared machine, unlike req/s). Each figure is the difference between
# a run of N1 and a run of N2 sequential requests over one keep-alive connection,
# divided by N2-N1, so start-up and shutdown cancel out (the metrics recorder's clock
# calibration, which does not, is subtracted).
#
#   loadtests/callgrind.sh target/release/cachegate [N1 N2]
#
# Memory store, the dev origin (`cachegate origin`, 70-byte JSON), tracing at the
# default level, OTel off. Misses use distinct ids on a route keyed by `id`.
set -euo pipefail
BIN=${1:?usage: callgrind.sh BIN [N1 N2]}
N1=${2:-200}
N2=${3:-1200}
command -v valgrind >/dev/null || { echo "valgrind not installed (apt-get install valgrind)"; exit 1; }
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
OPORT=$(free_port)
"$BIN" origin --listen "127.0.0.1:$OPORT" --cache-control max-age=3600 >/dev/null 2>&1 &
cat > "$dir/routes.yaml" <<YAML
listen: 127.0.0.1:PORT
upstreams:
  origin: { url: "http://127.0.0.1:$OPORT", timeout: 10s }
defaults: { ttl: 3600s, jitter: 0 }
store: { memory: { max_size: 256MiB } }
${EXTRA_YAML:-}
routes:
  - path: /{*rest}
    upstream: origin
    key: { query: [id] }
YAML

# count MODE N: total instructions of a proxy that served N requests of MODE.
count() {
  local mode=$1 n=$2 port out
  port=$(free_port)
  sed "s/PORT/$port/" "$dir/routes.yaml" > "$dir/r-$port.yaml"
  out="$dir/cg-$mode-$n.out"
  valgrind --tool=callgrind --callgrind-out-file="$out" \
    "$BIN" --config "$dir/r-$port.yaml" >/dev/null 2>&1 &
  local pid=$!
  python3 - "$port" "$mode" "$n" <<'PY'
import http.client, sys, time
port, mode, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for _ in range(600):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30); c.connect(); break
    except OSError:
        time.sleep(0.1)
def get(path):
    c.request("GET", path, headers={"Host": "bench.test"}); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
get("/hit/1?id=0")  # warm the key (and the connection) in every run
for i in range(n):
    get("/hit/1?id=0" if mode == "hit" else f"/miss/1?id={i + 1}")
PY
  kill -INT "$pid"; wait "$pid" || true
  # CALLGRIND_KEEP=DIR keeps the profiles (callgrind_annotate --inclusive=yes DIR/...).
  if [ -n "${CALLGRIND_KEEP:-}" ]; then mkdir -p "$CALLGRIND_KEEP"; cp "$out" "$CALLGRIND_KEEP/"; fi
  # Less the metrics recorder's start-up: quanta calibrates its clock there, and that
  # loop's length varies by millions of instructions from run to run.
  local total calib
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }' | head -1)
  calib=$(callgrind_annotate --inclusive=yes "$out" 2>/dev/null | awk '/telemetry::init_metrics \[/ { gsub(",", "", $1); print $1; exit }')
  echo $(( total - ${calib:-0} ))
}
for mode in hit miss; do
  a=$(count "$mode" "$N1"); b=$(count "$mode" "$N2")
  echo "$mode: $(( (b - a) / (N2 - N1) )) instructions per request ($N1: $a, $N2: $b)"
done
