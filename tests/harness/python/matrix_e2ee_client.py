#!/usr/bin/env python3
"""An end-to-end-encrypting Matrix test client driven over stdin/stdout with
line-delimited JSON.

Started by walkie-harness (`E2eeTestClient`, tests/harness/src/e2ee_client.rs); built
on matrix-nio 0.26 with its e2e extra (Olm/Megolm through vodozemac's Python
bindings), a third-party client: what the bridge encrypts is checked by software it
did not write, and what this client encrypts the bridge must decrypt.

Requests, one JSON object per line on stdin, each with an "id" and a "cmd":
    {"id": 1, "cmd": "login", "homeserver": "http://127.0.0.1:8008",
     "user_id": "@alice:walkie.test", "password": "...", "device_id": "ALICE1",
     "store_dir": "/tmp/x"}
Answers on stdout carry the request's id:
    {"id": 1, "ok": true, ...}    or    {"id": 1, "ok": false, "error": "..."}
Events are pushed on stdout whenever they happen (for logs and waiters):
    {"event": "ready", "nio": "0.26.0", "vodozemac": "0.10.0"}       once, at start
    {"event": "message", ...summary...}          a room message arrived (decrypted)
    {"event": "undecryptable", "event_id": ..., "room_id": ..., "reason": ...}
    {"event": "withheld", ...}                   an m.room_key.withheld to-device
    {"event": "sync_error", "error": ...}

Commands: login, create_room, invite, join, enable_encryption, wait_room, send_voice,
send_text, hold_room_key, release_room_key, send_withheld, wait_audio, wait_text,
query_keys, bootstrap_cross_signing, withheld, wait_withheld, undecryptable, stop. They run as asyncio tasks on one event loop beside
a sync loop that also uploads, queries and claims keys and sends queued to-device
messages, as nio's sync_forever does, but keeps going over transient errors.

State (Olm account, Olm and Megolm sessions, known devices, the sync token) lives in
nio's SQLite store in the directory the harness gives ("store_dir"), with the access
token beside it in credentials.json: a new process given the same directory resumes
the same device ("login" answers "restored": true).

nio logs and tracebacks go to stderr (the harness's log file).
"""

import asyncio
import hashlib
import io
import json
import logging
import os
import sys
import threading
import traceback
import importlib.metadata as metadata

import vodozemac
from nio import (
    Api,
    AsyncClient,
    AsyncClientConfig,
    DownloadError,
    Event,
    JoinError,
    KeysQueryError,
    KeysUploadError,
    LoginError,
    MegolmEvent,
    RoomCreateError,
    RoomInviteError,
    RoomPreset,
    RoomPutStateError,
    RoomSendError,
    ShareGroupSessionError,
    SyncError,
    ToDeviceError,
    ToDeviceMessage,
    ToDeviceEvent,
    UnknownToDeviceEvent,
    UploadError,
)
from nio.crypto import ENCRYPTION_ENABLED, Olm, decrypt_attachment
from nio.exceptions import EncryptionError

MEGOLM = "m.megolm.v1.aes-sha2"
WITHHELD = "m.room_key.withheld"
SYNC_TIMEOUT_MS = 10_000
# Synapse's default timeline limit (10 events per room and sync) would leave a gap
# when more arrive between two syncs (a burst of transmissions, a restart): events in
# a gap never reach this client.
SYNC_FILTER = {"room": {"timeline": {"limit": 200}}}

_out_lock = threading.Lock()


def emit(obj):
    line = json.dumps(obj, separators=(",", ":"))
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def log(*args):
    print("matrix_e2ee_client:", *args, file=sys.stderr, flush=True)


def canonical_json(value):
    """Matrix canonical JSON (what is signed), as nio computes it."""
    return Api.to_canonical_json(value).encode("utf-8")


def signature_valid(signed, signer_user, key_id, public_key):
    """Whether `signed` carries a valid ed25519 signature by `public_key` under
    `signatures[signer_user]["ed25519:" + key_id]`, checked by vodozemac over the
    object's canonical JSON without `signatures` and `unsigned`."""
    signature = signed.get("signatures", {}).get(signer_user, {}).get("ed25519:" + key_id)
    if not isinstance(signature, str) or not isinstance(public_key, str):
        return False
    unsigned = {k: v for k, v in signed.items() if k not in ("signatures", "unsigned")}
    try:
        key = vodozemac.Ed25519PublicKey.from_base64(public_key)
        key.verify_signature(canonical_json(unsigned), vodozemac.Ed25519Signature.from_base64(signature))
        return True
    except (vodozemac.SignatureException, vodozemac.KeyException, vodozemac.DecodeException, ValueError):
        return False


