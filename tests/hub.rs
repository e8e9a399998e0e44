//! The channel hub as a running actor: what each endpoint hears, in what order, and
//! that audio goes to everyone but its source. Endpoints here are bare `HubLink`s,
//! which is exactly what an endpoint task holds.

use std::time::Duration;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, FloorSettings};
use walkie_endpoint::{
    AudioFrame, Capabilities, Downlink, EndpointId, FloorEvent, HubLink, Priority, ReleaseReason,
    StreamKey, TalkKind, Talker, TxId,
};

/// Long enough for any event on a loaded CI machine, short enough to fail fast.
const WAIT: Duration = Duration::from_secs(5);

fn settings() -> FloorSettings {
    FloorSettings {
        max_talk: Duration::from_secs(60),
        idle_release: Duration::from_millis(1500),
        hang: Duration::ZERO,
        queue: true,
        queue_max: 10,
    }
}

struct Running {
    links: Vec<HubLink>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    stats: std::sync::Arc<walkie_bridge::hub::HubStats>,
}

fn start(settings: FloorSettings, names: &[&str]) -> Running {
    let mut hub = ChannelHub::new("test", settings);
    let links = names
        .iter()
        .map(|name| hub.attach(EndpointId::new(*name), Capabilities::default()))
        .collect::<Result<Vec<_>, _>>()
        .expect("distinct endpoint names attach");
    let stats = hub.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(hub.run(shutdown.clone()));
    Running {
        links,
        shutdown,
        task,
        stats,
    }
}

async fn next(link: &mut HubLink) -> Downlink {
    timeout(WAIT, link.recv())
        .await
        .unwrap_or_else(|_| panic!("{} heard nothing within {WAIT:?}", link.id()))
        .expect("hub still running")
}

async fn next_floor(link: &mut HubLink) -> FloorEvent {
    match next(link).await {
        Downlink::Floor(event) => event,
        Downlink::Audio(frame) => {
            panic!("{} expected a floor event, got audio {frame:?}", link.id())
        }
    }
}

fn talker(name: &str) -> Talker {
    Talker::new(name, format!("{name} (Test)"))
}

async fn request(link: &HubLink, stream: u64, name: &str, priority: Priority) {
    link.talk_start(StreamKey(stream), talker(name), priority, TalkKind::Live)
        .await
        .expect("hub running");
}

/// `links[talker]` asks for a quiet floor: it hears its grant and every other
/// endpoint hears who took it.
async fn take_floor(links: &mut [HubLink], talker: usize, stream: u64, name: &str) -> TxId {
    request(&links[talker], stream, name, Priority::Normal).await;
    let FloorEvent::Granted {
        tx,
        stream: granted,
    } = next_floor(&mut links[talker]).await
    else {
        panic!("{name} was not granted");
    };
    assert_eq!(granted, StreamKey(stream));
    let source = links[talker].id().clone();
    for (index, link) in links.iter_mut().enumerate() {
        if index == talker {
            continue;
        }
        match next_floor(link).await {
            FloorEvent::Taken {
                tx: taken,
                talker,
                source: from,
                ..
            } => {
                assert_eq!(taken, tx);
                assert_eq!(talker.name, name);
                assert_eq!(from, source);
            }
            other => panic!("{} expected Taken, got {other:?}", link.id()),
        }
    }
    tx
}

async fn stop(shutdown: CancellationToken, task: tokio::task::JoinHandle<()>) {
    shutdown.cancel();
    timeout(WAIT, task)
        .await
        .expect("hub stops")
        .expect("hub task did not panic");
}

