//! The bridge's crypto devices against a real Synapse (issue 15, items 2–4):
//! a puppet's device is created by the appservice, its keys and cross-signing
//! identity are on the server and check out, it survives a restart unchanged,
//! its one-time keys are topped up from the transactions' counts, to-device
//! messages reach it through transactions, and room events encrypted by it
//! decrypt in another client (and the other way round, with the bot's device).
//!
//! The other side is a client nobody here wrote the crypto of: a
//! matrix-sdk-crypto `OlmMachine` of a normal Synapse user, over plain HTTP with
//! that user's access token (`E2eeClient` below). Nothing sleeps: the tests await
//! the devices' events, the dispatcher, or the other client's /sync.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent;
use matrix_sdk_crypto::vodozemac::{Ed25519PublicKey, Ed25519Signature};
use matrix_sdk_crypto::{
    DecryptionSettings, EncryptionSettings, EncryptionSyncChanges, OlmMachine, TrustRequirement,
};
use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::client::keys::{claim_keys, get_keys};
use ruma::api::client::sync::sync_events;
use ruma::api::client::to_device::send_event_to_device;
use ruma::api::path_builder::VersionHistory;
use ruma::api::{IncomingResponse, OutgoingRequest, SupportedVersions};
use ruma::canonical_json::{to_canonical_value, CanonicalJsonValue};
use ruma::events::{AnyMessageLikeEventContent, AnySyncTimelineEvent, AnyTimelineEvent};
use ruma::serde::Raw;
use ruma::OneTimeKeyAlgorithm;
use ruma::{OwnedDeviceId, OwnedRoomId, OwnedUserId, RoomId, TransactionId, UserId};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walkie_bridge::config::{Config, Secret, Url};
use walkie_bridge::matrix::appservice::{AppserviceError, AppserviceStats};
use walkie_bridge::matrix::crypto::{CryptoDevices, CryptoEvent, DecryptOutcome, DeviceOptions};
use walkie_bridge::matrix::{AppserviceServer, Homeserver, Inbound};
use walkie_bridge::registration::Registration;
use walkie_bridge::store::Store;
use walkie_harness::{CreateRoom, Synapse, SynapseBuilder, TestUser};

const AS_TOKEN: &str = "as-token-crypto-test-0123456789abcdef";
const HS_TOKEN: &str = "hs-token-crypto-test-fedcba9876543210";
const WAIT: Duration = Duration::from_secs(60);
const PUPPET: &str = "walkie_mumble_alice";

