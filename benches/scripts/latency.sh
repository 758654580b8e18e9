#!/bin/bash
# Where a write's time goes: starts a fresh `tessera dev`, runs
# `tessera-bench load` (one size, C in flight, 10 s per phase: PUTs, then
# GETs) and, over 5 s of the PUT phase, reads every process's metrics: the
# gateway's write stages (`tessera_gateway_write_stage_seconds`: WAL
# append, shard writes, commit, as the gateway sees them, batching waits
# included) and each daemon's own request latency (`…_request_seconds`,
# from the call reaching the service to its answer).
#
# usage: benches/scripts/latency.sh SIZE_KIB [CONCURRENCY] [BIN_DIR]
#   BIN_DIR: a full set of release binaries (default target/release).
# Prints the phase figures, then per process address and metric the calls
# (or writes) per second and their mean latency over the window. The gap
# between a stage and the daemon's own figure for its calls is the wait
# in the gateway's batches, the transport and both ends' scheduling.
set -u
. "$(dirname "$0")/dev-cluster.sh"
S=${1:?usage: latency.sh SIZE_KIB [CONCURRENCY] [BIN_DIR]}
C=${2:-32}
B=${3:-target/release}
command -v curl > /dev/null || apt-get install -y curl > /dev/null \
  || { echo "curl is needed to read the metrics (apt-get install curl)" >&2; exit 1; }
# The window: from 3 s into the PUT phase, for 5 s.
WINDOW_START_SECS=3
WINDOW_SECS=5
D=$(mktemp -d /tmp/latency.XXXX)
dev_start "$B" "$D"
grep -o 'metrics *= *"[^"]*"' "$D/cluster.toml" | sed 's/.*"\(.*\)"/\1/' > "$D/addrs"
"$B/tessera-bench" load --cluster "$D/cluster.toml" --sizes-kib "$S" --concurrency "$C" --secs 10 > "$D/load.out" 2>&1 &
L=$!
scrape() {
  for a in $(cat "$D/addrs"); do
    curl -s --max-time 5 "http://$a/metrics" \
      | grep -E '^tessera_[a-z]+_(request|write_stage)_seconds_(sum|count)' | sed "s|^|$a |"
  done
}
sleep "$WINDOW_START_SECS"; scrape > "$D/a"
sleep "$WINDOW_SECS"; scrape > "$D/b"
wait "$L"
grep -E '^(put|get)_' "$D/load.out" | awk '{print $1, $2, $3}'
join <(awk '{print $1"|"$2, $3}' "$D/a" | sort) <(awk '{print $1"|"$2, $3}' "$D/b" | sort) \
  | awk -v w="$WINDOW_SECS" '{
      d = $3 - $2; split($1, k, "|"); n = k[2]; sub(/_(sum|count)\{/, "{", n)
      if ($1 ~ /_sum\{/) s[k[1] " " n] = d; else c[k[1] " " n] = d
    } END {
      for (x in c) if (c[x] > 0) printf "%-72s %8.0f/s %8.3f ms\n", x, c[x] / w, 1000 * s[x] / c[x]
    }' | sort
dev_stop
rm -rf "$D"
