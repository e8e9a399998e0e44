//! A running bridge for tests and benches: a real Synapse with the bridge's
//! registration, a room, and the daemon in-process with a test endpoint on the
//! channel. Included with `#[path]` by the tests and benches that need it.

#![allow(dead_code)]

use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;
use walkie_bridge::config::Config;
use walkie_bridge::daemon::Daemon;
use walkie_bridge::registration::Registration;
use walkie_endpoint::audio::{frames_of, OpusEncoder};
use walkie_endpoint::testkit::TestEndpoint;
use walkie_endpoint::{
    AudioFrame, Capabilities, Downlink, EndpointId, FloorEvent, HubLink, Priority, StreamKey,
    TalkKind, Talker,
};
use walkie_harness::{free_port, CreateRoom, Preset, Synapse, SynapseBuilder, TestUser};

use super::common;

pub const SERVER: &str = "walkie.test";
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Setup {
    pub synapse: Synapse,
    pub alice: TestUser,
    pub room_id: String,
    pub config: Config,
    pub dir: tempfile::TempDir,
    /// The appservice port the registration points at.
    pub listen: u16,
}

impl Setup {
    /// Registers `localpart` on the homeserver and joins them to the room.
    pub async fn member(&self, localpart: &str) -> TestUser {
        let user = self
            .synapse
            .register_user(localpart, false)
            .await
            .unwrap_or_else(|e| panic!("register {localpart}: {e}"));
        self.synapse
            .client(&user)
            .join(&self.room_id)
            .await
            .unwrap_or_else(|e| panic!("{localpart} joins: {e}"));
        user
    }
}