#[tokio::test]
async fn holder_audio_reaches_every_other_endpoint_and_never_its_source() {
    let Running {
        mut links,
        shutdown,
        task,
        stats,
    } = start(settings(), &["test.a", "test.b", "test.c"]);
    let tx = take_floor(&mut links, 0, 1, "alice").await;
    for seq in 0..5u32 {
        links[0]
            .audio(StreamKey(1), AudioFrame::opus(seq, vec![seq as u8; 3]))
            .expect("hub running");
    }
    for link in &mut links[1..] {
        for seq in 0..5u32 {
            match next(link).await {
                Downlink::Audio(frame) => {
                    assert_eq!(frame.tx, tx);
                    assert_eq!(frame.frame.seq, seq);
                    assert_eq!(frame.frame.opus.as_ref(), &[seq as u8; 3]);
                }
                other => panic!("expected audio, got {other:?}"),
            }
        }
    }
    links[0].talk_end(StreamKey(1)).await.expect("hub running");
    // The source hears its own release and the idle floor, but none of its frames.
    assert_eq!(
        next_floor(&mut links[0]).await,
        FloorEvent::Released {
            tx,
            reason: ReleaseReason::TalkerDone
        }
    );
    assert_eq!(next_floor(&mut links[0]).await, FloorEvent::Idle);
    for link in &mut links[1..] {
        assert_eq!(
            next_floor(link).await,
            FloorEvent::Released {
                tx,
                reason: ReleaseReason::TalkerDone
            }
        );
        assert_eq!(next_floor(link).await, FloorEvent::Idle);
    }
    assert_eq!(
        stats
            .frames_forwarded
            .load(std::sync::atomic::Ordering::Relaxed),
        5
    );
    stop(shutdown, task).await;
}

/// An endpoint with nobody to pass audio to (a live page no browser has open)
/// says so, and gets floor events but no frames until it wants them again.
#[tokio::test]
async fn an_endpoint_that_wants_no_audio_gets_floor_events_only() {
    let Running {
        mut links,
        shutdown,
        task,
        ..
    } = start(settings(), &["test.a", "test.b", "test.c"]);
    links[2].set_audio_wanted(false);
    let tx = take_floor(&mut links, 0, 1, "alice").await;
    for seq in 0..3u32 {
        links[0]
            .audio(StreamKey(1), AudioFrame::opus(seq, vec![seq as u8; 3]))
            .expect("hub running");
    }
    // b hears all three, so the hub has handled them by then.
    for seq in 0..3u32 {
        assert!(matches!(next(&mut links[1]).await, Downlink::Audio(f) if f.frame.seq == seq));
    }
    links[2].set_audio_wanted(true);
    links[0]
        .audio(StreamKey(1), AudioFrame::opus(3, vec![3; 3]))
        .expect("hub running");
    // c's first frame is the one sent after it wanted audio again.
    match next(&mut links[2]).await {
        Downlink::Audio(frame) => assert_eq!((frame.tx, frame.frame.seq), (tx, 3)),
        other => panic!("expected frame 3, got {other:?}"),
    }
    links[0].talk_end(StreamKey(1)).await.expect("hub running");
    assert!(matches!(
        next_floor(&mut links[2]).await,
        FloorEvent::Released { .. }
    ));
    stop(shutdown, task).await;
}

