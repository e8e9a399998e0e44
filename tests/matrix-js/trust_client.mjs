#!/usr/bin/env node
// An end-to-end-encrypting Matrix client that reports what Element's crypto thinks of
// a message: matrix-js-sdk with its Rust crypto (@matrix-org/matrix-sdk-crypto-wasm,
// the matrix-sdk-crypto Element Web uses), driven over stdin/stdout with
// line-delimited JSON.
//
// Started by walkie-harness (`JsTrustClient`, tests/harness/src/js_trust_client.rs).
// It is the second independent E2EE checker beside the matrix-nio client: nio tells
// whether a message decrypts and which device's session it came from; this one asks
// the same trust questions Element asks before it draws a shield.
//
// Requests, one JSON object per line on stdin, each with an "id" and a "cmd":
//     {"id": 1, "cmd": "login", "homeserver": "http://127.0.0.1:8008",
//      "user_id": "@judy:walkie.test", "password": "...", "device_id": null}
// Answers on stdout carry the request's id:
//     {"id": 1, "ok": true, ...}    or    {"id": 1, "ok": false, "error": "..."}
// Events are pushed on stdout whenever they happen:
//     {"event": "ready", "matrix_js_sdk": "37.5.0", "crypto_wasm": "14.2.1", "node": "v20..."}
//     {"event": "message", "event_id", "room_id", "sender", "msgtype", "encrypted"}
//     {"event": "undecryptable", "event_id", "room_id", "sender", "reason", "message"}
//     {"event": "sync_state", "state": "ERROR", "error": ...}
//
// Commands: login, join, send_text, wait_audio, undecryptable, wait_undecryptable,
// stop. Closing stdin stops the client and ends the process.
//
// The crypto store is in memory: the wasm store persists only to IndexedDB, which
// Node lacks (fake-indexeddb would be in memory too). Every process is a new device;
// the harness's restart tests use the nio client.
//
// stdout carries the protocol only: every console method of the SDK (its loglevel
// logger, the Rust crypto's tracing) goes to stderr, which the harness writes to a
// log file.

import { format } from "node:util";
import { createInterface } from "node:readline";
import { readFileSync } from "node:fs";

// Before the SDK is imported (dynamic imports below): it logs through console.*.
const toStderr = (...args) => {
    process.stderr.write(`${new Date().toISOString()} ${format(...args)}\n`);
};
for (const method of ["log", "info", "debug", "warn", "error", "trace"]) {
    console[method] = toStderr;
}

const sdk = await import("matrix-js-sdk");
const { EventShieldColour, EventShieldReason } = await import("matrix-js-sdk/lib/crypto-api/index.js");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel(process.env.WALKIE_JS_TRUST_CLIENT_LOG_LEVEL || "info");

// Synapse's default timeline limit (10 per room and sync) would leave a gap when more
// events arrive between two syncs; events in a gap never reach the client.
const TIMELINE_LIMIT = 200;

function emit(obj) {
    process.stdout.write(JSON.stringify(obj) + "\n");
}

function log(...args) {
    toStderr("trust_client:", ...args);
}

class CommandError extends Error {}

/** A name for a numeric TypeScript enum value (`EventShieldColour[2]` is "RED"). */
function enumName(enumeration, value) {
    if (value === null || value === undefined) return null;
    return enumeration[value] ?? `UNMAPPED_${value}`;
}

class Driver {
    constructor() {
        this.client = null;
        this.userId = null;
        // Timeline events from other users, oldest first: { event, taken, utdTaken }.
        this.records = [];
        this.recorded = new Set();
        this.waiters = new Set();
        this.syncError = null;
    }

    require() {
        if (this.client === null) throw new CommandError("not logged in");
        return this.client;
    }

    notify() {
        for (const wake of this.waiters) wake();
    }

    /** Waits until predicate() returns something truthy (re-checked on every change). */
    async until(predicate, timeoutSeconds, what) {
        const deadline = Date.now() + timeoutSeconds * 1000;
        for (;;) {
            const result = await predicate();
            if (result) return result;
            const remaining = deadline - Date.now();
            if (remaining <= 0) {
                const sync = this.syncError ? ` (last sync error: ${this.syncError})` : "";
                throw new CommandError(`${what}: not within ${timeoutSeconds}s${sync}`);
            }
            await new Promise((resolve) => {
                const wake = () => {
                    clearTimeout(timer);
                    this.waiters.delete(wake);
                    resolve();
                };
                const timer = setTimeout(wake, remaining);
                this.waiters.add(wake);
            });
        }
    }

