#!/usr/bin/env bash
# The main job: build infrakit, start the daemon (embedded store, built-in plugins) on a
# temporary data directory, commit the cattle example, watch it converge, delete an instance
# file and watch it come back, then stop the daemon. Everything is the real binary. Exits
# non-zero if any step does not happen as described.
set -euo pipefail
cd "$(dirname "$0")/.."

rustup target add wasm32-wasip2 >/dev/null 2>&1 || true
# INFRAKIT_BIN: a binary built already (CI passes the one `cargo test` built, to save a
# second build of the same code with other dev-dependency features).
if [ -n "${INFRAKIT_BIN:-}" ]; then
  bin=$INFRAKIT_BIN
else
  cargo build --quiet
  bin=./target/debug/infrakit
fi

data=$(mktemp -d -t infrakit-quickstart-XXXXXX)
export INFRAKIT_DATA_DIR="$data"
echo "== data dir: $data"

# The binary itself is the background job, so $! is the daemon's pid (not a subshell's).
"$bin" serve --poll-interval 500ms >"$data/daemon.log" 2>&1 &
daemon=$!
stop_daemon() {
  kill -TERM "$daemon" 2>/dev/null || return 0
  wait "$daemon" 2>/dev/null || true
}
trap stop_daemon EXIT
fail() {
  echo "quickstart FAILED: $*" >&2
  echo "--- daemon log ($data/daemon.log):" >&2
  tail -n 30 "$data/daemon.log" >&2
  exit 1
}

ready=
for _ in $(seq 300); do
  if "$bin" status >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$daemon" 2>/dev/null || fail "the daemon exited"
  sleep 0.1
done
[ -n "$ready" ] || fail "the daemon did not become ready within 30 s"
"$bin" status

echo; echo "== plugins"
"$bin" plugin ls

echo; echo "== commit examples/cattle/group.json and wait for it to converge"
"$bin" group commit examples/cattle/group.json --wait --timeout 2m
"$bin" group describe workers

instances="$data/scratch/instance-file"
victim=$(ls "$instances" | head -n 1)
[ -n "$victim" ] || fail "no instance files in $instances"
echo; echo "== delete ${victim%.json}: the daemon notices and replaces it"
rm "$instances/$victim"
healed=
for _ in $(seq 200); do
  if [ "$(ls "$instances" | wc -l)" -eq 3 ] && ! [ -e "$instances/$victim" ]; then
    healed=1
    break
  fi
  sleep 0.1
done
[ -n "$healed" ] || fail "${victim%.json} was not replaced within 20 s"
"$bin" group describe workers

echo; echo "== events"
"$bin" events --group workers

echo; echo "== stop the daemon (SIGTERM); the instances stay, the spec is stored"
trap - EXIT
kill -TERM "$daemon"
status=0
wait "$daemon" || status=$?
[ "$status" -eq 0 ] || fail "the daemon exited with status $status on SIGTERM"
kill -0 "$daemon" 2>/dev/null && fail "the daemon (pid $daemon) is still running"
ls "$instances"
[ "$(ls "$instances" | wc -l)" -eq 3 ] || fail "expected 3 instances after shutdown"
echo; echo "quickstart OK: converged, healed, stopped cleanly"
