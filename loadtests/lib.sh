# shellcheck shell=bash
# Shared by the load-test scripts (run.sh, compare.sh, redis.sh, entries.sh, callgrind.sh):
# free ports, waiting for a process to answer, and stopping what a script started, by PID.

# free_port: a loopback port that is free now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_http NAME PID URL: until URL gives any HTTP answer, at most 30 s. Returns 1 (with
# the tail of $WORK/NAME.log) if the process exited or never answered; under `set -e` a
# bare call ends the script.
wait_http() {
  local name=$1 pid=$2 url=$3 code
  for _ in $(seq 150); do
    kill -0 "$pid" 2>/dev/null || { echo "$name exited early:" >&2; tail -n 20 "$WORK/$name.log" >&2; return 1; }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
    [[ $code != 000 && -n $code ]] && return 0
    sleep 0.2
  done
  echo "$name did not answer at $url within 30 s:" >&2
  tail -n 20 "$WORK/$name.log" >&2
  return 1
}

# stop_all PID...: SIGTERM (graceful shutdown), up to 5 s to exit, then SIGKILL.
stop_all() {
  local pid alive
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq 50); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [[ $alive == 1 ]] || break
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
}