    // ---- SDK callbacks ----

    onTimeline(event, room, toStartOfTimeline) {
        if (toStartOfTimeline || !room || event.getSender() === this.userId) return;
        const id = event.getId();
        if (!id || id.startsWith("~") || this.recorded.has(id)) return;
        this.recorded.add(id);
        this.records.push({ event, taken: false, utdTaken: false });
        this.report(event);
        this.notify();
    }

    onDecrypted(event) {
        if (this.recorded.has(event.getId())) this.report(event);
        this.notify();
    }

    /** Pushes what an event is now: a message, or undecryptable (and why). */
    report(event) {
        if (event.isBeingDecrypted() || event.shouldAttemptDecryption()) return;
        if (event.isDecryptionFailure()) {
            emit({ event: "undecryptable", ...this.utdSummary(event) });
        } else if (event.getType() === "m.room.message") {
            emit({
                event: "message",
                event_id: event.getId(),
                room_id: event.getRoomId(),
                sender: event.getSender(),
                msgtype: event.getContent().msgtype ?? null,
                encrypted: event.isEncrypted(),
            });
        }
    }

    utdSummary(event) {
        const wire = event.getWireContent();
        return {
            event_id: event.getId(),
            room_id: event.getRoomId(),
            sender: event.getSender(),
            session_id: wire.session_id ?? null,
            claimed_device_id: wire.device_id ?? null,
            // js-sdk's DecryptionFailureCode (MEGOLM_UNKNOWN_INBOUND_SESSION_ID,
            // MEGOLM_KEY_WITHHELD, HISTORICAL_MESSAGE_USER_NOT_JOINED, ...).
            reason: event.decryptionFailureReason ?? "UNKNOWN_ERROR",
            // The text Element would show in place of the message.
            message: event.getContent().body ?? null,
        };
    }

    matcher(req, msgtypes) {
        return (event) => {
            if (event.isBeingDecrypted() || event.shouldAttemptDecryption() || event.isDecryptionFailure()) {
                return false;
            }
            if (event.getType() !== "m.room.message") return false;
            const content = event.getContent();
            if (msgtypes && !msgtypes.includes(content.msgtype)) return false;
            return this.filterMatches(req, event, String(content.body ?? ""));
        };
    }

    filterMatches(req, event, body) {
        return (
            (req.sender == null || event.getSender() === req.sender) &&
            (req.room_id == null || event.getRoomId() === req.room_id) &&
            (req.body_contains == null || body.includes(req.body_contains))
        );
    }

    // ---- commands ----

    async cmd_login(req) {
        if (this.client !== null) throw new CommandError(`already logged in as ${this.userId}`);
        const homeserver = req.homeserver;
        const loginClient = sdk.createClient({ baseUrl: homeserver });
        const login = await loginClient.loginRequest({
            type: "m.login.password",
            identifier: { type: "m.id.user", user: req.user_id },
            password: req.password,
            device_id: req.device_id ?? undefined,
            initial_device_display_name: req.device_name ?? "walkie js-sdk trust checker",
        });
        loginClient.stopClient();
        const client = sdk.createClient({
            baseUrl: homeserver,
            userId: login.user_id,
            deviceId: login.device_id,
            accessToken: login.access_token,
        });
        this.client = client;
        this.userId = login.user_id;
        // In memory: see the top of this file.
        await client.initRustCrypto({ useIndexedDB: false });
        const crypto = client.getCrypto();

        client.on(sdk.RoomEvent.Timeline, (event, room, toStart) => this.onTimeline(event, room, toStart));
        client.on(sdk.MatrixEventEvent.Decrypted, (event) => this.onDecrypted(event));
        client.on(sdk.ClientEvent.Sync, (state, _previous, data) => {
            if (state === sdk.SyncState.Error) {
                this.syncError = String(data?.error ?? "sync error");
                emit({ event: "sync_state", state, error: this.syncError });
            }
            this.notify();
        });

        const filter = new sdk.Filter(login.user_id);
        filter.setDefinition({ room: { timeline: { limit: TIMELINE_LIMIT } } });
        await client.startClient({ initialSyncLimit: TIMELINE_LIMIT, filter, lazyLoadMembers: false });
        await this.until(
            () => client.isInitialSyncComplete(),
            req.timeout ?? 30,
            "the first sync",
        );
        // The device keys go up from the crypto's outgoing-request loop, which the
        // first sync kicks off; wait for that loop (internal to js-sdk, stable at the
        // pinned version) so a sender that queries our keys next finds this device.
        await crypto.outgoingRequestsManager.doProcessOutgoingRequests();
        const own = await crypto.getOwnDeviceKeys();
        const published = await client.downloadKeysForUsers([login.user_id]);
        const device = published.device_keys?.[login.user_id]?.[login.device_id];
        if (device?.keys?.[`ed25519:${login.device_id}`] !== own.ed25519) {
            throw new CommandError(`device ${login.device_id} is not on the homeserver with its keys after the upload`);
        }
        return {
            user_id: login.user_id,
            device_id: login.device_id,
            ed25519: own.ed25519,
            curve25519: own.curve25519,
            crypto_version: crypto.getVersion(),
        };
    }

