#!/usr/bin/env bash
# Regenerates the seed corpora in seeds/<target>/: a few small, valid inputs
# per target, from which the fuzzers mutate. Kept small on purpose (a few KB
# each): libFuzzer runs faster on short inputs, and the corpus it grows from
# them stays out of git (corpus/ is ignored).
#
# Speech comes from espeak-ng with the text of bridges/endpoint/tests/common;
# MP3 and M4A seeds are the heads of the committed fixtures of
# bridges/endpoint/tests/fixtures (no encoder for them is needed here).
# Needs: espeak-ng, sox, opusenc, python3.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fixtures=../bridges/endpoint/tests/fixtures

espeak-ng -w "$tmp/espeak.wav" "Walkie bridge radio check."
sox "$tmp/espeak.wav" -r 48000 -c 1 "$tmp/s48.wav" trim 0 1
sox "$tmp/espeak.wav" -r 48000 -c 2 "$tmp/s48st.wav" trim 0 0.3

mkdir -p seeds/{ogg_opus,voice_import,mumble_control,mumble_udp,mqtt_payload,live_message,config}
# What Element records: mono Opus in 20 ms packets (passes through).
opusenc --quiet --bitrate 12 --framesize 20 "$tmp/s48.wav" seeds/ogg_opus/speech-mono.opus
# Stereo, 60 ms packets: re-encoded on import.
opusenc --quiet --bitrate 16 --framesize 60 "$tmp/s48st.wav" seeds/ogg_opus/speech-stereo-60ms.opus
cp seeds/ogg_opus/speech-mono.opus seeds/voice_import/
sox "$tmp/espeak.wav" -r 8000 -c 1 -b 16 seeds/voice_import/speech-8k.wav trim 0 0.25
sox "$tmp/espeak.wav" -r 16000 -c 1 seeds/voice_import/speech.flac trim 0 0.3
sox "$tmp/espeak.wav" -r 22050 -c 1 -C 0 seeds/voice_import/speech-vorbis.ogg trim 0 0.5
head -c 4096 "$fixtures/speech.mp3" >seeds/voice_import/speech-head.mp3
head -c 6144 "$fixtures/speech-aac.m4a" >seeds/voice_import/speech-head.m4a

python3 - <<'PY'
import json, struct

def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field(tag, v):
    if isinstance(v, int):
        return varint(tag << 3) + varint(v)
    v = v.encode() if isinstance(v, str) else v
    return varint(tag << 3 | 2) + varint(len(v)) + v

def frame(kind, payload):
    return struct.pack(">HI", kind, len(payload)) + payload

# A legacy voice packet from the server: Opus type, session 7, seq 20, a
# terminator flag and a 3-byte Opus payload (TOC + 2 bytes).
opus = bytes([0xF8, 0xFF, 0xFE])
legacy = bytes([4 << 5]) + varint(7) + varint(20) + varint(len(opus) | 0x2000) + opus
# The same as a Mumble 1.5 protobuf packet (type 0 = audio): context 0,
# sender_session 7, frame_number 20, opus_data, is_terminator.
v2 = bytes([0]) + field(2, 0) + field(3, 7) + field(4, 20) + field(5, opus) + field(16, 1)

control = b"".join([
    frame(0, field(1, 0x010500) + field(2, "1.5.0") + field(5, (1 << 48) | (5 << 32))),
    frame(7, field(1, 0) + field(3, "Root")),
    frame(7, field(1, 1) + field(2, 0) + field(3, "Ops")),
    frame(9, field(1, 7) + field(3, "alice") + field(5, 1)),
    frame(11, field(1, 7) + field(5, "hello")),
    frame(1, legacy),
    frame(8, field(1, 7)),
])
open("seeds/mumble_control/login-and-voice.bin", "wb").write(bytes([40]) + control)

# mumble_udp script: op, len, bytes (see fuzz/src/mumble.rs).
def step(op, data=b"", n=None):
    return bytes([op, len(data) if n is None else n]) + data
ping = bytes([1 << 5]) + varint(123456)
udp = b"".join([
    step(0, legacy), step(2, legacy), step(0, v2), step(3, b"\0"), step(4, n=40),
    step(0, ping), step(1, b"\x05garbage-datagram"), step(3, b"\0"),
])
open("seeds/mumble_udp/voice-reorder-replay.bin", "wb").write(udp)

start = json.dumps({"talker": "Front door", "priority": "high"}).encode()
audio = struct.pack(">I", 1) + opus
pcm = struct.pack(">I", 2) + bytes(640)
open("seeds/mqtt_payload/start-and-audio.bin", "wb").write(
    b"walkie/lobby/in/door/start\0" + start + b"\0" + audio + b"\0" + pcm)
open("seeds/mqtt_payload/audio-topic.bin", "wb").write(b"walkie/lobby/in/door-1/audio\0" + audio)

logon = {"command": "logon", "seq": 1, "channel": "lobby", "user_id": "@a:example.org",
         "device_id": "DEV", "openid_token": "tok", "listen": True, "listen_for_s": 3600}
open("seeds/live_message/logon.json", "w").write(json.dumps(logon))
open("seeds/live_message/start_stream.json", "w").write(json.dumps(
    {"command": "start_stream", "seq": 2, "type": "audio", "codec": "opus",
     "sample_rate": 48000, "packet_duration": 20}))
open("seeds/live_message/stop_stream.json", "w").write(json.dumps(
    {"command": "stop_stream", "seq": 3, "stream_id": 1}))
open("seeds/live_message/audio-frame.bin", "wb").write(bytes([1]) + struct.pack(">II", 1, 5) + opus)
PY

cp ../tests/fixtures/config/valid/minimal.toml seeds/config/
cp ../tests/fixtures/config/valid/with-secrets.toml seeds/config/
cp ../config/example.toml seeds/config/
ls -l seeds/*
