//! The SvxReflector endpoint on Debian's real reflectors (19.09.2; 24.02 in the
//! trixie root), with real SvxLink nodes (Debian's `svxlink` 19.09.2, protocol 1)
//! as the network's other nodes, and a channel hub with a test endpoint as
//! "everyone else". On 24.02 the bridge speaks protocol 2 on talkgroup 1, where
//! the reflector puts protocol-1 nodes: the real SvxLink node and the bridge
//! meet there.

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, FloorSettings};
use walkie_endpoint::audio::{resample, OpusDecoder};
use walkie_endpoint::{
    AllowEveryone, Capabilities, DenyReason, Downlink, Endpoint, EndpointId, FloorEvent, HubLink,
    PolicyFuture, Priority, ReleaseReason, StreamKey, TalkKind, Talker, TransmitPolicy, TxId,
};
use walkie_harness::{SvxLinkNode, SvxReflector, SvxReflectorVersion};
use walkie_svxreflector::{ConnectConfig, SvxReflectorEndpoint, SvxReflectorEndpointConfig};

const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "a shared key";
const BRIDGE: &str = "SM0BRG";
const NODE: &str = "SM0NOD";
const LISTENER: &str = "SM0LIS";
/// Where a 24.02 reflector puts protocol-1 nodes (its built-in TG_FOR_V1_CLIENTS).
const V1_TALKGROUP: u32 = 1;

struct Lab {
    reflector: SvxReflector,
    /// The node that talks.
    node: SvxLinkNode,
    /// A second node that only listens: what the network hears.
    listener: SvxLinkNode,
    /// "Everyone else" on the channel.
    local: HubLink,
    shutdown: CancellationToken,
    endpoint: tokio::task::JoinHandle<()>,
    hub: tokio::task::JoinHandle<()>,
}

/// Refuses one talker, as `transmit_allow` does.
struct Refuse(&'static str);

impl TransmitPolicy for Refuse {
    fn check<'a>(&'a self, talker: &'a Talker, _source: &'a EndpointId) -> PolicyFuture<'a> {
        let refused = talker.name == self.0;
        Box::pin(async move {
            if refused {
                Err("you are not in transmit_allow".to_owned())
            } else {
                Ok(())
            }
        })
    }
}

async fn lab(version: SvxReflectorVersion) -> Lab {
    lab_with(version, FloorSettings::default(), Arc::new(AllowEveryone)).await
}

async fn lab_with(
    version: SvxReflectorVersion,
    floor: FloorSettings,
    policy: Arc<dyn TransmitPolicy>,
) -> Lab {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let reflector = SvxReflector::builder(version)
        .node(BRIDGE, KEY)
        .node(NODE, KEY)
        .node(LISTENER, KEY)
        .start()
        .await
        .expect("reflector starts");
    let svxlink = |callsign: &'static str| {
        SvxLinkNode::builder(reflector.host(), reflector.port())
            .callsign(callsign)
            .auth_key(KEY)
            .start()
    };
    let node = svxlink(NODE).await.expect("svxlink node starts");
    let listener = svxlink(LISTENER).await.expect("svxlink listener starts");
    let talkgroup = (version == SvxReflectorVersion::V24_02).then_some(V1_TALKGROUP);
    let endpoint = SvxReflectorEndpoint::new(
        EndpointId::new("svxreflector.net"),
        SvxReflectorEndpointConfig {
            connect: ConnectConfig {
                host: reflector.host().to_owned(),
                port: reflector.port(),
                callsign: BRIDGE.into(),
                auth_key: KEY.into(),
                talkgroup,
            },
            idle_release: Duration::from_millis(1500),
            reconnect_cap: Duration::from_secs(5),
            refused_retry: Duration::from_secs(60),
        },
        policy,
    );
    let mut hub = ChannelHub::new("net", floor);
    let svx_link = hub
        .attach(endpoint.id().clone(), endpoint.capabilities())
        .expect("attach");
    let local = hub
        .attach(EndpointId::new("test.local"), Capabilities::default())
        .expect("attach");
    let shutdown = CancellationToken::new();
    let hub_task = tokio::spawn(hub.run(shutdown.clone()));
    let token = shutdown.clone();
    let endpoint_task = tokio::spawn(async move {
        Box::new(endpoint)
            .run(svx_link, token)
            .await
            .expect("endpoint ends cleanly");
    });
    let needle = match talkgroup {
        Some(tg) => format!("{BRIDGE}: Select TG #{tg}"),
        None => format!("{BRIDGE}: Login OK"),
    };
    reflector
        .wait_for_log(&needle, WAIT)
        .await
        .expect("the bridge's node is on the reflector");
    Lab {
        reflector,
        node,
        listener,
        local,
        shutdown,
        endpoint: endpoint_task,
        hub: hub_task,
    }
}

