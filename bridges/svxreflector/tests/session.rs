//! The node session (`Connection`) against Debian's real reflectors: two of our
//! nodes on one reflector hear each other's talk packet for packet with the
//! talker named; talkgroups keep talks apart on 24.02; 19.09 gets protocol 1
//! when a talkgroup was asked for; a wrong key is refused in the reflector's
//! words. The endpoint built on it is tested with a real SvxLink node in
//! tests/svxreflector_bridge.rs at the workspace root.

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc::Receiver;
use walkie_harness::{SvxReflector, SvxReflectorVersion};
use walkie_svxreflector::{ConnectConfig, ConnectError, Connection, ConnectionHandle, Event};

const WAIT: Duration = Duration::from_secs(10);
const KEY: &str = "a shared key";

async fn reflector(version: SvxReflectorVersion, nodes: &[&str]) -> SvxReflector {
    let mut builder = SvxReflector::builder(version);
    for node in nodes {
        builder = builder.node(node, KEY);
    }
    builder.start().await.expect("reflector starts")
}

fn config(reflector: &SvxReflector, callsign: &str, talkgroup: Option<u32>) -> ConnectConfig {
    ConnectConfig {
        host: reflector.host().to_owned(),
        port: reflector.port(),
        callsign: callsign.to_owned(),
        auth_key: KEY.to_owned(),
        talkgroup,
    }
}

/// A node logged in, its UDP answered and (protocol 2) its talkgroup selected.
async fn node(
    reflector: &SvxReflector,
    callsign: &str,
    talkgroup: Option<u32>,
) -> (ConnectionHandle, Receiver<Event>) {
    let session = Connection::connect(&config(reflector, callsign, talkgroup))
        .await
        .unwrap_or_else(|e| panic!("{callsign} logs in: {e}\n{}", reflector.log_tail(20)));
    if let Some(tg) = talkgroup.filter(|_| session.0.info().protocol >= 2) {
        // The reflector answers a selection with nothing: its log says when.
        reflector
            .wait_for_log(&format!("{callsign}: Select TG #{tg}"), WAIT)
            .await
            .expect("talkgroup selected");
    }
    session
}

async fn next(events: &mut Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, events.recv())
        .await
        .expect("an event in time")
        .expect("session alive")
}

/// Distinct, recognisable packets (the reflector forwards codec bytes untouched).
fn packets(n: u8) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(vec![0xf8, i, i ^ 0x55]))
        .collect()
}

