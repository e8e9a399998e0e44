#!/usr/bin/env python3
"""Splits a folded CPU profile of the bridge (inferno-collapse-perf output) into
the stages a passthrough frame goes through, and gives each its share of the
samples and its microseconds per frame.

    scripts/profile_stages.py FOLDED US_PER_FRAME

A sample belongs to the first stage (in the order below) that names a function
on its stack; what names none is "other".
"""
import sys

# (stage, substrings of a function name on the stack), first match wins.
STAGES = [
    ("recorder: Opus decode for the waveform", ["OpusDecoder::decode"]),
    ("recorder: Ogg writing and the rest", ["archive::worker::serve"]),
    ("MQTT: rumqttc network and state (both endpoints)", ["poll_broker", "rumqttc::"]),
    ("MQTT endpoint logic (both endpoints)", ["walkie_mqtt::"]),
    ("hub: floor and fan-out", ["hub::channel::ChannelHub"]),
    ("room endpoint: frames to the recorder", ["room_endpoint::RoomEndpoint"]),
    ("live endpoint (no browser connected)", ["live::endpoint::LiveEndpoint"]),
    ("Matrix: appservice, crypto, sync, database", ["matrix_sdk", "walkie_bridge::matrix", "sqlx", "hyper", "reqwest"]),
    ("tokio scheduler, timers and epoll", ["tokio::runtime", "epoll_wait"]),
]


def main():
    folded, us_per_frame = sys.argv[1], float(sys.argv[2])
    totals = {name: 0 for name, _ in STAGES}
    totals["other"] = 0
    grand = 0
    with open(folded, encoding="utf-8") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            n = int(count)
            grand += n
            frames = stack.split(";")
            stage = next(
                (name for name, keys in STAGES if any(k in fr for fr in frames for k in keys)),
                "other",
            )
            totals[stage] += n
    print(f"{'share':>6} {'µs/frame':>9}  stage")
    for name, n in sorted(totals.items(), key=lambda kv: -kv[1]):
        share = n / grand if grand else 0.0
        print(f"{share * 100:5.1f}% {share * us_per_frame:9.2f}  {name}")
    print(f"{100.0:5.1f}% {us_per_frame:9.2f}  the bridge's CPU per frame in")


main()
