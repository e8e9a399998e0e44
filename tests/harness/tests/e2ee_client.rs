//! The E2EE test client (matrix-nio) against a real Synapse, before the bridge relies
//! on it: encrypted voice messages decrypt with their attachment hash checked, the
//! sending device is found from the crypto, a member who joins later decrypts what
//! is sent after the join (and not before), text is encrypted, withheld notices are
//! reported, the cross-signing check tells a signed device from an unsigned one, and
//! a client restarted (cleanly or after SIGKILL) on its store is the same device.

#[path = "../../../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use walkie_harness::{
    E2eeLogin, E2eeTestClient, MessageFilter, NewRoom, Rotation, Synapse, TestUser,
};

const WAIT: Duration = Duration::from_secs(30);

/// espeak-ng speech (48 kHz mono) encoded by opusenc: a voice message nobody here
/// wrote. Returns the Ogg file and its duration.
fn speech_ogg(dir: &Path) -> (PathBuf, Duration) {
    let wav = common::fixtures().path("speech48000.wav");
    let (pcm, rate) = common::read_wav(&wav);
    let ogg = dir.join("speech.ogg");
    let out = Command::new("opusenc")
        .args(["--quiet", "--bitrate", "24"])
        .arg(&wav)
        .arg(&ogg)
        .output()
        .expect("opusenc runs (opus-tools: scripts/setup.sh)");
    assert!(
        out.status.success(),
        "opusenc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        ogg,
        Duration::from_secs_f64(pcm.len() as f64 / f64::from(rate)),
    )
}

async fn user(
    synapse: &Synapse,
    dir: &Path,
    localpart: &str,
) -> (TestUser, E2eeTestClient, E2eeLogin) {
    let user = synapse.register_user(localpart, false).await.unwrap();
    let (client, login) = E2eeTestClient::login_user(synapse, &user, dir.join(localpart))
        .await
        .unwrap_or_else(|e| panic!("{localpart} logs in: {e}"));
    assert!(!login.restored);
    assert_eq!(login.user_id, user.user_id);
    (user, client, login)
}

