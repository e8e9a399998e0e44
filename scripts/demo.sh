#!/usr/bin/env bash
# The README's first command: set up, then run the bridge between a local Synapse and
# a local murmurd.
#
# What you see (examples/demo.rs): Synapse and murmurd start on loopback with the
# bridge between the room #ops and the Mumble channel Ops. A Mumble user (a pymumble
# client) speaks and the transmission appears in the room as a voice message from
# its puppet; the Matrix user opts in with `!wt on`, posts a voice message, and the
# Mumble user hears it.
#
# Run from a terminal, the demo keeps running until Ctrl-C so you can look around.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --locked --example demo
