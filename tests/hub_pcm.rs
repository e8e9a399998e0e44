//! The hub decodes the floor holder's Opus once for endpoints that want PCM, keeps
//! the talker's timing across lost frames, and leaves Opus-only endpoints alone.

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, FloorSettings};
use walkie_endpoint::audio::{frames_of, OpusEncoder, FRAME_SAMPLES};
use walkie_endpoint::{
    AudioFrame, Capabilities, DownFrame, Downlink, EndpointId, FloorEvent, HubLink, Priority,
    StreamKey, TalkKind, Talker,
};

const WAIT: Duration = Duration::from_secs(5);

async fn next_audio(link: &mut HubLink) -> DownFrame {
    loop {
        match timeout(WAIT, link.recv()).await {
            Ok(Ok(Downlink::Audio(frame))) => return frame,
            Ok(Ok(Downlink::Floor(_))) => continue,
            Ok(Err(closed)) => panic!("{}: {closed}", link.id()),
            Err(_) => panic!("{} heard no audio within {WAIT:?}", link.id()),
        }
    }
}

/// The talker on `link` asks for a quiet floor and waits for its grant.
async fn take_floor(link: &mut HubLink) {
    link.talk_start(
        StreamKey(1),
        Talker::new("alice", "alice (Test)"),
        Priority::Normal,
        TalkKind::Live,
    )
    .await
    .expect("hub running");
    loop {
        match timeout(WAIT, link.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Granted { .. }))) => return,
            Ok(Ok(_)) => continue,
            Ok(Err(closed)) => panic!("{}: {closed}", link.id()),
            Err(_) => panic!("{} was not granted within {WAIT:?}", link.id()),
        }
    }
}

#[tokio::test]
async fn pcm_consumers_get_decoded_speech_with_lost_frames_concealed() {
    let speech = common::speech(48_000);
    let mut encoder = OpusEncoder::new().expect("encoder");
    let packets: Vec<_> = frames_of(&speech)
        .map(|frame| encoder.encode(&frame).expect("encode"))
        .collect();
    let frames = packets.len();

    let mut hub = ChannelHub::new("pcm", FloorSettings::default());
    let mut source = hub
        .attach(EndpointId::new("test.source"), Capabilities::default())
        .expect("attach");
    let mut radio = hub
        .attach(
            EndpointId::new("test.radio"),
            Capabilities {
                needs_pcm: true,
                ..Capabilities::default()
            },
        )
        .expect("attach");
    let stats = hub.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hub.run(shutdown.clone()));

    take_floor(&mut source).await;

    // Frames 100 and 101 are lost; 101 then turns up after 102.
    let order: Vec<usize> = (0..100).chain([102, 101]).chain(103..frames).collect();
    let mut pcm = Vec::new();
    let mut sent = 0;
    for index in order {
        source
            .audio(
                StreamKey(1),
                AudioFrame::opus(index as u32, packets[index].clone()),
            )
            .expect("hub running");
        sent += 1;
        // Keep the downlink ring from overflowing: take each frame as it comes.
        let down = next_audio(&mut radio).await;
        assert_eq!(down.frame.seq, index as u32);
        match (index, &down.frame.pcm) {
            (101, None) => {}
            (101, Some(_)) => panic!("a late frame must carry no PCM: its slot was concealed"),
            (102, Some(samples)) => {
                assert_eq!(
                    samples.len(),
                    3 * FRAME_SAMPLES,
                    "two lost frames concealed in front"
                );
                pcm.extend_from_slice(samples);
            }
            (_, Some(samples)) => {
                assert_eq!(samples.len(), FRAME_SAMPLES);
                pcm.extend_from_slice(samples);
            }
            (_, None) => panic!("frame {index} came without PCM"),
        }
    }
    assert_eq!(sent, frames - 1, "frame 100 is never sent");
    // Every 20 ms slot of the talk is there exactly once, so timing is kept.
    assert_eq!(pcm.len(), frames * FRAME_SAMPLES);
    assert_eq!(stats.frames_concealed.load(Ordering::Relaxed), 2);
    assert_eq!(stats.frames_late.load(Ordering::Relaxed), 1);
    assert_eq!(stats.frames_corrupt.load(Ordering::Relaxed), 0);

    let (lag, correlation) = common::best_lag(&speech, &pcm, 280..=340);
    let level = common::energy_db(&pcm) - common::energy_db(&speech);
    eprintln!("decoded speech: lag {lag}, correlation {correlation:.4}, level {level:+.2} dB");
    assert!(
        correlation > 0.85,
        "decoded speech does not match the source: {correlation:.4}"
    );
    assert!(level.abs() < 2.0, "level changed by {level:.2} dB");

    shutdown.cancel();
    timeout(WAIT, task)
        .await
        .expect("hub stops")
        .expect("no panic");
}

#[tokio::test]
async fn without_pcm_consumers_nothing_is_decoded() {
    let mut hub = ChannelHub::new("opus-only", FloorSettings::default());
    let mut source = hub
        .attach(EndpointId::new("test.source"), Capabilities::default())
        .expect("attach");
    let mut mumble = hub
        .attach(EndpointId::new("test.mumble"), Capabilities::default())
        .expect("attach");
    let stats = hub.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hub.run(shutdown.clone()));
    take_floor(&mut source).await;
    // Not even valid Opus: passthrough must not look inside.
    source
        .audio(StreamKey(1), AudioFrame::opus(0, vec![0xff, 0xff, 0xff]))
        .expect("hub running");
    let down = next_audio(&mut mumble).await;
    assert_eq!(down.frame.opus.as_ref(), &[0xff, 0xff, 0xff]);
    assert!(down.frame.pcm.is_none());
    assert_eq!(stats.frames_corrupt.load(Ordering::Relaxed), 0);
    shutdown.cancel();
    timeout(WAIT, task)
        .await
        .expect("hub stops")
        .expect("no panic");
}
