#!/usr/bin/env bash
# Run a command under a CPU limit like a Kubernetes pod's (CFS quota), leaving everything else on the
# box (e.g. the load generator) unconstrained.
#
#   service/soak/cpu_limit.sh NAME QUOTA_US PERIOD_US -- COMMAND [ARGS...]
#
# Creates the cgroup NAME with QUOTA_US of CPU time per PERIOD_US (50000 100000 = 0.5 core, as a pod's
# `limits.cpu: 500m`), moves this shell into it and execs COMMAND, so the command and every thread it
# starts are limited. cgroup v2 (`cpu.max` under /sys/fs/cgroup, or /sys/fs/cgroup/unified if the cpu
# controller is enabled there) or v1 (`cpu.cfs_quota_us` under /sys/fs/cgroup/cpu). Needs root and a
# writable cgroup filesystem. The cgroup's throttling counters (`cpu.stat`: nr_periods, nr_throttled,
# throttled_time/throttled_usec) show how often the limit bit; its path is printed on stderr.
# The (empty) cgroup is left behind after the command exits: `rmdir` it.
set -euo pipefail
NAME=${1:?NAME}
QUOTA=${2:?QUOTA_US}
PERIOD=${3:?PERIOD_US}
shift 3
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 NAME QUOTA_US PERIOD_US -- COMMAND [ARGS...]" >&2; exit 64; }

v2_root=""
for d in /sys/fs/cgroup /sys/fs/cgroup/unified; do
  if [ -f "$d/cgroup.controllers" ] && grep -qw cpu "$d/cgroup.controllers"; then v2_root=$d; break; fi
done
if [ -n "$v2_root" ]; then
  grep -qw cpu "$v2_root/cgroup.subtree_control" || echo +cpu >"$v2_root/cgroup.subtree_control"
  CG=$v2_root/$NAME
  mkdir -p "$CG"
  echo "$QUOTA $PERIOD" >"$CG/cpu.max"
elif [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
  CG=/sys/fs/cgroup/cpu/$NAME
  mkdir -p "$CG"
  echo "$PERIOD" >"$CG/cpu.cfs_period_us"
  echo "$QUOTA" >"$CG/cpu.cfs_quota_us"
else
  echo "$0: no cgroup cpu controller found (neither v2 cpu.max nor v1 cpu.cfs_quota_us)" >&2
  exit 69
fi
echo $$ >"$CG/cgroup.procs"
echo "cpu_limit: $CG: ${QUOTA} us per ${PERIOD} us" >&2
exec "$@"
