//! The whole Matrix side against a real Synapse: the daemon runs in-process with a
//! test endpoint on its channel, Synapse pushes transactions to its appservice API,
//! and real users act in the room through the client-server API.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use bridge_common::{
    is_voice_message_from, ops_room, setup, setup_with_room, speech_packets, start_daemon,
    transmit, Running, Setup, SERVER, WAIT,
};
use walkie_bridge::store::Store;
use walkie_endpoint::audio::{decode_ogg_opus, encode_ogg_opus, OpusDecoder};
use walkie_endpoint::{Downlink, FloorEvent};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transmission_becomes_a_playable_voice_message_and_the_floor_is_mirrored() {
    let setup = setup().await;
    let alice = setup.synapse.client(&setup.alice);
    let mut running = start_daemon(&setup.config).await;
    let (speech, packets) = speech_packets();
    transmit(&mut running.link, "kilo", &packets).await;

    let puppet = format!("@walkie_test_kilo:{SERVER}");
    let floor_taken = alice
        .sync_until(
            |e| e.event_type() == "org.matrix.msc4002.floor" && e.content()["state"] == "taken",
            WAIT,
        )
        .await
        .expect("floor state taken");
    assert_eq!(floor_taken.content()["talker"], puppet.as_str());
    assert_eq!(floor_taken.content()["endpoint"], "test.radio");
    assert!(floor_taken.content()["tx_id"]
        .as_str()
        .is_some_and(|t| t.len() == 32));
    assert!(floor_taken.content()["since_ts"].as_u64().is_some());
    alice
        .sync_until(
            |e| e.event_type() == "org.matrix.msc4002.floor" && e.content()["state"] == "idle",
            WAIT,
        )
        .await
        .expect("floor state back to idle");
    let message = alice
        .sync_until(|e| is_voice_message_from(e, &puppet), WAIT)
        .await
        .expect("voice message posted by the talker's puppet");
    let content = message.content().clone();
    assert_eq!(content["body"], "Voice message");
    assert_eq!(content["info"]["mimetype"], "audio/ogg");
    assert!(content["org.matrix.msc3245.voice"].is_object());
    let duration = content["info"]["duration"].as_u64().expect("info.duration");
    let source_ms = speech.len() as u64 * 1000 / 48_000;
    assert!(
        duration.abs_diff(source_ms) <= 50,
        "info.duration {duration} ms, spoken {source_ms} ms"
    );
    assert_eq!(content["org.matrix.msc1767.audio"]["duration"], duration);
    let waveform = content["org.matrix.msc1767.audio"]["waveform"]
        .as_array()
        .expect("waveform");
    assert!(
        (30..=120).contains(&waveform.len()),
        "{} waveform points",
        waveform.len()
    );
    assert!(waveform
        .iter()
        .all(|v| v.as_u64().is_some_and(|v| v <= 1024)));

    let mxc = content["url"].as_str().expect("url");
    let ogg = alice.download(mxc).await.expect("download");
    assert_eq!(content["info"]["size"].as_u64(), Some(ogg.len() as u64));
    let decoded = decode_ogg_opus(&ogg).expect("the archive is valid Ogg Opus");
    assert!(
        decoded.duration_ms.abs_diff(source_ms) <= 50,
        "decoded {} ms",
        decoded.duration_ms
    );
    let (_, correlation) = common::best_lag(&speech, &decoded.pcm, -400..=400);
    assert!(
        correlation > 0.85,
        "archived audio does not match what was said: {correlation:.3}"
    );

    let display = alice.displayname(&puppet).await.expect("profile");
    assert_eq!(display.as_deref(), Some("kilo (Radio)"));
    running.stop().await;
}

