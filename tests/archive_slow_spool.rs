//! A slow spool disk holds up the recording only (issue 14.4): the floor mirror
//! of the same room and the other channels go on at their pace. The slowness
//! is process-wide (`set_spool_write_delay_for_tests`), hence a test binary of
//! its own.

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

#[path = "bridge_common/mod.rs"]
mod bridge_common;

use std::time::Duration;

use bridge_common::{load, next_floor, ops_room, speech_packets, Setup, SERVER, WAIT};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use walkie_bridge::archive::set_spool_write_delay_for_tests;
use walkie_bridge::daemon::Daemon;
use walkie_bridge::matrix::FLOOR_EVENT_TYPE;
use walkie_endpoint::testkit::TestEndpoint;
use walkie_endpoint::{
    AudioFrame, Capabilities, Downlink, EndpointId, FloorEvent, HubLink, Priority, StreamKey,
    TalkKind, Talker,
};

/// Each packet write takes this long: 10 times real time.
const WRITE_DELAY: Duration = Duration::from_millis(200);
const FRAMES: usize = 60;
/// How soon after the talk ends the room must show the floor idle.
const MIRROR_WITHIN: Duration = Duration::from_secs(5);

fn config_text(setup: &Setup) -> String {
    let mut text = bridge_common::config_text(&setup.synapse.url(), setup.listen, setup.dir.path());
    text.push_str(&format!(
        "\n[[channel]]\nname = \"ops2\"\nroom = \"#ops2:{SERVER}\"\nendpoints = []\n"
    ));
    text
}

/// One talk of `FRAMES` frames at the real 20 ms pace; returns when the hub
/// released the floor.
async fn talk(link: &mut HubLink, talker: &str, packets: &[bytes::Bytes]) -> String {
    let stream = StreamKey(1);
    link.talk_start(
        stream,
        Talker::new(talker, format!("{talker} (Radio)")),
        Priority::Normal,
        TalkKind::Live,
    )
    .await
    .expect("hub running");
    let tx = loop {
        match next_floor(link).await {
            FloorEvent::Granted { tx, .. } => break tx.to_string(),
            FloorEvent::Denied { reason, .. } => panic!("transmission denied: {reason}"),
            _ => continue,
        }
    };
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for seq in 0..FRAMES {
        pace.tick().await;
        link.audio(
            stream,
            AudioFrame::opus(seq as u32, packets[seq % packets.len()].clone()),
        )
        .expect("hub running");
    }
    link.talk_end(stream).await.expect("hub running");
    loop {
        if let FloorEvent::Released { .. } = next_floor(link).await {
            return tx;
        }
    }
}

/// Whether the room's timeline shows the floor taken for `tx` and, after
/// that, idle again.
async fn mirrored_idle_after(setup: &Setup, room: &str, tx: &str) -> bool {
    let events = setup
        .synapse
        .client(&setup.alice)
        .room_messages(room, 50)
        .await
        .expect("room messages");
    // Newest first.
    let floor: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["type"] == FLOOR_EVENT_TYPE)
        .collect();
    let Some(taken) = floor.iter().position(|e| e["content"]["tx_id"] == tx) else {
        return false;
    };
    floor[..taken]
        .iter()
        .any(|e| e["content"]["state"] == "idle")
}

/// Waits until the room shows the floor idle after `tx`; `false` after `within`.
async fn floor_idle_after(setup: &Setup, room: &str, tx: &str, within: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < within {
        if mirrored_idle_after(setup, room, tx).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_spool_delays_neither_the_floor_mirror_nor_other_channels() {
    let setup = bridge_common::setup().await;
    let ops2 = setup
        .synapse
        .client(&setup.alice)
        .create_room(&ops_room().name("ops2").alias("ops2"))
        .await
        .expect("room");
    let config = load(&config_text(&setup));
    let (_speech, packets) = speech_packets();
    set_spool_write_delay_for_tests(WRITE_DELAY);

    let (a, a_handle) = TestEndpoint::new(EndpointId::new("test.a"), Capabilities::default());
    let (b, b_handle) = TestEndpoint::new(EndpointId::new("test.b"), Capabilities::default());
    let (c, c_handle) = TestEndpoint::new(EndpointId::new("test.c"), Capabilities::default());
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(config)
        .with_endpoint("ops", Box::new(a))
        .with_endpoint("ops2", Box::new(b))
        .with_endpoint("ops2", Box::new(c));
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let link = |handle: walkie_endpoint::testkit::TestEndpointHandle| async move {
        tokio::time::timeout(WAIT, handle.link())
            .await
            .expect("the channel starts in time")
            .expect("the daemon runs the test endpoint")
    };
    let (mut a, mut b, mut c) = (
        link(a_handle).await,
        link(b_handle).await,
        link(c_handle).await,
    );

    // The listener on the other channel counts what it hears of b's talk.
    let heard = tokio::spawn(async move {
        let mut frames = 0usize;
        loop {
            match tokio::time::timeout(WAIT, c.recv()).await {
                Ok(Ok(Downlink::Audio(_))) => frames += 1,
                Ok(Ok(Downlink::Floor(FloorEvent::Released { .. }))) => return (frames, c),
                Ok(Ok(Downlink::Floor(_))) => {}
                Ok(Err(closed)) => panic!("hub gone: {closed}"),
                Err(_) => panic!("c heard no end of b's talk within {WAIT:?}"),
            }
        }
    });
    let packets_b = packets.clone();
    let other = tokio::spawn(async move {
        let tx = talk(&mut b, "bob", &packets_b).await;
        (tx, Instant::now(), b)
    });
    let a_tx = talk(&mut a, "alice", &packets).await;

    assert!(
        floor_idle_after(&setup, &setup.room_id, &a_tx, MIRROR_WITHIN).await,
        "#ops does not show the floor idle {MIRROR_WITHIN:?} after the talk ended: the floor \
         mirror waits for the spool writes ({FRAMES} frames at {WRITE_DELAY:?} each)"
    );
    let (b_tx, b_released, _b) = other.await.expect("b's talk");
    let (frames, _c) = heard.await.expect("listener");
    assert_eq!(frames, FRAMES, "the other channel lost frames");
    let left = MIRROR_WITHIN.saturating_sub(b_released.elapsed());
    assert!(
        floor_idle_after(&setup, &ops2, &b_tx, left.max(Duration::from_secs(1))).await,
        "#ops2's floor mirror lags behind"
    );

    // The recording itself is slow, not lost: it arrives whole once written.
    let client = setup.synapse.client(&setup.alice);
    let voice = client
        .sync_until(
            |e| e.room_id == setup.room_id && e.content()["msgtype"] == "m.audio",
            WAIT + FRAMES as u32 * WRITE_DELAY,
        )
        .await
        .expect("the slow recording is archived");
    let duration = voice.content()["info"]["duration"]
        .as_f64()
        .expect("duration");
    assert!(
        (duration - FRAMES as f64 * 20.0).abs() <= 40.0,
        "the recording plays {duration} ms of a {} ms talk",
        FRAMES * 20
    );

    set_spool_write_delay_for_tests(Duration::ZERO);
    shutdown.cancel();
    tokio::time::timeout(WAIT, task)
        .await
        .expect("daemon stops in time")
        .expect("daemon task did not panic")
        .expect("daemon ends cleanly");
}