/// Writes the test configuration with `radio.uhf` on the channel — PTT and COS
/// through the rigctld at `rig_address`, a silent ALSA `walkie_null` card (in
/// the test's own `.asoundrc`: run the bridge with `HOME` = the test's dir) —
/// plus `radio_keys` in its section; `edit` adjusts the rest. Returns its path.
pub fn write_rigctld_radio_config(
    setup: &Setup,
    rig_address: &str,
    radio_keys: &str,
    edit: impl FnOnce(String) -> String,
) -> std::path::PathBuf {
    let dir = setup.dir.path();
    std::fs::write(
        dir.join(".asoundrc"),
        "pcm.walkie_null {\n type null\n hint { show on description \"walkie test: no sound card\" }\n}\n",
    )
    .expect("asoundrc");
    let text = edit(
        config_text(&setup.synapse.url(), setup.listen, dir)
            .replace("endpoints = []", r#"endpoints = ["radio.uhf"]"#),
    ) + &*format!(
        r#"
[radio.uhf]
ptt = "rigctld"
rigctld = "{rig_address}"
cos = "rigctld"
audio_in = "walkie_null"
audio_out = "walkie_null"
tx_delay_ms = 50
{radio_keys}
"#
    );
    let path = dir.join("walkie.toml");
    std::fs::write(&path, text).expect("config");
    path
}

pub fn config_text(homeserver: &str, listen: u16, dir: &std::path::Path) -> String {
    config_text_with(homeserver, listen, dir, "")
}

/// The test configuration plus `mumble_server` as `[mumble.ops]` on the channel,
/// when given.
pub fn config_text_with(
    homeserver: &str,
    listen: u16,
    dir: &std::path::Path,
    mumble_server: &str,
) -> String {
    let (endpoints, mumble) = if mumble_server.is_empty() {
        ("[]".to_owned(), String::new())
    } else {
        (
            r#"["mumble.ops"]"#.to_owned(),
            format!(
                r#"
[mumble.ops]
server = "{mumble_server}"
channel = "Ops"
username = "walkie"
accept_invalid_cert = true
"#
            ),
        )
    };
    format!(
        r##"
[homeserver]
url = "{homeserver}"
domain = "{SERVER}"

[appservice]
listen = "127.0.0.1:{listen}"
id = "walkie"
as_token = "as-token-for-the-matrix-bridge-test"
hs_token = "hs-token-for-the-matrix-bridge-test"
bot_localpart = "walkie"
puppet_prefix = "walkie_"

[database]
url = "sqlite://{db}"

[archive]
spool_dir = "{spool}"

[encryption]
store_dir = "{crypto}"

[floor]
idle_release_ms = 1500

[[channel]]
name = "ops"
room = "#ops:{SERVER}"
endpoints = {endpoints}
{mumble}"##,
        db = dir.join("walkie.db").display(),
        spool = dir.join("spool").display(),
        crypto = dir.join("crypto").display(),
    )
}

pub fn load(text: &str) -> Config {
    let (config, _warnings) =
        Config::from_toml_str(text, "test.toml", Vec::<(String, String)>::new())
            .unwrap_or_else(|errors| panic!("test config is invalid: {errors}"));
    config
}

/// The room every test uses: public, alias `#ops`, the bot at power level 100.
pub fn ops_room() -> CreateRoom {
    CreateRoom::new()
        .name("Ops")
        .alias("ops")
        .preset(Preset::Public)
        .power_levels(json!({ "users": { format!("@walkie:{SERVER}"): 100 } }))
}

/// [`ops_room`], encrypted from its creation.
pub fn encrypted_ops_room() -> walkie_harness::CreateRoom {
    ops_room().initial_state(
        "m.room.encryption",
        "",
        serde_json::json!({ "algorithm": "m.megolm.v1.aes-sha2" }),
    )
}

/// The decrypted archive at `audio.path` is what was said: its duration within
/// 60 ms and its correlation with the speech above 0.85.
pub fn assert_is_the_speech(audio: &walkie_harness::ReceivedAudio, speech: &[i16]) {
    assert_is_the_speech_within(audio, speech, 0);
}

/// [`assert_is_the_speech`] where the recording may start up to `max_shift`
/// samples (48 kHz) earlier or later than the speech: found coarsely on a
/// decimated copy first, then exactly around that, so a debug build stays quick.
pub fn assert_is_the_speech_within(
    audio: &walkie_harness::ReceivedAudio,
    speech: &[i16],
    max_shift: isize,
) {
    let ogg = std::fs::read(&audio.path).expect("the decrypted file");
    let decoded =
        walkie_endpoint::audio::decode_ogg_opus(&ogg).expect("the decrypted file is Ogg Opus");
    let spoken_ms = speech.len() as u64 * 1000 / 48_000;
    assert!(
        decoded.duration_ms.abs_diff(spoken_ms) <= 60,
        "decoded {} ms, spoken {spoken_ms} ms",
        decoded.duration_ms
    );
    let decimate = |pcm: &[i16]| pcm.iter().step_by(8).copied().collect::<Vec<i16>>();
    let (coarse, _) = common::best_lag(
        &decimate(speech),
        &decimate(&decoded.pcm),
        -max_shift / 8..=max_shift / 8,
    );
    let centre = coarse * 8;
    let (_, correlation) = common::best_lag(speech, &decoded.pcm, centre - 400..=centre + 400);
    assert!(
        correlation > 0.85,
        "the decrypted voice message is not what was said: {correlation:.3}"
    );
}

/// Alice's matrix-nio client (it encrypts end to end), logged in and seeing the bot
/// in the bridged room, which is encrypted or not as `encrypted` says.
pub async fn alice_nio_in_room(setup: &Setup, encrypted: bool) -> walkie_harness::E2eeTestClient {
    let (alice, login) = walkie_harness::E2eeTestClient::login_user(
        &setup.synapse,
        &setup.alice,
        setup.dir.path().join("nio"),
    )
    .await
    .unwrap_or_else(|e| panic!("alice's nio client logs in: {e}"));
    let bot = format!("@walkie:{SERVER}");
    let state = alice
        .wait_room(
            &setup.room_id,
            &[login.user_id.as_str(), bot.as_str()],
            Some(encrypted),
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("alice's client sees the bot in the room: {e}"));
    assert_eq!(state.encrypted, encrypted);
    alice
}

pub async fn setup() -> Setup {
    setup_with_room(ops_room()).await
}

pub async fn setup_with_room(room: CreateRoom) -> Setup {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().expect("temp dir");
    let listen = free_port();
    // The registration does not depend on the homeserver's URL, which is known
    // only once Synapse runs.
    let provisional = load(&config_text("http://127.0.0.1:1", listen, dir.path()));
    let registration = Registration::from_config(&provisional)
        .to_yaml()
        .expect("registration YAML");
    let synapse = SynapseBuilder::new()
        .server_name(SERVER)
        .appservice_registration(registration)
        .start()
        .await
        .expect("Synapse starts");
    let config = load(&config_text(&synapse.url(), listen, dir.path()));
    let alice = synapse.register_user("alice", false).await.expect("alice");
    let room_id = synapse
        .client(&alice)
        .create_room(&room)
        .await
        .expect("room");
    Setup {
        synapse,
        alice,
        room_id,
        config,
        dir,
        listen,
    }
}

pub struct Running {
    pub link: HubLink,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn start_daemon(config: &Config) -> Running {
    let (running, link) = try_start_daemon(config).await;
    Running {
        link: link.expect("the daemon runs the test endpoint"),
        shutdown: running.0,
        task: running.1,
    }
}

/// Starts the daemon; the link is `None` when it did not bridge the channel.
pub async fn try_start_daemon(
    config: &Config,
) -> (
    (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
    Option<HubLink>,
) {
    let (endpoint, handle) =
        TestEndpoint::new(EndpointId::new("test.radio"), Capabilities::default());
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(config.clone()).with_endpoint("ops", Box::new(endpoint));
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let link = tokio::time::timeout(WAIT, handle.link())
        .await
        .expect("the daemon starts (or skips) the channel in time");
    ((shutdown, task), link)
}

impl Running {
    pub fn from_parts(
        link: HubLink,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) -> Self {
        Self {
            link,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("daemon stops in time")
            .expect("daemon task did not panic")
            .expect("daemon ends cleanly");
    }
}

pub fn speech_packets() -> (Vec<i16>, Vec<bytes::Bytes>) {
    let speech = common::speech(48_000);
    let packets = opus_packets(&speech);
    (speech, packets)
}

/// The speech backwards, and its packets: the same sound and length, but a
/// different signal, for a test that must tell two transmissions apart.
pub fn reversed_speech_packets() -> (Vec<i16>, Vec<bytes::Bytes>) {
    let mut speech = common::speech(48_000);
    speech.reverse();
    let packets = opus_packets(&speech);
    (speech, packets)
}

/// 48 kHz mono PCM as 20 ms Opus packets.
pub fn opus_packets(pcm: &[i16]) -> Vec<bytes::Bytes> {
    let mut encoder = OpusEncoder::new().expect("encoder");
    frames_of(pcm)
        .map(|frame| encoder.encode(&frame).expect("encode"))
        .collect()
}

pub async fn next_floor(link: &mut HubLink) -> FloorEvent {
    loop {
        match tokio::time::timeout(WAIT, link.recv()).await {
            Ok(Ok(Downlink::Floor(event))) => return event,
            Ok(Ok(Downlink::Audio(_))) => continue,
            Ok(Err(closed)) => panic!("hub gone: {closed}"),
            Err(_) => panic!("no floor event within {WAIT:?}"),
        }
    }
}

/// One transmission from the test endpoint, as a radio user would make it.
pub async fn transmit(link: &mut HubLink, talker: &str, packets: &[bytes::Bytes]) {
    let stream = StreamKey(1);
    link.talk_start(
        stream,
        Talker::new(talker, format!("{talker} (Radio)")),
        Priority::Normal,
        TalkKind::Live,
    )
    .await
    .expect("hub running");
    loop {
        match next_floor(link).await {
            FloorEvent::Granted { .. } => break,
            FloorEvent::Denied { reason, .. } => panic!("transmission denied: {reason}"),
            _ => continue,
        }
    }
    // A talker speaks at one frame per 20 ms; ten times faster keeps the test short
    // and still far inside what the hub's inbox takes without dropping.
    let mut pace = tokio::time::interval(Duration::from_millis(2));
    for (seq, packet) in packets.iter().enumerate() {
        pace.tick().await;
        link.audio(stream, AudioFrame::opus(seq as u32, packet.clone()))
            .expect("hub running");
    }
    assert_eq!(
        link.counters()
            .uplink_dropped
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the hub dropped frames of the transmission"
    );
    link.talk_end(stream).await.expect("hub running");
    loop {
        if let FloorEvent::Released { .. } = next_floor(link).await {
            break;
        }
    }
}

pub fn is_voice_message_from(event: &walkie_harness::SyncEvent, sender: &str) -> bool {
    event.event_type() == "m.room.message"
        && event.sender() == sender
        && event.content()["msgtype"] == "m.audio"
}

impl Setup {
    /// The same bridge with the channel's Mumble endpoint on `server`.
    pub fn config_with_mumble(&self, server: &str) -> Config {
        load(&config_text_with(
            &self.synapse.url(),
            self.listen,
            self.dir.path(),
            server,
        ))
    }
}

/// `!wt on` in the room, and the bot's confirmation.
pub async fn opt_in(client: &walkie_harness::MatrixClient, room: &str) {
    let bot = format!("@walkie:{SERVER}");
    client.send_text(room, "!wt on").await.expect("command");
    client
        .sync_until(
            |e| {
                e.sender() == bot
                    && e.content()["msgtype"] == "m.notice"
                    && e.body().is_some_and(|b| b.contains("!wt off"))
            },
            WAIT,
        )
        .await
        .expect("the bot confirms the opt-in");
}

/// The voice messages in the room (newest first) posted by `sender`.
pub async fn voice_messages(
    client: &walkie_harness::MatrixClient,
    room: &str,
    sender: &str,
) -> Vec<serde_json::Value> {
    client
        .room_messages(room, 100)
        .await
        .expect("room messages")
        .into_iter()
        .filter(|e| e["sender"] == sender && e["content"]["msgtype"] == "m.audio")
        .collect()
}

// ---- the real binary under the default descriptor limit ---------------------

/// The value of the sample of `name` on the bridge's /metrics, if any.
pub async fn metric(status: u16, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://127.0.0.1:{status}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .next()
}

/// The test process itself holds every idle socket's other end.
pub fn raise_own_descriptor_limit(want: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < want {
            limit.rlim_cur = want.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    assert!(
        limit.rlim_cur >= want,
        "the test needs {want} descriptors of its own; hard limit {}",
        limit.rlim_max
    );
}

/// Runs `binary` (the test's `env!("CARGO_BIN_EXE_walkie-bridge")`, which the
/// benches and examples that share this file do not have) on `config_text` under
/// a 1024-descriptor limit (what a process gets without the unit's
/// `LimitNOFILE`), with its status listener on `status`; returns once `/health`
/// answers.
pub async fn spawn_under_default_nofile(
    binary: &str,
    setup: &Setup,
    config_text: &str,
    status: u16,
) -> walkie_harness::ChildGuard {
    let config = setup.dir.path().join("walkie.toml");
    std::fs::write(&config, config_text).expect("config written");
    let mut command = std::process::Command::new("prlimit");
    command
        .arg("--nofile=1024:1024")
        .arg("--")
        .arg(binary)
        .args(["run", "-c"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET");
    let mut child = walkie_harness::ChildGuard::spawn(
        "walkie-bridge",
        command,
        setup.dir.path().join("walkie-bridge.log"),
    )
    .expect("walkie-bridge starts under prlimit");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let health = reqwest::get(format!("http://127.0.0.1:{status}/health")).await;
        if health.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(child.is_running(), "{}", child.log_tail(40));
        assert!(
            std::time::Instant::now() < deadline,
            "never healthy: {}",
            child.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id()))
        .expect("the bridge's limits are readable");
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a descriptor limit");
    assert!(
        files.split_whitespace().filter(|w| *w == "1024").count() == 2,
        "the bridge runs with 1024 descriptors: {files}"
    );
    child
}

// ---- two channels --------------------------------------------------------

/// Synapse with #ops and #net, bob joined to both, and the daemon bridging both
/// with a test endpoint each (`test.ops`, `test.net`): the live tests of several
/// channels on one connection and one page.
pub struct TwoChannels {
    pub setup: Setup,
    pub bob: TestUser,
    pub net_room: String,
    pub ops: HubLink,
    pub net: HubLink,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

pub async fn two_channels() -> TwoChannels {
    let mut setup = setup().await;
    let mut text = config_text(&setup.synapse.url(), setup.listen, setup.dir.path());
    text.push_str(&format!(
        "\n[[channel]]\nname = \"net\"\nroom = \"#net:{SERVER}\"\nendpoints = []\n"
    ));
    setup.config = load(&text);
    let net_room = setup
        .synapse
        .client(&setup.alice)
        .create_room(&ops_room().name("Net").alias("net"))
        .await
        .expect("#net");
    let bob = setup.member("bob").await;
    setup
        .synapse
        .client(&bob)
        .join(&net_room)
        .await
        .expect("bob joins #net");
    let (ops, ops_handle) = TestEndpoint::new(EndpointId::new("test.ops"), Capabilities::default());
    let (net, net_handle) = TestEndpoint::new(EndpointId::new("test.net"), Capabilities::default());
    let shutdown = CancellationToken::new();
    let daemon = Daemon::new(setup.config.clone())
        .with_endpoint("ops", Box::new(ops))
        .with_endpoint("net", Box::new(net));
    let task = tokio::spawn(daemon.run(shutdown.clone()));
    let link = |handle: walkie_endpoint::testkit::TestEndpointHandle| async move {
        tokio::time::timeout(WAIT, handle.link())
            .await
            .expect("the daemon starts the test endpoints in time")
            .expect("the daemon runs the test endpoint")
    };
    let ops = link(ops_handle).await;
    let net = link(net_handle).await;
    TwoChannels {
        setup,
        bob,
        net_room,
        ops,
        net,
        shutdown,
        task,
    }
}

impl TwoChannels {
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the daemon stops")
            .expect("daemon task")
            .expect("daemon result");
    }
}