impl Lab {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.endpoint)
            .await
            .expect("endpoint stops")
            .expect("no panic");
        tokio::time::timeout(WAIT, self.hub)
            .await
            .expect("hub stops")
            .expect("no panic");
    }
}

async fn next(link: &mut HubLink) -> Downlink {
    tokio::time::timeout(WAIT, link.recv())
        .await
        .unwrap_or_else(|_| panic!("{} heard nothing within {WAIT:?}", link.id()))
        .expect("hub running")
}

async fn next_floor(link: &mut HubLink) -> FloorEvent {
    loop {
        if let Downlink::Floor(event) = next(link).await {
            return event;
        }
    }
}

/// Waits for the network's talk to take the floor; returns it and its talker.
async fn network_takes(link: &mut HubLink) -> (TxId, Talker) {
    loop {
        match next_floor(link).await {
            FloorEvent::Taken { tx, talker, .. } => return (tx, talker),
            FloorEvent::Released { .. } | FloorEvent::Idle => {}
            other => panic!("expected the network's talk, got {other:?}"),
        }
    }
}

/// Decodes (48 kHz) every frame of `tx` until it is released; returns the
/// audio at 16 kHz, the node's rate, and why it ended.
async fn hear(link: &mut HubLink, tx: TxId) -> (Vec<i16>, ReleaseReason) {
    let (pcm, reason, _) = hear_noting(link, tx).await;
    (pcm, reason)
}

/// [`hear`], and the other floor events meanwhile.
async fn hear_noting(link: &mut HubLink, tx: TxId) -> (Vec<i16>, ReleaseReason, Vec<FloorEvent>) {
    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut pcm = Vec::new();
    let mut events = Vec::new();
    loop {
        match next(link).await {
            Downlink::Audio(frame) if frame.tx == tx => {
                pcm.extend(decoder.decode(&frame.frame.opus).expect("an Opus packet"));
            }
            Downlink::Floor(FloorEvent::Released { tx: done, reason }) if done == tx => {
                let pcm = resample(&pcm, 48_000, 16_000).expect("resample");
                return (pcm, reason, events);
            }
            Downlink::Floor(event) => events.push(event),
            Downlink::Audio(_) => {}
        }
    }
}

/// `name` talks `pcm` (48 kHz) live on the test endpoint: start, frames at
/// 20 ms, end. Returns the floor events it got meanwhile.
async fn talk_locally(link: &mut HubLink, stream: u64, name: &str, pcm: &[i16]) -> Vec<FloorEvent> {
    let key = StreamKey(stream);
    link.talk_start(
        key,
        Talker::new(name, format!("{name} (Test)")),
        Priority::Normal,
        TalkKind::Live,
    )
    .await
    .expect("hub running");
    let mut encoder = walkie_endpoint::audio::OpusEncoder::new().expect("encoder");
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut events = Vec::new();
    for (seq, frame) in walkie_endpoint::audio::frames_of(pcm).enumerate() {
        tick.tick().await;
        let opus = encoder.encode(&frame).expect("encode");
        link.audio(key, walkie_endpoint::AudioFrame::opus(seq as u32, opus))
            .expect("hub running");
        // Whatever the hub said meanwhile (recv is cancel-safe).
        while let Ok(Ok(down)) = tokio::time::timeout(Duration::ZERO, link.recv()).await {
            if let Downlink::Floor(event) = down {
                events.push(event);
            }
        }
    }
    link.talk_end(key).await.expect("hub running");
    events
}

