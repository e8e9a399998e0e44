#!/usr/bin/env python3
"""A Mumble test client driven over stdin/stdout with line-delimited JSON.

Started by walkie-harness (`MumbleTestClient`, tests/harness/src/mumble_client.rs);
built on pymumble 1.6.1 (PyPI `pymumble`, module `pymumble_py3`), a third-party
client: what the bridge does is checked against software it did not write.

Requests, one JSON object per line on stdin:
    {"id": 1, "cmd": "connect", "host": "127.0.0.1", "port": 64738,
     "username": "alice", "channel": "Ops/Sub", "password": "", "timeout": 20,
     "certfile": "/path/cert.pem", "keyfile": "/path/key.pem"}   (certificate optional)
Answers on stdout carry the request's id:
    {"id": 1, "ok": true, ...}    or    {"id": 1, "ok": false, "error": "..."}
Events are pushed on stdout whenever they happen:
    {"event": "ready", "pymumble": "1.6.1"}            once, at start
    {"event": "text", "sender": "bob", "message": "hi", "private": true}
    {"event": "users", "channel": "Ops", "users": ["alice", "bob"]}
    {"event": "voice_end", "user": "bob", "samples": 96000}   (terminator frame)
    {"event": "disconnected"}

Commands: connect, send_wav, record_start, record_stop, text_messages, users,
send_text, disconnect. Each runs in its own thread, so a long send_wav does not hold
up the others. pymumble logs and tracebacks go to stderr (the harness's log file).
"""

import json
import os
import ssl
import struct
import sys
import threading
import time
import traceback
import wave

if not hasattr(ssl, "wrap_socket"):
    # Python 3.12 removed ssl.wrap_socket, which pymumble 1.6.1 calls. Same
    # behaviour: TLS without certificate checks (murmurd's certificate is
    # self-signed), optional client certificate.
    def _wrap_socket(sock, keyfile=None, certfile=None, ssl_version=None, **_):
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if certfile:
            context.load_cert_chain(certfile, keyfile)
        return context.wrap_socket(sock)

    ssl.wrap_socket = _wrap_socket

import opuslib  # noqa: E402
import pymumble_py3  # noqa: E402
from pymumble_py3 import constants as C  # noqa: E402
from pymumble_py3 import mumble as pymumble_mumble  # noqa: E402
from pymumble_py3 import soundoutput  # noqa: E402
from pymumble_py3.tools import VarInt  # noqa: E402

SAMPLE_RATE = 48000
OPUS_MAX_FRAME = 5760  # 120 ms at 48 kHz: the longest Opus frame

_out_lock = threading.Lock()


def emit(obj):
    line = json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def log(*args):
    print("mumble_client:", *args, file=sys.stderr, flush=True)