#[tokio::test]
async fn a_second_talker_queues_its_audio_is_refused_and_it_goes_next() {
    let Running {
        mut links,
        shutdown,
        task,
        stats,
    } = start(settings(), &["test.a", "test.b", "test.c"]);
    let first = take_floor(&mut links, 0, 1, "alice").await;

    request(&links[1], 7, "bob", Priority::Normal).await;
    assert_eq!(
        next_floor(&mut links[1]).await,
        FloorEvent::Queued {
            stream: StreamKey(7),
            position: 1
        }
    );
    // Bob talks over alice anyway: nobody may hear it.
    links[1]
        .audio(StreamKey(7), AudioFrame::opus(0, vec![0xbb]))
        .expect("hub running");
    // A frame from the holder afterwards proves the hub processed bob's frame first.
    links[0]
        .audio(StreamKey(1), AudioFrame::opus(0, vec![0xaa]))
        .expect("hub running");
    for link in &mut links[1..] {
        match next(link).await {
            Downlink::Audio(frame) => assert_eq!(frame.frame.opus.as_ref(), &[0xaa]),
            other => panic!("expected alice's frame, got {other:?}"),
        }
    }
    assert_eq!(
        stats
            .frames_refused
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    links[0].talk_end(StreamKey(1)).await.expect("hub running");
    assert!(matches!(
        next_floor(&mut links[1]).await,
        FloorEvent::Released { tx, .. } if tx == first
    ));
    let FloorEvent::Granted { stream, tx: second } = next_floor(&mut links[1]).await else {
        panic!("bob was not granted after alice");
    };
    assert_eq!(stream, StreamKey(7));
    assert_ne!(second, first);
    assert!(matches!(
        next_floor(&mut links[0]).await,
        FloorEvent::Released { .. }
    ));
    match next_floor(&mut links[0]).await {
        FloorEvent::Taken { tx, talker, .. } => {
            assert_eq!(tx, second);
            assert_eq!(talker.name, "bob");
        }
        other => panic!("expected bob's Taken, got {other:?}"),
    }
    stop(shutdown, task).await;
}

#[tokio::test]
async fn silence_releases_the_floor_after_idle_release() {
    let idle = Duration::from_millis(200);
    let Running {
        mut links,
        shutdown,
        task,
        ..
    } = start(
        FloorSettings {
            idle_release: idle,
            ..settings()
        },
        &["test.a", "test.b"],
    );
    let started = tokio::time::Instant::now();
    request(&links[0], 1, "alice", Priority::Normal).await;
    let FloorEvent::Granted { tx, .. } = next_floor(&mut links[0]).await else {
        panic!("alice was not granted");
    };
    // No audio and no talk end: a client that died holding the button.
    assert_eq!(
        next_floor(&mut links[0]).await,
        FloorEvent::Released {
            tx,
            reason: ReleaseReason::IdleTimeout
        }
    );
    assert!(started.elapsed() >= idle, "released before idle_release_ms");
    assert!(matches!(
        next_floor(&mut links[1]).await,
        FloorEvent::Taken { .. }
    ));
    assert!(matches!(
        next_floor(&mut links[1]).await,
        FloorEvent::Released {
            reason: ReleaseReason::IdleTimeout,
            ..
        }
    ));
    stop(shutdown, task).await;
}

#[tokio::test]
async fn an_emergency_revokes_the_holder_at_once() {
    let Running {
        mut links,
        shutdown,
        task,
        ..
    } = start(settings(), &["test.a", "test.b"]);
    let tx = take_floor(&mut links, 0, 1, "alice").await;
    request(&links[1], 2, "rescue", Priority::Emergency).await;
    assert_eq!(
        next_floor(&mut links[0]).await,
        FloorEvent::Released {
            tx,
            reason: ReleaseReason::Revoked
        }
    );
    match next_floor(&mut links[0]).await {
        FloorEvent::Taken {
            talker, priority, ..
        } => {
            assert_eq!(talker.name, "rescue");
            assert_eq!(priority, Priority::Emergency);
        }
        other => panic!("expected the emergency's Taken, got {other:?}"),
    }
    assert!(matches!(
        next_floor(&mut links[1]).await,
        FloorEvent::Released { .. }
    ));
    assert!(matches!(
        next_floor(&mut links[1]).await,
        FloorEvent::Granted {
            stream: StreamKey(2),
            ..
        }
    ));
    stop(shutdown, task).await;
}

#[tokio::test]
async fn an_endpoint_that_goes_away_frees_the_floor_at_once() {
    let Running {
        mut links,
        shutdown,
        task,
        ..
    } = start(settings(), &["test.a", "test.b"]);
    take_floor(&mut links, 0, 1, "alice").await;
    // The endpoint task ended: its link is dropped.
    drop(links.remove(0));
    assert!(matches!(
        next_floor(&mut links[0]).await,
        FloorEvent::Released {
            reason: ReleaseReason::EndpointGone,
            ..
        }
    ));
    assert_eq!(next_floor(&mut links[0]).await, FloorEvent::Idle);
    stop(shutdown, task).await;
}

#[tokio::test]
async fn shutdown_tells_every_endpoint_the_floor_is_released() {
    let Running {
        mut links,
        shutdown,
        task,
        ..
    } = start(settings(), &["test.a", "test.b"]);
    let tx = take_floor(&mut links, 0, 1, "alice").await;
    stop(shutdown, task).await;
    // A keyed radio must hear this before its link closes.
    for link in &mut links {
        assert_eq!(
            next_floor(link).await,
            FloorEvent::Released {
                tx,
                reason: ReleaseReason::Shutdown
            }
        );
    }
}

#[tokio::test]
async fn a_release_never_overtakes_the_last_frames_of_its_transmission() {
    let Running {
        mut links,
        shutdown,
        task,
        ..
    } = start(settings(), &["test.a", "test.b"]);
    for round in 0..20u8 {
        let tx = take_floor(&mut links, 0, 1, "alice").await;
        // The listener reads nothing until the talk is over, so everything the hub
        // sent it is waiting on both channels at once.
        for seq in 0..40u32 {
            links[0]
                .audio(StreamKey(1), AudioFrame::opus(seq, vec![round]))
                .expect("hub running");
        }
        links[0].talk_end(StreamKey(1)).await.expect("hub running");
        assert_eq!(
            next_floor(&mut links[0]).await,
            FloorEvent::Released {
                tx,
                reason: ReleaseReason::TalkerDone
            }
        );
        assert_eq!(next_floor(&mut links[0]).await, FloorEvent::Idle);
        for seq in 0..40u32 {
            match next(&mut links[1]).await {
                Downlink::Audio(frame) => {
                    assert_eq!((frame.tx, frame.frame.seq), (tx, seq));
                }
                other => panic!("round {round}: frame {seq} overtaken by {other:?}"),
            }
        }
        assert_eq!(
            next_floor(&mut links[1]).await,
            FloorEvent::Released {
                tx,
                reason: ReleaseReason::TalkerDone
            }
        );
        assert_eq!(next_floor(&mut links[1]).await, FloorEvent::Idle);
    }
    stop(shutdown, task).await;
}

#[tokio::test]
async fn a_decline_reaches_only_the_talkers_endpoint_and_leaves_the_floor_alone() {
    let Running {
        mut links,
        shutdown,
        task,
        ..
    } = start(settings(), &["test.a", "test.radio", "test.c"]);
    let tx = take_floor(&mut links, 0, 7, "alice").await;
    links[1]
        .decline(tx, "alice is not in transmit_allow")
        .await
        .expect("hub running");
    assert_eq!(
        next_floor(&mut links[0]).await,
        FloorEvent::Declined {
            tx,
            stream: StreamKey(7),
            by: EndpointId::new("test.radio"),
            reason: "alice is not in transmit_allow".into(),
        }
    );
    // The transmission goes on for everyone, the declining endpoint included.
    links[0]
        .audio(StreamKey(7), AudioFrame::opus(0, vec![1, 2, 3]))
        .expect("hub running");
    for link in &mut links[1..] {
        match next(link).await {
            Downlink::Audio(frame) => assert_eq!(frame.tx, tx),
            other => panic!("{} expected audio, got {other:?}", link.id()),
        }
    }
    links[0].talk_end(StreamKey(7)).await.expect("hub running");
    // A decline that arrives after the release has nobody to tell: the next thing
    // the talker's endpoint hears is the release, then the idle floor.
    links[1].decline(tx, "too late").await.expect("hub running");
    assert_eq!(
        next_floor(&mut links[0]).await,
        FloorEvent::Released {
            tx,
            reason: ReleaseReason::TalkerDone
        }
    );
    assert_eq!(next_floor(&mut links[0]).await, FloorEvent::Idle);
    for link in &mut links[1..] {
        assert!(matches!(
            next_floor(link).await,
            FloorEvent::Released { .. }
        ));
        assert_eq!(next_floor(link).await, FloorEvent::Idle);
    }
    // take_floor checks that alice's endpoint hears `Taken` next, not the decline.
    let second = take_floor(&mut links, 2, 1, "carol").await;
    assert_ne!(second, tx);
    stop(shutdown, task).await;
}

// ---- issue 14.8: endpoint tasks under supervision ----

/// What the test tells a [`Probe`] to do.
enum Order {
    Talk(u64),
    Audio(u64, u32),
    End(u64),
    Panic(&'static str),
}

/// The test's handle on one instance of a [`Probe`].
struct ProbeHandle {
    orders: tokio::sync::mpsc::UnboundedSender<Order>,
    heard: tokio::sync::mpsc::UnboundedReceiver<Downlink>,
}

impl ProbeHandle {
    fn order(&self, order: Order) {
        self.orders.send(order).expect("probe instance running");
    }

    async fn heard(&mut self) -> Downlink {
        timeout(WAIT, self.heard.recv())
            .await
            .expect("the probe heard something in time")
            .expect("probe instance running")
    }
}

/// An endpoint whose every instance is driven by the test: it reports connected,
/// passes on all it hears, talks when told — and panics when told, as a bug would.
struct Probe {
    id: EndpointId,
    orders: tokio::sync::mpsc::UnboundedReceiver<Order>,
    heard: tokio::sync::mpsc::UnboundedSender<Downlink>,
}

impl walkie_endpoint::Endpoint for Probe {
    fn id(&self) -> &EndpointId {
        &self.id
    }

    fn run(
        self: Box<Self>,
        mut link: HubLink,
        shutdown: CancellationToken,
    ) -> walkie_endpoint::EndpointFuture {
        Box::pin(async move {
            let Probe {
                mut orders, heard, ..
            } = *self;
            link.report_connected();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    down = link.recv() => match down {
                        Ok(down) => { let _ = heard.send(down); }
                        Err(_) => return Ok(()),
                    },
                    order = orders.recv() => match order {
                        Some(Order::Talk(stream)) => {
                            let _ = request(&link, stream, "probe", Priority::Normal).await;
                        }
                        Some(Order::Audio(stream, seq)) => {
                            let _ = link.audio(StreamKey(stream), AudioFrame::opus(seq, vec![0xf8, 0xff, 0xfe]));
                        }
                        Some(Order::End(stream)) => {
                            let _ = link.talk_end(StreamKey(stream)).await;
                        }
                        Some(Order::Panic(why)) => panic!("{why}"),
                        None => return Ok(()),
                    },
                }
            }
        })
    }
}

