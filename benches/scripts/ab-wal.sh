#!/bin/bash
# Alternating A/B of the WAL benchmark at 64 appends of 4 KiB in flight on
# one partition, a fresh directory per run.
#
# usage: benches/scripts/ab-wal.sh ROUNDS DIR_A DIR_B [DIR ...]
#   DIR_*: directories holding tessera-bench and metad (the bench starts the
#   metad next to itself). Prints: variant, ops/s, fio's QD1 IOPS of the
#   same run, ratio.
set -u
R=$1; shift
W=$(mktemp -d /tmp/walab.XXXX)
for r in $(seq 1 "$R"); do for v in "$@"; do
  rm -rf "$W/run"
  timeout 300 "$v/tessera-bench" wal --wal-partitions 1 --wal-phases 4:64 --dir "$W/run" 2>/dev/null \
    | grep -E "^append_4kib_c64 " | sort -u | awk -v v="$(basename "$v")" '{print v, $2, $4, $5}'
done; done
rm -rf "$W"
