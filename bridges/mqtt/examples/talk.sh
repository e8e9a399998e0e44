#!/usr/bin/env bash
# Sends an audio file as one talk from an intercom, as a pcm16 device would:
# start, 20 ms frames of 16 kHz S16LE with a 4-byte big-endian sequence number,
# paced in real time, end. Needs only sox and mosquitto_pub.
#
#   usage: talk.sh FILE [DEVICE] [TALKER]
#   env:   PREFIX     topic prefix of the bridge endpoint (default walkie/lobby)
#          MQTT_OPTS  mosquitto_pub connection options (default "-h 127.0.0.1"),
#                     e.g. "-h broker.lan -p 8883 --cafile ca.pem -u panel -P secret"
set -euo pipefail

file=${1:?usage: talk.sh FILE [DEVICE] [TALKER]}
device=${2:-sox}
talker=${3:-$device}
prefix=${PREFIX:-walkie/lobby}
read -r -a mqtt <<< "${MQTT_OPTS:--h 127.0.0.1}"

raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
# Any format sox reads → 16 kHz, mono, signed 16-bit little-endian, headerless.
sox "$file" -t raw -r 16000 -c 1 -b 16 -e signed-integer -L "$raw"
frames=$(( ($(wc -c < "$raw") + 639) / 640 ))

# The sequence number as 4 raw bytes (printf's octal escapes; no xxd needed).
be32() {
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o' $(($1 >> 24 & 255)) $(($1 >> 16 & 255)) $(($1 >> 8 & 255)) $(($1 & 255)))"
}

mosquitto_pub "${mqtt[@]}" -q 1 -t "$prefix/in/$device/start" -m "{\"talker\":\"$talker\"}"
start=$(date +%s%N)
for (( seq = 0; seq < frames; seq++ )); do
    # conv=sync pads the last, short frame with zeros to the full 640 bytes.
    { be32 "$seq"; dd if="$raw" bs=640 skip="$seq" count=1 conv=sync status=none; } |
        mosquitto_pub "${mqtt[@]}" -q 0 -t "$prefix/in/$device/audio" -s
    # Real-time pacing against the start, so mosquitto_pub's own time does not add up.
    ahead=$(( start + (seq + 1) * 20000000 - $(date +%s%N) ))
    if (( ahead > 0 )); then sleep "0.$(printf '%09d' "$ahead")"; fi
done
mosquitto_pub "${mqtt[@]}" -q 1 -t "$prefix/in/$device/end" -n
echo "sent $frames frames ($(( frames * 20 )) ms) as $device" >&2