#[tokio::test]
async fn a_panicking_endpoint_is_shown_disconnected_and_restarted_on_a_fresh_link() {
    use std::sync::atomic::{AtomicU32, Ordering};
    use walkie_bridge::hub::{supervise, Backoff, Supervised};
    use walkie_endpoint::{ConnectionState, Endpoint};

    let (instances_tx, mut instances) = tokio::sync::mpsc::unbounded_channel();
    let built = std::sync::Arc::new(AtomicU32::new(0));
    let counter = std::sync::Arc::clone(&built);
    let factory = move || -> Result<Box<dyn Endpoint>, String> {
        counter.fetch_add(1, Ordering::Relaxed);
        let (orders_tx, orders) = tokio::sync::mpsc::unbounded_channel();
        let (heard, heard_rx) = tokio::sync::mpsc::unbounded_channel();
        let _ = instances_tx.send(ProbeHandle {
            orders: orders_tx,
            heard: heard_rx,
        });
        Ok(Box::new(Probe {
            id: EndpointId::new("test.probe"),
            orders,
            heard,
        }))
    };

    let mut hub = ChannelHub::new("test", settings());
    let mut other = hub
        .attach(EndpointId::new("test.other"), Capabilities::default())
        .expect("attach");
    let first = factory().expect("build");
    let link = hub
        .attach(first.id().clone(), first.capabilities())
        .expect("attach");
    let observer = hub.observer();
    let attacher = hub.attacher();
    let health = link.health();
    let hub_stop = CancellationToken::new();
    let hub_task = tokio::spawn(hub.run(hub_stop.clone()));
    let endpoints_stop = CancellationToken::new();
    let backoff = Backoff {
        first: Duration::from_millis(300),
        cap: Duration::from_secs(2),
        stable: Duration::from_secs(60),
    };
    let supervisor = tokio::spawn(supervise(
        Supervised {
            endpoint: first,
            link,
            restart: Some(Box::new(factory)),
        },
        attacher,
        backoff,
        endpoints_stop.clone(),
    ));
    let row = |observer: &walkie_bridge::hub::HubObserver| {
        observer
            .endpoints
            .iter()
            .find(|e| e.id.as_str() == "test.probe")
            .map(|e| std::sync::Arc::clone(&e.health))
            .expect("the probe has a /status row")
    };
    let wait_state = |state: ConnectionState| {
        let health = row(&observer);
        async move {
            if timeout(WAIT, health.wait_until(|h| h.state() == state))
                .await
                .is_err()
            {
                panic!(
                    "the probe shows {} ({:?}), not {state}, {:?} after its panic",
                    health.state(),
                    health.reason(),
                    WAIT
                );
            }
        }
    };

    // The first instance takes the floor, then panics holding it.
    let mut probe = instances.recv().await.expect("first instance");
    wait_state(ConnectionState::Connected).await;
    probe.order(Order::Talk(1));
    let held = loop {
        if let Downlink::Floor(FloorEvent::Granted { tx, .. }) = probe.heard().await {
            break tx;
        }
    };
    assert!(matches!(next_floor(&mut other).await, FloorEvent::Taken { tx, .. } if tx == held));
    let panicked_at = tokio::time::Instant::now();
    probe.order(Order::Panic("injected: a bug in the probe"));
    // The floor it held is freed at once.
    match next_floor(&mut other).await {
        FloorEvent::Released { tx, reason } => {
            assert_eq!(tx, held);
            assert_eq!(reason, ReleaseReason::EndpointGone);
        }
        other => panic!("expected the probe's floor released, got {other:?}"),
    }
    // /status shows it disconnected, and why.
    wait_state(ConnectionState::Disconnected).await;
    let reason = row(&observer).reason().unwrap_or_default();
    println!("/status after the panic: {reason}");
    assert!(reason.contains("injected: a bug in the probe"), "{reason}");

    // Restarted after the backoff, on a fresh link, in the same /status row.
    let mut probe = timeout(WAIT, instances.recv())
        .await
        .expect("restarted in time")
        .expect("second instance");
    wait_state(ConnectionState::Connected).await;
    let restarted_after = panicked_at.elapsed();
    println!("restarted {restarted_after:?} after the panic (backoff 300 ms)");
    assert!(restarted_after >= Duration::from_millis(300));
    assert_eq!(built.load(Ordering::Relaxed), 2, "built once more");
    assert_eq!(health.restarts(), 1);
    assert_eq!(observer.endpoints.len(), 2, "one row per endpoint");
    assert!(std::sync::Arc::ptr_eq(&row(&observer), &health));

    // The new instance works both ways: it hears the channel...
    request(&other, 1, "alice", Priority::Normal).await;
    let tx = loop {
        match next_floor(&mut other).await {
            FloorEvent::Granted { tx, .. } => break tx,
            FloorEvent::Idle => {}
            event => panic!("alice expected the floor, got {event:?}"),
        }
    };
    other
        .audio(StreamKey(1), AudioFrame::opus(0, vec![0xf8, 0xff, 0xfe]))
        .expect("hub");
    let mut heard_audio = false;
    while !heard_audio {
        match probe.heard().await {
            Downlink::Audio(frame) => heard_audio = frame.tx == tx,
            Downlink::Floor(_) => {}
        }
    }
    other.talk_end(StreamKey(1)).await.expect("hub");
    // ...and talks on it.
    probe.order(Order::Talk(2));
    let granted = loop {
        if let Downlink::Floor(FloorEvent::Granted { tx, .. }) = probe.heard().await {
            break tx;
        }
    };
    probe.order(Order::Audio(2, 0));
    loop {
        match next(&mut other).await {
            Downlink::Audio(frame) if frame.tx == granted => break,
            _ => {}
        }
    }
    probe.order(Order::End(2));

    endpoints_stop.cancel();
    timeout(WAIT, supervisor)
        .await
        .expect("supervisor stops")
        .expect("supervisor did not panic");
    stop(hub_stop, hub_task).await;
}

