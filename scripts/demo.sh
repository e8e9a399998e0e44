#!/usr/bin/env bash
# The README's first command: set up, then run the bridge between a local Synapse and
# a local Mumble server and a local mosquitto. `scripts/demo.sh --mumble 1.5` runs it
# against mumble-server 1.5 instead of murmurd 1.3.4.
#
# What you see (examples/demo.rs): Synapse, murmurd and mosquitto start on loopback
# with the bridge between the room #ops, the Mumble channel Ops and the MQTT prefix
# walkie/lobby. A Mumble user (a pymumble client) speaks and the transmission appears
# in the room as a voice message from its puppet; the Matrix user opts in with
# `!wt on`, posts a voice message, and the Mumble user hears it; an MQTT intercom
# talks, the Mumble user hears it and it is archived in the room. The demo then
# prints where to look: the room, the live-talk page, /status, the MQTT topics.
#
# Run from a terminal, the demo keeps running until Ctrl-C so you can look around.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --locked --example demo -- "$@"
