//! The js-sdk trust client (matrix-js-sdk + Rust crypto, Element's trust rules)
//! against a real Synapse, with matrix-nio clients as the other party, before the
//! bridge's tests rely on it: a voice message from a device its owner's self-signing
//! key signed decrypts with no shield; one from a device nobody signed decrypts with
//! a red `UNSIGNED_DEVICE` shield (the checker can fail); an event sent before the
//! client joined is reported undecryptable with js-sdk's reason; text the client
//! encrypts decrypts in nio.

#[path = "../../../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use walkie_harness::{
    E2eeLogin, E2eeTestClient, JsTrustClient, MessageFilter, NewRoom, ShieldColour, ShieldReason,
    Synapse, TestUser,
};

const WAIT: Duration = Duration::from_secs(30);

/// espeak-ng speech (48 kHz mono) encoded by opusenc. Returns the Ogg file and its
/// duration.
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

async fn nio_login(
    synapse: &Synapse,
    user: &TestUser,
    dir: PathBuf,
) -> (E2eeTestClient, E2eeLogin) {
    E2eeTestClient::login_user(synapse, user, dir)
        .await
        .unwrap_or_else(|e| panic!("{} logs in with nio: {e}", user.user_id))
}

#[tokio::test]
async fn js_sdk_shows_no_shield_for_a_cross_signed_device_and_a_red_one_for_an_unsigned_device() {
    let started = Instant::now();
    let synapse = Synapse::builder().start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ogg, duration) = speech_ogg(dir.path());

    // judy: the js-sdk checker. alice: nio, with a cross-signing identity that signs
    // her first device (only: the identity is made after both logged in); alice-2: a
    // second device of alice that nobody signed. bob: nio, no cross-signing identity.
    let judy_user = synapse.register_user("judy", false).await.unwrap();
    let alice_user = synapse.register_user("alice", false).await.unwrap();
    let bob_user = synapse.register_user("bob", false).await.unwrap();
    let (judy_id, alice_id, bob_id) = (
        judy_user.user_id.as_str(),
        alice_user.user_id.as_str(),
        bob_user.user_id.as_str(),
    );
    let ((judy, judy_login), (alice, alice_login), (alice2, alice2_login), (bob, bob_login)) = tokio::join!(
        async {
            JsTrustClient::login_user(&synapse, &judy_user, dir.path().join("judy"))
                .await
                .unwrap_or_else(|e| panic!("judy logs in with js-sdk: {e}"))
        },
        nio_login(&synapse, &alice_user, dir.path().join("alice")),
        nio_login(&synapse, &alice_user, dir.path().join("alice-2")),
        nio_login(&synapse, &bob_user, dir.path().join("bob")),
    );
    assert_eq!(judy_login.user_id, judy_id);
    eprintln!("js-sdk crypto: {}", judy_login.crypto_version);
    let identity = alice
        .bootstrap_cross_signing(&alice_user.password)
        .await
        .unwrap();
    assert_ne!(alice2_login.device_id, alice_login.device_id);
    // What nio's own signature checks say about the same chain.
    let keys = bob.query_keys(alice_id).await.unwrap();
    assert_eq!(
        keys.master_key.as_deref(),
        Some(identity.master_key.as_str())
    );
    assert!(keys.device(&alice_login.device_id).unwrap().cross_signed);
    assert!(!keys.device(&alice2_login.device_id).unwrap().cross_signed);

    // An encrypted room; a message in it before judy is a member.
    let room = alice
        .create_room(&NewRoom::encrypted().invite(bob_id))
        .await
        .unwrap();
    let room_id = room.room_id.as_str();
    bob.join(room_id).await.unwrap();
    alice
        .wait_room(room_id, &[alice_id, bob_id], Some(true), WAIT)
        .await
        .unwrap();
    let before = alice
        .send_text(room_id, "before judy joined")
        .await
        .unwrap();
    assert!(before.encrypted);

    alice.invite(room_id, judy_id).await.unwrap();
    let joined = judy.join(room_id).await.unwrap();
    assert!(joined.encrypted, "judy sees the room encrypted: {joined:?}");
    let members = [alice_id, bob_id, judy_id];
    for nio in [&alice, &alice2, &bob] {
        nio.wait_room(room_id, &members, Some(true), WAIT)
            .await
            .unwrap();
    }

    // The earlier message stays undecryptable for judy, with js-sdk's reason.
    let utd = judy
        .wait_undecryptable(&MessageFilter::from(alice_id).in_room(room_id), WAIT)
        .await
        .unwrap();
    assert_eq!(utd.event_id, before.event_id);
    // Synapse puts the reader's membership at the event in `unsigned`, and js-sdk
    // names that case.
    assert_eq!(utd.reason, "HISTORICAL_MESSAGE_USER_NOT_JOINED", "{utd:?}");
    assert_eq!(
        utd.claimed_device_id.as_deref(),
        Some(alice_login.device_id.as_str())
    );
    eprintln!(
        "undecryptable before the join: {} ({:?})",
        utd.reason, utd.message
    );

    // 1. From alice's cross-signed device: decrypted, no shield. judy has not
    //    verified alice; under the default (TOFU, non-strict) rules an unverified
    //    but cross-signed identity gets no warning.
    let sent = alice.send_voice(room_id, &ogg, duration).await.unwrap();
    let signed = judy
        .wait_audio(&MessageFilter::from(alice_id).in_room(room_id), WAIT)
        .await
        .unwrap();
    eprintln!("cross-signed device: {signed:#?}");
    assert_eq!(signed.event_id, sent.event_id);
    assert!(signed.encrypted && signed.decrypted, "{signed:?}");
    assert_eq!(signed.content["msgtype"], "m.audio");
    assert!(signed.content["file"]["url"].as_str() == Some(sent.mxc.as_str()));
    let shield = signed.shield.expect("decrypted here: a shield verdict");
    assert_eq!(shield.colour, ShieldColour::None, "{shield:?}");
    assert_eq!(shield.reason, None);
    assert!(signed.no_warning(), "{signed:?}");
    assert_eq!(
        signed.sender_device_id(),
        Some(alice_login.device_id.as_str())
    );
    assert_eq!(
        signed.sender_curve25519.as_deref(),
        Some(alice_login.curve25519.as_str())
    );
    assert_eq!(
        signed.sender_claimed_ed25519.as_deref(),
        Some(alice_login.ed25519.as_str())
    );
    assert_eq!(signed.key_source_untrusted, Some(false));
    assert!(signed.sender_has_cross_signing_keys);
    let device = signed.device_verification.expect("alice's device is known");
    assert!(device.signed_by_owner, "{device:?}");
    assert!(!device.cross_signing_verified && !device.local_verified && !device.verified);
    let user = signed.user_verification;
    assert!(!user.verified && !user.cross_signing_verified && !user.needs_user_approval);

    // 2. From alice's second device, which her self-signing key never signed: red.
    let sent = alice2.send_voice(room_id, &ogg, duration).await.unwrap();
    let unsigned = judy
        .wait_audio(&MessageFilter::from(alice_id).in_room(room_id), WAIT)
        .await
        .unwrap();
    eprintln!("unsigned device of a cross-signed user: {unsigned:#?}");
    assert_eq!(unsigned.event_id, sent.event_id);
    assert!(unsigned.decrypted, "decrypts all the same: {unsigned:?}");
    let shield = unsigned.shield.expect("a shield verdict");
    assert_eq!(shield.colour, ShieldColour::Red, "{shield:?}");
    assert_eq!(shield.reason, Some(ShieldReason::UnsignedDevice));
    assert!(!unsigned.no_warning());
    assert_eq!(
        unsigned.sender_device_id(),
        Some(alice2_login.device_id.as_str())
    );
    let device = unsigned.device_verification.expect("alice-2 is known");
    assert!(!device.signed_by_owner, "{device:?}");

    // 3. From bob, who has no cross-signing identity: his device is signed by no
    //    owner either.
    let sent = bob.send_voice(room_id, &ogg, duration).await.unwrap();
    let no_identity = judy
        .wait_audio(&MessageFilter::from(bob_id), WAIT)
        .await
        .unwrap();
    eprintln!(
        "device of a user without cross-signing: {:?}",
        no_identity.shield
    );
    assert_eq!(no_identity.event_id, sent.event_id);
    assert!(no_identity.decrypted);
    assert!(!no_identity.sender_has_cross_signing_keys);
    assert_eq!(
        no_identity.shield.map(|s| (s.colour, s.reason)),
        Some((ShieldColour::Red, Some(ShieldReason::UnsignedDevice)))
    );
    assert_eq!(
        no_identity.sender_device_id(),
        Some(bob_login.device_id.as_str())
    );
    assert!(!no_identity.device_verification.unwrap().signed_by_owner);

    // What judy encrypts, nio decrypts, from judy's own device.
    let text = judy.send_text(room_id, "hello from js-sdk").await.unwrap();
    assert!(text.encrypted);
    let got = alice
        .wait_text(&MessageFilter::from(judy_id).containing("hello"), WAIT)
        .await
        .unwrap();
    assert_eq!(got.event_id, text.event_id);
    assert!(got.sent_by_own_device(), "{got:?}");
    assert_eq!(
        got.sender_device_id.as_deref(),
        Some(judy_login.device_id.as_str())
    );

    // The message from before the join never decrypted.
    let still = judy.undecryptable().await.unwrap();
    assert!(
        still.iter().any(|e| e.event_id == before.event_id),
        "{still:?}"
    );
    judy.stop().await.unwrap();
    eprintln!("test body took {:?}", started.elapsed());
}