fn config(port: u16, dir: &Path) -> Config {
    let text = format!(
        r##"
[homeserver]
url = "http://127.0.0.1:8008"
domain = "walkie.test"

[appservice]
listen = "127.0.0.1:{port}"
id = "walkie"
as_token = "{AS_TOKEN}"
hs_token = "{HS_TOKEN}"
bot_localpart = "walkie"
puppet_prefix = "walkie_"

[database]
url = "sqlite://{db}"

[encryption]
store_dir = "{crypto}"

[[channel]]
name = "ops"
room = "#ops:walkie.test"
endpoints = []
"##,
        db = dir.join("walkie.db").display(),
        crypto = dir.join("crypto").display(),
    );
    let no_env: [(String, String); 0] = [];
    Config::from_toml_str(&text, "test.toml", no_env)
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

/// Synapse with the bridge's generated registration (it asks for MSC2409,
/// MSC3202 and MSC4190); the harness turns on the experimental features.
async fn synapse(config: &Config) -> Synapse {
    let registration = Registration::from_config(config).to_yaml().unwrap();
    SynapseBuilder::new()
        .server_name("walkie.test")
        .appservice_registration(registration)
        .start()
        .await
        .expect("Synapse starts")
}

fn homeserver(synapse: &Synapse) -> Homeserver {
    Homeserver::new(Url::parse(&synapse.url()).unwrap(), Secret::new(AS_TOKEN)).unwrap()
}

fn user(id: &str) -> OwnedUserId {
    UserId::parse(id).unwrap()
}

fn puppet() -> OwnedUserId {
    user(&format!("@{PUPPET}:walkie.test"))
}

fn bot() -> OwnedUserId {
    user("@walkie:walkie.test")
}

/// The appservice server with its crypto devices.
struct Bridge {
    devices: CryptoDevices,
    stats: AppserviceStats,
    dispatched: mpsc::Receiver<Inbound>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AppserviceError>>,
}

impl Bridge {
    async fn start(config: &Config, listener: TcpListener, synapse_url: &str) -> Bridge {
        let store = Store::connect(&config.database.url).await.unwrap();
        let (tx, dispatched) = mpsc::channel(256);
        let server =
            AppserviceServer::new(&config.appservice, &config.homeserver.domain, store, tx)
                .unwrap();
        let hs = Homeserver::new(Url::parse(synapse_url).unwrap(), Secret::new(AS_TOKEN)).unwrap();
        let devices = CryptoDevices::new(
            hs,
            server.users().clone(),
            DeviceOptions::new(&config.encryption.store_dir, None),
        );
        let server = server.with_crypto(devices.clone());
        let stats = server.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(server.serve(listener, shutdown.clone()));
        Bridge {
            devices,
            stats,
            dispatched,
            shutdown,
            task,
        }
    }

    /// Waits until the room event `event_id` was dispatched (so its transaction,
    /// devices' parts first, was handled) and returns it.
    async fn until_event(&mut self, event_id: &str) -> Raw<AnyTimelineEvent> {
        loop {
            let item = tokio::time::timeout(WAIT, self.dispatched.recv())
                .await
                .unwrap_or_else(|_| panic!("{event_id} not dispatched within {WAIT:?}"))
                .expect("the server keeps its dispatcher");
            if let Inbound::RoomEvent(event) = item {
                event.handled.done().await;
                if event.event_id.as_str() == event_id {
                    return event.event;
                }
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
        self.devices.shutdown().await;
    }
}

/// Waits for the first event `pick` maps to something.
async fn wait_for<T>(
    events: &mut broadcast::Receiver<CryptoEvent>,
    what: &str,
    mut pick: impl FnMut(&CryptoEvent) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
            .expect("the devices keep their event channel");
        if let Some(found) = pick(&event) {
            return found;
        }
    }
}

/// A client with its own matrix-sdk-crypto machine (memory store), speaking
/// plain HTTP with a normal user's access token.
struct E2eeClient {
    user: TestUser,
    machine: OlmMachine,
    http: reqwest::Client,
    base: String,
    since: Option<String>,
}

impl E2eeClient {
    async fn new(synapse: &Synapse, user: TestUser) -> E2eeClient {
        let machine = OlmMachine::new(
            &UserId::parse(&user.user_id).unwrap(),
            user.device_id.as_str().into(),
        )
        .await;
        let client = E2eeClient {
            user,
            machine,
            http: reqwest::Client::builder().no_proxy().build().unwrap(),
            base: synapse.url(),
            since: None,
        };
        client.flush().await;
        client
    }

    fn user_id(&self) -> OwnedUserId {
        user(&self.user.user_id)
    }

    async fn send<R>(&self, request: R) -> R::IncomingResponse
    where
        R: OutgoingRequest<PathBuilder = VersionHistory>,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let versions = SupportedVersions::from_parts(&["v1.11".to_owned()], &BTreeMap::new());
        let request = request
            .try_into_http_request::<Vec<u8>>(
                &self.base,
                SendAccessToken::IfRequired(&self.user.access_token),
                std::borrow::Cow::Owned(versions),
            )
            .unwrap();
        let request = reqwest::Request::try_from(request.map(reqwest::Body::from)).unwrap();
        let what = format!("{} {}", request.method(), request.url().path());
        let response = self.http.execute(request).await.unwrap();
        let status = response.status();
        let body = response.bytes().await.unwrap();
        assert!(
            status.is_success(),
            "{what}: {status} {}",
            String::from_utf8_lossy(&body)
        );
        let response = ruma::exports::http::Response::builder()
            .status(status.as_u16())
            .body(body)
            .unwrap();
        R::IncomingResponse::try_from_http_response(response)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
    }

    /// Sends what the machine wants sent (key uploads and queries).
    async fn flush(&self) {
        use matrix_sdk_crypto::types::requests::AnyOutgoingRequest as R;
        for _ in 0..8 {
            let requests = self.machine.outgoing_requests().await.unwrap();
            if requests.is_empty() {
                return;
            }
            for request in requests {
                let id = request.request_id();
                match request.request() {
                    R::KeysUpload(r) => {
                        let response = self.send(r.clone()).await;
                        self.machine.mark_request_as_sent(id, &response).await
                    }
                    R::KeysQuery(r) => {
                        let mut query = get_keys::v3::Request::new();
                        query.device_keys = r.device_keys.clone();
                        let response = self.send(query).await;
                        self.machine.mark_request_as_sent(id, &response).await
                    }
                    R::ToDeviceRequest(r) => {
                        let response = self.send(to_device_request(r)).await;
                        self.machine.mark_request_as_sent(id, &response).await
                    }
                    other => panic!("the test client does not send {other:?}"),
                }
                .unwrap();
            }
        }
    }

    /// One /sync: its to-device part goes to the machine; returns the timeline
    /// events of `room`.
    async fn sync(&mut self, room: &RoomId) -> Vec<Raw<AnySyncTimelineEvent>> {
        let mut request = sync_events::v3::Request::new();
        request.since = self.since.clone();
        request.timeout = Some(Duration::from_secs(5));
        let response = self.send(request).await;
        self.since = Some(response.next_batch.clone());
        let changes = EncryptionSyncChanges {
            to_device_events: response.to_device.events,
            changed_devices: &response.device_lists,
            one_time_keys_counts: &response.device_one_time_keys_count,
            unused_fallback_keys: response.device_unused_fallback_key_types.as_deref(),
            next_batch_token: None,
        };
        self.machine
            .receive_sync_changes(changes, &untrusted())
            .await
            .unwrap();
        self.flush().await;
        response
            .rooms
            .join
            .get(room)
            .map(|joined| joined.timeline.events.clone())
            .unwrap_or_default()
    }

    /// Encrypts `content` for `members`' devices as the room's members would.
    async fn encrypt(
        &self,
        room: &RoomId,
        members: &[OwnedUserId],
        content: &Raw<AnyMessageLikeEventContent>,
    ) -> serde_json::Value {
        let users = || members.iter().map(|m| m.as_ref());
        self.machine.update_tracked_users(users()).await.unwrap();
        self.flush().await;
        if let Some((id, claim)) = self.machine.get_missing_sessions(users()).await.unwrap() {
            let response = self.send(claim).await;
            self.machine
                .mark_request_as_sent(&id, &response)
                .await
                .unwrap();
        }
        for share in self
            .machine
            .share_room_key(room, users(), EncryptionSettings::default())
            .await
            .unwrap()
        {
            let response = self.send(to_device_request(&share)).await;
            self.machine
                .mark_request_as_sent(&share.txn_id, &response)
                .await
                .unwrap();
        }
        let encrypted = self
            .machine
            .encrypt_room_event_raw(room, "m.room.message", content)
            .await
            .unwrap();
        serde_json::from_str(encrypted.content.json().get()).unwrap()
    }
}

fn to_device_request(
    r: &matrix_sdk_crypto::types::requests::ToDeviceRequest,
) -> send_event_to_device::v3::Request {
    send_event_to_device::v3::Request::new_raw(
        r.event_type.clone(),
        r.txn_id.clone(),
        r.messages.clone(),
    )
}

fn untrusted() -> DecryptionSettings {
    DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    }
}

