#!/bin/bash
# One WAL benchmark run (64 appends of 4 KiB in flight on one partition, or
# PHASE=SIZE_KIB:IN_FLIGHT, e.g. PHASE=4:1; a fresh directory) that also
# measures CPU per append: the three metad replicas' and the bench's
# user+system ticks (/proc/PID/stat) over 7 s of the append phase, divided
# by the appends the phase averaged in that time. At 1 in flight each append
# is a raft round of its own, so that figure is the CPU of one round.
#
# usage: benches/scripts/wal-cpu.sh DIR [DIR ...]
#   DIR: a directory holding tessera-bench and metad (the bench starts the
#   metad next to itself). Prints, per DIR: appends/s, fio's QD1 IOPS of the
#   same run, and microseconds of CPU per append (all metad replicas
#   together, and the bench).
set -u
ticks() { # sum of utime+stime of the given pids, in clock ticks
  local s=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && s=$((s + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$s"
}
HZ=$(getconf CLK_TCK)
PHASE=${PHASE:-4:64}
FIGURE="append_$(echo "$PHASE" | sed -E 's/^([0-9]+):([0-9]+)$/\1kib_c\2/')"
for B in "$@"; do
  W=$(mktemp -d /tmp/walab.XXXX)
  timeout 300 "$B/tessera-bench" wal --wal-partitions 1 --wal-phases "$PHASE" --dir "$W/run" > "$W/out" 2>&1 &
  TP=$!
  for _ in $(seq 1 600); do grep -q "fio 4 KiB" "$W/out" 2>/dev/null && break; sleep 0.2; done
  sleep 4
  BP=$(pgrep -P "$TP" -x tessera-bench)
  MP=$(pgrep -P "$BP" -x metad | tr '\n' ' ')
  M0=$(ticks $MP); B0=$(ticks "$BP")
  sleep 7
  M1=$(ticks $MP); B1=$(ticks "$BP")
  wait "$TP"
  set -- $(grep -E "^$FIGURE " "$W/out" | head -1 | awk '{print $2, $4}') 0 0
  awk -v n="$(basename "$B")" -v ops="$1" -v fio="$2" -v m=$((M1 - M0)) -v b=$((B1 - B0)) -v hz="$HZ" \
    'BEGIN { d = ops * 7; if (d == 0) d = 1;
             printf "%s appends/s %.0f fio %.0f metad_us_per_append %.1f bench_us_per_append %.1f\n",
                    n, ops, fio, m * 1e6 / hz / d, b * 1e6 / hz / d }'
  rm -rf "$W"
done
