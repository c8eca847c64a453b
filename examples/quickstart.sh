#!/usr/bin/env bash
# The main job: build infrakit, start the daemon (embedded store, built-in plugins) on a
# temporary data directory, commit the cattle example, watch it converge, delete an instance
# file and watch it come back, then stop the daemon. Everything is the real binary.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
cargo build --quiet
infrakit() { ./target/debug/infrakit "$@"; }

data=$(mktemp -d -t infrakit-quickstart-XXXXXX)
export INFRAKIT_DATA_DIR="$data"
echo "== data dir: $data"

infrakit serve --poll-interval 500ms >"$data/daemon.log" 2>&1 &
daemon=$!
trap 'kill $daemon 2>/dev/null; wait $daemon 2>/dev/null || true' EXIT
for _ in $(seq 100); do infrakit status >/dev/null 2>&1 && break; sleep 0.1; done
infrakit status

echo; echo "== plugins"
infrakit plugin ls

echo; echo "== commit examples/cattle/group.json and wait for it to converge"
infrakit group commit examples/cattle/group.json --wait
infrakit group describe workers

victim=$(ls "$data/scratch/instance-file" | head -n 1)
echo; echo "== delete ${victim%.json}: the daemon notices and replaces it"
rm "$data/scratch/instance-file/$victim"
for _ in $(seq 50); do
  [ "$(ls "$data/scratch/instance-file" | wc -l)" -eq 3 ] && ! [ -e "$data/scratch/instance-file/$victim" ] && break
  sleep 0.1
done
infrakit group describe workers

echo; echo "== events"
infrakit events --group workers

echo; echo "== stop the daemon (SIGTERM); the instances stay, the spec is stored"
kill -TERM $daemon; wait $daemon || true
trap - EXIT
ls "$data/scratch/instance-file"
