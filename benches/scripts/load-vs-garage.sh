#!/usr/bin/env bash
# Issue 6's figures against Garage measured in the same run: a fresh
# `tessera dev` (defaults: TLS inside the cluster, every write durable) and
# a fresh 3-node Garage (replication 3, its defaults: no fsync) on
# 127.0.0.1, both up; `tessera-bench load` measures Tessera through its
# Cap'n Proto client, then Garage through the S3 load generator with the
# same phases, and prints each Tessera figure with Garage's as its ceiling.
#
# usage: [BIN=DIR] benches/scripts/load-vs-garage.sh [LOAD_ARGS...]
#   BIN: release binaries (default: $CARGO_TARGET_DIR/release, else
#   target/release). LOAD_ARGS go to `tessera-bench load` (e.g. --secs 5,
#   --json, --local-socket).
# Needs garage on PATH (benches/scripts/garage-up.sh says how). Not part of
# CI: it stores gigabytes and takes ~5 minutes. KEEP=1 keeps the data
# directories under /tmp/tessera-load-vs-garage.
set -euo pipefail
here=$(dirname "$0")
. "$here/dev-cluster.sh"
. "$here/garage-up.sh"
B=${BIN:-${CARGO_TARGET_DIR:-$here/../../target}/release}
[ -x "$B/tessera-bench" ] || { echo "no tessera-bench in $B: cargo build --release" >&2; exit 1; }
W=/tmp/tessera-load-vs-garage
rm -rf "$W"; mkdir -p "$W"
DEV=
cleanup() {
  [ -n "$DEV" ] && { kill -INT "$DEV" 2> /dev/null || true; wait "$DEV" 2> /dev/null || true; }
  garage_down
  [ -z "${KEEP:-}" ] && rm -rf "$W"
  return 0
}
trap cleanup EXIT
dev_start "$B" "$W"
garage_up "$W/garage"
"$B/tessera-bench" load --cluster "$W/cluster.toml" --peer "$GARAGE_PEER" "$@"
