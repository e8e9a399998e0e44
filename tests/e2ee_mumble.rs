//! Encrypted rooms with a Mumble server on the other side (issue 15, item 9): a
//! real Synapse, a real murmurd, and clients nobody here wrote on both sides —
//! matrix-nio decrypting and encrypting in the room, pymumble talking and
//! listening in the Mumble channel.
//!
//! Nothing sleeps: every wait is for an event a client receives.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bridge_common::{
    alice_nio_in_room, assert_is_the_speech_within, encrypted_ops_room, setup_with_room, Setup,
    SERVER, WAIT,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walkie_endpoint::audio::encode_ogg_opus;
use walkie_harness::{E2eeTestClient, MessageFilter, MumbleEvent, MumbleTestClient, Murmur};

fn bot() -> String {
    format!("@walkie:{SERVER}")
}

/// An encrypted bridged room, murmurd with `Ops`, the daemon bridging the two,
/// pymumble `bob` in Ops and alice's nio client in the room.
struct Bridged {
    setup: Setup,
    _murmur: Murmur,
    mumble: MumbleTestClient,
    alice: E2eeTestClient,
    shutdown: CancellationToken,
    daemon: JoinHandle<anyhow::Result<()>>,
}

impl Bridged {
    async fn start(mumble_user: &str) -> Bridged {
        let setup = setup_with_room(encrypted_ops_room()).await;
        let murmur = Murmur::builder()
            .channels(&["Ops"])
            .start()
            .await
            .expect("murmurd starts");
        let config = setup.config_with_mumble(&murmur.address());
        let shutdown = CancellationToken::new();
        let daemon = tokio::spawn(walkie_bridge::daemon::run(config, shutdown.clone()));
        let mumble = MumbleTestClient::join(&murmur, mumble_user, "Ops")
            .await
            .expect("pymumble joins");
        // The bot enters Ops once its channel started, which in an encrypted room
        // is after its device is on the homeserver: alice's client finds it below.
        mumble
            .wait_for_users(|users| users.iter().any(|u| u == "walkie"), WAIT)
            .await
            .expect("the bridge's bot is in Ops");
        let alice = alice_nio_in_room(&setup, true).await;
        Bridged {
            setup,
            _murmur: murmur,
            mumble,
            alice,
            shutdown,
            daemon,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.daemon)
            .await
            .expect("daemon stops")
            .expect("no panic")
            .expect("daemon ends cleanly");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_voice_message_is_heard_on_mumble() {
    let bridged = Bridged::start("bob").await;
    let room = bridged.setup.room_id.clone();
    let sent = bridged
        .alice
        .send_text(&room, "!wt on")
        .await
        .expect("!wt on");
    assert!(sent.encrypted, "the command went encrypted");
    bridged
        .alice
        .wait_text(&MessageFilter::from(bot()).containing("!wt off"), WAIT)
        .await
        .unwrap_or_else(|e| panic!("the bot confirms the opt-in: {e}"));

    let speech = common::speech(48_000);
    let path = bridged.setup.dir.path().join("speech.ogg");
    std::fs::write(&path, encode_ogg_opus(&speech, 24_000).expect("Ogg Opus")).expect("write");
    let spoken = Duration::from_millis(speech.len() as u64 * 1000 / 48_000);
    bridged.mumble.record_start().await.expect("record");
    let voice = bridged
        .alice
        .send_voice(&room, &path, spoken)
        .await
        .expect("voice message");
    assert!(voice.encrypted, "sent as m.room.encrypted with `file`");
    bridged
        .mumble
        .wait_for_event(
            |e| matches!(e, MumbleEvent::VoiceEnd { user, .. } if user == "walkie"),
            WAIT,
        )
        .await
        .expect("bob hears the voice message end");
    let recording = bridged
        .mumble
        .record_stop(bridged.setup.dir.path())
        .await
        .expect("recording");
    let stream = recording.get("walkie").expect("bob heard the bot");
    let (pcm, rate) = common::read_wav(&stream.path);
    assert_eq!(rate, 48_000);
    let heard_ms = pcm.len() as u64 * 1000 / 48_000;
    assert!(
        heard_ms.abs_diff(spoken.as_millis() as u64) <= 60,
        "bob heard {heard_ms} ms of {spoken:?}"
    );
    let (_, correlation) = common::best_lag(&speech, &pcm, -2000..=2000);
    assert!(
        correlation > 0.85,
        "bob heard something else: {correlation:.3}"
    );
    bridged.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mumble_talk_is_archived_encrypted_by_the_talkers_puppet() {
    let bridged = Bridged::start("carol").await;
    let speech = common::speech(48_000);
    let wav = bridged.setup.dir.path().join("speech.wav");
    common::write_wav(&wav, &speech, 48_000);
    bridged
        .mumble
        .send_wav(&wav, true)
        .await
        .expect("carol talks");

    let puppet = format!("@walkie_mumble_carol:{SERVER}");
    let from_puppet = MessageFilter::from(puppet.clone()).in_room(&bridged.setup.room_id);
    let audio = bridged
        .alice
        .wait_audio(
            &from_puppet,
            &bridged.setup.dir.path().join("archived.ogg"),
            WAIT,
        )
        .await
        .expect("alice decrypts carol's transmission");
    assert!(
        audio.message.encrypted && audio.message.decrypted,
        "{audio:?}"
    );
    assert!(
        audio.attachment_encrypted && audio.hash_checked,
        "the attachment is not encrypted or its SHA-256 not checked: {audio:?}"
    );
    assert!(
        audio.message.sent_by_own_device(),
        "not encrypted by the puppet's own device: {:?}",
        audio.message.sender_device
    );
    // The recording starts when the bridge hears carol's first packet: the same
    // ±2000 samples the plain Mumble archive test allows.
    assert_is_the_speech_within(&audio, &speech, 2000);
    let keys = bridged.alice.query_keys(&puppet).await.expect("keys");
    assert!(keys.self_signing_signed_by_master, "{keys:?}");
    let device_id = audio
        .message
        .sender_device
        .as_ref()
        .map(|d| d.device_id.clone())
        .expect("sender device");
    assert!(
        keys.device(&device_id).is_some_and(|d| d.cross_signed),
        "the device is not the puppet's, cross-signed: {keys:?}"
    );
    bridged.stop().await;
}
