#!/usr/bin/env bash
# Load shedding on a pod whose `max_streams` is above what its CPU limit can hold (issue 16, item 3).
#
#   service/soak/shed_under_quota.sh CONFIG QUOTA_US STREAMS OUT_DIR [kws-loadtest args...]
#
# Starts target/release/kws-service with CONFIG (listen 127.0.0.1:50061, metrics 127.0.0.1:9161, as
# in results/issue16/quota/pod.toml) inside a cgroup limited to QUOTA_US per 100 ms
# (service/soak/cpu_limit.sh; 50000 = 0.5 core), leaves the load generator unconstrained, offers
# STREAMS real-time streams (`kws-loadtest --streams STREAMS --duration-s 60 --ramp-up-s ${RAMP_S:-10}`), samples
# the server's shedding signals every second from its metrics endpoint, then drains the server.
# Writes OUT_DIR/{machine.txt,loadtest.txt,loadtest.json,signals.tsv,cpu.stat.before,cpu.stat.after,
# metrics-end.txt,server.log}. Loopback only; ~2 min.
set -euo pipefail
CONFIG=${1:?CONFIG}
QUOTA=${2:?QUOTA_US}
STREAMS=${3:?STREAMS}
OUT=${4:?OUT_DIR}
shift 4
BIN=${BIN:-target/release}
HERE=$(dirname "$0")
CG=kws-quota
mkdir -p "$OUT"
{ date -u; uptime; nproc; grep -m1 'model name' /proc/cpuinfo; } >"$OUT/machine.txt"
"$HERE/cpu_limit.sh" "$CG" "$QUOTA" 100000 -- "$BIN/kws-service" --config "$CONFIG" \
  --log-format text 2>"$OUT/server.log" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q 'serving' "$OUT/server.log" 2>/dev/null && break
  sleep 0.2
done
for d in /sys/fs/cgroup/cpu/$CG /sys/fs/cgroup/$CG /sys/fs/cgroup/unified/$CG; do
  [ -f "$d/cpu.stat" ] && STAT=$d/cpu.stat && break
done
cat "$STAT" >"$OUT/cpu.stat.before"
# Sum of a metric's series; NA when the scrape failed (a throttled server can miss the deadline).
metric() { awk -v m="$1" '$1 == m || index($1, m"{") == 1 {s += $2; n++} END {if (n) printf "%s", s; else printf "NA"}'; }
sample() {
  printf 't_s\tactive\truntime_lag_s\tcpu_used_cores\tqueued_bytes\trejected\tstreams_behind_total\tcpu_s\tnr_throttled\n'
  local t0=$SECONDS
  while kill -0 "$PID" 2>/dev/null; do
    local m
    m=$(curl -s --max-time 3 http://127.0.0.1:9161/metrics || true)
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' $((SECONDS - t0)) \
      "$(metric kws_active_streams <<<"$m")" "$(metric kws_runtime_lag_seconds <<<"$m")" \
      "$(metric kws_cpu_used_cores <<<"$m")" \
      "$(metric kws_queued_bytes <<<"$m")" "$(metric kws_rejected_total <<<"$m")" \
      "$(metric kws_streams_behind_total <<<"$m")" "$(metric process_cpu_seconds_total <<<"$m")" \
      "$(awk '$1 == "nr_throttled" {print $2}' "$STAT")"
    sleep 1
  done
}
sample >"$OUT/signals.tsv" &
SAMPLER=$!
"$BIN/kws-loadtest" --addr 127.0.0.1:50061 --server-pid "$PID" --no-progress --streams "$STREAMS" \
  --duration-s 60 --ramp-up-s "${RAMP_S:-10}" --json "$OUT/loadtest.json" "$@" >"$OUT/loadtest.txt" 2>&1 || true
cat "$STAT" >"$OUT/cpu.stat.after"
curl -s http://127.0.0.1:9161/metrics | grep -v '^#' | grep -E '^(kws_|process_)' >"$OUT/metrics-end.txt" || true
kill -TERM $PID
wait $PID && echo "drain: exit 0" >>"$OUT/machine.txt"
trap - EXIT
wait $SAMPLER 2>/dev/null || true
uptime >>"$OUT/machine.txt"
tail -n 3 "$OUT/loadtest.txt"