fn text(body: &str) -> Raw<AnyMessageLikeEventContent> {
    Raw::new(&json!({"msgtype": "m.text", "body": body}))
        .unwrap()
        .cast_unchecked()
}

/// Checks the Ed25519 signature `key_id` of `signer` on `object`, over its
/// canonical JSON without `signatures` and `unsigned`, as the spec signs JSON.
fn verify_signature<T>(object: &Raw<T>, signer: &UserId, key_id: &str, public_key: &str) {
    let CanonicalJsonValue::Object(mut canonical) = to_canonical_value(object).unwrap() else {
        panic!("not an object: {}", object.json());
    };
    let signatures = canonical
        .remove("signatures")
        .unwrap_or_else(|| panic!("no signatures: {}", object.json()));
    canonical.remove("unsigned");
    let CanonicalJsonValue::String(signature) = &signatures
        .as_object()
        .and_then(|s| s.get(signer.as_str()))
        .and_then(|s| s.as_object())
        .and_then(|s| s.get(key_id))
        .cloned()
        .unwrap_or_else(|| panic!("no signature by {signer} {key_id}: {}", object.json()))
    else {
        panic!("signature is no string");
    };
    let message = CanonicalJsonValue::Object(canonical).to_string();
    let key = Ed25519PublicKey::from_base64(public_key).unwrap();
    let signature = Ed25519Signature::from_base64(signature).unwrap();
    key.verify(message.as_bytes(), &signature)
        .unwrap_or_else(|e| panic!("{key_id} of {signer} does not verify: {e}"));
}

