//! The live-talk WebSocket against a real Synapse and the daemon in-process: logons
//! (token, membership, opt-in), bad messages, and floor sequences with a test
//! endpoint on the same channel, audio checked by content both ways.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
#[path = "live_common/mod.rs"]
mod live_common;

use std::time::{Duration, SystemTime};

use bridge_common::{
    is_voice_message_from, next_floor, setup, speech_packets, start_daemon, Running, Setup, SERVER,
    WAIT,
};
use bytes::Bytes;
use live_common::{Incoming, LiveClient};
use serde_json::{json, Value};
use walkie_bridge::config::Config;
use walkie_bridge::store::Store;
use walkie_endpoint::audio::OpusDecoder;
use walkie_endpoint::{Downlink, FloorEvent, HubLink, Priority, StreamKey, TalkKind, Talker};
use walkie_harness::TestUser;

/// Synapse with alice's room, bob joined, and the daemon with `test.radio`.
async fn bridge_with(edit: impl FnOnce(&mut Config)) -> (Setup, Running, TestUser) {
    let mut setup = setup().await;
    edit(&mut setup.config);
    let bob = setup.member("bob").await;
    let running = start_daemon(&setup.config).await;
    (setup, running, bob)
}

async fn bridge() -> (Setup, Running, TestUser) {
    bridge_with(|_| {}).await
}

async fn store(setup: &Setup) -> Store {
    Store::connect(&setup.config.database.url)
        .await
        .expect("the bridge's database")
}

fn error_code(answer: &Value) -> &str {
    assert_eq!(answer["command"], "on_error", "not an error: {answer}");
    answer["error"].as_str().unwrap_or("")
}

/// Decodes what a test endpoint heard.
fn decode(packets: &[Bytes]) -> Vec<i16> {
    let mut decoder = OpusDecoder::new().expect("decoder");
    packets
        .iter()
        .flat_map(|p| decoder.decode(p).expect("valid Opus"))
        .collect()
}

fn assert_is_speech(speech: &[i16], heard: &[i16], who: &str) {
    let (_, correlation) = common::best_lag(speech, heard, -2000..=2000);
    eprintln!(
        "{who}: {} ms, correlation {correlation:.3}",
        heard.len() / 48
    );
    assert!(
        correlation > 0.85,
        "{who} heard something else: correlation {correlation:.3}"
    );
}

