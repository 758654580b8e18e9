#!/bin/bash
# Where the CPU and the wake-ups go under load, thread by thread: starts a
# fresh `tessera dev`, runs `tessera-bench load` (one size, 32 in flight,
# 10 s per phase) and samples every thread of every dev process (and the
# load generator) over 4 s of the PUT phase.
#
# usage: benches/scripts/threads.sh SIZE_KIB [BIN_DIR]
#   BIN_DIR: a full set of release binaries (default target/release).
# Prints the phase figures, then per thread: voluntary context switches
# per second and CPU (% of one core), sorted by switches. Threads that
# switched fewer than 50 times a second and used less than 5 % of a core
# are left out (a saturated executor thread seldom switches: the gateway's
# at 77 % of a core switched 9 times a second).
set -u
. "$(dirname "$0")/dev-cluster.sh"
S=${1:?usage: threads.sh SIZE_KIB [BIN_DIR]}
B=${2:-target/release}
D=$(mktemp -d /tmp/threads.XXXX)
dev_start "$B" "$D"
"$B/tessera-bench" load --cluster "$D/cluster.toml" --sizes-kib "$S" --concurrency 32 --secs 10 > "$D/load.out" 2>&1 &
L=$!
# pid:tid process/thread voluntary-switches cpu-ticks
snap() {
  for p in $(pgrep -P "$DEV") "$L"; do
    for t in /proc/"$p"/task/*; do
      [ -r "$t/status" ] || continue
      echo "$p:$(basename "$t") $(cat /proc/"$p"/comm)/$(tr ' ' _ < "$t/comm")" \
        "$(awk '/^voluntary_ctxt_switches/{print $2}' "$t/status")" \
        "$(awk '{print $14+$15}' "$t/stat")"
    done
  done 2>/dev/null | sort
}
sleep 3; snap > "$D/a"; sleep 4; snap > "$D/b"
wait "$L"
grep -E '^(put|get)_' "$D/load.out" | awk '{print $1, $2, $3}'
# ticks are 1/100 s: (ticks over 4 s) / 4 = % of a core
join "$D/a" "$D/b" | awk '{cs=($6-$3)/4; cpu=($7-$4)/4; if (cs>=50 || cpu>=5) printf "%-40s %8.0f switches/s %6.1f %% cpu\n", $2, cs, cpu}' \
  | sort -k2 -n -r
dev_stop; rm -rf "$D"
