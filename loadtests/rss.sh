#!/usr/bin/env bash
# Samples a process's resident memory and cachegate's counted store size while a load runs,
# then prints them against the configured bound. Used by `run.sh memory`; also on its own:
#
#   loadtests/rss.sh PID MAX_BYTES ADMIN_URL OUT_FILE     (stops when PID exits or on TERM)
#   loadtests/rss.sh --report OUT_FILE MAX_BYTES BASELINE_BYTES
#
# OUT_FILE gets one line per second: seconds rss_bytes store_bytes store_entries.
set -euo pipefail

gauge() { # gauge METRICS_TEXT NAME: the first sample of NAME, 0 when absent
  awk -v n="$2" '$1 ~ "^"n"[{ ]" || $1 == n { print $2; found=1; exit } END { if (!found) print 0 }' <<<"$1"
}

if [[ ${1:-} == --report ]]; then
  out=$2 max=$3 base=${4:-0}
  awk -v max="$max" -v base="$base" '
    { t=$1; rss=$2; bytes=$3; n=$4; if (rss > peak) peak = rss; last_rss = rss; last_bytes = bytes; last_n = n
      if (NR == 1 || t - shown >= 5) { printf "  t=%4ds  rss %8.1f MiB  (%.2fx max_size)  counted %8.1f MiB  entries %d\n", t, rss/1048576, rss/max, bytes/1048576, n; shown = t } }
    END {
      if (NR == 0) { print "no samples"; exit 1 }
      printf "max_size %.1f MiB, baseline %.1f MiB\n", max/1048576, base/1048576
      printf "peak rss %.1f MiB = %.2fx max_size; (peak - baseline) / max_size = %.2f\n", peak/1048576, peak/max, (peak-base)/max
      printf "last: rss %.1f MiB, counted %.1f MiB in %d entries\n", last_rss/1048576, last_bytes/1048576, last_n
    }' "$out"
  exit 0
fi

pid=$1 max=$2 admin=$3 out=$4
: >"$out"
start=$(date +%s)
trap 'exit 0' TERM INT
while kill -0 "$pid" 2>/dev/null; do
  rss_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
  metrics=$(curl -s --max-time 1 "$admin/metrics" || true)
  bytes=$(gauge "$metrics" cachegate_store_bytes)
  entries=$(gauge "$metrics" cachegate_store_entries)
  echo "$(( $(date +%s) - start )) $((rss_kb * 1024)) ${bytes%.*} ${entries%.*}" >>"$out"
  sleep 1
done
