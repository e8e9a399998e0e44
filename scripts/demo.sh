#!/usr/bin/env bash
# The README's first command: set up, then run the bridge against a local Synapse.
#
# What you see (examples/demo.rs): Synapse starts on loopback with the bridge's
# appservice registration; a user creates #ops; the bridge joins it. A talker on the
# radio side speaks and the transmission appears in the room as a voice message from
# its puppet; the user opts in with `!wt on`, posts a voice message, and the radio
# side hears it. The radio side is the bridge's test endpoint standing in for
# Mumble, MQTT and radios until their endpoints land (issues #4-#6).
#
# Run from a terminal, the demo keeps running until Ctrl-C so you can look around.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --locked --example demo
