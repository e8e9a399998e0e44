//! The archive across the daemon's life: start-up recovery must not mistake a
//! recording in progress for a crash leftover (issue 14.1).

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

#[path = "bridge_common/mod.rs"]
mod bridge_common;

use std::path::Path;
use std::time::{Duration, SystemTime};

use bridge_common::{load, next_floor, ops_room, speech_packets, Setup, SERVER, WAIT};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use walkie_bridge::daemon::Daemon;
use walkie_bridge::store::{OutboxItem, Store};
use walkie_endpoint::testkit::TestEndpoint;
use walkie_endpoint::{
    AudioFrame, Capabilities, EndpointId, FloorEvent, HubLink, Priority, StreamKey, TalkKind,
    Talker, TxId,
};
use walkie_harness::free_port;

const CHANNELS: [&str; 3] = ["ops", "ops2", "ops3"];

/// The bridge_common configuration with two more channels and a status listener.
fn config_text(setup: &Setup, status: u16) -> String {
    let mut text = bridge_common::config_text(&setup.synapse.url(), setup.listen, setup.dir.path());
    for name in &CHANNELS[1..] {
        text.push_str(&format!(
            "\n[[channel]]\nname = \"{name}\"\nroom = \"#{name}:{SERVER}\"\nendpoints = []\n"
        ));
    }
    text.push_str(&format!("\n[status]\nlisten = \"127.0.0.1:{status}\"\n"));
    text
}

async fn healthy(status: u16) -> bool {
    reqwest::get(format!("http://127.0.0.1:{status}/health"))
        .await
        .is_ok_and(|r| r.status().is_success())
}

/// Talks from the moment the channel runs until the daemon reports itself
/// started (so the talk spans whatever start-up does after this channel), plus
/// `tail` more frames; at the radio's real pace. Returns the frames sent.
async fn talk_through_startup(
    mut link: HubLink,
    status: u16,
    packets: Vec<bytes::Bytes>,
    tail: usize,
) -> (usize, HubLink) {
    let stream = StreamKey(1);
    link.talk_start(
        stream,
        Talker::new("carol", "carol (Radio)"),
        Priority::Normal,
        TalkKind::Live,
    )
    .await
    .expect("hub running");
    loop {
        match next_floor(&mut link).await {
            FloorEvent::Granted { .. } => break,
            FloorEvent::Denied { reason, .. } => panic!("transmission denied: {reason}"),
            _ => continue,
        }
    }
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    let mut sent = 0usize;
    let mut remaining: Option<usize> = None;
    while remaining != Some(0) {
        pace.tick().await;
        link.audio(
            stream,
            AudioFrame::opus(sent as u32, packets[sent % packets.len()].clone()),
        )
        .expect("hub running");
        sent += 1;
        remaining = match remaining {
            Some(n) => Some(n - 1),
            // Every 10th frame: one look at /health per 200 ms of talk.
            None if sent.is_multiple_of(10) && healthy(status).await => Some(tail),
            None => None,
        };
    }
    link.talk_end(stream).await.expect("hub running");
    loop {
        if let FloorEvent::Released { .. } = next_floor(&mut link).await {
            break;
        }
    }
    (sent, link)
}

async fn voice_messages_in(setup: &Setup, room: &str) -> Vec<Value> {
    setup
        .synapse
        .client(&setup.alice)
        .room_messages(room, 100)
        .await
        .expect("room messages")
        .into_iter()
        .filter(|e| e["type"] == "m.room.message" && e["content"]["msgtype"] == "m.audio")
        .collect()
}

fn spool_listing(spool: &Path) -> String {
    let mut out = Vec::new();
    for dir in [spool.to_path_buf(), spool.join("broken")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                out.push(e.path().display().to_string());
            }
        }
    }
    out.join("\n")
}