#[tokio::test]
async fn an_encrypted_voice_message_decrypts_for_members_and_later_joiners() {
    let synapse = Synapse::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ogg, duration) = speech_ogg(dir.path());
    let sent_bytes = std::fs::read(&ogg).unwrap();
    let (alice_user, alice, alice_login) = user(&synapse, dir.path(), "alice").await;
    let (bob_user, bob, bob_login) = user(&synapse, dir.path(), "bob").await;
    let (carol_user, carol, _) = user(&synapse, dir.path(), "carol").await;
    let (alice_id, bob_id, carol_id) = (
        alice_user.user_id.as_str(),
        bob_user.user_id.as_str(),
        carol_user.user_id.as_str(),
    );

    let room = alice
        .create_room(
            &NewRoom::encrypted()
                .name("e2ee")
                .invite(bob_id)
                .rotation(Rotation {
                    period_ms: Some(3_600_000),
                    period_msgs: Some(50),
                }),
        )
        .await
        .unwrap();
    assert!(room.encrypted);
    assert_eq!(room.invited, [bob_id]);
    let room_id = room.room_id.as_str();
    let joined = bob.join(room_id).await.unwrap();
    assert!(joined.encrypted, "bob sees the room encrypted: {joined:?}");
    alice
        .wait_room(room_id, &[alice_id, bob_id], Some(true), WAIT)
        .await
        .unwrap();

    let sent = alice.send_voice(room_id, &ogg, duration).await.unwrap();
    assert!(sent.encrypted);
    assert_eq!(sent.size, sent_bytes.len() as u64);

    let heard = bob
        .wait_audio(
            &MessageFilter::from(alice_id).in_room(room_id),
            &dir.path().join("bob-heard.ogg"),
            WAIT,
        )
        .await
        .unwrap();
    let message = &heard.message;
    assert_eq!(message.event_id, sent.event_id);
    assert!(message.encrypted && message.decrypted, "{message:?}");
    assert!(!message.late, "the room key came before the event");
    assert!(
        heard.attachment_encrypted && heard.hash_checked,
        "{heard:?}"
    );
    assert_eq!(
        message.sender_device_id.as_deref(),
        Some(alice_login.device_id.as_str()),
        "the session's curve25519 key is alice's device's"
    );
    assert_eq!(
        message.claimed_device_id.as_deref(),
        Some(alice_login.device_id.as_str())
    );
    assert_eq!(
        message.sender_key.as_deref(),
        Some(alice_login.curve25519.as_str())
    );
    assert_eq!(
        message.session_ed25519.as_deref(),
        Some(alice_login.ed25519.as_str())
    );
    assert!(message.sent_by_own_device(), "{message:?}");
    assert_eq!(heard.size, sent_bytes.len() as u64);
    assert_eq!(heard.sha256, sent.sha256);
    assert_eq!(std::fs::read(&heard.path).unwrap(), sent_bytes);
    let voice = heard.voice().unwrap();
    assert_eq!(voice.msgtype, "m.audio");
    assert_eq!(voice.info.mimetype.as_deref(), Some("audio/ogg"));
    let duration_ms = duration.as_millis() as u64;
    assert_eq!(voice.info.duration, Some(duration_ms));
    assert_eq!(voice.audio.map(|a| a.duration), Some(duration_ms));
    assert!(voice.voice.is_some(), "MSC3245 voice flag");
    assert!(voice.url.is_none(), "no plaintext url beside file");
    let file = voice.file.expect("encrypted attachment in file");
    assert_eq!(file.url, sent.mxc);
    eprintln!(
        "voice message: {} bytes Ogg ({duration:?}), ciphertext {} bytes, sender device {}",
        heard.size, heard.ciphertext_size, alice_login.device_id
    );

    // What the homeserver holds is ciphertext: the event and the upload.
    let server = synapse.client(&bob_user);
    let stored = server.get_event(room_id, &sent.event_id).await.unwrap();
    assert_eq!(stored["type"], "m.room.encrypted", "{stored}");
    assert_eq!(stored["content"]["algorithm"], "m.megolm.v1.aes-sha2");
    assert!(stored["content"].get("file").is_none() && stored["content"].get("body").is_none());
    let uploaded = server.download(&sent.mxc).await.unwrap();
    assert_eq!(uploaded.len(), sent_bytes.len(), "AES-CTR keeps the length");
    assert_ne!(uploaded, sent_bytes);
    assert_ne!(&uploaded[..4], b"OggS", "the upload is not the Ogg file");

    // A member who joins later decrypts what is sent after the join...
    alice.invite(room_id, carol_id).await.unwrap();
    carol.join(room_id).await.unwrap();
    alice
        .wait_room(room_id, &[alice_id, bob_id, carol_id], Some(true), WAIT)
        .await
        .unwrap();
    let second = alice.send_voice(room_id, &ogg, duration).await.unwrap();
    let carol_heard = carol
        .wait_audio(
            &MessageFilter::from(alice_id),
            &dir.path().join("carol-heard.ogg"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(carol_heard.message.event_id, second.event_id);
    assert!(carol_heard.message.sent_by_own_device());
    assert!(carol_heard.hash_checked);
    assert_eq!(std::fs::read(&carol_heard.path).unwrap(), sent_bytes);
    let bob_second = bob
        .wait_audio(
            &MessageFilter::from(alice_id),
            &dir.path().join("bob-second.ogg"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(bob_second.message.event_id, second.event_id);
    // ...and not what was sent before it (its join sync showed that event, keyless).
    let missing = carol.undecryptable().await.unwrap();
    assert!(
        missing.iter().any(|e| e.event_id == sent.event_id),
        "carol cannot decrypt the message from before her join: {missing:?}"
    );
    assert!(missing.iter().all(|e| e.event_id != second.event_id));

    // Encrypted text (a `!wt` command) from bob, decrypted by alice.
    let text = bob.send_text(room_id, "!wt status").await.unwrap();
    assert!(text.encrypted);
    let got = alice
        .wait_text(&MessageFilter::from(bob_id).containing("!wt"), WAIT)
        .await
        .unwrap();
    assert_eq!(got.event_id, text.event_id);
    assert_eq!(got.body(), Some("!wt status"));
    assert!(got.sent_by_own_device(), "{got:?}");
    assert_eq!(
        got.sender_device_id.as_deref(),
        Some(bob_login.device_id.as_str())
    );
}

#[tokio::test]
async fn encryption_switched_on_in_a_plain_room_and_clients_restart_on_their_store() {
    let synapse = Synapse::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ogg, duration) = speech_ogg(dir.path());
    let (alice_user, alice, alice_login) = user(&synapse, dir.path(), "alice").await;
    let (bob_user, bob, _) = user(&synapse, dir.path(), "bob").await;
    let (alice_id, bob_id) = (alice_user.user_id.as_str(), bob_user.user_id.as_str());

    let room = alice
        .create_room(&NewRoom::plain().invite(bob_id))
        .await
        .unwrap();
    assert!(!room.encrypted);
    let room_id = room.room_id.clone();
    bob.join(&room_id).await.unwrap();
    alice
        .wait_room(&room_id, &[alice_id, bob_id], Some(false), WAIT)
        .await
        .unwrap();

    // Plain: the attachment is in `url`, nothing to decrypt.
    let plain = alice.send_voice(&room_id, &ogg, duration).await.unwrap();
    assert!(!plain.encrypted);
    let heard = bob
        .wait_audio(
            &MessageFilter::from(alice_id),
            &dir.path().join("plain.ogg"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(heard.message.event_id, plain.event_id);
    assert!(!heard.message.encrypted && !heard.attachment_encrypted && !heard.hash_checked);
    assert!(!heard.message.sent_by_own_device());
    assert_eq!(heard.sha256, plain.sha256);

    alice
        .enable_encryption(&room_id, Rotation::default())
        .await
        .unwrap();
    alice
        .wait_room(&room_id, &[alice_id, bob_id], Some(true), WAIT)
        .await
        .unwrap();
    let encrypted = alice.send_voice(&room_id, &ogg, duration).await.unwrap();
    assert!(encrypted.encrypted);
    let heard = bob
        .wait_audio(
            &MessageFilter::from(alice_id),
            &dir.path().join("enc.ogg"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(heard.message.event_id, encrypted.event_id);
    assert!(heard.message.sent_by_own_device() && heard.hash_checked);

    // A clean stop, then a new process on the same store: same device, keys kept.
    let alice_store = alice.store_dir().to_path_buf();
    alice.stop().await.unwrap();
    let (alice, again) = E2eeTestClient::login_user(&synapse, &alice_user, &alice_store)
        .await
        .unwrap();
    assert!(again.restored);
    assert_eq!(
        (&again.device_id, &again.ed25519, &again.curve25519),
        (
            &alice_login.device_id,
            &alice_login.ed25519,
            &alice_login.curve25519
        )
    );
    let text = bob.send_text(&room_id, "after the restart").await.unwrap();
    let got = alice
        .wait_text(
            &MessageFilter::from(bob_id).containing("after the restart"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(got.event_id, text.event_id);
    assert!(got.encrypted && got.decrypted);

    // SIGKILL: nio's store is written as it goes, so the device survives a crash too.
    alice.kill().await.unwrap();
    let text = bob
        .send_text(&room_id, "while alice was down")
        .await
        .unwrap();
    let (alice, again) = E2eeTestClient::login_user(&synapse, &alice_user, &alice_store)
        .await
        .unwrap();
    assert!(again.restored);
    assert_eq!(again.device_id, alice_login.device_id);
    let got = alice
        .wait_text(
            &MessageFilter::from(bob_id).containing("while alice was down"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(got.event_id, text.event_id);
    assert!(got.encrypted && got.decrypted);
    let sent = alice.send_voice(&room_id, &ogg, duration).await.unwrap();
    let heard = bob
        .wait_audio(
            &MessageFilter::from(alice_id),
            &dir.path().join("after-kill.ogg"),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(heard.message.event_id, sent.event_id);
    assert!(heard.message.sent_by_own_device());
    assert_eq!(
        heard.message.sender_device_id.as_deref(),
        Some(alice_login.device_id.as_str())
    );
}

#[tokio::test]
async fn cross_signing_and_withheld_notices_are_checked() {
    let synapse = Synapse::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (alice_user, alice, alice_login) = user(&synapse, dir.path(), "alice").await;
    let (bob_user, bob, bob_login) = user(&synapse, dir.path(), "bob").await;

    // No cross-signing identity yet: the device is self-signed only.
    let keys = bob.query_keys(&alice_user.user_id).await.unwrap();
    assert_eq!(keys.master_key, None);
    let device = keys.device(&alice_login.device_id).expect("alice's device");
    assert!(device.self_signed && device.user_id_matches);
    assert_eq!(
        device.ed25519.as_deref(),
        Some(alice_login.ed25519.as_str())
    );
    assert!(!device.signed_by_self_signing_key && !device.cross_signed);

    let identity = alice
        .bootstrap_cross_signing(&alice_user.password)
        .await
        .unwrap();
    // A second device of alice that nobody signed.
    let (second, second_login) =
        E2eeTestClient::login_user(&synapse, &alice_user, dir.path().join("alice-2"))
            .await
            .unwrap();
    assert_ne!(second_login.device_id, alice_login.device_id);
    let keys = bob.query_keys(&alice_user.user_id).await.unwrap();
    assert_eq!(
        keys.master_key.as_deref(),
        Some(identity.master_key.as_str())
    );
    assert_eq!(
        keys.self_signing_key.as_deref(),
        Some(identity.self_signing_key.as_str())
    );
    assert!(keys.self_signing_signed_by_master);
    let signed = keys.device(&alice_login.device_id).unwrap();
    assert!(signed.self_signed && signed.signed_by_self_signing_key && signed.cross_signed);
    let unsigned = keys.device(&second_login.device_id).unwrap();
    assert!(unsigned.self_signed);
    assert!(!unsigned.signed_by_self_signing_key && !unsigned.cross_signed);
    second.stop().await.unwrap();

    // Withheld notices: one as a plain to-device message, as the spec sends them.
    let room = alice
        .create_room(&NewRoom::encrypted().invite(&bob_user.user_id))
        .await
        .unwrap();
    bob.join(&room.room_id).await.unwrap();
    let withheld = json!({
        "algorithm": "m.megolm.v1.aes-sha2",
        "room_id": room.room_id,
        "session_id": "some-session",
        "sender_key": alice_login.curve25519,
        "code": "m.unauthorised",
        "reason": "You are not authorised to read the message.",
    });
    synapse
        .client(&alice_user)
        .send_to_device(
            "m.room_key.withheld",
            &json!({ bob_user.user_id.clone(): { bob_login.device_id.clone(): withheld } }),
        )
        .await
        .unwrap();
    let notice = bob.wait_withheld(Some(&room.room_id), WAIT).await.unwrap();
    assert_eq!(notice.sender, alice_user.user_id);
    assert_eq!(notice.code.as_deref(), Some("m.unauthorised"));
    assert_eq!(notice.session_id.as_deref(), Some("some-session"));
    assert!(!notice.encrypted);
    assert_eq!(bob.withheld().await.unwrap(), [notice]);
}