#[tokio::test]
async fn a_stale_gone_notice_does_not_detach_the_endpoint_attached_again() {
    let mut hub = ChannelHub::new("test", settings());
    let mut other = hub
        .attach(EndpointId::new("test.other"), Capabilities::default())
        .expect("attach");
    let old = hub
        .attach(EndpointId::new("test.probe"), Capabilities::default())
        .expect("attach");
    let attacher = hub.attacher();
    let stop_hub = CancellationToken::new();
    let task = tokio::spawn(hub.run(stop_hub.clone()));
    // Still attached: a second link under the same id is refused.
    assert!(attacher
        .reattach(EndpointId::new("test.probe"), Capabilities::default())
        .await
        .is_err());
    drop(old);
    let mut again = attacher
        .reattach(EndpointId::new("test.probe"), Capabilities::default())
        .await
        .expect("attached again once the old link is gone");
    // Whichever came first, the old link's notice must not detach the new one.
    take_floor(std::slice::from_mut(&mut again), 0, 1, "probe").await;
    assert!(matches!(
        next_floor(&mut other).await,
        FloorEvent::Taken { .. }
    ));
    // Unknown endpoints cannot attach to a running hub.
    assert!(attacher
        .reattach(EndpointId::new("test.stranger"), Capabilities::default())
        .await
        .is_err());
    stop(stop_hub, task).await;
}

