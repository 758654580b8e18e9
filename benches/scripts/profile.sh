#!/bin/bash
# Where one dev process spends its CPU under load: starts a fresh
# `tessera dev`, runs `tessera-bench load` (one size, 32 in flight, 10 s per
# phase) and, 3 s into the PUT phase, records that process with `perf`
# (frame-pointer call graphs, 1,999 Hz, 4 s) while `vmstat` watches the
# machine.
#
# usage: benches/scripts/profile.sh SIZE_KIB PATTERN [NTH] [BIN_DIR]
#   PATTERN: matched against the dev processes' command lines (pgrep -f),
#     e.g. tessera-gateway, chunkd, metad; NTH picks among several (default 1).
#   BIN_DIR: a full set of release binaries (default target/release).
# Prints the phase figures, `vmstat 1` over the recording (us/sy/id/wa),
# the process's threads by share of samples, and its symbols with at least
# 1 % of the samples (self time). The perf data is kept; its path is
# printed last (delete it when done).
set -u
. "$(dirname "$0")/dev-cluster.sh"
S=${1:?usage: profile.sh SIZE_KIB PATTERN [NTH] [BIN_DIR]}
PAT=${2:?usage: profile.sh SIZE_KIB PATTERN [NTH] [BIN_DIR]}
N=${3:-1}
B=${4:-target/release}
command -v perf > /dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
D=$(mktemp -d /tmp/profile.XXXX)
dev_start "$B" "$D"
P=$(pgrep -P "$DEV" -f "$PAT" | sed -n "${N}p")
if [ -z "$P" ]; then
  echo "no dev process matches '$PAT' (number $N)" >&2; dev_stop; rm -rf "$D"; exit 1
fi
"$B/tessera-bench" load --cluster "$D/cluster.toml" --sizes-kib "$S" --concurrency 32 --secs 10 > "$D/load.out" 2>&1 &
L=$!
sleep 3
vmstat 1 5 > "$D/vmstat" &
perf record -F 1999 -g -p "$P" -o "$D/perf.data" -- sleep 4 > /dev/null 2>&1
wait "$L"
grep -E '^(put|get)_' "$D/load.out" | awk '{print $1, $2, $3}'
cat "$D/vmstat"
perf report -i "$D/perf.data" --sort comm --stdio -g none 2>/dev/null | grep -E '^ +[0-9]'
perf report -i "$D/perf.data" --no-children --percent-limit 1 --stdio -g none 2>/dev/null | grep -E '^ +[0-9]'
dev_stop
rm -rf "$D/data"
echo "perf data: $D/perf.data"
