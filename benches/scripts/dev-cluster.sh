# Sourced by the benchmark scripts: start and stop a fresh `tessera dev`.
#
# dev_start BIN_DIR DIR: starts BIN_DIR/tessera dev with its data in DIR/data
#   and its cluster file at DIR/cluster.toml (log: DIR/dev.log), waits until
#   it is up (at most DEV_START_WAIT_SECS) and its gateway has taken its
#   read cache's memory (at most DEV_WARM_WAIT_SECS), and sets DEV to its pid. Exits
#   the script, saying where to look, when it does not come up.
# dev_stop: stops it with Ctrl-C (a clean shutdown) and waits for it.

# Longest wait for a dev cluster to write its cluster file, in seconds.
DEV_START_WAIT_SECS=60
# Settling time after that, in seconds (elections, chunk servers registering).
DEV_SETTLE_SECS=2
# Longest wait for the gateway to take its read cache's memory (a quarter of
# the machine's, pretouched on a thread of its own: 5.5 s for 6 GiB on the
# bench VM, ~2.7 s of it after the cluster file appears), in seconds. Measuring while it runs would charge a load run's
# first phase with it.
DEV_WARM_WAIT_SECS=20

dev_start() {
  local bin=$1 dir=$2
  "$bin/tessera" dev --data "$dir/data" --cluster "$dir/cluster.toml" > "$dir/dev.log" 2>&1 &
  DEV=$!
  local waited=0
  until grep -q "cluster file" "$dir/dev.log"; do
    if ! kill -0 "$DEV" 2>/dev/null || [ "$waited" -ge $((DEV_START_WAIT_SECS * 2)) ]; then
      echo "tessera dev ($bin) did not come up within ${DEV_START_WAIT_SECS} s; its log: $dir/dev.log" >&2
      kill -INT "$DEV" 2>/dev/null; wait "$DEV" 2>/dev/null
      exit 1
    fi
    sleep 0.5; waited=$((waited + 1))
  done
  sleep "$DEV_SETTLE_SECS"
  waited=0
  until grep -q "read cache's memory" "$dir/data/logs/gateway.log" 2>/dev/null \
      || [ "$waited" -ge $((DEV_WARM_WAIT_SECS * 2)) ]; do
    sleep 0.5; waited=$((waited + 1))
  done
}

dev_stop() {
  kill -INT "$DEV"; wait "$DEV"
}