/// The audible part of `pcm` (16 kHz) and its length.
fn active(pcm: &[i16]) -> (&[i16], Duration) {
    let (first, last) = common::active_span(pcm, 300);
    let span = &pcm[first..=last];
    (span, Duration::from_secs_f64(span.len() as f64 / 16_000.0))
}

/// `heard` is `sent` (both 16 kHz): the same length of sound within ±60 ms, and
/// correlated above 0.85 at the best alignment.
fn assert_is(heard: &[i16], sent: &[i16], what: &str) -> (f64, f64) {
    let (sent_span, sent_len) = active(sent);
    let (heard_span, heard_len) = active(heard);
    let difference = (heard_len.as_secs_f64() - sent_len.as_secs_f64()) * 1000.0;
    let (_, correlation) = common::best_lag(sent_span, heard_span, -800..=800);
    assert!(
        difference.abs() <= 60.0,
        "{what}: {heard_len:?} of sound heard for {sent_len:?} sent ({difference:+.1} ms)"
    );
    assert!(correlation > 0.85, "{what}: correlation {correlation:.3}");
    (difference, correlation)
}

async fn a_node_talk_is_a_talk_on_the_channel(version: SvxReflectorVersion) {
    let mut lab = lab(version).await;
    let speech = common::radio_speech(16_000);
    let talking = {
        let speech = speech.clone();
        let node = &lab.node;
        async move { node.talk(&speech).await.expect("the node talks") }
    };
    let hearing = async {
        let (tx, talker) = network_takes(&mut lab.local).await;
        let (heard, reason) = hear(&mut lab.local, tx).await;
        (talker, heard, reason)
    };
    let (_, (talker, heard, reason)) = tokio::join!(talking, hearing);
    assert_eq!(talker.name, NODE.to_ascii_lowercase());
    assert_eq!(talker.display_name, format!("{NODE} (SvxReflector)"));
    assert_eq!(reason, ReleaseReason::TalkerDone);
    let (difference, correlation) = assert_is(&heard, &speech, "the node's talk on the channel");
    println!("{version:?}: node → channel {difference:+.1} ms, correlation {correlation:.3}");
    lab.stop().await;
}

