#!/usr/bin/env bash
# Memory after an overload episode: normal load -> overload -> idle, the server's RSS at each stage.
#
#   service/soak/overload_rss.sh NORMAL_STREAMS OVERLOAD_STREAMS OUT_DIR [kws-service args...]
#
# Starts target/release/kws-service on 127.0.0.1:50151 (metrics 127.0.0.1:9190) with the given
# arguments (default: the service defaults plus --max-streams 100000, so only the process-wide queue
# limit and load shedding stand in the way), then:
#   1. NORMAL_STREAMS real-time streams for 30 s (kws-loadtest), 20 s idle  -> RSS "before";
#   2. OVERLOAD_STREAMS streams for 30 s (ramp 10 s), far beyond capacity   -> peak RSS (VmHWM);
#   3. 30 s idle (three heap trims at the default 10-s interval)            -> RSS "after".
# Pass: after <= before + max(64 MiB, 25 % of before). Writes OUT_DIR/{rss.txt,normal.txt,
# overload.txt,overload.json,server.log}; exit 1 if the bound is exceeded. Loopback only, bounded in
# time (~2.5 min) and streams.
set -euo pipefail
NORMAL=${1:?NORMAL_STREAMS}
OVER=${2:?OVERLOAD_STREAMS}
OUT=${3:?OUT_DIR}
shift 3
BIN=${BIN:-target/release}
mkdir -p "$OUT"
ARGS=("$@")
[ ${#ARGS[@]} -gt 0 ] || ARGS=(--max-streams 100000)
"$BIN/kws-service" --listen 127.0.0.1:50151 --metrics-listen 127.0.0.1:9190 "${ARGS[@]}" \
  2>"$OUT/server.log" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q '"serving"\|serving' "$OUT/server.log" 2>/dev/null && break
  sleep 0.2
done
kib() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PID/status"; }
note() { echo "$1 VmRSS=$(kib VmRSS) kB VmHWM=$(kib VmHWM) kB" | tee -a "$OUT/rss.txt"; }
: >"$OUT/rss.txt"
note "start"
LT=("$BIN/kws-loadtest" --addr 127.0.0.1:50151 --server-pid "$PID" --no-progress)
"${LT[@]}" --streams "$NORMAL" --duration-s 30 --ramp-up-s 5 >"$OUT/normal.txt" 2>&1 || true
sleep 20
note "before (after ${NORMAL} streams, idle 20 s)"
BEFORE=$(kib VmRSS)
"${LT[@]}" --streams "$OVER" --duration-s 30 --ramp-up-s 10 --json "$OUT/overload.json" \
  >"$OUT/overload.txt" 2>&1 || true
note "end of overload (${OVER} streams)"
sleep 30
note "after (idle 30 s)"
AFTER=$(kib VmRSS)
kill -TERM $PID
wait $PID && echo "drain: exit 0" | tee -a "$OUT/rss.txt"
trap - EXIT
LIMIT=$((BEFORE + (BEFORE / 4 > 65536 ? BEFORE / 4 : 65536)))
if [ "$AFTER" -le "$LIMIT" ]; then
  echo "ok: after ${AFTER} kB <= bound ${LIMIT} kB" | tee -a "$OUT/rss.txt"
else
  echo "FAILED: after ${AFTER} kB > bound ${LIMIT} kB" | tee -a "$OUT/rss.txt"
  exit 1
fi
