#!/usr/bin/env bash
# The passthrough ceiling, outside CI (issue #16 item 3): `cargo bench --bench e2e
# -- --only ceiling` ramps Opus passthrough streams (the bridge alone on core 0,
# the bench's own MQTT server and Synapse on core 1) until more than 1 % of frames
# are late, with `perf record` on the bridge at every step. Then, for the highest
# step that ran (the core at or past its ceiling), writes into DIR (default
# docs/bench):
#   ceiling.log               the run
#   ceiling-flamegraph.svg    where the bridge's CPU went (inferno)
#   ceiling.folded            the same stacks, folded
#   ceiling-stages.txt        µs per frame of each stage (scripts/profile_stages.py)
#
#   scripts/ceiling.sh [DIR]
#   WALKIE_CEILING_STEPS=250,500 scripts/ceiling.sh /tmp/ceiling   # other steps
#
# Needs what scripts/setup.sh installs, Debian's linux-perf, and inferno (installed
# with cargo if missing).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(realpath -m "${1:-$ROOT/docs/bench}")
if ! command -v perf >/dev/null; then
    echo "ceiling: needs perf (apt-get install linux-perf)" >&2
    exit 2
fi
if ! command -v inferno-flamegraph >/dev/null; then
    cargo install --locked inferno
fi
PERF_DIR=$(mktemp -d)
trap 'rm -rf "$PERF_DIR"' EXIT
mkdir -p "$OUT"
cd "$ROOT"
cargo bench --locked --bench e2e --no-run
WALKIE_BENCH_PERF_DIR=$PERF_DIR cargo bench --locked --bench e2e -- --only ceiling 2>&1 \
    | tee "$OUT/ceiling.log"
LAST=$(ls "$PERF_DIR" | sed -n 's/^ceiling-\([0-9]*\)\.perf\.data$/\1/p' | sort -n | tail -1)
if [ -z "$LAST" ]; then
    echo "ceiling: no step was profiled" >&2
    exit 1
fi
US=$(grep -oP "^ceiling N=$LAST +.*\(\K[0-9.]+(?= µs per frame\))" "$OUT/ceiling.log" | head -1)
perf script -i "$PERF_DIR/ceiling-$LAST.perf.data" 2>/dev/null \
    | inferno-collapse-perf > "$OUT/ceiling.folded"
inferno-flamegraph --title "walkie-bridge, $LAST Opus passthrough streams on one core" \
    < "$OUT/ceiling.folded" > "$OUT/ceiling-flamegraph.svg"
"$ROOT/scripts/profile_stages.py" "$OUT/ceiling.folded" "$US" | tee "$OUT/ceiling-stages.txt"
echo "ceiling: profile of N=$LAST in $OUT/ceiling-flamegraph.svg"