async fn a_channel_talk_is_heard_at_the_node(version: SvxReflectorVersion) {
    let mut lab = lab(version).await;
    lab.node.start_capture();
    let speech = common::radio_speech(48_000);
    let events = talk_locally(&mut lab.local, 1, "alice", &speech).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, FloorEvent::Granted { .. })),
        "{events:?}"
    );
    lab.node
        .wait_for_ptt(
            "the node keys up and releases",
            |p| p.keyed >= 1 && !p.on,
            WAIT,
        )
        .await
        .expect("the node transmitted the channel's talk");
    let heard = lab.node.captured().samples;
    let sent = resample(&speech, 48_000, 16_000).expect("resample");
    let (difference, correlation) = assert_is(&heard, &sent, "the channel's talk at the node");
    println!("{version:?}: channel → node {difference:+.1} ms, correlation {correlation:.3}");
    lab.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_talk_is_a_talk_on_the_channel_19_09() {
    a_node_talk_is_a_talk_on_the_channel(SvxReflectorVersion::V19_09).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_talk_is_a_talk_on_the_channel_24_02() {
    a_node_talk_is_a_talk_on_the_channel(SvxReflectorVersion::V24_02).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_talk_is_heard_at_the_node_19_09() {
    a_channel_talk_is_heard_at_the_node(SvxReflectorVersion::V19_09).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_talk_is_heard_at_the_node_24_02() {
    a_channel_talk_is_heard_at_the_node(SvxReflectorVersion::V24_02).await;
}

/// While the network talks, a local talker is refused with the network talker's
/// name, and the bridge never transmits into the talkgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_talkgroup_is_not_transmitted_into() {
    let floor = FloorSettings {
        queue: false,
        ..FloorSettings::default()
    };
    let mut lab = lab_with(SvxReflectorVersion::V19_09, floor, Arc::new(AllowEveryone)).await;
    lab.listener.start_capture();
    let speech = common::radio_speech(16_000);
    let node = &lab.node;
    let talking = async { node.talk(&speech).await.expect("the node talks") };
    let local = &mut lab.local;
    let interrupting = async {
        let (tx, _) = network_takes(local).await;
        let alice = Talker::new("alice", "alice (Test)");
        local
            .talk_start(StreamKey(7), alice, Priority::Normal, TalkKind::Live)
            .await
            .expect("hub running");
        hear_noting(local, tx).await
    };
    let (_, (heard, _, events)) = tokio::join!(talking, interrupting);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, FloorEvent::Granted { .. })),
        "alice was given the floor while the network talked: {events:?}"
    );
    let denied = events.iter().find_map(|e| match e {
        FloorEvent::Denied {
            stream,
            reason,
            holder,
        } if *stream == StreamKey(7) => {
            Some((*reason, holder.as_ref().map(|h| h.display_name.clone())))
        }
        _ => None,
    });
    assert_eq!(
        denied,
        Some((DenyReason::Busy, Some(format!("{NODE} (SvxReflector)")))),
        "{events:?}"
    );
    assert_is(&heard, &speech, "the network's talk, whole");
    lab.listener
        .wait_for_ptt(
            "the listener hears the node",
            |p| p.keyed >= 1 && !p.on,
            WAIT,
        )
        .await
        .expect("listener keyed");
    assert_is(
        &lab.listener.captured().samples,
        &speech,
        "what the network heard",
    );
    let log = lab.reflector.log_tail(200);
    assert!(
        !log.contains(&format!("{BRIDGE}: Talker start")),
        "the bridge transmitted into a busy talkgroup:\n{log}"
    );
    lab.stop().await;
}

/// A talker `transmit_allow` refuses is not sent to the network, and is told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_talker_is_not_sent_and_is_told() {
    let mut lab = lab_with(
        SvxReflectorVersion::V19_09,
        FloorSettings::default(),
        Arc::new(Refuse("mallory")),
    )
    .await;
    let speech = common::radio_speech(48_000);
    let events = talk_locally(&mut lab.local, 3, "mallory", &speech[..48_000]).await;
    let declined = events.iter().find_map(|e| match e {
        FloorEvent::Declined { by, reason, .. } => Some((by.clone(), reason.clone())),
        _ => None,
    });
    assert_eq!(
        declined,
        Some((
            EndpointId::new("svxreflector.net"),
            "you are not in transmit_allow".to_owned()
        )),
        "{events:?}"
    );
    // Someone allowed then talks: the network hears them and only them.
    lab.node.start_capture();
    let events = talk_locally(&mut lab.local, 4, "alice", &speech).await;
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, FloorEvent::Declined { .. })),
        "{events:?}"
    );
    let keyed = lab
        .node
        .wait_for_ptt("the node hears alice", |p| p.keyed >= 1 && !p.on, WAIT)
        .await
        .expect("alice is on the network");
    assert_eq!(keyed.keyed, 1, "mallory was transmitted too");
    let sent = resample(&speech, 48_000, 16_000).expect("resample");
    assert_is(&lab.node.captured().samples, &sent, "alice at the node");
    lab.stop().await;
}