async fn voice_message_bytes() -> (Vec<i16>, Vec<u8>) {
    let speech = common::speech(48_000);
    let ogg = encode_ogg_opus(&speech, 24_000).expect("Ogg Opus");
    (speech, ogg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_users_voice_message_is_transmitted_and_acknowledged() {
    let setup = setup().await;
    let alice = setup.synapse.client(&setup.alice);
    let mut running = start_daemon(&setup.config).await;
    let bot = format!("@walkie:{SERVER}");

    bridge_common::opt_in(&alice, &setup.room_id).await;

    let (speech, ogg) = voice_message_bytes().await;
    let source_ms = speech.len() as u64 * 1000 / 48_000;
    let event_id = alice
        .send_voice_message(&setup.room_id, ogg, source_ms)
        .await
        .expect("voice message");

    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut pcm = Vec::new();
    let mut frames = 0u64;
    let mut taken_by = None;
    let started = Instant::now();
    loop {
        let down = tokio::time::timeout(WAIT, running.link.recv())
            .await
            .expect("the voice message is played within the wait")
            .expect("hub running");
        match down {
            Downlink::Floor(FloorEvent::Taken { talker, source, .. }) => {
                assert_eq!(source.as_str(), "matrix.ops");
                taken_by = talker.matrix_user_id.clone();
            }
            Downlink::Audio(frame) => {
                frames += 1;
                pcm.extend(decoder.decode(&frame.frame.opus).expect("valid Opus"));
            }
            Downlink::Floor(FloorEvent::Released { .. }) => break,
            Downlink::Floor(_) => {}
        }
    }
    let played = started.elapsed();
    assert_eq!(taken_by.as_deref(), Some(setup.alice.user_id.as_str()));
    let played_ms = frames * 20;
    assert!(
        played_ms.abs_diff(source_ms) <= 50,
        "played {played_ms} ms of {source_ms} ms"
    );
    // Paced in real time, as a radio needs it.
    assert!(
        played >= Duration::from_millis(source_ms * 9 / 10),
        "played in {played:?}"
    );
    let (_, correlation) = common::best_lag(&speech, &pcm, -400..=400);
    assert!(
        correlation > 0.85,
        "transmitted audio does not match: {correlation:.3}"
    );

    alice
        .sync_until(
            |e| {
                e.event_type() == "m.reaction"
                    && e.sender() == bot
                    && e.content()["m.relates_to"]["event_id"] == event_id.as_str()
            },
            WAIT,
        )
        .await
        .expect("the bot acknowledges the transmission");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voice_message_from_a_user_who_did_not_opt_in_is_refused_with_a_reason() {
    let setup = setup().await;
    let bob = setup.member("bob").await;
    let bob_client = setup.synapse.client(&bob);
    let mut running = start_daemon(&setup.config).await;
    let bot = format!("@walkie:{SERVER}");

    let (speech, ogg) = voice_message_bytes().await;
    let event_id = bob_client
        .send_voice_message(&setup.room_id, ogg, speech.len() as u64 / 48)
        .await
        .expect("voice message");
    let reply = bob_client
        .sync_until(
            |e| {
                e.sender() == bot
                    && e.content()["m.relates_to"]["rel_type"] == "m.thread"
                    && e.content()["m.relates_to"]["event_id"] == event_id.as_str()
            },
            WAIT,
        )
        .await
        .expect("a threaded reply explains the refusal");
    assert!(
        reply.body().is_some_and(|b| b.contains("opted in")),
        "{:?}",
        reply.body()
    );
    // Nothing reached the channel.
    let quiet = tokio::time::timeout(Duration::from_millis(500), running.link.recv()).await;
    assert!(
        quiet.is_err(),
        "a refused voice message reached the channel: {quiet:?}"
    );
    running.stop().await;
}

async fn wait_for_outbox_depth(store: &Store, depth: u64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = store.outbox_depth().await.expect("outbox depth");
        if now == depth {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "outbox depth stayed {now}, expected {depth}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn open_store(setup: &Setup) -> Store {
    let path: PathBuf = setup.dir.path().join("walkie.db");
    Store::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_transmissions_during_a_20_s_outage_are_posted_exactly_once() {
    let mut setup = setup().await;
    let (_, packets) = speech_packets();
    let mut running = start_daemon(&setup.config).await;
    let store = open_store(&setup).await;

    setup.synapse.stop().await.expect("Synapse stops");
    let outage = Instant::now();
    for talker in ["one", "two", "three"] {
        transmit(&mut running.link, talker, &packets[..50]).await;
    }
    wait_for_outbox_depth(&store, 3, WAIT).await;
    // The scenario is a 20 s outage; this wait is its length, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(outage.elapsed())).await;
    setup.synapse.start_again().await.expect("Synapse back");

    wait_for_outbox_depth(&store, 0, Duration::from_secs(90)).await;
    let alice = setup.synapse.client(&setup.alice);
    for talker in ["one", "two", "three"] {
        let puppet = format!("@walkie_test_{talker}:{SERVER}");
        let posted = bridge_common::voice_messages(&alice, &setup.room_id, &puppet).await;
        assert_eq!(posted.len(), 1, "{talker}: {} voice messages", posted.len());
    }
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_after_recording_posts_exactly_once_after_restart() {
    let mut setup = setup().await;
    let (_, packets) = speech_packets();
    let store = open_store(&setup).await;

    // The first bridge runs on a runtime of its own, so it can be killed outright.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let config = setup.config.clone();
    let mut first = runtime
        .spawn(async move { start_daemon(&config).await })
        .await
        .expect("first bridge started");
    // With the homeserver down the recording cannot be uploaded yet.
    setup.synapse.stop().await.expect("Synapse stops");
    transmit(&mut first.link, "kilo", &packets[..100]).await;
    wait_for_outbox_depth(&store, 1, WAIT).await;
    // SIGKILL, as far as the bridge's files and database can tell: every task
    // dies where it stands, nothing is flushed or shut down.
    drop(first);
    runtime.shutdown_background();

    setup.synapse.start_again().await.expect("Synapse back");
    let second = start_daemon(&setup.config).await;
    wait_for_outbox_depth(&store, 0, Duration::from_secs(60)).await;
    let alice = setup.synapse.client(&setup.alice);
    let puppet = format!("@walkie_test_kilo:{SERVER}");
    let posted = bridge_common::voice_messages(&alice, &setup.room_id, &puppet).await;
    assert_eq!(
        posted.len(),
        1,
        "{} voice messages after the restart",
        posted.len()
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_talkers_puppet_types_while_the_talk_lasts() {
    let setup = setup().await;
    let alice = setup.synapse.client(&setup.alice);
    let running = start_daemon(&setup.config).await;
    let (_, packets) = speech_packets();
    let puppet = format!("@walkie_test_kilo:{SERVER}");
    let link = running.link;
    let stream = walkie_endpoint::StreamKey(1);
    link.talk_start(
        stream,
        walkie_endpoint::Talker::new("kilo", "kilo (Radio)"),
        walkie_endpoint::Priority::Normal,
        walkie_endpoint::TalkKind::Live,
    )
    .await
    .expect("hub running");
    let typing = |user: &str, present: bool| {
        let user = user.to_owned();
        move |e: &walkie_harness::SyncEvent| {
            e.event_type() == "m.typing"
                && e.content()["user_ids"]
                    .as_array()
                    .is_some_and(|ids| ids.iter().any(|id| id == user.as_str()) == present)
        }
    };
    // Talk in real time until the room shows the puppet typing.
    let watcher = {
        let alice = alice.clone();
        let predicate = typing(&puppet, true);
        tokio::spawn(async move { alice.sync_until(predicate, WAIT).await })
    };
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut seq = 0u32;
    while !watcher.is_finished() {
        pace.tick().await;
        let packet = packets[seq as usize % packets.len()].clone();
        link.audio(stream, walkie_endpoint::AudioFrame::opus(seq, packet))
            .expect("hub running");
        seq += 1;
        assert!(seq < 1500, "no typing notice within 30 s of talk");
    }
    watcher
        .await
        .expect("watcher")
        .expect("the puppet types while talking");
    link.talk_end(stream).await.expect("hub running");
    alice
        .sync_until(typing(&puppet, false), WAIT)
        .await
        .expect("the puppet stops typing when the talk ends");
    Running::from_parts(link, running.shutdown, running.task)
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_without_power_says_what_it_lacks_in_the_room() {
    let room = ops_room().power_levels(serde_json::json!({
        "users": { format!("@walkie:{SERVER}"): 0 },
        "state_default": 50,
    }));
    let setup = setup_with_room(room).await;
    let alice = setup.synapse.client(&setup.alice);
    let running = start_daemon(&setup.config).await;
    let bot = format!("@walkie:{SERVER}");
    let notice = alice
        .sync_until(
            |e| e.sender() == bot && e.content()["msgtype"] == "m.notice",
            WAIT,
        )
        .await
        .expect("the bot explains what it lacks");
    let body = notice.body().unwrap_or_default();
    assert!(
        body.contains("org.matrix.msc4002.floor") && body.contains("50"),
        "unhelpful notice: {body}"
    );
    running.stop().await;
}
