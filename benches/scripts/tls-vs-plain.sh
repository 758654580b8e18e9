#!/usr/bin/env bash
# The cost of TLS and access keys on the whole store: `tessera-bench load`
# against a fresh `tessera dev` with TLS (the default), then against a fresh
# `tessera dev --insecure`, one right after the other (docs/BENCHMARKS.md,
# "With TLS and access keys"). Run from the repository after
# `cargo build --release`; prints both reports.
set -euo pipefail
cd "$(dirname "$0")/../.."
B="${CARGO_TARGET_DIR:-target}/release"
run() { # $1 = tls|plain
    local d="/tmp/tessera-tls-bench-$1"
    rm -rf "$d"; mkdir -p "$d"
    local flag=""; [ "$1" = plain ] && flag="--insecure"
    "$B/tessera" dev --data "$d/data" --cluster "$d/cluster.toml" $flag > "$d/dev.out" 2>&1 &
    local dev=$!
    for _ in $(seq 1 120); do [ -f "$d/cluster.toml" ] && break; sleep 1; done
    [ -f "$d/cluster.toml" ] || { cat "$d/dev.out"; kill -INT "$dev"; exit 1; }
    echo "== $1"
    "$B/tessera-bench" load --cluster "$d/cluster.toml" || true
    kill -INT "$dev"; wait "$dev" || true
    rm -rf "$d"
}
run tls
run plain