/// A local talker and a network talker start in the same instant, ten times at
/// offsets around each other: every time, whoever the reflector put on the
/// network is also the one talker on the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collision_resolves_to_one_talker_everywhere() {
    // Refused outright, never queued: a queued local talk granted when the
    // network's ends would be a second talker by design, not a collision.
    let floor = FloorSettings {
        queue: false,
        ..FloorSettings::default()
    };
    let mut lab = lab_with(SvxReflectorVersion::V19_09, floor, Arc::new(AllowEveryone)).await;
    let node_speech = common::radio_speech(16_000);
    // Longer than the node's 2 s: when the local talker wins, the node's talk
    // (dropped by the reflector) is over before the local one ends, and never
    // gets the talkgroup after it.
    let tone = common::sine(700.0, 8000.0, 48_000, 48_000 * 3);
    let tone_16k = resample(&tone, 48_000, 16_000).expect("resample");
    let mut outcomes = (0, 0);
    for trial in 0..10i64 {
        lab.listener.start_capture();
        let keyed_before = lab.listener.ptt().keyed;
        // The node's squelch opens ~now; the local talk starts `offset` later
        // (or earlier), across the few milliseconds either may win by.
        let offset = Duration::from_millis((trial * 7 % 40) as u64);
        let local_first = trial % 2 == 0;
        let node = &lab.node;
        let node_talk = async {
            if local_first {
                tokio::time::sleep(offset).await;
            }
            node.talk(&node_speech[..16_000 * 2])
                .await
                .expect("the node talks");
        };
        let local = &mut lab.local;
        let local_talk = async {
            if !local_first {
                tokio::time::sleep(offset).await;
            }
            talk_locally(local, 100 + trial as u64, "alice", &tone).await
        };
        let (_, events) = tokio::join!(node_talk, local_talk);
        let granted = events
            .iter()
            .any(|e| matches!(e, FloorEvent::Granted { .. }));
        let revoked = events.iter().any(|e| {
            matches!(
                e,
                FloorEvent::Released {
                    reason: ReleaseReason::Revoked,
                    ..
                }
            )
        });
        let local_kept_floor = granted && !revoked;
        lab.listener
            .wait_for_ptt(
                "the network heard someone",
                |p| !p.on && p.keyed > keyed_before,
                WAIT,
            )
            .await
            .expect("the network heard a talk");
        let heard = lab.listener.captured().samples;
        let node_on_network = !heard.is_empty()
            && common::best_lag(
                active(&node_speech[..32_000]).0,
                active(&heard).0,
                -800..=800,
            )
            .1 > 0.6;
        let local_on_network = !heard.is_empty()
            && common::best_lag(active(&tone_16k).0, active(&heard).0, -800..=800).1 > 0.6;
        assert!(
            node_on_network != local_on_network,
            "trial {trial}: the network heard {} (node {node_on_network}, local {local_on_network})",
            if heard.is_empty() { "nobody" } else { "both or garbage" }
        );
        assert_eq!(
            local_kept_floor, local_on_network,
            "trial {trial}: the channel's talker (alice kept the floor: {local_kept_floor}) is \
             not the network's (alice on the network: {local_on_network}); floor events {events:?}"
        );
        if local_on_network {
            outcomes.0 += 1;
        } else {
            outcomes.1 += 1;
        }
        // The floor goes idle before the next trial (unless it already did).
        if events.last() != Some(&FloorEvent::Idle) {
            while next_floor(&mut lab.local).await != FloorEvent::Idle {}
        }
    }
    println!(
        "collisions: the local talker won {} times, the network's {} times",
        outcomes.0, outcomes.1
    );
    lab.stop().await;
}

