#!/usr/bin/env bash
# Soak test, outside CI: the real walkie-bridge binary (release build, pinned to
# core 0) carries 20 channels of synthetic MQTT traffic (10 Opus passthrough,
# 10 pcm16 transcoding; 8 s talks, every one archived as a voice message on a
# real Synapse) for MINUTES minutes (default 30). Prints RSS, CPU and frame
# latency every 30 s, then start vs end and the drift (least-squares slope);
# writes docs/bench/soak.csv. Needs what scripts/setup.sh installs.
#
#   scripts/soak.sh            # 30 minutes
#   scripts/soak.sh 5          # 5 minutes
#   scripts/soak.sh 120 DIR    # 2 hours, soak.csv and soak.log into DIR
#
# The full output is also kept in docs/bench/soak.log (or DIR/soak.log).
# Compare CPU by the "steady state" line, not by the first window: the channels
# are staggered, so the first 30 s carry only ~2/3 of the traffic (and CPU).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
MINUTES=${1:-30}
OUT=$(realpath -m "${2:-$ROOT/docs/bench}")
cd "$ROOT"
mkdir -p "$OUT"
echo "soak: building (release), then ${MINUTES} min of traffic; load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
cargo bench --locked --bench soak --no-run
cargo bench --locked --bench soak -- --minutes "$MINUTES" --out "$OUT" 2>&1 | tee "$OUT/soak.log"