/// A talks `packets` and stops; B must hear exactly them, between its
/// TalkerStart and the end of stream, and A must be told it has the talkgroup.
async fn talk_is_heard(version: SvxReflectorVersion, talkgroup: Option<u32>, protocol: u16) {
    let reflector = reflector(version, &["SM0AAA", "SM0BBB"]).await;
    let (a, mut a_events) = node(&reflector, "SM0AAA", talkgroup).await;
    let (b, mut b_events) = node(&reflector, "SM0BBB", talkgroup).await;
    assert_eq!(a.info().protocol, protocol);
    assert!(
        a.info().nodes.iter().any(|n| n == "SM0AAA"),
        "{:?}",
        a.info()
    );
    let sent = packets(50);
    for packet in &sent {
        assert!(a.send_audio(packet.clone()));
        // The reflector forwards at the pace packets come; 20 ms like a talk.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.flush().await;
    assert_eq!(
        next(&mut a_events).await,
        Event::TalkerStart {
            callsign: "SM0AAA".into()
        },
        "the talker hears that it has the talkgroup"
    );
    // The talker is named over TCP and the audio comes over UDP: the first
    // packets may come before the name (24.02 sends them in that order).
    let mut heard = Vec::new();
    let mut named = false;
    loop {
        match next(&mut b_events).await {
            Event::Audio(packet) => heard.push(packet),
            Event::TalkerStart { callsign } => {
                assert_eq!(callsign, "SM0AAA");
                named = true;
            }
            Event::Flush | Event::TalkerStop { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(named, "the talker was named");
    assert_eq!(heard, sent, "every packet, in order, unchanged");
    drop(b);
}

#[tokio::test]
async fn a_talk_is_heard_by_another_node_on_19_09() {
    talk_is_heard(SvxReflectorVersion::V19_09, None, 1).await;
}

#[tokio::test]
async fn a_talkgroup_asked_of_19_09_falls_back_to_protocol_1() {
    talk_is_heard(SvxReflectorVersion::V19_09, Some(91), 1).await;
}

#[tokio::test]
async fn a_talk_is_heard_on_the_same_talkgroup_on_24_02() {
    talk_is_heard(SvxReflectorVersion::V24_02, Some(91), 2).await;
}

#[tokio::test]
async fn protocol_1_node_on_24_02_is_heard_by_another() {
    talk_is_heard(SvxReflectorVersion::V24_02, None, 1).await;
}

/// A node on another talkgroup hears nothing of a talk: C on TG 91 hears all
/// of A's talk, B on TG 92 has heard nothing when C has heard the end.
#[tokio::test]
async fn talkgroups_keep_talks_apart_on_24_02() {
    let reflector = reflector(SvxReflectorVersion::V24_02, &["SM0AAA", "SM0BBB", "SM0CCC"]).await;
    let (a, _a_events) = node(&reflector, "SM0AAA", Some(91)).await;
    let (_b, mut b_events) = node(&reflector, "SM0BBB", Some(92)).await;
    let (_c, mut c_events) = node(&reflector, "SM0CCC", Some(91)).await;
    for packet in packets(10) {
        assert!(a.send_audio(packet));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.flush().await;
    let mut c_heard = 0;
    loop {
        match next(&mut c_events).await {
            Event::Audio(_) => c_heard += 1,
            Event::TalkerStop { .. } => break,
            _ => {}
        }
    }
    assert_eq!(c_heard, 10);
    assert!(
        b_events.try_recv().is_err(),
        "a node on TG 92 heard something of a talk on TG 91"
    );
}

#[tokio::test]
async fn a_wrong_key_is_refused_in_the_reflectors_words() {
    for version in [SvxReflectorVersion::V19_09, SvxReflectorVersion::V24_02] {
        let reflector = reflector(version, &["SM0AAA"]).await;
        let mut wrong = config(&reflector, "SM0AAA", Some(91));
        wrong.auth_key = "not the key".into();
        let refused = Connection::connect(&wrong).await.err();
        assert_eq!(
            refused,
            Some(ConnectError::AccessDenied {
                callsign: "SM0AAA".into(),
                message: "Access denied".into()
            }),
            "{version:?}"
        );
        assert!(refused.is_some_and(|e| e.needs_operator()));
    }
}

/// The reflector going away ends the session with a reason, at once.
#[tokio::test]
async fn a_reflector_that_dies_ends_the_session() {
    let mut reflector = reflector(SvxReflectorVersion::V19_09, &["SM0AAA"]).await;
    let (_a, mut events) = node(&reflector, "SM0AAA", None).await;
    reflector.kill().expect("kill");
    match next(&mut events).await {
        Event::Disconnected { reason } => assert!(reason.contains("closed"), "{reason}"),
        other => panic!("expected the end of the session, got {other:?}"),
    }
}

/// A reflector that carries another codec than Opus is refused with what to
/// ask the sysop for, and counts as a matter for the operator (no fast retries).
#[tokio::test]
async fn a_reflector_without_opus_is_refused_with_the_reason() {
    let reflector = SvxReflector::builder(SvxReflectorVersion::V19_09)
        .node("SM0AAA", KEY)
        .global("CODECS", "GSM")
        .start()
        .await
        .expect("reflector starts");
    let refused = Connection::connect(&config(&reflector, "SM0AAA", None))
        .await
        .err();
    assert_eq!(refused, Some(ConnectError::Codec("GSM".into())));
    let refused = refused.expect("refused");
    assert!(refused.needs_operator());
    assert!(refused.to_string().contains("CODECS=OPUS"), "{refused}");
}

/// A session whose events nobody reads for a while (a stalled endpoint) goes on
/// serving: the audio it hears meanwhile is dropped, and what it sends still
/// reaches the network. (Waiting for room in its event queue would stop its
/// sending and its heartbeats, and the reflector would drop it.)
#[tokio::test]
async fn an_unread_session_keeps_sending() {
    let reflector = reflector(SvxReflectorVersion::V19_09, &["SM0AAA", "SM0BBB", "SM0CCC"]).await;
    let (deaf, _unread) = node(&reflector, "SM0AAA", None).await;
    let (talker, mut talker_events) = node(&reflector, "SM0BBB", None).await;
    let (_listener, mut heard) = node(&reflector, "SM0CCC", None).await;
    // More packets than the deaf node's event queue holds.
    for packet in packets(200).iter().chain(packets(200).iter()) {
        assert!(talker.send_audio(packet.clone()));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    talker.flush().await;
    loop {
        if let Event::TalkerStop { .. } = next(&mut heard).await {
            break;
        }
    }
    while talker_events.try_recv().is_ok() {}
    for packet in packets(5) {
        assert!(deaf.send_audio(packet));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    deaf.flush().await;
    loop {
        match next(&mut heard).await {
            Event::TalkerStart { callsign } if callsign == "SM0AAA" => break,
            _ => {}
        }
    }
}
