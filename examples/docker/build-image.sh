#!/usr/bin/env bash
# Builds the example's web image (default tag infrakit-example-web:1) from image/ and the host's
# static busybox, without pulling anything.
set -euo pipefail
tag="${1:-infrakit-example-web:1}"
here="$(cd "$(dirname "$0")" && pwd)"
busybox="${BUSYBOX:-/bin/busybox}"
if ! [ -x "$busybox" ]; then
    echo "need a static busybox at $busybox (Debian: apt-get install busybox-static)" >&2
    exit 1
fi
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
cp -r "$here/image/." "$context/"
cp "$busybox" "$context/busybox"
# The legacy builder (no buildx on these machines) warns about itself: show its output only
# when the build fails.
if ! out="$(docker build -q -t "$tag" "$context" 2>&1)"; then
    echo "$out" >&2
    exit 1
fi
echo "$tag"
