# Shared by run.sh and compare.sh: stopping what a script started, by PID.

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