/// The reflector killed mid-talk: the network's talk ends on the channel at
/// once; after its restart the next talk arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_restart_mid_talk_loses_nothing_after_the_cut() {
    let mut lab = lab(SvxReflectorVersion::V19_09).await;
    let speech = common::radio_speech(16_000);
    let node = &lab.node;
    let talking = async {
        // The node's own talk ends with an error or not: the reflector is gone.
        let _ = node.talk(&speech).await;
    };
    let local = &mut lab.local;
    let reflector = &mut lab.reflector;
    let cutting = async {
        let (tx, _) = network_takes(local).await;
        // A second of the talk, then the reflector dies.
        let mut decoder = OpusDecoder::new().expect("decoder");
        let mut frames = 0;
        while frames < 50 {
            if let Downlink::Audio(frame) = next(local).await {
                decoder.decode(&frame.frame.opus).expect("opus");
                frames += 1;
            }
        }
        reflector.kill().expect("kill");
        let killed = Instant::now();
        loop {
            if let FloorEvent::Released { tx: done, .. } = next_floor(local).await {
                if done == tx {
                    break killed.elapsed();
                }
            }
        }
    };
    let (_, ended_after) = tokio::join!(talking, cutting);
    assert!(
        ended_after < Duration::from_millis(500),
        "the talk ended {ended_after:?} after the reflector died"
    );
    let mark = lab.reflector.log_mark();
    lab.reflector
        .start_again()
        .await
        .expect("reflector restarts");
    lab.reflector
        .wait_for_log_since(mark, &format!("{BRIDGE}: Login OK"), WAIT)
        .await
        .expect("the bridge logs in again");
    // svxlink's node retries every 20 s.
    lab.reflector
        .wait_for_log_since(mark, &format!("{NODE}: Login OK"), Duration::from_secs(40))
        .await
        .expect("the node logs in again");
    let node = &lab.node;
    let talking = async { node.talk(&speech).await.expect("the node talks again") };
    let local = &mut lab.local;
    let hearing = async {
        let (tx, _) = network_takes(local).await;
        hear(local, tx).await.0
    };
    let (_, heard) = tokio::join!(talking, hearing);
    assert_is(&heard, &speech, "the talk after the restart");
    println!("the network's talk ended on the channel {ended_after:?} after the reflector died");
    lab.stop().await;
}

/// The collision made certain: a local talker holds the channel's floor but has
/// sent nothing yet (a button pressed, no audio) when a node takes the
/// talkgroup. The network's talker wins on every side: the local floor is
/// revoked and the local talker told, the node's talk is the channel's, and the
/// network hears the node only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_wins_the_talkgroup_takes_the_channel_floor() {
    let mut lab = lab(SvxReflectorVersion::V19_09).await;
    lab.listener.start_capture();
    let key = StreamKey(9);
    let alice = Talker::new("alice", "alice (Test)");
    lab.local
        .talk_start(key, alice, Priority::Normal, TalkKind::Live)
        .await
        .expect("hub running");
    let granted = next_floor(&mut lab.local).await;
    assert!(matches!(granted, FloorEvent::Granted { .. }), "{granted:?}");
    let speech = common::radio_speech(16_000);
    let node = &lab.node;
    let talking = async { node.talk(&speech).await.expect("the node talks") };
    let local = &mut lab.local;
    let watching = async {
        let mut events = Vec::new();
        let (tx, talker) = loop {
            match next_floor(local).await {
                FloorEvent::Taken { tx, talker, .. } => break (tx, talker),
                event => events.push(event),
            }
        };
        let (heard, _) = hear(local, tx).await;
        (events, talker, heard)
    };
    let (_, (events, talker, heard)) = tokio::join!(talking, watching);
    assert!(
        events.iter().any(|e| matches!(
            e,
            FloorEvent::Released {
                reason: ReleaseReason::Revoked,
                ..
            }
        )),
        "alice's floor was not revoked: {events:?}"
    );
    let told = events.iter().find_map(|e| match e {
        FloorEvent::Declined { stream, reason, .. } if *stream == key => Some(reason.clone()),
        _ => None,
    });
    assert_eq!(
        told.as_deref(),
        Some("SM0NOD is talking on the network"),
        "{events:?}"
    );
    assert_eq!(talker.display_name, format!("{NODE} (SvxReflector)"));
    assert_is(&heard, &speech, "the node's talk on the channel");
    lab.local.talk_end(key).await.expect("hub running");
    lab.listener
        .wait_for_ptt(
            "the listener hears the node",
            |p| p.keyed >= 1 && !p.on,
            WAIT,
        )
        .await
        .expect("listener keyed");
    assert_is(
        &lab.listener.captured().samples,
        &speech,
        "what the network heard",
    );
    lab.stop().await;
}
