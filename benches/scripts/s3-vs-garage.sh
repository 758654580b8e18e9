#!/usr/bin/env bash
# One S3 load generator (`tessera-bench s3`) against a fresh `tessera dev`
# (TLS inside the cluster, every write durable) and a fresh 3-node Garage
# (replication 3, its defaults: no fsync) on 127.0.0.1, one after the
# other in the same run (docs/BENCHMARKS.md, "S3: Tessera against Garage").
#
# Needs `garage` on PATH (`cargo install garage --version 2.3.0 --locked`,
# a long build) and `cargo build --release` of this repository. Extra
# arguments go to `tessera-bench s3` (e.g. `--secs 5 --json`); KEEP=1 keeps
# the data directories in /tmp/tessera-s3-vs-garage for a look afterwards;
# TESSERA_DEV_ARGS adds flags to `tessera dev` (e.g. `--gateway-cache-bytes 0`);
# NO_PEER=1 runs Tessera alone (no Garage needed: for A/B runs of Tessera).
# Not part of CI: it stores gigabytes and takes minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
B="${CARGO_TARGET_DIR:-target}/release"
[ -n "${NO_PEER:-}" ] || command -v garage > /dev/null || { echo "garage is not on PATH: cargo install garage --version 2.3.0 --locked"; exit 1; }
[ -x "$B/tessera-s3" ] || { echo "build first: cargo build --release"; exit 1; }
W=/tmp/tessera-s3-vs-garage
rm -rf "$W"; mkdir -p "$W"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
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
rpc_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
for i in 1 2 3; do
    cat > "$W/garage$i.toml" << EOF
metadata_dir = "$W/garage-meta-$i"
data_dir = "$W/garage-data-$i"
db_engine = "lmdb"
replication_factor = 3
compression_level = "none"
rpc_bind_addr = "127.0.0.1:390$i"
rpc_public_addr = "127.0.0.1:390$i"
rpc_secret = "$rpc_secret"
[s3_api]
api_bind_addr = "127.0.0.1:391$i"
s3_region = "garage"
[admin]
api_bind_addr = "127.0.0.1:990$i"
EOF
    garage -c "$W/garage$i.toml" server > "$W/garage$i.log" 2>&1 &
    pids+=($!)
done
g() { garage -c "$W/garage1.toml" "$@"; }
for _ in $(seq 1 60); do g status > /dev/null 2>&1 && break; sleep 1; done
for i in 2 3; do
    id=$(garage -c "$W/garage$i.toml" node id -q)
    g node connect "$id" > /dev/null
done
sleep 2
for id in $(g status | awk '/NO ROLE/ {print $1}'); do
    g layout assign -z dc1 -c 100G "$id" > /dev/null
done
g layout apply --version 1 > /dev/null
gkid="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
gsec=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
g key import "$gkid" "$gsec" -n bench --yes > /dev/null
g bucket create bench > /dev/null
g bucket allow --read --write --owner bench --key bench > /dev/null

gdirs="$W/garage-data-1,$W/garage-data-2,$W/garage-data-3,$W/garage-meta-1,$W/garage-meta-2,$W/garage-meta-3"
peer=(--peer "garage,http://127.0.0.1:3911,$gkid,$gsec,garage,bench,$gdirs")
fi
# Tessera's disk use: the chunk servers' live bytes (their segment files
# are preallocated) plus what metad's directories take.
tdu="echo \$(( \$('$B/tessera-bench' live-bytes --cluster '$W/cluster.toml') + \$(du -s --block-size=1 '$W'/tessera/metad-* | awk '{s+=\$1} END {print s}') ))"
"$B/tessera-bench" s3 \
    --tessera "tessera,$s3,$kid,$sec,us-east-1,bench" \
    --tessera-du "$tdu" \
    "${peer[@]}" \
    "$@"
