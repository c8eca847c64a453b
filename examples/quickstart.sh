#!/usr/bin/env bash
# Builds infrakit and uses it passively, like a conventional tool: provision instances through
# the built-in instance-file plugin, shape them with flavor-vanilla, describe, destroy.
# Everything happens in a temporary data directory.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --quiet
infrakit() { ./target/debug/infrakit "$@"; }

data=$(mktemp -d -t infrakit-quickstart-XXXXXX)
export INFRAKIT_DATA_DIR="$data"
echo "== data dir: $data"

echo "== plugins"
infrakit plugin ls

echo "== flavor-vanilla prepares a spec (init script + tags)"
spec=$(infrakit flavor prepare --plugin flavor-vanilla \
  --properties examples/quickstart/vanilla.json --size 2 --group web --index 1 \
  examples/quickstart/instance.json)
echo "$spec"

echo "== provision two instances"
a=$(echo "$spec" | infrakit instance provision --plugin instance-file)
b=$(echo "$spec" | infrakit instance provision --plugin instance-file)
echo "provisioned $a and $b"

echo "== describe (all, then --tag role=web)"
infrakit instance describe --plugin instance-file
infrakit instance describe --plugin instance-file --tag role=web -o json

echo "== each instance is a file"
ls -l "$data/scratch/instance-file"

echo "== destroy $a"
infrakit instance destroy --plugin instance-file "$a"
infrakit instance describe --plugin instance-file