    async roomState(roomId) {
        const client = this.require();
        const room = client.getRoom(roomId);
        return {
            room_id: roomId,
            encrypted: await client.getCrypto().isEncryptionEnabledInRoom(roomId),
            joined: room ? room.getJoinedMembers().map((m) => m.userId).sort() : [],
        };
    }

    async cmd_join(req) {
        const client = this.require();
        await client.joinRoom(req.room_id);
        await this.until(
            () => client.getRoom(req.room_id)?.getMyMembership() === "join",
            req.timeout ?? 30,
            `the join of ${req.room_id} in the sync`,
        );
        return this.roomState(req.room_id);
    }

    async cmd_send_text(req) {
        const client = this.require();
        const encrypted = await client.getCrypto().isEncryptionEnabledInRoom(req.room_id);
        const { event_id } = await client.sendEvent(req.room_id, sdk.EventType.RoomMessage, {
            msgtype: "m.text",
            body: req.body,
        });
        return { event_id, encrypted };
    }

    /** Takes the oldest m.audio from another user not taken before that matches. */
    async cmd_wait_audio(req) {
        this.require();
        const matches = this.matcher(req, ["m.audio"]);
        const record = await this.until(
            () => {
                const found = this.records.find((r) => !r.taken && matches(r.event));
                if (found) found.taken = true;
                return found;
            },
            req.timeout ?? 30,
            `an m.audio from ${req.sender ?? "anyone"}`,
        );
        return this.trustReport(record.event);
    }

