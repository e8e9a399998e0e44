#!/usr/bin/env bash
# Where an idle bridge's heap goes, outside CI. Runs the e2e bench's `--only idle`
# (2 and 64 channels, each 2 MQTT endpoints on mosquitto and a Matrix room) with
# the bridge built on the system allocator and heaptrack's malloc hooks preloaded
# into it alone; the bridge is killed (SIGKILL) at the moment its RSS is read, so
# the trace's "leaked" allocations are what was live then. Writes, into DIR
# (default docs/bench/heap):
#   idle-N.txt        the live heap of N channels by allocation site (heaptrack_print)
#   idle-64-vs-2.txt  the difference: what 62 more idle channels hold
#   idle-channel.txt  that difference per channel, one line per allocation site
# and keeps the traces (idle-N.heaptrack.zst) for `heaptrack --analyze`.
#
#   scripts/heap-profile.sh [DIR]
#
# Needs what scripts/setup.sh installs, plus Debian's heaptrack.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/docs/bench/heap}")
INTERPRET=/usr/lib/heaptrack/libexec/heaptrack_interpret
if ! command -v heaptrack_print >/dev/null || [ ! -x "$INTERPRET" ]; then
    echo "heap-profile: needs heaptrack (apt-get install heaptrack)" >&2
    exit 2
fi
TRACES=$(mktemp -d)
trap 'rm -rf "$TRACES"' EXIT
mkdir -p "$OUT"
cd "$ROOT"
WALKIE_BENCH_HEAPTRACK_DIR=$TRACES cargo bench --locked --features system-allocator \
    --bench e2e -- --only idle
for name in idle-2 idle-64; do
    "$INTERPRET" < "$TRACES/$name.raw" | zstd -q -c > "$OUT/$name.heaptrack.zst"
    heaptrack_print -f "$OUT/$name.heaptrack.zst" --print-leaks 1 --print-peaks 0 \
        --print-allocators 0 --print-temporary 0 --peak-limit 40 > "$OUT/$name.txt"
done
heaptrack_print -f "$OUT/idle-64.heaptrack.zst" --diff "$OUT/idle-2.heaptrack.zst" \
    --print-leaks 1 --print-peaks 0 --print-allocators 0 --print-temporary 0 \
    --peak-limit 40 > "$OUT/idle-64-vs-2.txt"
"$ROOT/scripts/heap_summary.py" "$OUT/idle-64-vs-2.txt" 62 > "$OUT/idle-channel.txt"
head -25 "$OUT/idle-channel.txt"
echo "heap-profile: $OUT/idle-channel.txt (per channel), idle-64-vs-2.txt, idle-{2,64}.txt"
