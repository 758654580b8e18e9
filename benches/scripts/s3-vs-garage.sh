#!/usr/bin/env bash
# One S3 load generator (`tessera-bench s3`) against a fresh `tessera dev`
# (TLS inside the cluster, every write durable) and a fresh 3-node Garage
# (replication 3, its defaults: no fsync) on 127.0.0.1, one after the
# other in the same run (docs/BENCHMARKS.md, "S3: Tessera against Garage").
#
# Needs `garage` on PATH (`cargo install garage --version 2.5.0 --locked`,
# a long build) and `cargo build --release` of this repository. Extra
# arguments go to `tessera-bench s3` (e.g. `--secs 5 --json`); KEEP=1 keeps
# the data directories in /tmp/tessera-s3-vs-garage for a look afterwards;
# TESSERA_DEV_ARGS adds flags to `tessera dev` (e.g. `--gateway-cache-bytes 0`);
# NO_PEER=1 runs Tessera alone (no Garage needed: for A/B runs of Tessera).
# Not part of CI: it stores gigabytes and takes minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
. benches/scripts/garage-up.sh
B="${CARGO_TARGET_DIR:-target}/release"
[ -x "$B/tessera-s3" ] || { echo "build first: cargo build --release"; exit 1; }
W=/tmp/tessera-s3-vs-garage
rm -rf "$W"; mkdir -p "$W"
cleanup() {
    garage_down
    [ -n "${dev:-}" ] && { kill -INT "$dev" 2> /dev/null || true; wait "$dev" 2> /dev/null || true; }
    [ -z "${KEEP:-}" ] && rm -rf "$W"
    return 0
}
trap cleanup EXIT

# --- Tessera ---
# shellcheck disable=SC2086 # TESSERA_DEV_ARGS is a list of flags
"$B/tessera" dev --data "$W/tessera" --cluster "$W/cluster.toml" ${TESSERA_DEV_ARGS:-} > "$W/dev.out" 2>&1 &
dev=$!
for _ in $(seq 1 120); do [ -f "$W/cluster.toml" ] && break; sleep 1; done
[ -f "$W/cluster.toml" ] || { cat "$W/dev.out"; exit 1; }
s3=$(sed -n 's/^s3 = "\(.*\)"/\1/p' "$W/cluster.toml")
kid=$(sed -n 's/^key_id = "\(.*\)"/\1/p' "$W/cluster.toml")
sec=$(sed -n 's/^secret = "\(.*\)"/\1/p' "$W/cluster.toml")

# --- Garage: 3 nodes, replication 3, compression off (Tessera stores bytes as given) ---
peer=()
if [ -z "${NO_PEER:-}" ]; then
    garage_up "$W/garage"
    peer=(--peer "$GARAGE_PEER")
fi
# Tessera's disk use: the chunk servers' live bytes (their segment files
# are preallocated) plus what metad's directories take.
tdu="echo \$(( \$('$B/tessera-bench' live-bytes --cluster '$W/cluster.toml') + \$(du -s --block-size=1 '$W'/tessera/metad-* | awk '{s+=\$1} END {print s}') ))"
"$B/tessera-bench" s3 \
    --tessera "tessera,$s3,$kid,$sec,us-east-1,bench" \
    --tessera-du "$tdu" \
    "${peer[@]}" \
    "$@"