/// A radio transmission from the test endpoint at `pace` per frame.
async fn radio_talk(link: &mut HubLink, packets: &[Bytes], priority: Priority) {
    let stream = StreamKey(1);
    link.talk_start(
        stream,
        Talker::new("kilo", "kilo (Radio)"),
        priority,
        TalkKind::Live,
    )
    .await
    .expect("hub");
    loop {
        match next_floor(link).await {
            FloorEvent::Granted { .. } => break,
            FloorEvent::Denied { reason, .. } => panic!("radio denied: {reason}"),
            _ => {}
        }
    }
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    for (seq, packet) in packets.iter().enumerate() {
        pace.tick().await;
        link.audio(
            stream,
            walkie_endpoint::AudioFrame::opus(seq as u32, packet.clone()),
        )
        .expect("hub");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_logs_on_and_listen_opts_the_device_in() {
    let (setup, running, bob) = bridge().await;
    let token = setup.synapse.client(&bob).openid_token().await.unwrap();
    let mut client = LiveClient::connect(setup.listen).await;
    let seq = client.next_seq();
    let before = SystemTime::now();
    client
        .send_json(&json!({
            "command": "logon", "seq": seq, "channel": "ops",
            "user_id": bob.user_id, "device_id": bob.device_id,
            "openid_token": token.access_token, "listen": true, "listen_for_s": 3600,
        }))
        .await;
    let answer = client.answer(seq).await;
    assert_eq!(answer["success"], true, "{answer}");
    assert_eq!(answer["user_id"], bob.user_id.as_str());
    let until = answer["listening_until_ms"].as_u64().expect("an expiry");
    let expected = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
        + 3_600_000;
    assert!(until.abs_diff(expected) < 60_000, "{until} vs {expected}");
    let status = client.next_json().await;
    assert_eq!(status["command"], "on_channel_status", "{status}");
    assert_eq!(status["room_id"], setup.room_id.as_str());
    assert_eq!(status["users_online"], 1);
    assert_eq!(client.next_json().await["state"], "idle");

    let opt_in = store(&setup)
        .await
        .opted_in(&bob.user_id, Some(&bob.device_id), SystemTime::now())
        .await
        .unwrap()
        .expect("bob's device is opted in");
    assert_eq!(opt_in.device_id.as_deref(), Some(bob.device_id.as_str()));
    let until = opt_in.until.expect("with an expiry");
    assert!(until > SystemTime::now() + Duration::from_secs(3500));

    // Opted in now, the same device may log on without asking to listen.
    let mut again = LiveClient::connect(setup.listen).await;
    let answer = again.logon(&bob, &token.access_token, false).await;
    assert_eq!(answer["success"], true, "{answer}");
    client.close().await;
    again.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_logons_say_why_and_the_connection_lives_on() {
    let (setup, running, bob) = bridge().await;
    let carol = setup.synapse.register_user("carol", false).await.unwrap();
    let bob_token = setup.synapse.client(&bob).openid_token().await.unwrap();
    let carol_token = setup.synapse.client(&carol).openid_token().await.unwrap();
    // One connection for every attempt: a refused logon leaves it usable.
    let mut client = LiveClient::connect(setup.listen).await;

    let forged = client.logon(&bob, "forgedforgedforgedforged", true).await;
    assert_eq!(error_code(&forged), "invalid_token", "{forged}");

    let mismatch = client.logon(&bob, &carol_token.access_token, true).await;
    assert_eq!(error_code(&mismatch), "token_mismatch", "{mismatch}");
    assert!(mismatch["message"]
        .as_str()
        .unwrap()
        .contains(&carol.user_id));

    let outsider = client.logon(&carol, &carol_token.access_token, true).await;
    assert_eq!(error_code(&outsider), "not_member", "{outsider}");

    let not_opted_in = client.logon(&bob, &bob_token.access_token, false).await;
    assert_eq!(error_code(&not_opted_in), "not_opted_in", "{not_opted_in}");

    let mut foreign = bob.clone();
    foreign.user_id = "@bob:elsewhere.example".into();
    let foreign = client.logon(&foreign, &bob_token.access_token, true).await;
    assert_eq!(error_code(&foreign), "foreign_user", "{foreign}");

    let seq = client.next_seq();
    client
        .send_json(&json!({
            "command": "logon", "seq": seq, "channel": "nope", "user_id": bob.user_id,
            "device_id": bob.device_id, "openid_token": bob_token.access_token,
        }))
        .await;
    assert_eq!(error_code(&client.answer(seq).await), "unknown_channel");

    // Nothing refused opted anyone in.
    let store = store(&setup).await;
    let now = SystemTime::now();
    assert!(store
        .opted_in(&bob.user_id, None, now)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .opted_in(&carol.user_id, None, now)
        .await
        .unwrap()
        .is_none());

    // Still the same connection: a good logon works.
    let ok = client.logon(&bob, &bob_token.access_token, true).await;
    assert_eq!(ok["success"], true, "{ok}");
    client.close().await;
    running.stop().await;
}

/// Synapse's OpenID tokens last an hour (hard-coded, `EXPIRES_MS` in its
/// openid servlet); the test moves this token's expiry into the past in
/// Synapse's own database, so it is Synapse that finds it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_refused() {
    let (setup, running, bob) = bridge().await;
    let token = setup.synapse.client(&bob).openid_token().await.unwrap();
    let mut first = LiveClient::connect(setup.listen).await;
    let answer = first.logon(&bob, &token.access_token, true).await;
    assert_eq!(answer["success"], true, "the fresh token works: {answer}");

    let db = setup.synapse.dir().join("homeserver.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&db)
        .busy_timeout(Duration::from_secs(10));
    let mut conn = sqlx::ConnectOptions::connect(&options)
        .await
        .expect("Synapse's database");
    let updated = sqlx::query("UPDATE open_id_tokens SET ts_valid_until_ms = 1 WHERE token = $1")
        .bind(&token.access_token)
        .execute(&mut conn)
        .await
        .expect("expire the token")
        .rows_affected();
    assert_eq!(updated, 1, "Synapse keeps the token in open_id_tokens");
    drop(conn);

    let mut second = LiveClient::connect(setup.listen).await;
    let answer = second.logon(&bob, &token.access_token, true).await;
    assert_eq!(error_code(&answer), "token_expired", "{answer}");
    let message = answer["message"].as_str().unwrap();
    assert!(message.contains("expired"), "{answer}");
    assert!(!message.contains(&token.access_token), "{answer}");

    // A token the homeserver never issued is not called expired.
    let forged = second.logon(&bob, "forgedforgedforgedforged", true).await;
    assert_eq!(error_code(&forged), "invalid_token", "{forged}");
    assert!(
        !forged["message"].as_str().unwrap().contains("expired"),
        "{forged}"
    );
    first.close().await;
    second.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_answered_and_the_connection_lives_on() {
    let (setup, running, bob) = bridge().await;
    let mut client = LiveClient::connect(setup.listen).await;

    client.send_text("{this is not json").await;
    let answer = client.next_json().await;
    assert_eq!(error_code(&answer), "bad_message", "{answer}");

    client.send_text(r#"{"command":"dance","seq":7}"#).await;
    let answer = client.next_json().await;
    assert_eq!(error_code(&answer), "unknown_command");
    assert_eq!(answer["seq"], 7);

    client
        .send_text(r#"{"command":"start_stream","seq":8}"#)
        .await;
    assert_eq!(error_code(&client.next_json().await), "not_logged_on");

    client.send_audio(1, 1, b"opus").await;
    assert_eq!(error_code(&client.next_json().await), "not_logged_on");

    client
        .send_text(r#"{"command":"logon","seq":9,"channel":"ops"}"#)
        .await;
    let answer = client.next_json().await;
    assert_eq!(error_code(&answer), "bad_message");
    assert_eq!(answer["seq"], 9);

    let token = setup.synapse.client(&bob).openid_token().await.unwrap();
    assert_eq!(
        client.logon(&bob, &token.access_token, true).await["success"],
        true
    );
    client.until_floor("idle").await;

    client.send_binary(vec![1, 0, 0]).await;
    assert_eq!(error_code(&client.next_json().await), "bad_frame");
    client
        .send_binary(vec![9, 0, 0, 0, 1, 0, 0, 0, 1, 0xfc])
        .await;
    assert_eq!(error_code(&client.next_json().await), "bad_frame");
    client.send_audio(4242, 0, b"opus").await;
    assert_eq!(error_code(&client.next_json().await), "unknown_stream");

    client
        .send_text(r#"{"command":"start_stream","seq":20,"codec":"speex"}"#)
        .await;
    assert_eq!(error_code(&client.answer(20).await), "unsupported_codec");
    let answer = client.stop_stream(99).await;
    assert_eq!(error_code(&answer), "unknown_stream");
    client.send_text(r#"{"command":"logon","seq":21,"channel":"ops","user_id":"@x:y","device_id":"D","openid_token":"t"}"#).await;
    assert_eq!(error_code(&client.answer(21).await), "already_logged_on");

    // After all that, the connection still works: a press is granted.
    let stream = client.start_stream().await;
    let granted = client.until_floor("granted").await;
    assert_eq!(granted["stream_id"], stream);
    client.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn radio_talk_reaches_the_live_client_with_who_and_where() {
    let (setup, mut running, bob) = bridge().await;
    let mut client = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    let (speech, packets) = speech_packets();
    radio_talk(&mut running.link, &packets, Priority::Normal).await;
    running.link.talk_end(StreamKey(1)).await.unwrap();

    let taken = client.until_floor("taken").await;
    assert_eq!(taken["talker"]["display_name"], "kilo (Radio)");
    assert_eq!(taken["source"], "test.radio");
    let start = client.next_json().await;
    assert_eq!(start["command"], "on_stream_start", "{start}");
    assert_eq!(start["codec"], "opus");
    assert_eq!(start["packet_duration"], 20);
    assert_eq!(start["source"], "test.radio");
    assert_eq!(start["tx_id"], taken["tx_id"]);
    let stream = start["stream_id"].as_u64().unwrap() as u32;
    let mut heard = Vec::new();
    let stop = loop {
        match client.next().await {
            Incoming::Audio(id, packet, opus) => {
                assert_eq!(id, stream);
                assert_eq!(packet as usize, heard.len(), "packets in order");
                heard.push(opus);
            }
            Incoming::Json(value) => break value,
            Incoming::Closed => panic!("closed"),
        }
    };
    assert_eq!(stop["command"], "on_stream_stop", "{stop}");
    assert_eq!(stop["stream_id"], stream);
    assert_eq!(stop["reason"], "talker done");
    client.until_floor("idle").await;
    assert_eq!(heard.len(), packets.len(), "every frame arrived");
    assert_is_speech(&speech, &decode(&heard), "the live client");
    // A client still connected at shutdown is closed by the bridge, and the
    // daemon does not wait for it to leave.
    running.stop().await;
    loop {
        if let Incoming::Closed = client.next().await {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_talk_queues_behind_the_radio_then_reaches_it_and_the_archive() {
    let (setup, mut running, bob) = bridge().await;
    let mut client = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    let (speech, packets) = speech_packets();
    radio_talk(&mut running.link, &packets[..10], Priority::Normal).await;
    client.until_floor("taken").await;

    let stream = client.start_stream().await;
    let queued = client.until_floor("queued").await;
    assert_eq!(queued["stream_id"], stream);
    assert_eq!(queued["position"], 1);

    running.link.talk_end(StreamKey(1)).await.unwrap();
    let granted = client.until_floor("granted").await;
    assert_eq!(granted["stream_id"], stream);
    let tx = granted["tx_id"].as_str().unwrap().to_owned();
    let taken = loop {
        match next_floor(&mut running.link).await {
            FloorEvent::Taken {
                talker, source, tx, ..
            } => break (talker, source, tx),
            _ => continue,
        }
    };
    assert_eq!(
        taken.0.matrix_user_id.as_deref(),
        Some(bob.user_id.as_str())
    );
    assert_eq!(taken.0.name, bob.user_id);
    assert_eq!(taken.1.as_str(), "live.ops");
    assert_eq!(taken.2.to_string(), tx);

    // Listen while talking: the radio's downlink holds only five seconds.
    let send = client.send_packets(stream, &packets, Duration::from_millis(2));
    let listen = async {
        let mut heard = Vec::new();
        while heard.len() < packets.len() {
            match tokio::time::timeout(WAIT, running.link.recv()).await {
                Ok(Ok(Downlink::Audio(frame))) => {
                    assert_eq!(frame.tx.to_string(), tx);
                    heard.push(frame.frame.opus);
                }
                Ok(Ok(Downlink::Floor(event))) => panic!("unexpected {event:?}"),
                other => panic!(
                    "the radio heard {} of {} frames: {other:?}",
                    heard.len(),
                    packets.len()
                ),
            }
        }
        heard
    };
    let ((), heard) = tokio::join!(send, listen);
    assert_eq!(client.stop_stream(stream).await["success"], true);
    let released = client.until_floor("released").await;
    assert_eq!(released["stream_id"], stream);
    assert_eq!(released["reason"], "talker done");
    loop {
        if let FloorEvent::Released { .. } = next_floor(&mut running.link).await {
            break;
        }
    }

    // The room endpoint archived it: the bot posts a Matrix user's live talk.
    let alice = setup.synapse.client(&setup.alice);
    let message = alice
        .sync_until(
            |e| is_voice_message_from(e, &format!("@walkie:{SERVER}")),
            WAIT,
        )
        .await
        .expect("the live talk archived as a voice message");
    let duration = message.content()["info"]["duration"].as_u64().unwrap();
    let expected = packets.len() as u64 * 20;
    assert!(
        duration.abs_diff(expected) <= 100,
        "archived {duration} ms of {expected} ms"
    );
    // Checked last: the correlation search takes seconds in a debug build, longer
    // than the floor's idle timeout.
    assert_is_speech(&speech, &decode(&heard), "the radio");
    client.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emergency_revokes_a_live_talk_and_a_decline_reaches_the_talker() {
    let (setup, mut running, bob) = bridge().await;
    let mut client = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    let (_, packets) = speech_packets();
    let stream = client.start_stream().await;
    let granted = client.until_floor("granted").await;
    let tx = loop {
        if let FloorEvent::Taken { tx, .. } = next_floor(&mut running.link).await {
            break tx;
        }
    };
    assert_eq!(granted["tx_id"], tx.to_string());
    client.send_audio(stream, 0, &packets[0]).await;

    // A radio that will not carry bob says why; bob goes on talking.
    running
        .link
        .decline(tx, "@bob is not a licensed operator")
        .await
        .unwrap();
    let declined = client.until_floor("declined").await;
    assert_eq!(declined["stream_id"], stream);
    assert_eq!(declined["by"], "test.radio");
    assert_eq!(declined["reason"], "@bob is not a licensed operator");

    radio_talk(&mut running.link, &packets[..5], Priority::Emergency).await;
    let revoked = client.until_floor("revoked").await;
    assert_eq!(revoked["stream_id"], stream);
    assert_eq!(revoked["reason"], "revoked");
    let taken = client.until_floor("taken").await;
    assert_eq!(taken["talker"]["display_name"], "kilo (Radio)");
    client.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_queue_a_busy_channel_denies_and_says_who_talks() {
    let (setup, mut running, bob) = bridge_with(|config| {
        config.floor.queue = false;
        // No reply window for the radio, so the second press is granted at once.
        config.floor.hang = Duration::ZERO;
    })
    .await;
    let mut client = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    let (_, packets) = speech_packets();
    radio_talk(&mut running.link, &packets[..5], Priority::Normal).await;
    client.until_floor("taken").await;
    let stream = client.start_stream().await;
    let denied = client.until_floor("denied").await;
    assert_eq!(denied["stream_id"], stream);
    assert_eq!(denied["reason"], "busy");
    assert_eq!(denied["holder"]["display_name"], "kilo (Radio)");
    // Denied means the stream is over: a new press is a new stream.
    running.link.talk_end(StreamKey(1)).await.unwrap();
    client.until_floor("idle").await;
    let again = client.start_stream().await;
    assert_ne!(again, stream);
    client.until_floor("granted").await;
    client.close().await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_clients_hear_each_other_and_an_opt_out_denies_the_next_press() {
    let (setup, running, bob) = bridge().await;
    let carol = setup.synapse.register_user("carol", false).await.unwrap();
    setup
        .synapse
        .client(&carol)
        .join(&setup.room_id)
        .await
        .unwrap();
    let mut bob_client = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    let mut carol_client = LiveClient::logon_ok(setup.listen, &setup.synapse, &carol).await;
    let (speech, packets) = speech_packets();

    let stream = bob_client.start_stream().await;
    bob_client.until_floor("granted").await;
    let taken = carol_client.until_floor("taken").await;
    assert_eq!(taken["talker"]["matrix_user_id"], bob.user_id.as_str());
    assert_eq!(taken["source"], "live.ops");
    let start = carol_client.next_json().await;
    assert_eq!(start["command"], "on_stream_start");
    assert_eq!(start["stream_id"], stream);
    assert_eq!(start["from"], bob.user_id.as_str());
    let send = bob_client.send_packets(stream, &packets, Duration::from_millis(2));
    let listen = async {
        let mut heard = Vec::new();
        while heard.len() < packets.len() {
            match carol_client.next().await {
                Incoming::Audio(id, _, opus) => {
                    assert_eq!(id, stream);
                    heard.push(opus);
                }
                other => panic!("carol got {other:?} after {} frames", heard.len()),
            }
        }
        heard
    };
    let ((), heard) = tokio::join!(send, listen);
    assert_eq!(bob_client.stop_stream(stream).await["success"], true);
    let stop = carol_client
        .until("on_stream_stop", |v| v["command"] == "on_stream_stop")
        .await;
    assert_eq!(stop["stream_id"], stream);
    bob_client.until_floor("released").await;

    // Bob opts out (as `!wt off` would); his next press is refused.
    store(&setup)
        .await
        .clear_opt_in(&bob.user_id, None)
        .await
        .unwrap();
    let stream = bob_client.start_stream().await;
    let denied = bob_client.until_floor("denied").await;
    assert_eq!(denied["stream_id"], stream);
    assert!(denied["reason"].as_str().unwrap().contains("not opted in"));
    assert_is_speech(&speech, &decode(&heard), "carol");
    bob_client.close().await;
    carol_client.close().await;
    running.stop().await;
}

/// A talker whose page stops reading (a frozen tab, a dead network) is dropped
/// once its queue of floor events overflows; its talk must end then, not at the
/// floor's idle release, and the others hear it released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_talker_that_is_dropped_releases_the_floor_at_once() {
    // An idle release far beyond anything the test waits for: a release before it
    // can only be the bridge ending the dropped client's talk.
    let idle_release = Duration::from_secs(60);
    let (setup, mut running, bob) =
        bridge_with(|config| config.floor.idle_release = idle_release).await;
    let carol = setup.synapse.register_user("carol", false).await.unwrap();
    setup
        .synapse
        .client(&carol)
        .join(&setup.room_id)
        .await
        .unwrap();
    let mut slow = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    let mut carol_client = LiveClient::logon_ok(setup.listen, &setup.synapse, &carol).await;
    let stream = slow.start_stream().await;
    slow.until_floor("granted").await;
    let tx = loop {
        if let FloorEvent::Taken { tx, .. } = next_floor(&mut running.link).await {
            break tx;
        }
    };
    let taken = carol_client.until_floor("taken").await;
    assert_eq!(taken["tx_id"], tx.to_string());

    // From now on bob reads nothing. Every decline is an event for him: long ones
    // fill the socket's buffers, then his queue, and he is dropped.
    let reason = "x".repeat(4096);
    let flooded = std::time::Instant::now();
    let released = loop {
        running.link.decline(tx, reason.clone()).await.unwrap();
        match tokio::time::timeout(Duration::ZERO, running.link.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Released { tx: done, reason }))) => {
                break (done, reason)
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(closed)) => panic!("hub gone: {closed}"),
        }
        assert!(
            flooded.elapsed() < WAIT,
            "bob was never dropped (or his talk never ended) within {WAIT:?}"
        );
    };
    let after = flooded.elapsed();
    eprintln!("released {after:?} after the flood began: {released:?}");
    assert_eq!(released.0, tx);
    assert_eq!(
        released.1,
        walkie_endpoint::ReleaseReason::TalkerDone,
        "the dropped talker's talk ended by {}, not by the bridge",
        released.1
    );
    assert!(after < idle_release, "released after {after:?}");
    let stop = carol_client
        .until("on_stream_stop", |v| v["command"] == "on_stream_stop")
        .await;
    assert_eq!(stop["stream_id"], stream);
    assert_eq!(stop["reason"], "talker done");
    carol_client.until_floor("idle").await;
    drop(slow);
    carol_client.close().await;
    running.stop().await;
}
