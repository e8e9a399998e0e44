//! The Mumble endpoint on a real Mumble server (murmurd 1.3.4 and mumble-server 1.5), with pymumble clients as the Mumble users
//! and a channel hub with a test endpoint as "everyone else".

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, FloorSettings, HubStats};
use walkie_endpoint::audio::{frames_of, OpusDecoder, OpusEncoder};
use walkie_endpoint::{
    AudioFrame, Capabilities, Downlink, Endpoint, EndpointId, FloorEvent, HubLink, Priority,
    StreamKey, TalkKind, Talker,
};
use walkie_harness::{on_every_mumble_server, MumbleServer, MumbleTestClient, Murmur};
use walkie_mumble::{
    ConnectConfig, Connection, MumbleEndpoint, MumbleEndpointConfig, TransportMode,
};

const WAIT: Duration = Duration::from_secs(30);

struct Bridge {
    murmur: Murmur,
    listener: HubLink,
    stats: std::sync::Arc<HubStats>,
    shutdown: CancellationToken,
    hub: tokio::task::JoinHandle<()>,
    endpoint: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
}

fn speech_wav(dir: &std::path::Path) -> (PathBuf, Vec<i16>) {
    let speech = common::speech(48_000);
    let path = dir.join("speech.wav");
    common::write_wav(&path, &speech, 48_000);
    (path, speech)
}

async fn start_bridge(server: MumbleServer) -> Bridge {
    start_bridge_on(Murmur::builder().server(server)).await
}

