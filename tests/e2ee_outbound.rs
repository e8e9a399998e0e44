//! Encrypted rooms, the bridge's side out (issue 15, items 6 and 7), against a real
//! Synapse and clients nobody here wrote the crypto of: matrix-nio (decrypts the
//! voice message and its attachment, checks the attachment's SHA-256, tells which
//! device the room key came from, and checks cross-signing signatures) and
//! matrix-js-sdk with the Rust crypto compiled to wasm (the trust rules Element
//! applies: the shield it would show).
//!
//! Nothing sleeps: every wait is for an event a client receives.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
#[path = "live_common/mod.rs"]
mod live_common;

use bridge_common::{
    assert_is_the_speech, assert_is_the_speech_within, encrypted_ops_room, setup, setup_with_room,
    speech_packets, start_daemon, transmit, Setup, SERVER, WAIT,
};
use serde_json::Value;
use walkie_harness::{E2eeTestClient, JsTrustClient, MessageFilter};

/// The puppet of talker `kilo` on the test endpoint `test.radio`.
fn puppet() -> String {
    format!("@walkie_test_kilo:{SERVER}")
}

fn bot() -> String {
    format!("@walkie:{SERVER}")
}

/// The room's events as the homeserver stores them (what it can read).
async fn stored_events(setup: &Setup) -> Vec<Value> {
    setup
        .synapse
        .client(&setup.alice)
        .room_messages(&setup.room_id, 100)
        .await
        .expect("room messages")
}