/// An endpoint that panics as soon as it runs.
struct Crasher(EndpointId);

impl walkie_endpoint::Endpoint for Crasher {
    fn id(&self) -> &EndpointId {
        &self.0
    }

    fn run(
        self: Box<Self>,
        _link: HubLink,
        _shutdown: CancellationToken,
    ) -> walkie_endpoint::EndpointFuture {
        // resume_unwind skips the panic hook: with RUST_BACKTRACE set, the hook's
        // first backtrace (symbolised from debug info) can take longer than the
        // backoff this test measures, and only once.
        Box::pin(async move { std::panic::resume_unwind(Box::new("injected: crashes on start")) })
    }
}

#[tokio::test]
async fn an_endpoint_that_keeps_panicking_is_restarted_with_doubling_backoff_up_to_the_cap() {
    use std::sync::{Arc, Mutex};
    use walkie_bridge::hub::{supervise, Backoff, Supervised};
    use walkie_endpoint::{ConnectionState, Endpoint};

    let builds: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let recorded = Arc::clone(&builds);
    let factory = move || -> Result<Box<dyn Endpoint>, String> {
        let mut builds = recorded.lock().unwrap_or_else(|e| e.into_inner());
        builds.push(tokio::time::Instant::now());
        // The third rebuild fails (its section no longer builds): retried too.
        if builds.len() == 3 {
            return Err("injected: cannot build".into());
        }
        Ok(Box::new(Crasher(EndpointId::new("test.crasher"))))
    };
    let mut hub = ChannelHub::new("test", settings());
    let first = Box::new(Crasher(EndpointId::new("test.crasher")));
    let link = hub
        .attach(first.id().clone(), first.capabilities())
        .expect("attach");
    let health = link.health();
    let attacher = hub.attacher();
    let hub_stop = CancellationToken::new();
    let hub_task = tokio::spawn(hub.run(hub_stop.clone()));
    let endpoints_stop = CancellationToken::new();
    let started = tokio::time::Instant::now();
    let supervisor = tokio::spawn(supervise(
        Supervised {
            endpoint: first,
            link,
            restart: Some(Box::new(factory)),
        },
        attacher,
        Backoff {
            first: Duration::from_millis(100),
            cap: Duration::from_millis(400),
            stable: Duration::from_secs(60),
        },
        endpoints_stop.clone(),
    ));
    // Four restarts: five builds, one of which failed.
    timeout(WAIT, health.wait_until(|h| h.restarts() >= 4))
        .await
        .expect("restarted too rarely");
    endpoints_stop.cancel();
    timeout(WAIT, supervisor)
        .await
        .expect("supervisor stops during its backoff")
        .expect("supervisor did not panic");
    let builds = builds.lock().map(|b| b.clone()).unwrap_or_default();
    let mut previous = started;
    let gaps: Vec<Duration> = builds
        .iter()
        .map(|t| {
            let gap = t.duration_since(previous);
            previous = *t;
            gap
        })
        .collect();
    println!("rebuilt after {gaps:?}");
    for (gap, expected) in gaps.iter().zip([100u64, 200, 400, 400, 400]) {
        let expected = Duration::from_millis(expected);
        assert!(
            *gap >= expected && *gap < expected + Duration::from_millis(250),
            "rebuilt after {gap:?}, backoff {expected:?}: {gaps:?}"
        );
    }
    assert_eq!(builds.len(), 5, "{gaps:?}");
    assert_eq!(health.restarts(), 4);
    assert_eq!(health.state(), ConnectionState::Disconnected);
    stop(hub_stop, hub_task).await;
}