/// The single public key of a cross-signing key object.
fn cross_signing_public_key(raw: &Raw<ruma::encryption::CrossSigningKey>) -> String {
    let key = raw.deserialize().unwrap();
    assert_eq!(key.keys.len(), 1, "{}", raw.json());
    key.keys.values().next().unwrap().clone()
}

/// The user's devices as the homeserver lists them (asked as the appservice).
async fn server_devices(synapse: &Synapse, user: &UserId) -> Vec<OwnedDeviceId> {
    #[derive(serde::Deserialize)]
    struct Devices {
        devices: Vec<Device>,
    }
    #[derive(serde::Deserialize)]
    struct Device {
        device_id: OwnedDeviceId,
    }
    let url = format!(
        "{}/_matrix/client/v3/devices?user_id={}",
        synapse.url(),
        url::form_urlencoded::byte_serialize(user.as_str().as_bytes()).collect::<String>()
    );
    let devices: Devices = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(url)
        .bearer_auth(AS_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    devices.devices.into_iter().map(|d| d.device_id).collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    config: Config,
    synapse: Synapse,
    bridge: Bridge,
    hs: Homeserver,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = config(listener.local_addr().unwrap().port(), dir.path());
    let synapse = synapse(&config).await;
    let bridge = Bridge::start(&config, listener, &synapse.url()).await;
    let hs = homeserver(&synapse);
    hs.register(PUPPET).await.unwrap();
    Setup {
        _dir: dir,
        config,
        synapse,
        bridge,
        hs,
    }
}

#[tokio::test]
async fn a_puppets_device_is_created_cross_signed_and_survives_a_restart() {
    let Setup {
        _dir,
        config,
        synapse,
        bridge,
        hs: _,
    } = setup().await;
    let device = bridge.devices.device(&puppet()).await.unwrap();
    let device_id = device.device_id().to_owned();
    let ed25519 = device.identity_keys().ed25519.to_base64();
    let curve25519 = device.identity_keys().curve25519.to_base64();
    assert!(device_id.as_str().starts_with("WALKIE"), "{device_id}");
    assert_eq!(
        server_devices(&synapse, &puppet()).await,
        std::slice::from_ref(&device_id)
    );

    // What anyone sees: a plain client's /keys/query.
    let carol = synapse.register_user("carol", false).await.unwrap();
    let carol = E2eeClient::new(&synapse, carol).await;
    let mut query = get_keys::v3::Request::new();
    query.device_keys.insert(puppet(), Vec::new());
    let keys = carol.send(query).await;
    let device_keys = &keys.device_keys[&puppet()][&device_id];
    let parsed = device_keys.deserialize().unwrap();
    let key = |algorithm: &str| {
        parsed
            .keys
            .iter()
            .find(|(id, _)| id.as_str() == format!("{algorithm}:{device_id}"))
            .map(|(_, key)| key.clone())
            .unwrap_or_else(|| panic!("no {algorithm} key: {}", device_keys.json()))
    };
    assert_eq!(key("ed25519"), ed25519);
    assert_eq!(key("curve25519"), curve25519);
    // Signed by the device itself…
    verify_signature(
        device_keys,
        &puppet(),
        &format!("ed25519:{device_id}"),
        &ed25519,
    );
    // …by the puppet's self-signing key, which its master key signs.
    let master = cross_signing_public_key(&keys.master_keys[&puppet()]);
    let self_signing_raw = &keys.self_signing_keys[&puppet()];
    let self_signing = cross_signing_public_key(self_signing_raw);
    verify_signature(
        self_signing_raw,
        &puppet(),
        &format!("ed25519:{master}"),
        &master,
    );
    verify_signature(
        device_keys,
        &puppet(),
        &format!("ed25519:{self_signing}"),
        &self_signing,
    );
    // And the other client's machine draws the same conclusion.
    carol
        .machine
        .update_tracked_users([puppet().as_ref()])
        .await
        .unwrap();
    carol.flush().await;
    let seen = carol
        .machine
        .get_device(&puppet(), &device_id, None)
        .await
        .unwrap()
        .expect("carol's machine knows the puppet's device");
    assert!(
        seen.is_cross_signed_by_owner(),
        "not cross-signed by its owner"
    );

    // One-time keys are there, signed by the device.
    let mut claim = claim_keys::v3::Request::new(BTreeMap::from([(
        puppet(),
        BTreeMap::from([(device_id.clone(), OneTimeKeyAlgorithm::SignedCurve25519)]),
    )]));
    claim.timeout = None;
    let claimed = carol.send(claim).await;
    let (key_id, one_time_key) = claimed.one_time_keys[&puppet()][&device_id]
        .iter()
        .next()
        .expect("a one-time key");
    assert!(
        key_id.as_str().starts_with("signed_curve25519:"),
        "{key_id}"
    );
    verify_signature(
        one_time_key,
        &puppet(),
        &format!("ed25519:{device_id}"),
        &ed25519,
    );

    // Restart: everything dropped, the store reopened by new devices.
    drop(device);
    bridge.stop().await;
    let listener = TcpListener::bind(config.appservice.listen).await.unwrap();
    let bridge = Bridge::start(&config, listener, &synapse.url()).await;
    let reopened = bridge.devices.device(&puppet()).await.unwrap();
    assert_eq!(reopened.device_id(), device_id);
    assert_eq!(reopened.identity_keys().ed25519.to_base64(), ed25519);
    assert_eq!(reopened.identity_keys().curve25519.to_base64(), curve25519);
    // No new device, no new identity, and the reopening asked little of the server
    // (a key query of the users the device follows, at most).
    assert_eq!(
        server_devices(&synapse, &puppet()).await,
        std::slice::from_ref(&device_id)
    );
    let mut query = get_keys::v3::Request::new();
    query.device_keys.insert(puppet(), Vec::new());
    let keys = carol.send(query).await;
    assert_eq!(
        cross_signing_public_key(&keys.master_keys[&puppet()]),
        master
    );
    eprintln!(
        "reopening the device: {} requests",
        bridge.devices.stats().requests()
    );
    assert!(
        bridge.devices.stats().requests() <= 1,
        "reopening sent {} requests",
        bridge.devices.stats().requests()
    );
    drop(reopened);
    bridge.stop().await;
}

#[tokio::test]
async fn transactions_top_up_one_time_keys_and_bring_to_device_messages() {
    let Setup {
        _dir,
        config: _,
        synapse,
        mut bridge,
        hs,
    } = setup().await;
    let device = bridge.devices.device(&puppet()).await.unwrap();
    let device_id = device.device_id().to_owned();

    let carol_user = synapse.register_user("carol", false).await.unwrap();
    let carol = E2eeClient::new(&synapse, carol_user.clone()).await;
    let room = synapse
        .client(&carol_user)
        .create_room(&CreateRoom::new().invite(puppet().as_str()))
        .await
        .unwrap();
    hs.join(&room, &puppet()).await.unwrap();
    // Closed, as an idle puppet's device is: the counts must open it.
    drop(device);
    assert_eq!(bridge.devices.close_all().await, 1);
    let opened = bridge.devices.stats().opened();

    // Carol takes three of the puppet's one-time keys.
    for _ in 0..3 {
        let claim = claim_keys::v3::Request::new(BTreeMap::from([(
            puppet(),
            BTreeMap::from([(device_id.clone(), OneTimeKeyAlgorithm::SignedCurve25519)]),
        )]));
        let claimed = carol.send(claim).await;
        assert_eq!(claimed.one_time_keys[&puppet()][&device_id].len(), 1);
    }
    // From here on an upload that leaves the homeserver with 50 keys can only be
    // the top-up (an upload of other keys, like a first fallback key, answers 47).
    let mut events = bridge.devices.subscribe();
    // Her next message in the room makes a transaction with the puppet's counts
    // (47): the device opens, makes three keys and uploads them.
    let sent = synapse
        .client(&carol_user)
        .send_text(&room, "who has the keys?")
        .await
        .unwrap();
    bridge.until_event(&sent).await;
    let uploaded = wait_for(&mut events, "one-time key upload", |event| match event {
        CryptoEvent::KeysUploaded {
            device,
            one_time_keys,
            ..
        } if *device == device_id && *one_time_keys >= 50 => Some(*one_time_keys),
        _ => None,
    })
    .await;
    assert_eq!(uploaded, 50, "the device is back to its 50 one-time keys");
    assert_eq!(
        bridge.devices.stats().opened(),
        opened + 1,
        "the transaction opened the closed device"
    );
    let device = bridge.devices.device(&puppet()).await.unwrap();
    assert_eq!(device.device_id(), device_id);

    // A to-device message for the device arrives in a transaction (MSC2409).
    let content = Raw::new(&json!({"walkie": "over"}))
        .unwrap()
        .cast_unchecked();
    let message = send_event_to_device::v3::Request::new_raw(
        "org.example.walkie.test".into(),
        TransactionId::new(),
        BTreeMap::from([(
            puppet(),
            BTreeMap::from([(device_id.clone().into(), content)]),
        )]),
    );
    carol.send(message).await;
    let outcome = wait_for(&mut events, "the to-device message", |event| match event {
        CryptoEvent::ToDevice {
            device,
            event_type,
            outcome,
            ..
        } if *device == device_id && event_type == "org.example.walkie.test" => Some(*outcome),
        _ => None,
    })
    .await;
    assert_eq!(outcome, "plaintext");

    // Idle: transactions keep coming (every message in the room carries the
    // puppet's full counts) and the device sends nothing.
    device.flush().await.unwrap();
    let before = device.requests_sent();
    let handed = device.changes_handed();
    let flushes = device.flushes_queued();
    let transactions = bridge.stats.transactions();
    let started = std::time::Instant::now();
    for i in 0..10 {
        let sent = synapse
            .client(&carol_user)
            .send_text(&room, &format!("idle check {i}"))
            .await
            .unwrap();
        bridge.until_event(&sent).await;
    }
    assert_eq!(device.flush().await.unwrap(), 0);
    let idle_requests = device.requests_sent() - before;
    eprintln!(
        "idle puppet: {idle_requests} requests over {} transactions in {:?}",
        bridge.stats.transactions() - transactions,
        started.elapsed()
    );
    assert_eq!(idle_requests, 0);
    // Nor does it write its store for counts it was given already (each write
    // is work on tokio's blocking pool; issue 14).
    assert_eq!(
        device.changes_handed() - handed,
        0,
        "the same key counts again were handed to the machine"
    );
    // Nor ask its store for outgoing requests after each (store reads on the
    // blocking pool too).
    assert_eq!(
        device.flushes_queued() - flushes,
        0,
        "transactions that brought nothing new queued flushes"
    );
    assert_eq!(bridge.stats.bad_device_parts(), 0);
    drop(device);
    bridge.stop().await;
}

#[tokio::test]
async fn room_events_encrypted_by_a_puppet_decrypt_elsewhere_and_back() {
    let Setup {
        _dir,
        config: _,
        synapse,
        mut bridge,
        hs,
    } = setup().await;
    let mut events = bridge.devices.subscribe();
    let carol_user = synapse.register_user("carol", false).await.unwrap();
    let mut carol = E2eeClient::new(&synapse, carol_user.clone()).await;
    let room: OwnedRoomId = synapse
        .client(&carol_user)
        .create_room(
            &CreateRoom::new()
                .invite(puppet().as_str())
                .invite(bot().as_str())
                .initial_state(
                    "m.room.encryption",
                    "",
                    json!({"algorithm": "m.megolm.v1.aes-sha2"}),
                ),
        )
        .await
        .unwrap()
        .try_into()
        .unwrap();
    hs.join(room.as_str(), &puppet()).await.unwrap();
    hs.join(room.as_str(), &bot()).await.unwrap();
    carol.sync(&room).await;

    // Out: the puppet encrypts for the joined members; carol decrypts.
    let members = [carol.user_id(), puppet(), bot()];
    let encrypted = bridge
        .devices
        .encrypt_for_room(
            &puppet(),
            &room,
            &members,
            EncryptionSettings::default(),
            "m.room.message",
            &text("over from the puppet"),
        )
        .await
        .unwrap();
    let sent = hs
        .send(
            &room,
            "m.room.encrypted",
            "crypto-test-1",
            &serde_json::from_str(encrypted.json().get()).unwrap(),
            &puppet(),
        )
        .await
        .unwrap();
    let puppet_device = bridge.devices.device(&puppet()).await.unwrap();
    let decrypted = loop {
        let timeline = tokio::time::timeout(WAIT, carol.sync(&room))
            .await
            .expect("carol's sync answers");
        if let Some(event) = timeline.into_iter().find(|e| {
            e.get_field::<String>("event_id").ok().flatten().as_deref() == Some(sent.as_str())
        }) {
            let event: Raw<EncryptedEvent> = event.cast_unchecked();
            break carol
                .machine
                .decrypt_room_event(&event, &room, &untrusted())
                .await
                .expect("carol decrypts the puppet's event");
        }
    };
    let body = decrypted
        .event
        .get_field::<serde_json::Value>("content")
        .unwrap()
        .unwrap();
    assert_eq!(body["body"], "over from the puppet");
    assert_eq!(decrypted.encryption_info.sender, puppet());
    assert_eq!(
        decrypted.encryption_info.sender_device.as_deref(),
        Some(puppet_device.device_id())
    );

    // In: carol encrypts for the room; the bot's device gets the key through a
    // transaction and decrypts.
    let bot_device = bridge.devices.device(&bot()).await.unwrap();
    let content = carol
        .encrypt(&room, &members, &text("over from carol"))
        .await;
    let sent = synapse
        .client(&carol_user)
        .send_event(room.as_str(), "m.room.encrypted", &content)
        .await
        .unwrap();
    let event = bridge.until_event(&sent).await;
    let outcome = match bridge.devices.decrypt(&room, &event).await.unwrap() {
        DecryptOutcome::MissingKey { session_id } => {
            // The key travels in its own transaction; wait for it.
            wait_for(&mut events, "the room key", |event| match event {
                CryptoEvent::RoomKeys { user, keys }
                    if *user == bot()
                        && keys
                            .iter()
                            .any(|k| Some(&k.session_id) == session_id.as_ref()) =>
                {
                    Some(())
                }
                _ => None,
            })
            .await;
            bridge.devices.decrypt(&room, &event).await.unwrap()
        }
        other => other,
    };
    let DecryptOutcome::Decrypted(decrypted) = outcome else {
        panic!("not decrypted: {outcome:?}");
    };
    let content = decrypted
        .event
        .get_field::<serde_json::Value>("content")
        .unwrap()
        .unwrap();
    assert_eq!(content["body"], "over from carol");
    assert_eq!(decrypted.sender, carol.user_id());
    assert_eq!(
        decrypted.sender_device.as_deref().map(|d| d.as_str()),
        Some(carol.user.device_id.as_str())
    );
    drop((puppet_device, bot_device));
    bridge.stop().await;
}

/// Memory and file handles of open idle machines: 50 puppets' devices opened,
/// then closed. Prints the figures; fails when a machine costs far more than
/// measured when this was written, or when closing does not give back the files.
#[tokio::test]
async fn open_machines_cost_little_and_closing_frees_their_files() {
    const PUPPETS: usize = 50;
    let Setup {
        _dir,
        config: _,
        synapse: _synapse,
        bridge,
        hs,
    } = setup().await;
    let names: Vec<String> = (0..PUPPETS)
        .map(|i| format!("walkie_mumble_p{i}"))
        .collect();
    for name in &names {
        hs.register(name).await.unwrap();
    }
    let users: Vec<OwnedUserId> = names
        .iter()
        .map(|n| user(&format!("@{n}:walkie.test")))
        .collect();
    // One device first, so what every store shares (SQLite, the runtime's
    // blocking threads) is not counted per machine.
    let first = bridge.devices.device(&users[0]).await.unwrap();
    drop(first);
    let (rss_before, fds_before) = (rss_kib(), open_files());
    let mut open = Vec::new();
    for user in &users[1..] {
        open.push(bridge.devices.device(user).await.unwrap());
    }
    let (rss_after, fds_after) = (rss_kib(), open_files());
    let machines = (PUPPETS - 1) as u64;
    let rss_each = rss_after.saturating_sub(rss_before) / machines;
    let fds_each = fds_after.saturating_sub(fds_before) as f64 / machines as f64;
    eprintln!(
        "{machines} open machines: RSS {rss_before} → {rss_after} KiB ({rss_each} KiB each), \
         files {fds_before} → {fds_after} ({fds_each:.1} each)"
    );
    assert_eq!(bridge.devices.open_count(), PUPPETS);
    drop(open);
    assert_eq!(bridge.devices.shutdown().await, PUPPETS);
    // The stores' connections close on the runtime's blocking threads (deadpool's
    // sync wrapper), a moment after the machines are dropped; nothing announces
    // it, so the file table is watched, within a deadline.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut fds_closed = open_files();
    while fds_closed > fds_before + 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        fds_closed = open_files();
    }
    eprintln!("after closing: files {fds_closed}");
    assert!(rss_each < 4 * 1024, "{rss_each} KiB per open machine");
    assert!(fds_each <= 8.0, "{fds_each} files per open machine");
    assert!(
        fds_closed <= fds_before + 2,
        "closing kept files open: {fds_before} → {fds_closed}"
    );
    bridge.stop().await;
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}