/// Issue 14.1: every channel's endpoint talks the moment it is started, while
/// the daemon is still starting the next channels and recovering the spool.
/// Recovery must leave those recordings alone: each talk becomes one voice
/// message holding all of it, and nothing lands in `broken/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn talks_during_startup_are_archived_whole() {
    let setup = bridge_common::setup().await;
    let mut rooms = vec![setup.room_id.clone()];
    for name in &CHANNELS[1..] {
        let room = setup
            .synapse
            .client(&setup.alice)
            .create_room(&ops_room().name(*name).alias(*name))
            .await
            .expect("room");
        rooms.push(room);
    }
    let status = free_port();
    let config = load(&config_text(&setup, status));
    let spool = setup.dir.path().join("spool");
    let (_speech, packets) = speech_packets();

    let mut daemon = Daemon::new(config);
    let mut handles = Vec::new();
    for name in CHANNELS {
        let (endpoint, handle) = TestEndpoint::new(
            EndpointId::new(format!("test.{name}")),
            Capabilities::default(),
        );
        daemon = daemon.with_endpoint(name, Box::new(endpoint));
        handles.push(handle);
    }
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let mut talks = Vec::new();
    for handle in handles {
        let packets = packets.clone();
        talks.push(tokio::spawn(async move {
            let link = tokio::time::timeout(WAIT, handle.link())
                .await
                .expect("the channel starts in time")
                .expect("the daemon runs the test endpoint");
            // 25 frames after start-up: half a second of talk past recovery.
            talk_through_startup(link, status, packets, 25).await
        }));
    }
    let mut sent = Vec::new();
    // The links stay open until the daemon stops.
    let mut links = Vec::new();
    for talk in talks {
        let (frames, link) = talk.await.expect("talker");
        sent.push(frames);
        links.push(link);
    }

    let client = setup.synapse.client(&setup.alice);
    for ((name, room), frames) in CHANNELS.iter().zip(&rooms).zip(&sent) {
        let expected_ms = *frames as f64 * 20.0;
        let arrived = client
            .sync_until(
                |e| &e.room_id == room && e.content()["msgtype"] == "m.audio",
                WAIT,
            )
            .await;
        assert!(
            arrived.is_ok(),
            "#{name}: no voice message for a talk of {frames} frames ({arrived:?}); spool:\n{}",
            spool_listing(&spool)
        );
        let found = voice_messages_in(&setup, room).await;
        assert_eq!(
            found.len(),
            1,
            "#{name}: one talk of {frames} frames should be one voice message, got {}; spool:\n{}",
            found.len(),
            spool_listing(&spool)
        );
        let duration = found[0]["content"]["info"]["duration"]
            .as_f64()
            .expect("duration in the voice message");
        // The file plays the packets minus the 6.5 ms pre-skip.
        assert!(
            (duration - expected_ms).abs() <= 40.0,
            "#{name}: voice message plays {duration} ms, the talk was {expected_ms} ms \
             ({frames} frames): only part of it was archived; spool:\n{}",
            spool_listing(&spool)
        );
    }
    assert!(
        !spool.join("broken").exists(),
        "recovery moved a recording in progress aside:\n{}",
        spool_listing(&spool)
    );

    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("daemon stops in time")
        .expect("daemon task did not panic")
        .expect("daemon ends cleanly");
}

/// Issue 14.5: rows past their retention (README "Database") go while the
/// daemon runs, not only in tests: a voice message posted 30 days ago, an
/// opt-in that ended two days ago. A pending voice message stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_their_retention_are_pruned_while_the_daemon_runs() {
    let setup = bridge_common::setup().await;
    let url = setup.config.database.url.clone();
    let store = Store::connect(&url).await.expect("store");
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let item = |tag: &str| OutboxItem {
        tx: TxId::generate(),
        channel: "ops".into(),
        room_id: setup.room_id.clone(),
        sender: format!("@walkie:{SERVER}"),
        path: setup.dir.path().join(format!("spool/{tag}.ogg")),
        duration_ms: 1_000,
        size: 100,
        waveform: vec![0],
        mimetype: "audio/ogg".into(),
        created_at: now - 30 * day,
        talker: String::new(),
    };
    let (old, pending) = (item("old"), item("pending"));
    store.enqueue_outbox(&old).await.expect("enqueue");
    store.outbox_posted(old.tx, "$old").await.expect("posted");
    // Pending, but not due for a long while: the outbox leaves it alone.
    store.enqueue_outbox(&pending).await.expect("enqueue");
    store
        .outbox_failed(pending.tx, "test", now + 365 * day)
        .await
        .expect("failed");
    store
        .set_opt_in("@ended:walkie.test", None, Some(now - 2 * day))
        .await
        .expect("opt-in");
    store.close().await;
    let pool = sqlx::SqlitePool::connect(&url).await.expect("raw sqlite");
    sqlx::query("UPDATE outbox SET posted_at = $1 WHERE tx_id = $2")
        .bind(
            i64::try_from(
                (now - 30 * day)
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("epoch")
                    .as_millis(),
            )
            .expect("ms"),
        )
        .bind(old.tx.to_string())
        .execute(&pool)
        .await
        .expect("backdate");
    pool.close().await;

    let running = bridge_common::start_daemon(&setup.config).await;
    let store = Store::connect(&url).await.expect("store");
    let deadline = tokio::time::Instant::now() + WAIT;
    let (mut posted_left, mut opt_in_left) = (true, true);
    while (posted_left || opt_in_left) && tokio::time::Instant::now() < deadline {
        posted_left = store.outbox_entry(old.tx).await.expect("store").is_some();
        opt_in_left = !store
            .opt_ins("@ended:walkie.test", now - 3 * day)
            .await
            .expect("store")
            .is_empty();
        if posted_left || opt_in_left {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(
        !posted_left,
        "a voice message posted 30 days ago is still in the outbox table after {WAIT:?} of running"
    );
    assert!(
        !opt_in_left,
        "an opt-in that ended 2 days ago is still in the opt_ins table after {WAIT:?} of running"
    );
    assert!(
        store
            .outbox_entry(pending.tx)
            .await
            .expect("store")
            .is_some(),
        "a pending voice message was pruned"
    );
    store.close().await;
    running.stop().await;
}