class TerminatingSoundOutput(soundoutput.SoundOutput):
    """pymumble's sound output (Opus only) that can set the terminator flag on the
    last frame of a transmission, and tells when its queue has drained.

    pymumble 1.6.1 never sets the Opus terminator bit (0x2000 in the frame header)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.terminate_last = False
        self.frames_sent = 0
        self.drained = threading.Event()
        self.drained.set()

    def send_audio(self):
        if not self.encoder or len(self.pcm) == 0:
            return ()
        samples = int(self.encoder_framesize * C.PYMUMBLE_SAMPLERATE * 2 * self.channels)
        while len(self.pcm) > 0 and self.sequence_last_time + self.audio_per_packet <= time.time():
            current_time = time.time()
            if self.sequence_last_time + C.PYMUMBLE_SEQUENCE_RESET_INTERVAL <= current_time:
                self.sequence = 0
                self.sequence_start_time = current_time
                self.sequence_last_time = current_time
            elif self.sequence_last_time + (self.audio_per_packet * 2) <= current_time:
                self.sequence = int((current_time - self.sequence_start_time) / C.PYMUMBLE_SEQUENCE_DURATION)
                self.sequence_last_time = self.sequence_start_time + (self.sequence * C.PYMUMBLE_SEQUENCE_DURATION)
            else:
                self.sequence += int(self.audio_per_packet / C.PYMUMBLE_SEQUENCE_DURATION)
                self.sequence_last_time = self.sequence_start_time + (self.sequence * C.PYMUMBLE_SEQUENCE_DURATION)

            with self.lock:
                to_encode = self.pcm.pop(0)
                last = len(self.pcm) == 0
            if len(to_encode) != samples:
                to_encode += b"\x00" * (samples - len(to_encode))
            try:
                encoded = self.encoder.encode(to_encode, len(to_encode) // (2 * self.channels))
            except opuslib.exceptions.OpusError:
                encoded = b""
            size = len(encoded)
            if last and self.terminate_last:
                size |= 0x2000
            payload = VarInt(size).encode() + encoded
            header = (self.codec_type << 5) | self.target
            udppacket = struct.pack("!B", header) + VarInt(self.sequence).encode() + payload
            tcppacket = struct.pack("!HL", C.PYMUMBLE_MSG_TYPES_UDPTUNNEL, len(udppacket)) + udppacket
            while len(tcppacket) > 0:
                sent = self.mumble_object.control_socket.send(tcppacket)
                if sent < 0:
                    raise OSError("Server socket error")
                tcppacket = tcppacket[sent:]
            self.frames_sent += 1
            if last:
                self.drained.set()


# pymumble builds its sound output per connection as soundoutput.SoundOutput(...).
soundoutput.SoundOutput = TerminatingSoundOutput


class Stream:
    """Received audio of one Mumble user."""

    def __init__(self):
        self.decoder = opuslib.Decoder(SAMPLE_RATE, 1)
        self.pcm = bytearray()
        self.packets = 0
        self.terminators = 0
        self.first_at = None
        self.last_at = None


class Client(pymumble_mumble.Mumble):
    """pymumble with its own voice parsing (the terminator flag, per-user Opus
    decoding), and a closed control connection treated as a disconnection
    (pymumble 1.6.1 spins on a socket that returns b"" forever)."""

    def __init__(self, driver, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.driver = driver

    def read_control_messages(self):
        try:
            buffer = self.control_socket.recv(C.PYMUMBLE_READ_BUFFER_SIZE)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return
        except OSError:
            buffer = b""
        if not buffer:
            self.connected = C.PYMUMBLE_CONN_STATE_NOT_CONNECTED
            return
        self.receive_buffer += buffer
        while len(self.receive_buffer) >= 6:
            (kind, size) = struct.unpack("!HL", self.receive_buffer[0:6])
            if len(self.receive_buffer) < size + 6:
                break
            message = self.receive_buffer[6:size + 6]
            self.receive_buffer = self.receive_buffer[size + 6:]
            self.dispatch_control_message(kind, message)

    def sound_received(self, message):
        kind = message[0] >> 5
        if kind != C.PYMUMBLE_AUDIO_TYPE_OPUS:
            return  # pings; murmurd sends Opus only (opusthreshold=0)
        pos = 1
        session = VarInt()
        pos += session.decode(message[pos:pos + 10])
        sequence = VarInt()
        pos += sequence.decode(message[pos:pos + 10])
        header = VarInt()
        pos += header.decode(message[pos:pos + 10])
        terminator = bool(header.value & 0x2000)
        size = header.value & 0x1FFF
        frame = bytes(message[pos:pos + size])
        user = self.users.get(session.value)
        name = user["name"] if user is not None else "session-%d" % session.value
        self.driver.on_voice(name, frame, terminator)


class Driver:
    def __init__(self):
        self.mumble = None
        self.lock = threading.Condition()
        self.texts = []
        self.streams = {}
        self.recording = False
        self.record_started = time.monotonic()
        self.last_users = None
        self.connected = threading.Event()

    # ---- pymumble callbacks (pymumble's thread) ----

    def on_voice(self, name, frame, terminator):
        with self.lock:
            stream = self.streams.setdefault(name, Stream())
            now = time.monotonic() - self.record_started
            if frame:
                pcm = stream.decoder.decode(frame, OPUS_MAX_FRAME)
                if self.recording:
                    stream.pcm += pcm
                    stream.packets += 1
                    if stream.first_at is None:
                        stream.first_at = now
                    stream.last_at = now
            if terminator and self.recording:
                stream.terminators += 1
            samples = len(stream.pcm) // 2
        if terminator:
            emit({"event": "voice_end", "user": name, "samples": samples})

    def on_text(self, message):
        mumble = self.mumble
        sender = None
        if message.HasField("actor"):
            user = mumble.users.get(message.actor)
            sender = user["name"] if user is not None else None
        entry = {
            "sender": sender,
            "message": message.message,
            # Addressed to no channel. (pymumble puts its own session into channel
            # messages too, so the session list does not tell.)
            "private": len(message.channel_id) == 0 and len(message.tree_id) == 0,
        }
        with self.lock:
            self.texts.append(entry)
            self.lock.notify_all()
        emit(dict(entry, event="text"))

    def on_users_changed(self, *_):
        with self.lock:
            self.lock.notify_all()
        users = self.channel_users()
        if users is not None and users != self.last_users:
            self.last_users = users
            emit({"event": "users", "channel": users[0], "users": users[1]})

    def on_connected(self):
        self.connected.set()

    def on_disconnected(self):
        # pymumble's thread ends after this: the driver may connect again.
        self.mumble = None
        self.connected.clear()
        emit({"event": "disconnected"})

    # ---- helpers ----

    def channel_path(self, channel_id):
        channels = self.mumble.channels
        names = []
        while channel_id in channels and channel_id != 0:
            names.insert(0, channels[channel_id]["name"])
            channel_id = channels[channel_id].get("parent", 0)
        return "/".join(names)

    def channel_users(self):
        """(my channel's path, sorted user names in it), or None before sync."""
        mumble = self.mumble
        if mumble is None or mumble.users.myself is None:
            return None
        mine = mumble.users.myself["channel_id"]
        names = sorted(u["name"] for u in list(mumble.users.values()) if u["channel_id"] == mine)
        return (self.channel_path(mine), names)

    def find_channel(self, path):
        path = path.strip("/")
        if path in ("", "Root"):
            return self.mumble.channels[0]
        if path.startswith("Root/"):
            path = path[len("Root/"):]
        return self.mumble.channels.find_by_tree(path.split("/"))

    def require(self):
        if self.mumble is None or self.mumble.connected != C.PYMUMBLE_CONN_STATE_CONNECTED:
            raise RuntimeError("not connected")
        return self.mumble

    # ---- commands (worker threads) ----

    def cmd_connect(self, req):
        if self.mumble is not None:
            raise RuntimeError("already connected")
        timeout = float(req.get("timeout", 20))
        deadline = time.monotonic() + timeout
        mumble = Client(
            self,
            req["host"],
            req["username"],
            port=int(req["port"]),
            password=req.get("password", ""),
            certfile=req.get("certfile"),
            keyfile=req.get("keyfile"),
            reconnect=False,
        )
        # pymumble's loop ends when the thread that made it ends: tie it to the main
        # thread, which lives as long as this process.
        mumble.parent_thread = threading.main_thread()
        mumble.daemon = True
        mumble.set_receive_sound(True)
        mumble.callbacks.set_callback(C.PYMUMBLE_CLBK_CONNECTED, self.on_connected)
        mumble.callbacks.set_callback(C.PYMUMBLE_CLBK_DISCONNECTED, self.on_disconnected)
        mumble.callbacks.set_callback(C.PYMUMBLE_CLBK_TEXTMESSAGERECEIVED, self.on_text)
        for name in (C.PYMUMBLE_CLBK_USERCREATED, C.PYMUMBLE_CLBK_USERUPDATED, C.PYMUMBLE_CLBK_USERREMOVED):
            mumble.callbacks.set_callback(name, self.on_users_changed)
        self.mumble = mumble
        mumble.start()
        while not self.connected.wait(0.05):
            if not mumble.is_alive() or mumble.connected == C.PYMUMBLE_CONN_STATE_FAILED:
                self.mumble = None
                raise RuntimeError("connection to %s:%s failed or was rejected (see log)" % (req["host"], req["port"]))
            if time.monotonic() > deadline:
                self.mumble = None
                mumble.exit = True
                raise RuntimeError("not connected within %ss" % timeout)
        channel = self.find_channel(req.get("channel", ""))
        target = channel["channel_id"]
        if mumble.users.myself["channel_id"] != target:
            channel.move_in()
            with self.lock:
                while mumble.users.myself["channel_id"] != target:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise RuntimeError("not moved into channel %r within %ss" % (req.get("channel"), timeout))
                    self.lock.wait(remaining)
        self.on_users_changed()
        return {
            "session": mumble.users.myself_session,
            "channel_id": target,
            "channel": self.channel_path(target),
        }

    def cmd_send_wav(self, req):
        mumble = self.require()
        with wave.open(req["path"], "rb") as wav:
            if (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) != (SAMPLE_RATE, 1, 2):
                raise RuntimeError(
                    "%s: need 48 kHz mono 16-bit, got %d Hz, %d channels, %d bytes per sample"
                    % (req["path"], wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
                )
            pcm = wav.readframes(wav.getnframes())
        output = mumble.sound_output
        if not output.drained.is_set():
            raise RuntimeError("a transmission is still being sent")
        samples = len(pcm) // 2
        frames_before = output.frames_sent
        output.terminate_last = bool(req.get("terminate", True))
        output.drained.clear()
        started = time.monotonic()
        output.add_sound(pcm)
        seconds = samples / SAMPLE_RATE
        if not output.drained.wait(seconds + 10):
            raise RuntimeError("audio not sent within %.1f s" % (seconds + 10))
        return {
            "samples": samples,
            "frames": output.frames_sent - frames_before,
            "seconds": time.monotonic() - started,
        }

    def cmd_record_start(self, req):
        with self.lock:
            self.streams = {}
            self.recording = True
            self.record_started = time.monotonic()
        return {}

    def cmd_record_stop(self, req):
        directory = req["dir"]
        os.makedirs(directory, exist_ok=True)
        with self.lock:
            self.recording = False
            streams = self.streams
            self.streams = {}
        result = {}
        for name, stream in streams.items():
            if not stream.pcm and not stream.terminators:
                continue
            path = os.path.join(directory, safe_file_name(name) + ".wav")
            with wave.open(path, "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(SAMPLE_RATE)
                wav.writeframes(bytes(stream.pcm))
            result[name] = {
                "path": path,
                "samples": len(stream.pcm) // 2,
                "packets": stream.packets,
                "terminators": stream.terminators,
                "first_at": stream.first_at,
                "last_at": stream.last_at,
            }
        return {"streams": result}

    def cmd_text_messages(self, req):
        with self.lock:
            return {"messages": list(self.texts)}

    def cmd_users(self, req):
        mumble = self.require()
        users = [
            {"name": u["name"], "session": u["session"], "channel": self.channel_path(u["channel_id"])}
            for u in list(mumble.users.values())
        ]
        users.sort(key=lambda u: u["name"])
        mine = self.channel_path(mumble.users.myself["channel_id"])
        return {"channel": mine, "users": users}

    def cmd_send_text(self, req):
        mumble = self.require()
        to = req.get("to")
        if to is None:
            mumble.my_channel().send_text_message(req["text"])
            return {}
        for user in list(mumble.users.values()):
            if user["name"] == to:
                user.send_text_message(req["text"])
                return {}
        raise RuntimeError("no user %r on the server" % to)

    def cmd_disconnect(self, req):
        mumble = self.mumble
        if mumble is not None:
            # pymumble's stop() closes the socket under its own loop's select();
            # end the loop first, then close.
            mumble.reconnect = None
            mumble.exit = True
            mumble.join(5)
            try:
                mumble.control_socket.close()
            except Exception:
                pass
            self.mumble = None
            self.connected.clear()
        return {}


def safe_file_name(name):
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


def handle(driver, req):
    rid = req.get("id")
    try:
        method = getattr(driver, "cmd_" + str(req.get("cmd")), None)
        if method is None:
            raise RuntimeError("unknown command %r" % req.get("cmd"))
        answer = method(req)
        emit(dict(answer, id=rid, ok=True))
    except Exception as error:  # every failure is an answer, never a silent death
        log("command %r failed:\n%s" % (req.get("cmd"), traceback.format_exc()))
        emit({"id": rid, "ok": False, "error": "%s: %s" % (type(error).__name__, error)})


def main():
    driver = Driver()
    emit({"event": "ready", "pymumble": C.PYMUMBLE_VERSION, "python": sys.version.split()[0]})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError as error:
            emit({"id": None, "ok": False, "error": "bad request line: %s" % error})
            continue
        threading.Thread(target=handle, args=(driver, req), daemon=True).start()
    # stdin closed: the harness is done with us.
    if driver.mumble is not None:
        try:
            driver.mumble.stop()
        except Exception:
            pass


if __name__ == "__main__":
    main()
