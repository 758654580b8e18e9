# Sourced by the benchmark scripts: a fresh 3-node Garage on 127.0.0.1
# (replication 3, lmdb, compression off, its defaults otherwise: no fsync),
# one bucket `bench` and one key allowed on it.
#
# garage_up DIR: starts the three nodes with their data under DIR, waits
#   until they form a cluster and sets GARAGE_PIDS (array), GARAGE_PEER
#   (the `tessera-bench --peer` spec: garage,ENDPOINT,KEY,SECRET,REGION,
#   BUCKET,DATA_DIRS...). Exits the script, saying where to look, when
#   Garage does not come up.
# garage_down: stops the three nodes and waits for them.
#
# Needs `garage` on PATH: cargo install garage --version 2.5.0 --locked
# (about 13 minutes on 2 cores; once per machine).

# Longest wait for the first node to answer `garage status`, in seconds.
GARAGE_START_WAIT_SECS=60
GARAGE_PIDS=()

garage_up() {
  local w=$1 i id
  command -v garage > /dev/null || { echo "garage is not on PATH: cargo install garage --version 2.5.0 --locked" >&2; exit 1; }
  mkdir -p "$w"
  local rpc_secret
  rpc_secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  GARAGE_PIDS=()
  for i in 1 2 3; do
    cat > "$w/garage$i.toml" << EOT
metadata_dir = "$w/garage-meta-$i"
data_dir = "$w/garage-data-$i"
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
EOT
    garage -c "$w/garage$i.toml" server > "$w/garage$i.log" 2>&1 &
    GARAGE_PIDS+=($!)
  done
  local waited=0
  until garage -c "$w/garage1.toml" status > /dev/null 2>&1; do
    if [ "$waited" -ge "$GARAGE_START_WAIT_SECS" ]; then
      echo "garage did not come up within ${GARAGE_START_WAIT_SECS} s; its logs: $w/garage*.log" >&2
      garage_down; exit 1
    fi
    sleep 1; waited=$((waited + 1))
  done
  for i in 2 3; do
    id=$(garage -c "$w/garage$i.toml" node id -q)
    garage -c "$w/garage1.toml" node connect "$id" > /dev/null
  done
  sleep 2
  for id in $(garage -c "$w/garage1.toml" status | awk '/NO ROLE/ {print $1}'); do
    garage -c "$w/garage1.toml" layout assign -z dc1 -c 100G "$id" > /dev/null
  done
  garage -c "$w/garage1.toml" layout apply --version 1 > /dev/null
  local gkid gsec
  gkid="GK$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
  gsec=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
  garage -c "$w/garage1.toml" key import "$gkid" "$gsec" -n bench --yes > /dev/null
  garage -c "$w/garage1.toml" bucket create bench > /dev/null
  garage -c "$w/garage1.toml" bucket allow --read --write --owner bench --key bench > /dev/null
  local dirs="$w/garage-data-1,$w/garage-data-2,$w/garage-data-3,$w/garage-meta-1,$w/garage-meta-2,$w/garage-meta-3"
  GARAGE_PEER="garage,http://127.0.0.1:3911,$gkid,$gsec,garage,bench,$dirs"
}

garage_down() {
  local p
  for p in "${GARAGE_PIDS[@]}"; do kill "$p" 2> /dev/null || true; done
  for p in "${GARAGE_PIDS[@]}"; do wait "$p" 2> /dev/null || true; done
  GARAGE_PIDS=()
}