async fn start_bridge_on(murmur: walkie_harness::MurmurBuilder) -> Bridge {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let murmur = murmur
        .channels(&["Ops"])
        .start()
        .await
        .expect("murmurd starts");
    let mut connect = ConnectConfig::new(murmur.address(), "walkie", "Ops");
    connect.accept_invalid_cert = true;
    connect.transport = TransportMode::Auto;
    let endpoint = MumbleEndpoint::new(
        EndpointId::new("mumble.ops"),
        MumbleEndpointConfig {
            connect,
            announce_talker: true,
            idle_release: Duration::from_millis(1500),
            busy_notice_interval: Duration::from_secs(10),
            reconnect_cap: Duration::from_secs(30),
        },
    );
    let mut hub = ChannelHub::new("ops", FloorSettings::default());
    let mumble_link = hub
        .attach(endpoint.id().clone(), endpoint.capabilities())
        .expect("attach");
    let listener = hub
        .attach(EndpointId::new("test.radio"), Capabilities::default())
        .expect("attach");
    let stats = hub.stats();
    let shutdown = CancellationToken::new();
    let hub_task = tokio::spawn(hub.run(shutdown.clone()));
    let token = shutdown.clone();
    let endpoint_task = tokio::spawn(async move {
        Box::new(endpoint)
            .run(mumble_link, token)
            .await
            .expect("endpoint ends cleanly");
    });
    Bridge {
        murmur,
        listener,
        stats,
        shutdown,
        hub: hub_task,
        endpoint: endpoint_task,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

impl Bridge {
    /// A pymumble user in Ops who has seen the bridge's bot arrive.
    async fn user(&self, name: &str) -> MumbleTestClient {
        let client = MumbleTestClient::join(&self.murmur, name, "Ops")
            .await
            .expect("pymumble joins");
        client
            .wait_for_users(|users| users.iter().any(|u| u == "walkie"), WAIT)
            .await
            .expect("the bridge's bot is in Ops");
        client
    }

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

/// On mumble-server 1.5, that the bridge's bot announced 1.5.0 (so the server
/// speaks protobuf voice with it) and pymumble 1.2.4 (legacy voice): audio that
/// crossed between them was translated by the real server, so the bridge's
/// protobuf voice is what that server parses and sends. murmurd 1.3 knows only
/// the legacy format.
fn assert_voice_formats(murmur: &Murmur) {
    let versions = murmur.client_versions();
    let bot = versions
        .iter()
        .find(|(_, rest)| rest.contains("walkie-bridge"))
        .unwrap_or_else(|| panic!("the bot's version is not in the log: {versions:?}"));
    let pymumble = versions
        .iter()
        .find(|(_, rest)| rest.contains("PyMumble"))
        .unwrap_or_else(|| panic!("pymumble's version is not in the log: {versions:?}"));
    match murmur.server() {
        MumbleServer::Mumble1_5 => {
            assert_eq!(bot.0, "1.5.0", "{versions:?}");
            assert!(pymumble.0.starts_with("1.2."), "{versions:?}");
        }
        MumbleServer::Murmur1_3 => {
            // murmurd 1.3 logs the version too; the bridge announces 1.3.4 to it.
            assert_eq!(bot.0, "1.3.4", "{versions:?}");
        }
    }
}

/// Waits until the hub grants the listener's talk.
async fn wait_granted(listener: &mut HubLink) {
    loop {
        match tokio::time::timeout(WAIT, listener.recv()).await {
            Ok(Ok(Downlink::Floor(FloorEvent::Granted { .. }))) => return,
            Ok(Ok(_)) => continue,
            other => panic!("no grant: {other:?}"),
        }
    }
}

/// The bot's comment as `observer` sees it, once it contains `text`.
async fn bot_comment_containing(observer: &walkie_mumble::ConnectionHandle, text: &str) -> String {
    let bot = observer.wait_for_user(|u| {
        u.name == "walkie" && u.comment.as_deref().is_some_and(|c| c.contains(text))
    });
    tokio::time::timeout(WAIT, bot)
        .await
        .unwrap_or_else(|_| panic!("the bot's comment never contained {text:?}"))
        .expect("the observer stays connected")
        .comment
        .unwrap_or_default()
}

/// Everything the listener hears of one transmission: talker, frames, PCM.
async fn hear_one(link: &mut HubLink) -> (Talker, u64, Vec<i16>) {
    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut talker = None;
    let mut frames = 0;
    let mut pcm = Vec::new();
    loop {
        let down = tokio::time::timeout(WAIT, link.recv())
            .await
            .expect("the transmission arrives in time")
            .expect("hub running");
        match down {
            Downlink::Floor(FloorEvent::Taken { talker: t, .. }) => talker = Some(t),
            Downlink::Audio(frame) => {
                frames += 1;
                pcm.extend(decoder.decode(&frame.frame.opus).expect("valid Opus"));
            }
            Downlink::Floor(FloorEvent::Released { .. }) if talker.is_some() => {
                return (talker.expect("taken before released"), frames, pcm);
            }
            Downlink::Floor(_) => {}
        }
    }
}

on_every_mumble_server!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    speech_from_a_mumble_user_reaches_the_channel_intact,
    the_channels_audio_reaches_mumble_users_intact,
    a_second_mumble_talker_is_not_forwarded_and_told_who_holds_the_floor,
    the_bridge_is_back_in_its_channel_within_35_s_of_a_murmurd_restart,
    a_mumble_transmission_appears_in_the_room_as_a_voice_message,
    a_sigkilled_bridge_posts_its_recording_exactly_once_after_restart,
    the_bots_comment_names_the_talker_on_the_other_side,
    names_from_other_systems_reach_mumble_as_text_not_html,
    a_busy_notice_and_comment_fit_the_servers_message_limit,
    an_mqtt_devices_label_reaches_mumble_as_text_not_html,
);

async fn speech_from_a_mumble_user_reaches_the_channel_intact(server: MumbleServer) {
    let mut bridge = start_bridge(server).await;
    let alice = bridge.user("alice").await;
    let (wav, speech) = speech_wav(bridge.dir.path());
    let (sent, heard) = tokio::join!(alice.send_wav(&wav, true), hear_one(&mut bridge.listener));
    let sent = sent.expect("alice talks");
    let (talker, frames, pcm) = heard;
    assert_eq!(talker.name, "alice");
    assert_eq!(talker.display_name, "alice (Mumble)");
    let spoken_ms = speech.len() as u64 * 1000 / 48_000;
    let heard_ms = pcm.len() as u64 * 1000 / 48_000;
    eprintln!(
        "sent {} frames ({:.2} s), heard {frames} frames = {heard_ms} ms",
        sent.frames, sent.seconds
    );
    assert!(
        heard_ms.abs_diff(spoken_ms) <= 60,
        "heard {heard_ms} ms of {spoken_ms} ms"
    );
    let level = common::energy_db(&pcm) - common::energy_db(&speech);
    assert!(level.abs() < 2.0, "level changed by {level:.2} dB");
    let (_, correlation) = common::best_lag(&speech, &pcm, -2000..=2000);
    eprintln!("correlation {correlation:.3}, level {level:+.2} dB");
    assert!(
        correlation > 0.85,
        "what arrived is not what alice said: {correlation:.3}"
    );
    assert_voice_formats(&bridge.murmur);
    bridge.stop().await;
}

async fn the_channels_audio_reaches_mumble_users_intact(server: MumbleServer) {
    let mut bridge = start_bridge(server).await;
    let bob = bridge.user("bob").await;
    let speech = common::speech(48_000);
    let mut encoder = OpusEncoder::new().expect("encoder");
    let packets: Vec<_> = frames_of(&speech)
        .map(|f| encoder.encode(&f).expect("encode"))
        .collect();
    bob.record_start().await.expect("record");
    let stream = StreamKey(1);
    bridge
        .listener
        .talk_start(
            stream,
            Talker::new("kilo", "kilo (Radio)"),
            Priority::Normal,
            TalkKind::Live,
        )
        .await
        .expect("hub running");
    wait_granted(&mut bridge.listener).await;
    // The radio side speaks in real time, as a radio does.
    let mut pace = tokio::time::interval(Duration::from_millis(20));
    for (seq, packet) in packets.iter().enumerate() {
        pace.tick().await;
        bridge
            .listener
            .audio(stream, AudioFrame::opus(seq as u32, packet.clone()))
            .expect("hub running");
    }
    bridge.listener.talk_end(stream).await.expect("hub running");
    bob.wait_for_event(
        |e| matches!(e, walkie_harness::MumbleEvent::VoiceEnd { user, .. } if user == "walkie"),
        WAIT,
    )
    .await
    .expect("bob hears the end of the transmission");
    let recording = bob.record_stop(bridge.dir.path()).await.expect("recording");
    let stream = recording.get("walkie").expect("bob heard the bot");
    assert!(
        stream.terminators >= 1,
        "the bot never ended its transmission"
    );
    let (pcm, rate) = common::read_wav(&stream.path);
    assert_eq!(rate, 48_000);
    let heard_ms = pcm.len() as u64 * 1000 / 48_000;
    let spoken_ms = speech.len() as u64 * 1000 / 48_000;
    assert!(
        heard_ms.abs_diff(spoken_ms) <= 60,
        "bob heard {heard_ms} ms of {spoken_ms} ms"
    );
    let (_, correlation) = common::best_lag(&speech, &pcm, -2000..=2000);
    eprintln!("bob: {heard_ms} ms, correlation {correlation:.3}");
    assert!(
        correlation > 0.85,
        "bob heard something else: {correlation:.3}"
    );
    assert_voice_formats(&bridge.murmur);
    bridge.stop().await;
}

async fn a_second_mumble_talker_is_not_forwarded_and_told_who_holds_the_floor(
    server: MumbleServer,
) {
    let mut bridge = start_bridge(server).await;
    let alice = bridge.user("alice").await;
    let carol = bridge.user("carol").await;
    let (wav, speech) = speech_wav(bridge.dir.path());
    let stats = bridge.stats.clone();
    // Alice starts; Carol starts talking a moment later, over her.
    let alice_talks = alice.send_wav(&wav, true);
    let carol_talks = async {
        // Carol presses her button once alice holds the floor (polled: the hub's
        // counters are the only place this test can see the grant without taking
        // the listener's events away from `hear_one`).
        let deadline = Instant::now() + WAIT;
        while stats.grants.load(Ordering::Relaxed) == 0 {
            assert!(Instant::now() < deadline, "alice was never granted");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        carol.send_wav(&wav, true).await
    };
    let busy = carol.wait_for_text(|t| t.message.contains("alice"), WAIT);
    let (alice_sent, carol_sent, heard, busy) = tokio::join!(
        alice_talks,
        carol_talks,
        hear_one(&mut bridge.listener),
        busy
    );
    alice_sent.expect("alice talks");
    carol_sent.expect("carol talks");
    let (talker, _, pcm) = heard;
    assert_eq!(talker.name, "alice", "the first talker holds the floor");
    let (_, correlation) = common::best_lag(&speech, &pcm, -2000..=2000);
    assert!(
        correlation > 0.85,
        "alice's speech was mixed or cut: {correlation:.3}"
    );
    let busy = busy.expect("carol is told who holds the floor");
    assert!(
        busy.message.contains("alice (Mumble) is talking"),
        "{}",
        busy.message
    );
    assert!(
        stats.frames_refused.load(Ordering::Relaxed) > 100,
        "carol's frames were not refused"
    );
    // Nothing of carol's reached the channel after alice either.
    let after = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match bridge.listener.recv().await {
                Ok(Downlink::Floor(FloorEvent::Taken { talker, .. })) => return Some(talker),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    })
    .await;
    if let Ok(Some(talker)) = after {
        // Carol's queued request may be granted once alice is done, but only for
        // what she still says then — never mixed into alice's transmission.
        assert_eq!(talker.name, "carol");
    }
    bridge.stop().await;
}

async fn the_bridge_is_back_in_its_channel_within_35_s_of_a_murmurd_restart(server: MumbleServer) {
    let mut bridge = start_bridge(server).await;
    let alice = bridge.user("alice").await;
    let (wav, _) = speech_wav(bridge.dir.path());
    // murmurd dies while alice talks: her talk must end on the hub at once (so the
    // floor is free and the recording is archived up to the cut), not hang.
    let listener = &mut bridge.listener;
    let murmur = &mut bridge.murmur;
    let cut = async {
        let mut frames = 0;
        loop {
            let down = tokio::time::timeout(WAIT, listener.recv())
                .await
                .expect("alice's talk arrives")
                .expect("hub running");
            match down {
                Downlink::Audio(_) => {
                    frames += 1;
                    if frames == 50 {
                        murmur.kill().expect("kill murmurd");
                    }
                }
                Downlink::Floor(FloorEvent::Released { reason, .. }) if frames >= 50 => {
                    return (frames, reason);
                }
                Downlink::Floor(_) => {}
            }
        }
    };
    let (_, (frames, reason)) = tokio::join!(alice.send_wav(&wav, true), cut);
    eprintln!("talk cut after {frames} frames: {reason}");
    assert!(
        frames < 300,
        "the talk went on after murmurd died ({frames} frames)"
    );
    drop(alice);
    let killed = Instant::now();
    bridge.murmur.start_again().await.expect("murmurd back");
    let watcher = MumbleTestClient::join(&bridge.murmur, "watcher", "Ops")
        .await
        .expect("watcher joins");
    watcher
        .wait_for_users(
            |users| users.iter().any(|u| u == "walkie"),
            Duration::from_secs(40),
        )
        .await
        .expect("the bot comes back");
    let back = killed.elapsed();
    eprintln!("bridge back in Ops {back:?} after murmurd was killed");
    assert!(back <= Duration::from_secs(35), "back only after {back:?}");
    bridge.stop().await;
}

#[path = "bridge_common/mod.rs"]
mod bridge_common;

async fn a_mumble_transmission_appears_in_the_room_as_a_voice_message(server: MumbleServer) {
    let setup = bridge_common::setup().await;
    let murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops"])
        .start()
        .await
        .expect("murmurd starts");
    let config = setup.config_with_mumble(&murmur.address());
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(walkie_bridge::daemon::run(config, shutdown.clone()));
    let alice_mumble = MumbleTestClient::join(&murmur, "alice", "Ops")
        .await
        .expect("pymumble joins");
    alice_mumble
        .wait_for_users(|users| users.iter().any(|u| u == "walkie"), WAIT)
        .await
        .expect("the bridge's bot is in Ops");
    let dir = tempfile::tempdir().expect("temp dir");
    let (wav, speech) = speech_wav(dir.path());
    alice_mumble
        .send_wav(&wav, true)
        .await
        .expect("alice talks");

    let matrix = setup.synapse.client(&setup.alice);
    let puppet = format!("@walkie_mumble_alice:{}", bridge_common::SERVER);
    let message = matrix
        .sync_until(|e| bridge_common::is_voice_message_from(e, &puppet), WAIT)
        .await
        .expect("alice's transmission is archived in the room");
    let duration = message.content()["info"]["duration"]
        .as_u64()
        .expect("duration");
    let spoken_ms = speech.len() as u64 * 1000 / 48_000;
    assert!(
        duration.abs_diff(spoken_ms) <= 60,
        "archived {duration} ms of {spoken_ms} ms"
    );
    let ogg = matrix
        .download(message.content()["url"].as_str().expect("url"))
        .await
        .expect("download");
    let decoded = walkie_endpoint::audio::decode_ogg_opus(&ogg).expect("Ogg Opus");
    let (_, correlation) = common::best_lag(&speech, &decoded.pcm, -2000..=2000);
    assert!(
        correlation > 0.85,
        "archived audio differs: {correlation:.3}"
    );
    assert_eq!(
        matrix
            .displayname(&puppet)
            .await
            .expect("profile")
            .as_deref(),
        Some("alice (Mumble)")
    );
    shutdown.cancel();
    tokio::time::timeout(WAIT, daemon)
        .await
        .expect("daemon stops")
        .expect("no panic")
        .expect("daemon ends cleanly");
}

/// The real binary, SIGKILLed with a recording in its outbox, started again.
async fn a_sigkilled_bridge_posts_its_recording_exactly_once_after_restart(server: MumbleServer) {
    let mut setup = bridge_common::setup().await;
    let murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops"])
        .start()
        .await
        .expect("murmurd starts");
    let config_path = setup.dir.path().join("walkie.toml");
    std::fs::write(
        &config_path,
        bridge_common::config_text_with(
            &setup.synapse.url(),
            setup.listen,
            setup.dir.path(),
            &murmur.address(),
        ),
    )
    .expect("config written");
    let start = |life: &str| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
        command.args(["run", "-c"]).arg(&config_path);
        command.env("RUST_LOG", "walkie_bridge=debug,info");
        walkie_harness::ChildGuard::spawn(
            format!("walkie-bridge ({life})"),
            command,
            setup.dir.path().join(format!("bridge-{life}.log")),
        )
        .expect("walkie-bridge starts")
    };
    let mut first = start("first");
    let alice = MumbleTestClient::join(&murmur, "alice", "Ops")
        .await
        .expect("pymumble joins");
    alice
        .wait_for_users(|users| users.iter().any(|u| u == "walkie"), WAIT)
        .await
        .expect("the bridge's bot is in Ops");

    // With the homeserver down, the recording waits in the outbox.
    setup.synapse.stop().await.expect("Synapse stops");
    let dir = tempfile::tempdir().expect("temp dir");
    let (wav, _) = speech_wav(dir.path());
    alice.send_wav(&wav, true).await.expect("alice talks");
    let store = walkie_bridge::store::Store::connect(&format!(
        "sqlite://{}",
        setup.dir.path().join("walkie.db").display()
    ))
    .await
    .expect("store");
    let deadline = Instant::now() + WAIT;
    while store.outbox_depth().await.expect("depth") < 1 {
        assert!(
            Instant::now() < deadline,
            "the recording never reached the outbox: {}",
            first.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill().expect("SIGKILL");

    setup.synapse.start_again().await.expect("Synapse back");
    let _second = start("second");
    let matrix = setup.synapse.client(&setup.alice);
    let puppet = format!("@walkie_mumble_alice:{}", bridge_common::SERVER);
    matrix
        .sync_until(
            |e| bridge_common::is_voice_message_from(e, &puppet),
            Duration::from_secs(60),
        )
        .await
        .expect("the recording is posted after the restart");
    let deadline = Instant::now() + WAIT;
    while store.outbox_depth().await.expect("depth") > 0 {
        assert!(Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posted = bridge_common::voice_messages(&matrix, &setup.room_id, &puppet).await;
    assert_eq!(posted.len(), 1, "posted {} times", posted.len());
}

async fn the_bots_comment_names_the_talker_on_the_other_side(server: MumbleServer) {
    let bridge = start_bridge(server).await;
    // A walkie-mumble client as the observer: pymumble does not expose comments.
    let mut observer = ConnectConfig::new(bridge.murmur.address(), "observer", "Ops");
    observer.accept_invalid_cert = true;
    let (observer, _events) = Connection::connect(observer).await.expect("observer joins");
    let comment_of_bot = |observer: &walkie_mumble::ConnectionHandle| {
        observer
            .users()
            .into_iter()
            .find(|u| u.name == "walkie")
            .and_then(|u| u.comment)
            .unwrap_or_default()
    };
    let stream = StreamKey(1);
    bridge
        .listener
        .talk_start(
            stream,
            Talker::new("kilo", "kilo (Radio)"),
            Priority::Normal,
            TalkKind::Live,
        )
        .await
        .expect("hub running");
    // Polled with a deadline: a comment change arrives as roster state, not as an event.
    let deadline = Instant::now() + WAIT;
    while !comment_of_bot(&observer).contains("kilo (Radio)") {
        assert!(
            Instant::now() < deadline,
            "comment never named the talker: {:?}",
            comment_of_bot(&observer)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bridge.listener.talk_end(stream).await.expect("hub running");
    let deadline = Instant::now() + WAIT;
    while !comment_of_bot(&observer).is_empty() {
        assert!(
            Instant::now() < deadline,
            "comment not cleared: {:?}",
            comment_of_bot(&observer)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    observer.disconnect().await;
    bridge.stop().await;
}

/// A name chosen on another system (a Matrix display name, an MQTT label) with
/// HTML in it. Mumble renders comments and text messages as HTML.
const HOSTILE: &str = r#"<b>Mallory</b> <a href="https://evil.example/">click</a> & co (Matrix)"#;
const HOSTILE_ESCAPED: &str =
    "&lt;b&gt;Mallory&lt;/b&gt; &lt;a href=&quot;https://evil.example/&quot;&gt;click&lt;/a&gt; &amp; co (Matrix)";

async fn names_from_other_systems_reach_mumble_as_text_not_html(server: MumbleServer) {
    let mut bridge = start_bridge(server).await;
    let mut observer = ConnectConfig::new(bridge.murmur.address(), "observer", "Ops");
    observer.accept_invalid_cert = true;
    let (observer, _events) = Connection::connect(observer).await.expect("observer joins");
    let carol = bridge.user("carol").await;
    let stream = StreamKey(1);
    bridge
        .listener
        .talk_start(
            stream,
            Talker::new("mallory", HOSTILE),
            Priority::Normal,
            TalkKind::Live,
        )
        .await
        .expect("hub running");
    wait_granted(&mut bridge.listener).await;
    // The bot's comment names the talker: as text.
    let comment = bot_comment_containing(&observer, "Mallory").await;
    assert!(
        comment.contains(HOSTILE_ESCAPED) && !comment.contains("<b>"),
        "the comment carries the name as HTML: {comment:?}"
    );
    // Carol talks over the holder and is told who holds the floor: as text.
    let (wav, _) = speech_wav(bridge.dir.path());
    let busy = carol.wait_for_text(|t| t.message.contains("Mallory"), WAIT);
    let (sent, busy) = tokio::join!(carol.send_wav(&wav, true), busy);
    sent.expect("carol talks");
    let busy = busy.expect("carol is told who holds the floor");
    println!("carol was told: {}", busy.message);
    assert!(
        busy.message.contains(HOSTILE_ESCAPED) && !busy.message.contains("<a "),
        "the busy notice carries the name as HTML: {:?}",
        busy.message
    );
    bridge.listener.talk_end(stream).await.expect("hub running");
    observer.disconnect().await;
    bridge.stop().await;
}

async fn an_mqtt_devices_label_reaches_mumble_as_text_not_html(server: MumbleServer) {
    use walkie_harness::{mqtt_publish, Mosquitto};
    use walkie_mqtt::{MqttEndpoint, MqttEndpointConfig};

    let murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops"])
        .start()
        .await
        .expect("murmurd starts");
    let broker = Mosquitto::builder()
        .start()
        .await
        .expect("mosquitto starts");
    let mut connect = ConnectConfig::new(murmur.address(), "walkie", "Ops");
    connect.accept_invalid_cert = true;
    let mumble = MumbleEndpoint::new(
        EndpointId::new("mumble.ops"),
        MumbleEndpointConfig {
            connect,
            announce_talker: true,
            idle_release: Duration::from_millis(1500),
            busy_notice_interval: Duration::from_secs(10),
            reconnect_cap: Duration::from_secs(30),
        },
    );
    let mqtt = MqttEndpoint::new(
        EndpointId::new("mqtt.lobby"),
        MqttEndpointConfig::from_url(&broker.url(), "walkie/lobby", "walkie-label-test")
            .expect("broker URL"),
    )
    .expect("valid config");
    let mut hub = ChannelHub::new("ops", FloorSettings::default());
    let mumble_link = hub
        .attach(mumble.id().clone(), mumble.capabilities())
        .expect("attach");
    let mqtt_link = hub
        .attach(mqtt.id().clone(), mqtt.capabilities())
        .expect("attach");
    let stats = hub.stats();
    let shutdown = CancellationToken::new();
    let hub_task = tokio::spawn(hub.run(shutdown.clone()));
    let token = shutdown.clone();
    let mumble_task = tokio::spawn(async move {
        Box::new(mumble)
            .run(mumble_link, token)
            .await
            .expect("mumble ends cleanly");
    });
    let token = shutdown.clone();
    let mqtt_task = tokio::spawn(async move {
        Box::new(mqtt)
            .run(mqtt_link, token)
            .await
            .expect("mqtt ends cleanly");
    });
    let mut observer = ConnectConfig::new(murmur.address(), "observer", "Ops");
    observer.accept_invalid_cert = true;
    let (observer, _events) = Connection::connect(observer).await.expect("observer joins");
    let comment_of_bot = || {
        observer
            .users()
            .into_iter()
            .find(|u| u.name == "walkie")
            .and_then(|u| u.comment)
            .unwrap_or_default()
    };
    let deadline = Instant::now() + WAIT;
    while observer.users().iter().all(|u| u.name != "walkie") {
        assert!(Instant::now() < deadline, "the bot never joined");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A device labels itself with HTML; any client on the prefix can.
    let start = br#"{"talker": "<img src=x onerror=alert(1)> <b>Door</b>"}"#;
    mqtt_publish(&broker, "walkie/lobby/in/door/start", start, 1, false)
        .await
        .expect("start");
    let deadline = Instant::now() + WAIT;
    while stats.grants.load(Ordering::Relaxed) == 0 || !comment_of_bot().contains("Door") {
        assert!(
            Instant::now() < deadline,
            "the bot's comment never named the device: {:?}",
            comment_of_bot()
        );
        // Audio keeps the device's talk alive (idle_release).
        let _ = mqtt_publish(
            &broker,
            "walkie/lobby/in/door/audio",
            &[0, 0, 0, 1, 0xf8, 0xff, 0xfe],
            0,
            false,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let comment = comment_of_bot();
    println!("the bot's comment: {comment}");
    assert!(
        comment.contains("&lt;img src=x onerror=alert(1)&gt; &lt;b&gt;Door&lt;/b&gt; (Intercom)")
            && !comment.contains("<img"),
        "the label reached Mumble as HTML: {comment:?}"
    );
    observer.disconnect().await;
    shutdown.cancel();
    for task in [hub_task, mumble_task, mqtt_task] {
        tokio::time::timeout(WAIT, task)
            .await
            .expect("stops")
            .expect("no panic");
    }
}

/// A server whose administrator set a short `textmessagelength` refuses longer
/// messages outright; the bot's notice and comment are cut to fit instead.
async fn a_busy_notice_and_comment_fit_the_servers_message_limit(server: MumbleServer) {
    const LIMIT: usize = 60;
    let mut bridge = start_bridge_on(
        Murmur::builder()
            .server(server)
            .config("textmessagelength", LIMIT.to_string()),
    )
    .await;
    let mut observer = ConnectConfig::new(bridge.murmur.address(), "observer", "Ops");
    observer.accept_invalid_cert = true;
    let (observer, _events) = Connection::connect(observer).await.expect("observer joins");
    let carol = bridge.user("carol").await;
    let stream = StreamKey(1);
    let long_name = format!("Kilo {} (Radio)", "Lima ".repeat(30));
    bridge
        .listener
        .talk_start(
            stream,
            Talker::new("kilo", long_name.clone()),
            Priority::Normal,
            TalkKind::Live,
        )
        .await
        .expect("hub running");
    wait_granted(&mut bridge.listener).await;
    let comment = bot_comment_containing(&observer, "Kilo").await;
    assert!(comment.encode_utf16().count() <= LIMIT, "{comment:?}");
    assert!(comment.ends_with('…'), "{comment:?}");

    let (wav, _) = speech_wav(bridge.dir.path());
    let busy = carol.wait_for_text(|t| t.message.contains("Kilo"), WAIT);
    let (sent, busy) = tokio::join!(carol.send_wav(&wav, true), busy);
    sent.expect("carol talks");
    let busy = busy.expect("carol is told who holds the floor, in a message that fits");
    println!("carol was told: {}", busy.message);
    assert!(
        busy.message.encode_utf16().count() <= LIMIT,
        "{:?}",
        busy.message
    );
    bridge.listener.talk_end(stream).await.expect("hub running");
    observer.disconnect().await;
    bridge.stop().await;
}
