#!/bin/bash
# CPU per process over a window of a load run: starts a fresh `tessera dev`,
# runs `tessera-bench load` (one size, 32 in flight, 10 s per phase: the
# PUT phase first, then the GET phase) and reads every dev process's and
# the load generator's CPU time, and the machine's (/proc/stat), at T0 and
# T1 seconds after the load started.
#
# usage: benches/scripts/procs.sh SIZE_KIB T0 T1 [BIN_DIR]
#   e.g. `procs.sh 1024 14 19` watches the GET phase of 1 MiB objects.
#   BIN_DIR: a full set of release binaries (default target/release).
#   LOAD_ARGS: more flags for `tessera-bench load` (e.g. --local-socket).
# Prints the phase figures, each process's CPU in % of one core, their
# sum, and the machine's user/system/idle/iowait/softirq in % of one core.
set -u
. "$(dirname "$0")/dev-cluster.sh"
S=${1:?usage: procs.sh SIZE_KIB T0 T1 [BIN_DIR]}
T0=${2:?usage: procs.sh SIZE_KIB T0 T1 [BIN_DIR]}
T1=${3:?usage: procs.sh SIZE_KIB T0 T1 [BIN_DIR]}
B=${4:-target/release}
[ "$T1" -gt "$T0" ] || { echo "T1 must be after T0" >&2; exit 1; }
D=$(mktemp -d /tmp/procs.XXXX)
dev_start "$B" "$D"
# shellcheck disable=SC2086 # LOAD_ARGS is a list of flags
"$B/tessera-bench" load --cluster "$D/cluster.toml" --sizes-kib "$S" --concurrency 32 --secs 10 ${LOAD_ARGS:-} > "$D/load.out" 2>&1 &
L=$!
# pid name cpu-ticks (1/100 s)
snap() {
  for p in $(pgrep -P "$DEV") "$L"; do
    echo "$p $(cat /proc/"$p"/comm) $(awk '{print $14+$15}' /proc/"$p"/stat)"
  done 2>/dev/null | sort
}
sleep "$T0"; snap > "$D/a"; head -1 /proc/stat > "$D/sa"
sleep $((T1 - T0)); snap > "$D/b"; head -1 /proc/stat > "$D/sb"
wait "$L"
grep -E '^(put|get)_' "$D/load.out" | awk '{print $1, $2, $3}'
join "$D/a" "$D/b" | awk -v d=$((T1 - T0)) '{c = ($5 - $3) / d; t += c; printf "%-16s %6.1f %% cpu\n", $2, c} END {printf "all              %6.1f %% cpu\n", t}'
paste "$D/sa" "$D/sb" | awk -v d=$((T1 - T0)) '{printf "machine: user %.0f, system %.0f, idle %.0f, iowait %.0f, softirq %.0f (%% of a core)\n", ($13 - $2) / d, ($15 - $4) / d, ($16 - $5) / d, ($17 - $6) / d, ($19 - $8) / d}'
dev_stop; rm -rf "$D"
