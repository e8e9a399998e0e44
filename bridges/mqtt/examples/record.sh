#!/usr/bin/env bash
# Records the next transmission on a channel into a WAV file, as a pcm16 intercom
# hears it: waits for audio on out/audio, strips each frame's 4-byte sequence
# number, fills lost frames with silence, stops at out/end. Needs only
# mosquitto_sub and sox.
#
#   usage: record.sh OUT.wav
#   env:   PREFIX, MQTT_OPTS as for talk.sh
set -euo pipefail

out=${1:?usage: record.sh OUT.wav}
prefix=${PREFIX:-walkie/lobby}
read -r -a mqtt <<< "${MQTT_OPTS:--h 127.0.0.1}"

raw=$(mktemp)
trap 'rm -f "$raw"' EXIT
# One line per message: topic, then the payload in hex (binary-safe).
exec 3< <(exec mosquitto_sub "${mqtt[@]}" -q 1 -F '%t %x' -t "$prefix/out/audio" -t "$prefix/out/end")
sub=$!
echo "recording; waiting for a transmission on $prefix" >&2
next=-1
while read -r -u 3 topic hex; do
    case $topic in
        */out/end) [[ $next -ge 0 ]] && break || continue ;;
    esac
    seq=$(( 16#${hex:0:8} ))
    if (( next >= 0 && seq < next )); then continue; fi   # late or duplicate
    if (( next >= 0 && seq > next )); then               # lost: keep the timing
        head -c $(( (seq - next) * 640 )) /dev/zero >> "$raw"
    fi
    # The audio after the 4-byte header, hex → bytes.
    printf '%b' "$(sed 's/../\\x&/g' <<< "${hex:8}")" >> "$raw"
    next=$(( seq + 1 ))
done
kill "$sub" 2>/dev/null || true
sox -t raw -r 16000 -c 1 -b 16 -e signed-integer -L "$raw" "$out"
echo "recorded $(( $(wc -c < "$raw") / 32 )) ms into $out" >&2