async fn e2ee_client(setup: &Setup, user: &walkie_harness::TestUser, name: &str) -> E2eeTestClient {
    let (client, _login) =
        E2eeTestClient::login_user(&setup.synapse, user, setup.dir.path().join(name))
            .await
            .unwrap_or_else(|e| panic!("{name}'s nio client logs in: {e}"));
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transmission_in_an_encrypted_room_is_encrypted_by_the_puppets_own_device() {
    let setup = setup_with_room(encrypted_ops_room()).await;
    let alice = e2ee_client(&setup, &setup.alice, "alice-nio").await;
    let (trust, _) = JsTrustClient::login_user(
        &setup.synapse,
        &setup.alice,
        setup.dir.path().join("alice-js"),
    )
    .await
    .expect("alice's js-sdk client logs in");
    let mut running = start_daemon(&setup.config).await;
    let (speech, packets) = speech_packets();
    transmit(&mut running.link, "kilo", &packets).await;

    let from_puppet = MessageFilter::from(puppet()).in_room(&setup.room_id);
    let audio = alice
        .wait_audio(&from_puppet, &setup.dir.path().join("first.ogg"), WAIT)
        .await
        .expect("alice decrypts the voice message");
    assert!(
        audio.message.encrypted && audio.message.decrypted,
        "{audio:?}"
    );
    assert!(
        audio.attachment_encrypted,
        "the attachment is not encrypted"
    );
    assert!(
        audio.hash_checked,
        "the attachment's SHA-256 was not checked"
    );
    assert!(
        audio.message.sent_by_own_device(),
        "not encrypted by the puppet's own device: {:?}",
        audio.message.sender_device
    );
    let voice = audio.voice().expect("voice message fields");
    assert_eq!(voice.msgtype, "m.audio");
    assert!(voice.voice.is_some(), "not marked as a voice message");
    assert!(voice.url.is_none(), "a plain url in an encrypted room");
    assert_eq!(voice.info.mimetype.as_deref(), Some("audio/ogg"));
    assert_is_the_speech(&audio, &speech);

    // The device is the puppet's, signed by the puppet's self-signing key.
    let device_id = audio
        .message
        .sender_device
        .as_ref()
        .map(|d| d.device_id.clone())
        .expect("sender device");
    let keys = alice.query_keys(&puppet()).await.expect("puppet's keys");
    assert!(keys.self_signing_signed_by_master, "{keys:?}");
    let device = keys.device(&device_id).expect("the device is the puppet's");
    assert!(device.cross_signed, "{device:?}");

    // matrix-js-sdk, with Element's trust rules, shows no warning.
    let report = trust
        .wait_audio(&from_puppet, WAIT)
        .await
        .expect("js-sdk decrypts the voice message");
    assert!(report.no_warning(), "js-sdk warns: {report:?}");
    assert_eq!(report.sender_device_id(), Some(device_id.as_str()));

    // What the homeserver holds: an m.room.encrypted, and an upload that is not Ogg.
    let events = stored_events(&setup).await;
    assert!(
        !events
            .iter()
            .any(|e| e["sender"] == puppet() && e["type"] == "m.room.message"),
        "a plaintext message from the puppet: {events:?}"
    );
    assert!(events
        .iter()
        .any(|e| e["sender"] == puppet() && e["type"] == "m.room.encrypted"));
    let mxc = voice
        .file
        .as_ref()
        .map(|f| f.url.clone())
        .expect("file.url");
    let uploaded = setup
        .synapse
        .client(&setup.alice)
        .download(&mxc)
        .await
        .expect("download the upload");
    assert_eq!(uploaded.len() as u64, audio.ciphertext_size);
    assert!(
        !uploaded.starts_with(b"OggS"),
        "the homeserver holds the plaintext Ogg"
    );

    // A member who joins later decrypts the transmissions after they joined.
    let bob_user = setup.member("bob").await;
    let bob = e2ee_client(&setup, &bob_user, "bob-nio").await;
    transmit(&mut running.link, "kilo", &packets).await;
    let later = bob
        .wait_audio(&from_puppet, &setup.dir.path().join("bob.ogg"), WAIT)
        .await
        .expect("bob decrypts the later voice message");
    assert!(later.message.sent_by_own_device(), "{later:?}");
    assert_is_the_speech(&later, &speech);
    let again = alice
        .wait_audio(&from_puppet, &setup.dir.path().join("second.ogg"), WAIT)
        .await
        .expect("alice decrypts the second one too");
    assert_eq!(again.message.event_id, later.message.event_id);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_turns_encryption_on_gets_nothing_in_plaintext_after_it() {
    let setup = setup().await;
    let alice = e2ee_client(&setup, &setup.alice, "alice-nio").await;
    let mut running = start_daemon(&setup.config).await;
    let (speech, packets) = speech_packets();
    transmit(&mut running.link, "kilo", &packets).await;
    let from_puppet = MessageFilter::from(puppet()).in_room(&setup.room_id);
    let plain = alice
        .wait_audio(&from_puppet, &setup.dir.path().join("plain.ogg"), WAIT)
        .await
        .expect("the plain voice message");
    assert!(!plain.message.encrypted && !plain.attachment_encrypted);

    // One message per Megolm session: the bridge follows the room's rotation.
    let rotation = walkie_harness::Rotation {
        period_ms: None,
        period_msgs: Some(1),
    };
    alice
        .enable_encryption(&setup.room_id, rotation)
        .await
        .expect("alice turns encryption on");
    // At once: the next transmission is encrypted, whether or not the bridge
    // has seen the m.room.encryption event in a transaction yet.
    transmit(&mut running.link, "kilo", &packets).await;
    let encrypted = alice
        .wait_audio(&from_puppet, &setup.dir.path().join("encrypted.ogg"), WAIT)
        .await
        .expect("the voice message after the switch");
    assert!(encrypted.message.encrypted && encrypted.attachment_encrypted);
    assert!(encrypted.message.sent_by_own_device(), "{encrypted:?}");
    assert_is_the_speech(&encrypted, &speech);
    transmit(&mut running.link, "kilo", &packets).await;
    let next = alice
        .wait_audio(&from_puppet, &setup.dir.path().join("next.ogg"), WAIT)
        .await
        .expect("the next encrypted voice message");
    assert!(next.message.sent_by_own_device(), "{next:?}");
    assert!(encrypted.message.session_id.is_some());
    assert_ne!(
        encrypted.message.session_id, next.message.session_id,
        "rotation_period_msgs = 1, yet one session for two messages"
    );
    let events = stored_events(&setup).await;
    let plaintext_from_puppet = events
        .iter()
        .filter(|e| e["sender"] == puppet() && e["type"] == "m.room.message")
        .count();
    assert_eq!(plaintext_from_puppet, 1, "{events:?}");
    running.stop().await;
}

/// The puppet's crypto store cannot be opened (a file stands where its folder
/// goes): the recording is held, the room is told (encrypted, by the bot's own
/// device), nothing goes out in plaintext; once the store can be made, the held
/// recording is posted encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_cannot_be_encrypted_is_held_and_the_room_told() {
    let setup = setup_with_room(encrypted_ops_room()).await;
    let alice = e2ee_client(&setup, &setup.alice, "alice-nio").await;
    let crypto = setup.dir.path().join("crypto");
    std::fs::create_dir_all(&crypto).expect("crypto dir");
    let blocker = crypto.join("walkie_test_kilo");
    std::fs::write(&blocker, b"not a folder").expect("blocker");
    let mut running = start_daemon(&setup.config).await;
    let (speech, packets) = speech_packets();
    transmit(&mut running.link, "kilo", &packets).await;

    let notice = alice
        .wait_text(
            &MessageFilter::from(bot())
                .in_room(&setup.room_id)
                .containing("could not be encrypted"),
            WAIT,
        )
        .await
        .expect("the bot says the recording is held");
    assert!(
        notice.encrypted && notice.sent_by_own_device(),
        "{notice:?}"
    );
    assert!(
        notice
            .body()
            .is_some_and(|b| b.contains("never sent unencrypted")),
        "{notice:?}"
    );
    assert!(
        !stored_events(&setup)
            .await
            .iter()
            .any(|e| e["sender"] == puppet()
                && matches!(
                    e["type"].as_str(),
                    Some("m.room.message" | "m.room.encrypted")
                )),
        "the puppet posted although it has no device"
    );

    std::fs::remove_file(&blocker).expect("unblock");
    let from_puppet = MessageFilter::from(puppet()).in_room(&setup.room_id);
    let audio = alice
        .wait_audio(&from_puppet, &setup.dir.path().join("held.ogg"), WAIT)
        .await
        .expect("the held recording is posted once it can be encrypted");
    assert!(audio.message.sent_by_own_device(), "{audio:?}");
    assert_is_the_speech(&audio, &speech);
    running.stop().await;
}

/// `/health` answers 200: the bridge runs its channels.
async fn until_healthy(status: u16, bridge: &mut walkie_harness::ChildGuard) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let ok = reqwest::get(format!("http://127.0.0.1:{status}/health"))
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            return;
        }
        assert!(
            bridge.is_running() && std::time::Instant::now() < deadline,
            "the bridge never got healthy: {}",
            bridge.log_tail(40)
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn start_bridge(setup: &Setup, config: &std::path::Path, log: &str) -> walkie_harness::ChildGuard {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
    command.args(["run", "-c"]).arg(config);
    command
        .env("HOME", setup.dir.path())
        .env("RUST_LOG", "info");
    walkie_harness::ChildGuard::spawn("walkie-bridge", command, setup.dir.path().join(log))
        .expect("walkie-bridge starts")
}

/// Bob talks from the live page for the length of `packets`.
async fn live_talk(setup: &Setup, bob: &walkie_harness::TestUser, packets: &[bytes::Bytes]) {
    let mut client = live_common::LiveClient::logon_ok(setup.listen, &setup.synapse, bob).await;
    let stream = client.start_stream().await;
    client
        .send_packets(stream, packets, std::time::Duration::from_millis(20))
        .await;
    assert_eq!(client.stop_stream(stream).await["success"], true);
    client.until_floor("released").await;
    client.close().await;
}

/// Live talk works in an encrypted room (the bot posts a Matrix user's live talk,
/// encrypted by its own device), and the real binary SIGKILLed and started again
/// keeps that device: the next transmission comes from the same device id and
/// decrypts with no warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_talk_is_archived_encrypted_and_a_sigkill_keeps_the_bots_device() {
    let setup = setup_with_room(encrypted_ops_room()).await;
    let status = walkie_harness::free_port();
    let config = setup.dir.path().join("config.toml");
    let mut text = bridge_common::config_text(&setup.synapse.url(), setup.listen, setup.dir.path());
    text.push_str(&format!("\n[status]\nlisten = \"127.0.0.1:{status}\"\n"));
    std::fs::write(&config, text).expect("config");
    let alice = e2ee_client(&setup, &setup.alice, "alice-nio").await;
    let bob = setup.member("bob").await;
    let (speech, packets) = speech_packets();
    let from_bot = MessageFilter::from(bot()).in_room(&setup.room_id);
    let mut device_ids = Vec::new();
    for (run, kill) in [(1, true), (2, false)] {
        let mut bridge = start_bridge(&setup, &config, &format!("bridge-{run}.log"));
        until_healthy(status, &mut bridge).await;
        live_talk(&setup, &bob, &packets).await;
        let audio = alice
            .wait_audio(
                &from_bot,
                &setup.dir.path().join(format!("live-{run}.ogg")),
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("run {run}: {e}\n{}", bridge.log_tail(40)));
        assert!(audio.attachment_encrypted, "run {run}: {audio:?}");
        assert!(audio.message.sent_by_own_device(), "run {run}: {audio:?}");
        // A live talk's recording is shifted against the speech by more than the
        // 8 ms the other checks allow (the page's packets come at their own pace
        // after the grant): the search covers ±0.5 s.
        assert_is_the_speech_within(&audio, &speech, 24_000);
        device_ids.extend(audio.message.sender_device.map(|d| d.device_id));
        if kill {
            bridge.kill().expect("SIGKILL");
        } else {
            bridge
                .stop(std::time::Duration::from_secs(10))
                .await
                .expect("SIGTERM");
        }
    }
    assert_eq!(device_ids.len(), 2, "{device_ids:?}");
    assert_eq!(
        device_ids[0], device_ids[1],
        "a new device after the restart"
    );
}
