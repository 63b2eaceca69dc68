#!/usr/bin/env bash
# HTTPS beside plain HTTP, in one run: hits and misses through the TLS listener vs the
# plain listener, and misses to an HTTPS origin vs a plain one. The HTTPS origin is a
# second cachegate (cache: false) terminating TLS in front of the dev origin, so the
# plain comparison goes through the same kind of pass-through hop.
#
#   loadtests/tls.sh target/release/cachegate   (DURATION=10s CONNS=32)
set -euo pipefail
BIN=${1:?usage: tls.sh BIN}
D=${DURATION:-10s}
C=${CONNS:-32}
here=$(cd "$(dirname "$0")" && pwd)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" \
  -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
O=$(port); "$BIN" origin --listen 127.0.0.1:$O --cache-control max-age=3600 >/dev/null 2>&1 &
# The pass-through hops: plain and TLS, same binary, nothing cached.
HP=$(port); HT=$(port)
cat > "$dir/hop.yaml" <<Y
listen: 127.0.0.1:$HP
tls: { listen: "127.0.0.1:$HT", cert_file: $dir/cert.pem, key_file: $dir/key.pem }
upstreams: { o: { url: "http://127.0.0.1:$O" } }
routes: [ { path: "/{*rest}", upstream: o, cache: false } ]
Y
"$BIN" --config "$dir/hop.yaml" >/dev/null 2>&1 &
# The proxies under test: A to the plain hop, B to the TLS hop; A also has a TLS listener.
AP=$(port); AT=$(port); BP=$(port)
cat > "$dir/a.yaml" <<Y
listen: 127.0.0.1:$AP
tls: { listen: "127.0.0.1:$AT", cert_file: $dir/cert.pem, key_file: $dir/key.pem }
upstreams: { o: { url: "http://127.0.0.1:$HP" } }
defaults: { ttl: 3600s }
routes: [ { path: "/{*rest}", upstream: o } ]
Y
cat > "$dir/b.yaml" <<Y
listen: 127.0.0.1:$BP
upstreams: { o: { url: "https://127.0.0.1:$HT", tls: { ca_file: $dir/cert.pem } } }
defaults: { ttl: 3600s }
routes: [ { path: "/{*rest}", upstream: o } ]
Y
"$BIN" --config "$dir/a.yaml" >/dev/null 2>&1 &
"$BIN" --config "$dir/b.yaml" >/dev/null 2>&1 &
sleep 3
for u in http://127.0.0.1:$AP/hit/1 https://127.0.0.1:$AT/hit/1 http://127.0.0.1:$BP/hit/1; do
  curl -skf "$u" >/dev/null || { echo "not up: $u"; exit 1; }
done
rps() { wrk -t2 -c"$C" -d"$D" "$@" 2>/dev/null | awk '/Requests\/sec/ {print $2}'; }
echo "case,req/s"
echo "hit plain listener,$(rps http://127.0.0.1:$AP/hit/1)"
echo "hit TLS listener,$(rps https://127.0.0.1:$AT/hit/1)"
echo "miss plain listener,$(RUN_ID=p$RANDOM rps -s "$here/conf/miss.lua" http://127.0.0.1:$AP)"
echo "miss TLS listener,$(RUN_ID=t$RANDOM rps -s "$here/conf/miss.lua" https://127.0.0.1:$AT)"
echo "miss to plain origin,$(RUN_ID=q$RANDOM rps -s "$here/conf/miss.lua" http://127.0.0.1:$AP)"
echo "miss to HTTPS origin,$(RUN_ID=s$RANDOM rps -s "$here/conf/miss.lua" http://127.0.0.1:$BP)"