def cross_signing_key(keys, user_id, usage):
    """The single ed25519 public key of a cross-signing key object, if it is the
    user's and meant for `usage`."""
    if not isinstance(keys, dict) or keys.get("user_id") != user_id or usage not in keys.get("usage", []):
        return None
    values = [v for k, v in keys.get("keys", {}).items() if k.startswith("ed25519:")]
    return values[0] if len(values) == 1 else None


class CommandError(Exception):
    pass


def check(response, error_types, what):
    if isinstance(response, error_types):
        raise CommandError("%s: %s" % (what, response))
    return response


def vodozemac_b64(data):
    """Unpadded standard base64, as Matrix writes hashes."""
    import base64
    return base64.b64encode(data).decode().rstrip("=")


class Driver:
    def __init__(self):
        self.client = None
        self.store_dir = None
        self.sync_task = None
        self.sync_failure = None
        self.syncs = 0
        self.changed = asyncio.Condition()
        # Room messages from others, oldest first: [record, consumed].
        self.messages = []
        # event_id -> MegolmEvent we could not decrypt (yet).
        self.pending = {}
        self.undecryptable_log = []
        self.withheld_log = []
        self.withheld_seen = 0
        # (room_id, session_id) -> the session key (index 0) of a Megolm session kept
        # from some devices by hold_room_key.
        self.held_keys = {}
        # event_id -> the (deprecated, unauthenticated) device_id an encrypted event
        # claims in its content.
        self.claimed = {}

    # ---- helpers ----

    def require(self):
        if self.client is None:
            raise CommandError("not logged in")
        return self.client

    async def notify(self):
        async with self.changed:
            self.changed.notify_all()

    async def until(self, predicate, timeout, what):
        """Waits (sync by sync) until predicate() returns something truthy."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(timeout)
        async with self.changed:
            while True:
                result = predicate()
                if result:
                    return result
                if self.sync_failure is not None:
                    raise CommandError("sync loop failed (%s) while waiting for %s" % (self.sync_failure, what))
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise CommandError("%s: not within %ss" % (what, timeout))
                try:
                    await asyncio.wait_for(self.changed.wait(), remaining)
                except asyncio.TimeoutError:
                    pass

    def room_summary(self, room):
        return {
            "room_id": room.room_id,
            "encrypted": room.encrypted,
            "joined": sorted(room.users.keys() - room.invited_users.keys()),
            "invited": sorted(room.invited_users.keys()),
        }

    # ---- nio callbacks (inside the sync loop) ----

    async def on_room_event(self, room, event):
        if isinstance(event, MegolmEvent):
            event.room_id = room.room_id
            self.pending[event.event_id] = event
            entry = {
                "event_id": event.event_id,
                "room_id": room.room_id,
                "sender": event.sender,
                "session_id": event.session_id,
                "claimed_device_id": event.device_id,
                "reason": "no room key (yet) for session %s" % event.session_id,
            }
            self.undecryptable_log.append(entry)
            emit(dict(entry, event="undecryptable"))
            return
        self.record(room.room_id, event, late=False)

    def record(self, room_id, event, late):
        source = event.source if isinstance(event.source, dict) else {}
        if source.get("type") != "m.room.message":
            return
        unsigned = source.get("unsigned", {})
        if event.sender == self.client.user_id and "transaction_id" in unsigned:
            return  # the echo of what this device sent (other devices' messages count)
        content = source.get("content", {})
        record = {
            "event_id": event.event_id,
            "room_id": room_id,
            "sender": event.sender,
            "msgtype": content.get("msgtype"),
            "encrypted": bool(getattr(event, "decrypted", False)),
            "late": late,
            "content": content,
            "event": event,
        }
        self.messages.append([record, False])
        emit({
            "event": "message",
            "event_id": record["event_id"],
            "room_id": room_id,
            "sender": event.sender,
            "msgtype": record["msgtype"],
            "encrypted": record["encrypted"],
            "late": late,
        })

    async def on_to_device(self, event):
        if isinstance(event, UnknownToDeviceEvent) and event.type == WITHHELD:
            self.withheld(event.sender, event.source.get("content", {}), encrypted=False)

    def withheld(self, sender, content, encrypted):
        entry = {
            "sender": sender,
            "room_id": content.get("room_id"),
            "session_id": content.get("session_id"),
            "sender_key": content.get("sender_key"),
            "algorithm": content.get("algorithm"),
            "code": content.get("code"),
            "reason": content.get("reason"),
            "encrypted": encrypted,
        }
        self.withheld_log.append(entry)
        emit(dict(entry, event="withheld"))

    async def retry_pending(self):
        """nio does not decrypt again when a late room key arrives: try each waiting
        event after every sync."""
        for event_id, event in list(self.pending.items()):
            try:
                decrypted = self.client.olm.decrypt_megolm_event(event, event.room_id)
            except EncryptionError:
                continue
            del self.pending[event_id]
            if isinstance(decrypted, Event):
                self.record(event.room_id, decrypted, late=True)

    # ---- the sync loop ----

    async def sync_loop(self, full_state):
        client = self.client
        first = True
        failures = 0
        while True:
            try:
                response = await client.sync(
                    timeout=0 if first else SYNC_TIMEOUT_MS,
                    full_state=full_state if first else None,
                    sync_filter=SYNC_FILTER,
                )
                if isinstance(response, SyncError):
                    failures += 1
                    emit({"event": "sync_error", "error": str(response)})
                    if response.status_code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
                        self.sync_failure = str(response)
                        await self.notify()
                        return
                    await asyncio.sleep(min(0.1 * failures, 2))
                    continue
                failures = 0
                first = False
                tasks = [client.send_to_device_messages()]
                if client.should_upload_keys:
                    tasks.append(client.keys_upload())
                if client.should_query_keys:
                    tasks.append(client.keys_query())
                if client.should_claim_keys:
                    tasks.append(client.keys_claim(client.get_users_for_key_claiming()))
                for result in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(result, BaseException):
                        log("key/to-device request failed: %r" % (result,))
                await self.retry_pending()
                self.syncs += 1
                await self.notify()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # a transient failure must not end syncing
                failures += 1
                log("sync failed:\n%s" % traceback.format_exc())
                emit({"event": "sync_error", "error": "%s: %s" % (type(error).__name__, error)})
                await asyncio.sleep(min(0.1 * failures, 2))


    # ---- commands ----

    async def cmd_login(self, req):
        if self.client is not None:
            raise CommandError("already logged in as %s" % self.client.user_id)
        if not ENCRYPTION_ENABLED:
            raise CommandError("matrix-nio was installed without its e2e extra (vodozemac)")
        homeserver = req["homeserver"]
        user_id = req["user_id"]
        store_dir = req["store_dir"]
        os.makedirs(store_dir, exist_ok=True)
        self.store_dir = store_dir
        credentials_path = os.path.join(store_dir, "credentials.json")
        credentials = None
        if os.path.exists(credentials_path):
            with open(credentials_path) as file:
                credentials = json.load(file)
            if credentials.get("user_id") != user_id:
                raise CommandError("%s holds the store of %s, not %s" % (store_dir, credentials.get("user_id"), user_id))
        config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=True, request_timeout=60)
        if credentials is not None:
            client = AsyncClient(homeserver, user_id, credentials["device_id"], store_dir, config)
            client.restore_login(user_id, credentials["device_id"], credentials["access_token"])
            restored = True
        else:
            client = AsyncClient(homeserver, user_id, req.get("device_id") or "", store_dir, config)
            response = await client.login(password=req["password"], device_name=req.get("device_name", "walkie e2ee test client"))
            if isinstance(response, LoginError):
                await client.close()
                raise CommandError("login: %s" % response)
            with open(credentials_path + ".new", "w") as file:
                json.dump({"user_id": user_id, "device_id": client.device_id, "access_token": client.access_token}, file)
            os.replace(credentials_path + ".new", credentials_path)
            restored = False
        self.client = client
        client.add_event_callback(self.on_room_event, Event)
        client.add_to_device_callback(self.on_to_device, ToDeviceEvent)
        if client.should_upload_keys:
            check(await client.keys_upload(), KeysUploadError, "uploading device keys")
        # After a restart nio knows no rooms (they are not stored): the first sync asks
        # for the full state, from the stored sync token on.
        self.sync_task = asyncio.ensure_future(self.sync_loop(full_state=restored))
        await self.until(lambda: self.syncs >= 1, req.get("timeout", 30), "the first sync")
        keys = client.olm.account.identity_keys
        return {
            "user_id": client.user_id,
            "device_id": client.device_id,
            "ed25519": keys["ed25519"],
            "curve25519": keys["curve25519"],
            "restored": restored,
        }

    async def cmd_create_room(self, req):
        client = self.require()
        initial_state = []
        if req.get("encrypted", True):
            initial_state.append({"type": "m.room.encryption", "state_key": "", "content": self.encryption_content(req)})
        response = check(
            await client.room_create(
                name=req.get("name"),
                preset=RoomPreset.private_chat,
                invite=req.get("invite", []),
                initial_state=initial_state,
            ),
            RoomCreateError,
            "creating a room",
        )
        room_id = response.room_id
        invited = set(req.get("invite", []))
        encrypted = bool(initial_state)

        def created():
            # A sync may catch the room half made: wait for the whole initial state.
            room = client.rooms.get(room_id)
            if room is None or room.encrypted != encrypted or client.user_id not in room.users:
                return None
            return room if invited.issubset(room.users.keys()) else None

        room = await self.until(created, req.get("timeout", 30), "room %s in sync" % room_id)
        return self.room_summary(room)

    def encryption_content(self, req):
        content = {"algorithm": MEGOLM}
        for key in ("rotation_period_ms", "rotation_period_msgs"):
            if req.get(key) is not None:
                content[key] = int(req[key])
        return content

    async def cmd_invite(self, req):
        client = self.require()
        check(await client.room_invite(req["room_id"], req["user_id"]), RoomInviteError, "inviting")
        return {}

    async def cmd_join(self, req):
        client = self.require()
        room_id = req["room_id"]
        response = check(await client.join(room_id), JoinError, "joining %s" % room_id)
        room_id = response.room_id
        await self.until(
            lambda: room_id in client.rooms and client.user_id in client.rooms[room_id].users,
            req.get("timeout", 30),
            "own join of %s in sync" % room_id,
        )
        return self.room_summary(client.rooms[room_id])

    async def cmd_enable_encryption(self, req):
        client = self.require()
        room_id = req["room_id"]
        response = check(
            await client.room_put_state(room_id, "m.room.encryption", self.encryption_content(req)),
            RoomPutStateError,
            "sending m.room.encryption",
        )
        await self.until(
            lambda: room_id in client.rooms and client.rooms[room_id].encrypted,
            req.get("timeout", 30),
            "encryption of %s in sync" % room_id,
        )
        return {"event_id": response.event_id}

    async def cmd_wait_room(self, req):
        """Syncs until this client sees the room with the given members joined (and
        encrypted, when asked)."""
        client = self.require()
        room_id = req["room_id"]
        joined = set(req.get("joined", []))
        encrypted = req.get("encrypted")

        def ready():
            room = client.rooms.get(room_id)
            if room is None:
                return None
            summary = self.room_summary(room)
            if not joined.issubset(summary["joined"]):
                return None
            if encrypted is not None and room.encrypted != encrypted:
                return None
            return summary

        return await self.until(ready, req.get("timeout", 30), "room %s with %s" % (room_id, sorted(joined)))

    async def prepare_send(self, room_id):
        client = self.require()
        room = client.rooms.get(room_id)
        if room is None:
            raise CommandError("not in room %s (or not synced yet)" % room_id)
        if room.encrypted:
            # Device lists of every member before the room key goes out: a member
            # whose devices are unknown would silently get no key.
            client.olm.update_tracked_users(room)
            if client.should_query_keys:
                check(await client.keys_query(), KeysQueryError, "querying members' device keys")
        return room

    async def cmd_send_voice(self, req):
        client = self.require()
        room = await self.prepare_send(req["room_id"])
        with open(req["path"], "rb") as file:
            data = file.read()
        duration = int(req["duration_ms"])
        mimetype = req.get("mimetype", "audio/ogg")
        body = req.get("body", "Voice message")
        encrypt = room.encrypted
        upload, keys = await client.upload(
            io.BytesIO(data),
            content_type="application/octet-stream" if encrypt else mimetype,
            filename=os.path.basename(req["path"]),
            encrypt=encrypt,
            filesize=len(data),
        )
        check(upload, UploadError, "uploading the voice message")
        content = {
            "msgtype": "m.audio",
            "body": body,
            "info": {"mimetype": mimetype, "size": len(data), "duration": duration},
            "org.matrix.msc1767.text": body,
            "org.matrix.msc1767.audio": {"duration": duration},
            "org.matrix.msc3245.voice": {},
        }
        if encrypt:
            hashes = dict(keys["hashes"])
            if req.get("bad_hash"):
                # A SHA-256 that is not the upload's: what a damaged or altered
                # file looks like to the receiver.
                wrong = hashlib.sha256(b"not the uploaded file").digest()
                hashes["sha256"] = vodozemac_b64(wrong)
            content["file"] = {
                "url": upload.content_uri,
                "key": keys["key"],
                "iv": keys["iv"],
                "hashes": hashes,
                "v": keys["v"],
                "mimetype": mimetype,
            }
        else:
            content["url"] = upload.content_uri
        response = check(
            await client.room_send(room.room_id, "m.room.message", content, ignore_unverified_devices=True),
            RoomSendError,
            "sending the voice message",
        )
        return {
            "event_id": response.event_id,
            "encrypted": encrypt,
            "mxc": upload.content_uri,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    async def cmd_send_text(self, req):
        client = self.require()
        room = await self.prepare_send(req["room_id"])
        content = {"msgtype": req.get("msgtype", "m.text"), "body": req["body"]}
        response = check(
            await client.room_send(room.room_id, "m.room.message", content, ignore_unverified_devices=True),
            RoomSendError,
            "sending text",
        )
        return {"event_id": response.event_id, "encrypted": room.encrypted}

    async def cmd_hold_room_key(self, req):
        """Starts a new Megolm session in the room and shares it with every member's
        devices except those of `user_id` (kept out by nio's blacklist, for this share
        only): what this client sends next is encrypted with a key that user lacks.
        The session key (at index 0, nothing encrypted with it yet) is kept for
        release_room_key; send_withheld tells them it is withheld instead."""
        client = self.require()
        room = await self.prepare_send(req["room_id"])
        user_id = req["user_id"]
        devices = list(client.olm.device_store.active_user_devices(user_id))
        if not devices:
            raise CommandError("no known device of %s" % user_id)
        # A new session: the one in use may have reached them already.
        client.olm.outbound_group_sessions.pop(room.room_id, None)
        for device in devices:
            client.olm.blacklist_device(device)
        try:
            check(
                await client.share_group_session(room.room_id, ignore_unverified_devices=True),
                ShareGroupSessionError,
                "sharing a room key without %s" % user_id,
            )
        finally:
            for device in devices:
                client.olm.unblacklist_device(device)
        session = client.olm.outbound_group_sessions[room.room_id]
        if session.message_index != 0:
            raise CommandError("the new session was used before its key was kept")
        self.held_keys[(room.room_id, session.id)] = session.session_key
        return {"session_id": session.id, "devices": sorted(d.id for d in devices)}

    async def send_to_devices(self, user_id, event_type, content_for):
        client = self.require()
        devices = list(client.olm.device_store.active_user_devices(user_id))
        if not devices:
            raise CommandError("no known device of %s" % user_id)
        for device in devices:
            content = content_for(device)
            check(
                await client.to_device(ToDeviceMessage(event_type, user_id, device.id, content)),
                ToDeviceError,
                "sending %s to %s %s" % (event_type, user_id, device.id),
            )
        return sorted(d.id for d in devices)

    async def cmd_release_room_key(self, req):
        """Sends the key kept by hold_room_key to `user_id`'s devices, Olm-encrypted
        as an m.room_key: a late share."""
        client = self.require()
        room_id, session_id, user_id = req["room_id"], req["session_id"], req["user_id"]
        key = self.held_keys.get((room_id, session_id))
        if key is None:
            raise CommandError("no key held for session %s" % session_id)
        missing = {
            user_id: [d.id for d in client.olm.device_store.active_user_devices(user_id)
                      if client.olm.session_store.get(d.curve25519) is None]
        }
        if missing[user_id]:
            await client.keys_claim(missing)
        room_key = {"algorithm": MEGOLM, "room_id": room_id, "session_id": session_id, "session_key": key}

        def encrypted(device):
            olm_session = client.olm.session_store.get(device.curve25519)
            if olm_session is None:
                raise CommandError("no Olm session with %s %s" % (user_id, device.id))
            return client.olm._olm_encrypt(olm_session, device, "m.room_key", room_key)

        devices = await self.send_to_devices(user_id, "m.room.encrypted", encrypted)
        return {"devices": devices}

    async def cmd_send_withheld(self, req):
        """Tells `user_id`'s devices (in a plaintext m.room_key.withheld, as clients
        send it) that the key of `session_id` is withheld from them, with `code`."""
        client = self.require()
        content = {
            "algorithm": MEGOLM,
            "room_id": req["room_id"],
            "session_id": req["session_id"],
            "sender_key": client.olm.account.identity_keys["curve25519"],
            "from_device": client.device_id,
            "code": req["code"],
            "reason": req.get("reason") or "withheld by the test",
        }
        devices = await self.send_to_devices(req["user_id"], WITHHELD, lambda device: content)
        return {"devices": devices}

    def take(self, matches):
        for entry in self.messages:
            if not entry[1] and matches(entry[0]):
                entry[1] = True
                return entry[0]
        return None

    def matcher(self, req, msgtypes):
        sender = req.get("sender")
        room_id = req.get("room_id")
        contains = req.get("body_contains")

        def matches(record):
            return (
                record["msgtype"] in msgtypes
                and (sender is None or record["sender"] == sender)
                and (room_id is None or record["room_id"] == room_id)
                and (contains is None or contains in str(record["content"].get("body", "")))
            )

        return matches

    async def sender_report(self, record):
        """Who sent the event, as far as the crypto can tell: the device that owns the
        Megolm session's (Olm-authenticated) curve25519 key, not the device id the
        event claims."""
        client = self.client
        event = record["event"]
        report = {
            "event_id": record["event_id"],
            "room_id": record["room_id"],
            "sender": record["sender"],
            "encrypted": record["encrypted"],
            "late": record["late"],
            "content": record["content"],
            "decrypted": bool(getattr(event, "decrypted", False)),
            "verified": bool(getattr(event, "verified", False)),
        }
        if not report["decrypted"]:
            return report
        session = client.olm.inbound_group_store.get(record["room_id"], event.sender_key, event.session_id)
        report["session_id"] = event.session_id
        report["sender_key"] = session.sender_key if session else None
        report["session_ed25519"] = session.ed25519 if session else None
        report["forwarded"] = bool(session.forwarding_chain) if session else None

        def owner():
            if session is None:
                return None
            for device in client.device_store:
                if device.curve25519 == session.sender_key and not device.deleted:
                    return device
            return None

        device = owner()
        if device is None and session is not None:
            client.olm.users_for_key_query.add(record["sender"])
            check(await client.keys_query(), KeysQueryError, "querying the sender's devices")
            device = owner()
        if device is not None:
            report["sender_device"] = {
                "user_id": device.user_id,
                "device_id": device.device_id,
                "ed25519": device.ed25519,
                "curve25519": device.curve25519,
                "display_name": device.display_name,
                "trust_state": device.trust_state.name,
                "keys_match_session": device.ed25519 == session.ed25519,
            }
            report["sender_device_id"] = device.device_id
        else:
            report["sender_device"] = None
            report["sender_device_id"] = None
        report["claimed_device_id"] = self.claimed.get(record["event_id"])
        return report

    async def cmd_wait_audio(self, req):
        client = self.require()
        record = await self.until(
            lambda: self.take(self.matcher(req, ("m.audio",))),
            req.get("timeout", 30),
            "an m.audio from %s" % req.get("sender", "anyone"),
        )
        report = await self.sender_report(record)
        content = record["content"]
        encrypted_file = content.get("file")
        if isinstance(encrypted_file, dict):
            url = encrypted_file.get("url")
        else:
            url = content.get("url")
        if not isinstance(url, str):
            raise CommandError("m.audio %s has neither file.url nor url: %s" % (record["event_id"], json.dumps(content)))
        response = check(await client.download(url), DownloadError, "downloading %s" % url)
        body = response.body
        report["attachment_encrypted"] = isinstance(encrypted_file, dict)
        report["ciphertext_size"] = len(body)
        if isinstance(encrypted_file, dict):
            # Checks the SHA-256 of the ciphertext before decrypting (AES-CTR).
            try:
                body = decrypt_attachment(
                    body,
                    encrypted_file["key"]["k"],
                    encrypted_file["hashes"]["sha256"],
                    encrypted_file["iv"],
                )
            except (EncryptionError, KeyError, TypeError, ValueError) as error:
                raise CommandError("attachment of %s did not decrypt: %s" % (record["event_id"], error))
            report["hash_checked"] = True
        else:
            report["hash_checked"] = False
        path = req["path"]
        with open(path, "wb") as file:
            file.write(body)
        report["path"] = path
        report["size"] = len(body)
        report["sha256"] = hashlib.sha256(body).hexdigest()
        return report

    async def cmd_wait_text(self, req):
        self.require()
        record = await self.until(
            lambda: self.take(self.matcher(req, ("m.text", "m.notice", "m.emote"))),
            req.get("timeout", 30),
            "a text message from %s" % req.get("sender", "anyone"),
        )
        return await self.sender_report(record)

    async def cmd_query_keys(self, req):
        """POST /keys/query for one user; every signature is checked with vodozemac."""
        client = self.require()
        user_id = req["user_id"]
        answer = await self.raw(client, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}})
        master = answer.get("master_keys", {}).get(user_id)
        self_signing = answer.get("self_signing_keys", {}).get(user_id)
        master_key = cross_signing_key(master, user_id, "master")
        ssk = cross_signing_key(self_signing, user_id, "self_signing")
        ssk_signed_by_master = bool(master_key and ssk and signature_valid(self_signing, user_id, master_key, master_key))
        devices = []
        for device_id, keys in sorted(answer.get("device_keys", {}).get(user_id, {}).items()):
            ed25519 = keys.get("keys", {}).get("ed25519:" + device_id)
            signed_by_ssk = bool(ssk and signature_valid(keys, user_id, ssk, ssk))
            devices.append({
                "device_id": device_id,
                "ed25519": ed25519,
                "curve25519": keys.get("keys", {}).get("curve25519:" + device_id),
                "display_name": keys.get("unsigned", {}).get("device_display_name"),
                "user_id_matches": keys.get("user_id") == user_id and keys.get("device_id") == device_id,
                "self_signed": bool(ed25519 and signature_valid(keys, user_id, device_id, ed25519)),
                "signed_by_self_signing_key": signed_by_ssk,
                # The whole chain: device <- self-signing key <- master key.
                "cross_signed": signed_by_ssk and ssk_signed_by_master,
            })
        return {
            "user_id": user_id,
            "master_key": master_key,
            "self_signing_key": ssk,
            "self_signing_signed_by_master": ssk_signed_by_master,
            "devices": devices,
            "failures": answer.get("failures", {}),
        }

    async def cmd_bootstrap_cross_signing(self, req):
        """Gives this test user a cross-signing identity and signs its own device, so
        the query_keys checks can be tested on a known-good chain. The keys are fresh
        vodozemac ed25519 key pairs (an Olm account's signing key is one), used for
        nothing else; the private halves are not kept."""
        client = self.require()
        user_id = client.user_id

        def key_object(account, usage):
            public = account.ed25519_key.to_base64()
            return public, {"user_id": user_id, "usage": [usage], "keys": {"ed25519:" + public: public}}

        def sign(account, public, obj):
            unsigned = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
            signature = account.sign(canonical_json(unsigned)).to_base64()
            obj.setdefault("signatures", {}).setdefault(user_id, {})["ed25519:" + public] = signature
            return obj

        master, ssk, usk = vodozemac.Account(), vodozemac.Account(), vodozemac.Account()
        master_public, master_key = key_object(master, "master")
        ssk_public, ssk_key = key_object(ssk, "self_signing")
        usk_public, usk_key = key_object(usk, "user_signing")
        body = {
            "master_key": master_key,
            "self_signing_key": sign(master, master_public, ssk_key),
            "user_signing_key": sign(master, master_public, usk_key),
        }
        path = "/_matrix/client/v3/keys/device_signing/upload"
        status, answer = await self.raw_status(client, "POST", path, body)
        if status == 401 and "session" in answer:
            # User-interactive auth with the password (Synapse asks when a master key
            # exists already).
            body["auth"] = {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user_id},
                "password": req["password"],
                "session": answer["session"],
            }
            status, answer = await self.raw_status(client, "POST", path, body)
        if status != 200:
            raise CommandError("%s: HTTP %s %s" % (path, status, answer))
        devices = await self.raw(client, "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: [client.device_id]}})
        own = devices.get("device_keys", {}).get(user_id, {}).get(client.device_id)
        if own is None:
            raise CommandError("own device %s not in /keys/query" % client.device_id)
        signed = sign(ssk, ssk_public, {k: v for k, v in own.items() if k not in ("signatures", "unsigned")})
        signed["signatures"][user_id] = {"ed25519:" + ssk_public: signed["signatures"][user_id]["ed25519:" + ssk_public]}
        answer = await self.raw(client, "POST", "/_matrix/client/v3/keys/signatures/upload", {user_id: {client.device_id: signed}})
        if answer.get("failures"):
            raise CommandError("signature upload failed: %s" % answer["failures"])
        return {"master_key": master_public, "self_signing_key": ssk_public, "user_signing_key": usk_public}

    async def raw_status(self, client, method, path, body):
        response = await client.send(
            method,
            path,
            json.dumps(body),
            headers={"Authorization": "Bearer " + client.access_token, "Content-Type": "application/json"},
        )
        try:
            answer = await response.json(content_type=None)
        except ValueError:
            answer = {"body": await response.text()}
        return response.status, answer

    async def raw(self, client, method, path, body):
        status, answer = await self.raw_status(client, method, path, body)
        if status != 200:
            raise CommandError("%s %s: HTTP %s %s" % (method, path, status, answer))
        return answer

    async def cmd_withheld(self, req):
        return {"notices": list(self.withheld_log)}

    async def cmd_wait_withheld(self, req):
        """Waits for a withheld notice (for `room_id`, when given) not returned by an
        earlier wait_withheld."""
        room_id = req.get("room_id")

        def next_notice():
            for index in range(self.withheld_seen, len(self.withheld_log)):
                notice = self.withheld_log[index]
                if room_id is None or notice["room_id"] == room_id:
                    self.withheld_seen = index + 1
                    return notice
            return None

        return await self.until(next_notice, req.get("timeout", 30), "an m.room_key.withheld")

    async def cmd_undecryptable(self, req):
        return {"events": [e for e in self.undecryptable_log if e["event_id"] in self.pending]}

    async def cmd_stop(self, req):
        await self.shutdown()
        return {}

    async def shutdown(self):
        if self.sync_task is not None:
            self.sync_task.cancel()
            try:
                await self.sync_task
            except asyncio.CancelledError:
                pass
            self.sync_task = None
        if self.client is not None:
            await self.client.close()
            self.client = None


def install_encrypted_withheld_hook(driver):
    """nio drops Olm-encrypted to-device events of types it does not know; a
    withheld notice may come that way too: record it before nio drops it."""
    original = Olm._handle_olm_event

    def handle(self, sender, sender_key, payload):
        if isinstance(payload, dict) and payload.get("type") == WITHHELD:
            driver.withheld(sender, payload.get("content", {}), encrypted=True)
        return original(self, sender, sender_key, payload)

    Olm._handle_olm_event = handle


def install_claimed_device_hook(driver):
    """Keeps the device id each encrypted event claims (a deprecated field nio
    copies from the encrypted content and drops on decryption), to report it beside
    the device that really owns the session."""
    original = Olm.decrypt_megolm_event

    def decrypt(self, event, room_id=None):
        result = original(self, event, room_id)
        driver.claimed[event.event_id] = event.device_id
        return result

    Olm.decrypt_megolm_event = decrypt


async def handle(driver, req):
    rid = req.get("id")
    try:
        method = getattr(driver, "cmd_" + str(req.get("cmd")), None)
        if method is None:
            raise CommandError("unknown command %r" % req.get("cmd"))
        answer = await method(req)
        emit(dict(answer, id=rid, ok=True))
    except Exception as error:  # every failure is an answer, never a silent death
        log("command %r failed:\n%s" % (req.get("cmd"), traceback.format_exc()))
        emit({"id": rid, "ok": False, "error": "%s: %s" % (type(error).__name__, error)})


async def main():
    logging.basicConfig(
        stream=sys.stderr,
        level=os.environ.get("WALKIE_E2EE_CLIENT_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    driver = Driver()
    install_encrypted_withheld_hook(driver)
    install_claimed_device_hook(driver)
    loop = asyncio.get_running_loop()
    lines = asyncio.Queue()

    def read_stdin():
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, None)

    threading.Thread(target=read_stdin, daemon=True).start()
    emit({
        "event": "ready",
        "nio": metadata.version("matrix-nio"),
        "vodozemac": metadata.version("vodozemac"),
        "python": sys.version.split()[0],
    })
    tasks = set()
    while True:
        line = await lines.get()
        if line is None:
            break  # stdin closed: the harness is done with us
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
        except ValueError as error:
            emit({"id": None, "ok": False, "error": "bad request line: %s" % error})
            continue
        task = asyncio.ensure_future(handle(driver, req))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    for task in tasks:
        task.cancel()
    await driver.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
