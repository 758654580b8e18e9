#!/bin/bash
# Alternating A/B of whole-store load runs: each round starts a fresh
# `tessera dev` from every variant's binaries in turn, runs
# `tessera-bench load` against it and prints the PUT/GET figures.
#
# usage: benches/scripts/ab-load.sh ROUNDS SIZE_KIB DIR_A DIR_B [DIR ...]
#   DIR_*: directories holding a full set of release binaries (tessera,
#   tessera-bench, tessera-gateway, metad, chunkd, healer, tessera-s3),
#   e.g. copies of target/release at two commits.
# Each run: 4 KiB or SIZE_KIB objects, 32 in flight, 10 s per phase.
# Single runs vary by ±20 % on a shared VM: use 5 or more rounds.
# LOAD_ARGS: more flags for `tessera-bench load` (e.g. --local-socket).
set -u
. "$(dirname "$0")/dev-cluster.sh"
R=$1; S=$2; shift 2
for r in $(seq 1 "$R"); do for v in "$@"; do
  D=$(mktemp -d /tmp/abdata.XXXX)
  dev_start "$v" "$D"
  "$v/tessera-bench" load --cluster "$D/cluster.toml" --sizes-kib "$S" --concurrency 32 --secs 10 ${LOAD_ARGS:-} 2>&1 \
    | grep -E '^(put|get)_' | awk -v v="$(basename "$v")" '{print v, $1, $2, $3}'
  dev_stop; rm -rf "$D"
done; done
