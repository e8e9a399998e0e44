#!/usr/bin/env bash
# The README's first command: set up, build, and run the bridge's main job on loopback.
#
# Status: the Matrix side (issue #3) and the Mumble endpoint (issue #4) are not built
# yet, so there is no local Synapse or murmurd to start. This script does everything
# that is real today — checks the example configuration, prints the appservice
# registration a homeserver would load — and then starts the daemon, which names the
# endpoints it cannot run yet and exits. It never pretends to bridge anything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --locked --release --bin walkie-bridge
bin=${CARGO_TARGET_DIR:-target}/release/walkie-bridge

echo
echo "== walkie-bridge check-config config/example.toml"
"$bin" check-config config/example.toml

echo
echo "== walkie-bridge generate-registration -c config/example.toml"
"$bin" generate-registration -c config/example.toml

echo
echo "== walkie-bridge run -c config/example.toml"
status=0
"$bin" run -c config/example.toml || status=$?
echo
echo "walkie-bridge run exited with $status: the endpoints above arrive with their issues."
echo "Until then, 'scripts/test.sh' shows what works: the floor arbiter, the channel hub"
echo "and the audio core, tested on real speech."