    /** What Element's crypto says about `event`, asked the way Element asks it. */
    async trustReport(event) {
        const client = this.require();
        const crypto = client.getCrypto();
        const sender = event.getSender();
        // Element draws the shield once the sender's devices are known; make sure they
        // are (a keys/query if this user is not tracked yet) before asking.
        const devices = (await crypto.getUserDeviceInfo([sender], true)).get(sender) ?? new Map();
        const senderKey = event.getSenderKey();
        const claimedEd25519 = event.getClaimedEd25519Key();
        // The device whose curve25519 key shared the Megolm session (over Olm), among
        // the sender's own devices: what the crypto attributes the event to.
        let senderDevice = null;
        for (const device of devices.values()) {
            if (senderKey && device.getIdentityKey() === senderKey) senderDevice = device;
        }
        const info = await crypto.getEncryptionInfoForEvent(event);
        const user = await crypto.getUserVerificationStatus(sender);
        const deviceStatus = senderDevice
            ? await crypto.getDeviceVerificationStatus(sender, senderDevice.deviceId)
            : null;
        return {
            event_id: event.getId(),
            room_id: event.getRoomId(),
            sender,
            encrypted: event.isEncrypted(),
            decrypted: event.isEncrypted() && !event.isDecryptionFailure() && event.getClearContent() !== null,
            content: event.getContent(),
            // null: not decrypted here (a plain event).
            shield: info && {
                colour: enumName(EventShieldColour, info.shieldColour),
                reason: enumName(EventShieldReason, info.shieldReason),
            },
            sender_curve25519: senderKey,
            sender_claimed_ed25519: claimedEd25519,
            // The deprecated, unauthenticated device_id of the encrypted content.
            claimed_device_id: event.getWireContent().device_id ?? null,
            key_source_untrusted: event.isKeySourceUntrusted() ?? null,
            sender_device: senderDevice && {
                user_id: sender,
                device_id: senderDevice.deviceId,
                ed25519: senderDevice.getFingerprint() ?? null,
                curve25519: senderDevice.getIdentityKey() ?? null,
                display_name: senderDevice.displayName ?? null,
                keys_match_session: senderDevice.getFingerprint() === claimedEd25519,
            },
            sender_has_cross_signing_keys: await crypto.userHasCrossSigningKeys(sender, true),
            user_verification: {
                verified: user.isVerified(),
                cross_signing_verified: user.isCrossSigningVerified(),
                was_cross_signing_verified: user.wasCrossSigningVerified(),
                needs_user_approval: user.needsUserApproval,
            },
            device_verification: deviceStatus && {
                signed_by_owner: deviceStatus.signedByOwner,
                cross_signing_verified: deviceStatus.crossSigningVerified,
                local_verified: deviceStatus.localVerified,
                verified: deviceStatus.isVerified(),
            },
        };
    }

    cmd_undecryptable() {
        this.require();
        return {
            events: this.records.filter((r) => r.event.isDecryptionFailure()).map((r) => this.utdSummary(r.event)),
        };
    }

    /** Waits for an event (from another user, matching the filter) that failed to
     * decrypt and was not returned by an earlier wait_undecryptable. */
    async cmd_wait_undecryptable(req) {
        this.require();
        const record = await this.until(
            () => {
                const found = this.records.find(
                    (r) => !r.utdTaken && r.event.isDecryptionFailure() && this.filterMatches(req, r.event, ""),
                );
                if (found) found.utdTaken = true;
                return found;
            },
            req.timeout ?? 30,
            `an undecryptable event from ${req.sender ?? "anyone"}`,
        );
        return this.utdSummary(record.event);
    }

    async cmd_stop() {
        await this.shutdown();
        return {};
    }

    async shutdown() {
        if (this.client !== null) {
            this.client.stopClient();
            this.client = null;
        }
    }
}

async function handle(driver, req) {
    const id = req.id ?? null;
    try {
        const method = driver[`cmd_${req.cmd}`];
        if (typeof method !== "function") throw new CommandError(`unknown command ${JSON.stringify(req.cmd)}`);
        const answer = await method.call(driver, req);
        emit({ ...answer, id, ok: true });
    } catch (error) {
        log(`command ${JSON.stringify(req.cmd)} failed:`, error?.stack ?? error);
        const text = error instanceof CommandError ? error.message : `${error?.name ?? "Error"}: ${error?.message ?? error}`;
        emit({ id, ok: false, error: text });
    }
}

process.on("unhandledRejection", (reason) => log("unhandled rejection:", reason?.stack ?? reason));

/** The installed version of a package (read from its package.json: the wasm
 * package's exports map does not export that file). */
function installed(name) {
    const path = new URL(`./node_modules/${name}/package.json`, import.meta.url);
    return JSON.parse(readFileSync(path, "utf8")).version;
}

const driver = new Driver();
emit({
    event: "ready",
    matrix_js_sdk: installed("matrix-js-sdk"),
    crypto_wasm: installed("@matrix-org/matrix-sdk-crypto-wasm"),
    node: process.version,
});
const lines = createInterface({ input: process.stdin, crlfDelay: Infinity });
lines.on("line", (line) => {
    line = line.trim();
    if (!line) return;
    let req;
    try {
        req = JSON.parse(line);
    } catch (error) {
        emit({ id: null, ok: false, error: `bad request line: ${error.message}` });
        return;
    }
    handle(driver, req);
});
lines.on("close", async () => {
    // stdin closed: the harness is done with us. The SDK's timers and the wasm
    // keep Node alive, so exit explicitly.
    await driver.shutdown();
    process.exit(0);
});
