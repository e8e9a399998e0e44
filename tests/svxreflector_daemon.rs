//! The whole bridge with a `[svxreflector.net]` endpoint, from its config, on a
//! real Synapse and Debian's real reflector, with a real SvxLink node as the
//! network: a node's talk is archived as a voice message; a Matrix voice message
//! is heard at the node; a refused login and a reflector without talkgroups are
//! told on /status.

mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bridge_common::{is_voice_message_from, Setup, SERVER, WAIT};
use walkie_endpoint::audio::{decode_ogg_opus, encode_ogg_opus, resample};
use walkie_harness::{free_port, SvxLinkNode, SvxReflector, SvxReflectorVersion};

const KEY: &str = "a shared key";

/// The test configuration with `[svxreflector.net]` on the channel (and
/// /status on `status_port`).
fn config(setup: &Setup, reflector: &SvxReflector, extra: &str, status_port: u16) -> String {
    bridge_common::config_text(&setup.synapse.url(), setup.listen, setup.dir.path())
        .replace("endpoints = []", r#"endpoints = ["svxreflector.net"]"#)
        + &*format!(
            r#"
[status]
listen = "127.0.0.1:{status_port}"

[svxreflector.net]
server = "{}"
callsign = "SM0BRG"
{extra}
"#,
            reflector.address()
        )
}

async fn reflector() -> SvxReflector {
    SvxReflector::builder(SvxReflectorVersion::V19_09)
        .node("SM0BRG", KEY)
        .node("SM0NOD", KEY)
        .start()
        .await
        .expect("reflector starts")
}

async fn svxlink(reflector: &SvxReflector) -> SvxLinkNode {
    SvxLinkNode::builder(reflector.host(), reflector.port())
        .callsign("SM0NOD")
        .auth_key(KEY)
        .start()
        .await
        .expect("svxlink starts")
}

/// The `svxreflector.net` endpoint on /status once `done` holds (the status
/// server has no push: asked every 100 ms until [`WAIT`]).
async fn status_until(port: u16, done: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status: Option<serde_json::Value> =
            match reqwest::get(format!("http://127.0.0.1:{port}/status")).await {
                Ok(answer) => answer.json().await.ok(),
                Err(_) => None,
            };
        let endpoint = status.as_ref().and_then(|s| {
            s["channels"][0]["endpoints"]
                .as_array()?
                .iter()
                .find(|e| e["id"] == "svxreflector.net")
                .cloned()
        });
        if let Some(endpoint) = endpoint.filter(|e| done(e)) {
            return endpoint;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/status never showed it: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `heard` (16 kHz) is `sent`: as long within ±60 ms and correlated above 0.85.
fn assert_is(heard: &[i16], sent: &[i16], what: &str) {
    let span = |pcm: &[i16]| {
        let (first, last) = common::active_span(pcm, 300);
        pcm[first..=last].to_vec()
    };
    let (heard, sent) = (span(heard), span(sent));
    let difference_ms = (heard.len() as f64 - sent.len() as f64) / 16.0;
    let (_, correlation) = common::best_lag(&sent, &heard, -800..=800);
    println!("{what}: {difference_ms:+.1} ms, correlation {correlation:.3}");
    assert!(
        difference_ms.abs() <= 60.0,
        "{what}: {difference_ms:+.1} ms"
    );
    assert!(correlation > 0.85, "{what}: correlation {correlation:.3}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_talk_is_archived_and_a_voice_message_is_heard_at_the_node() {
    let setup = bridge_common::setup().await;
    let reflector = reflector().await;
    let node = svxlink(&reflector).await;
    let status_port = free_port();
    // Only alice may be heard on the network (the operator's licence).
    let keys = format!("auth_key = \"{KEY}\"\ntransmit_allow = [\"@alice:{SERVER}\"]");
    let text = config(&setup, &reflector, &keys, status_port);
    let running = bridge_common::start_daemon(&bridge_common::load(&text)).await;
    status_until(status_port, |e| e["state"] == "connected").await;
    reflector
        .wait_for_log("SM0BRG: Login OK", WAIT)
        .await
        .expect("the bridge's node logs in");

    // The network talks: archived by the node's puppet.
    let alice = setup.synapse.client(&setup.alice);
    let speech = common::radio_speech(16_000);
    node.talk(&speech).await.expect("the node talks");
    let puppet = format!("@walkie_svxreflector_sm0nod:{SERVER}");
    let message = alice
        .sync_until(|e| is_voice_message_from(e, &puppet), WAIT)
        .await
        .expect("a voice message by the node's puppet");
    let mxc = message.content()["url"].as_str().expect("url").to_owned();
    let ogg = alice.download(&mxc).await.expect("download");
    let archived = decode_ogg_opus(&ogg).expect("Ogg Opus");
    let archived = resample(&archived.pcm, 48_000, 16_000).expect("resample");
    assert_is(&archived, &speech, "the node's talk, archived");
    let display = alice.displayname(&puppet).await.expect("profile");
    assert_eq!(display.as_deref(), Some("SM0NOD (SvxReflector)"));

    // Matrix talks: bob is not in transmit_allow and is told so in a reply;
    // alice's message is played by the node's transmitter, and only hers.
    node.start_capture();
    let keyed_before = node.ptt().keyed;
    let message = common::radio_speech(48_000);
    let ogg = encode_ogg_opus(&message, 24_000).expect("Ogg Opus");
    let bob = setup.member("bob").await;
    let bob = setup.synapse.client(&bob);
    bridge_common::opt_in(&bob, &setup.room_id).await;
    let bobs = bob
        .send_voice_message(&setup.room_id, ogg.clone(), 1000)
        .await
        .expect("bob's voice message");
    let bot = format!("@walkie:{SERVER}");
    let reply = bob
        .sync_until(
            |e| {
                e.sender() == bot
                    && e.content()["m.relates_to"]["m.in_reply_to"]["event_id"] == bobs.as_str()
            },
            WAIT,
        )
        .await
        .expect("bob is told");
    let told = reply.body().unwrap_or_default().to_owned();
    println!("bob is told: {told}");
    assert!(
        told.starts_with("Not transmitted on svxreflector.net"),
        "{told}"
    );
    bridge_common::opt_in(&alice, &setup.room_id).await;
    alice
        .send_voice_message(&setup.room_id, ogg, message.len() as u64 * 1000 / 48_000)
        .await
        .expect("voice message");
    node.wait_for_ptt(
        "the node plays the voice message",
        |p| p.keyed > keyed_before && !p.on,
        WAIT,
    )
    .await
    .expect("the voice message reached the network");
    let sent = resample(&message, 48_000, 16_000).expect("resample");
    assert_is(
        &node.captured().samples,
        &sent,
        "the voice message at the node",
    );
    assert_eq!(
        node.ptt().keyed,
        keyed_before + 1,
        "bob's message was transmitted"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_and_a_reflector_without_talkgroups_are_told_on_status() {
    let setup = bridge_common::setup().await;
    let reflector = reflector().await;
    let status_port = free_port();
    let text = config(
        &setup,
        &reflector,
        "auth_key = \"not the key\"\ntalkgroup = 91",
        status_port,
    );
    let running = bridge_common::start_daemon(&bridge_common::load(&text)).await;
    let refused = status_until(status_port, |e| e["reason"].is_string()).await;
    println!("/status: {refused}");
    assert_eq!(refused["state"], "disconnected");
    let reason = refused["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("refused the login as SM0BRG: Access denied")
            && reason.contains("auth_key"),
        "{reason}"
    );
    running.stop().await;

    // The right key on a 19.09 reflector, which has no talkgroups: connected,
    // with a warning that the talkgroup means nothing there.
    let status_port = free_port();
    let text = config(
        &setup,
        &reflector,
        &format!("auth_key = \"{KEY}\"\ntalkgroup = 91"),
        status_port,
    );
    let running = bridge_common::start_daemon(&bridge_common::load(&text)).await;
    let endpoint = status_until(status_port, |e| e["state"] == "connected").await;
    println!("/status: {endpoint}");
    let warning = endpoint["warning"].as_str().unwrap_or_default();
    assert!(
        warning.contains("protocol 1 (no talkgroups): talkgroup 91 is ignored"),
        "{endpoint}"
    );
    running.stop().await;
}
