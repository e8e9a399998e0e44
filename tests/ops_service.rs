//! The real `walkie-bridge run` as systemd runs it: notify socket messages, the
//! status and metrics pages during a transmission, SIGTERM mid-transmission, and
//! SIGHUP reloads. Real Synapse and mosquitto from the harness; the talker is an
//! MQTT intercom (a plain MQTT client publishing the documented topics).

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

#[path = "bridge_common/mod.rs"]
mod bridge_common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, MqttOptions, QoS};
use serde_json::{json, Value};
use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;
use walkie_harness::{free_port, ChildGuard, CreateRoom, Mosquitto, Preset};

const WAIT: Duration = Duration::from_secs(30);
const PREFIX: &str = "walkie/lobby";
const DEVICE: &str = "kitchen";

/// The test bridge's config (bridge_common's, so the registration Synapse loaded
/// matches) with the status listener, and optionally an MQTT intercom on `ops`.
fn config_text(setup: &bridge_common::Setup, status: u16, broker: Option<&Mosquitto>) -> String {
    let mut text = bridge_common::config_text(&setup.synapse.url(), setup.listen, setup.dir.path());
    if let Some(broker) = broker {
        text = text.replace("endpoints = []", r#"endpoints = ["mqtt.lobby"]"#);
        text.push_str(&format!(
            "\n[mqtt.lobby]\nbroker = \"{}\"\nprefix = \"{PREFIX}\"\n",
            broker.url()
        ));
    }
    text.push_str(&format!("\n[status]\nlisten = \"127.0.0.1:{status}\"\n"));
    text
}

fn write_config(setup: &bridge_common::Setup, text: &str) -> PathBuf {
    let path = setup.dir.path().join("walkie.toml");
    std::fs::write(&path, text).expect("config written");
    path
}

fn spawn(config: &Path, log: PathBuf, env: &[(&str, &str)]) -> ChildGuard {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
    command.args(["run", "-c"]).arg(config);
    command.env("RUST_LOG", "walkie_bridge=debug,info");
    command.env_remove("NOTIFY_SOCKET");
    command.env_remove("WATCHDOG_USEC");
    for (key, value) in env {
        command.env(key, value);
    }
    ChildGuard::spawn("walkie-bridge", command, log).expect("walkie-bridge starts")
}

fn signal(child: &ChildGuard, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name}");
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://127.0.0.1:{port}{path}"))
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let code = response.status().as_u16();
    (code, response.text().await.expect("body"))
}

async fn status(port: u16) -> Value {
    let (code, body) = get(port, "/status").await;
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("/status is JSON")
}

/// Polls `probe` until it returns something, failing with the bridge's log.
async fn until<T, F, Fut>(child: &mut ChildGuard, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            child.is_running(),
            "walkie-bridge exited while waiting for {what}:\n{}",
            child.log_tail(40)
        );
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            child.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn healthy(child: &mut ChildGuard, port: u16) {
    until(child, "/health to answer 200", || async move {
        match reqwest::get(format!("http://127.0.0.1:{port}/health")).await {
            Ok(r) if r.status().as_u16() == 200 => Some(()),
            _ => None,
        }
    })
    .await;
}

/// The value of one sample of `name` whose labels include all of `labels`.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
}

/// An MQTT intercom: a plain MQTT client publishing the endpoint's topics.
struct Intercom {
    client: AsyncClient,
    poller: tokio::task::JoinHandle<()>,
}

impl Intercom {
    async fn connect(broker: &Mosquitto) -> Self {
        let options = MqttOptions::new("ops-test-intercom", broker.host(), broker.port());
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let poller = tokio::spawn(async move {
            // Errors are retried by polling again; the task ends with the test.
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { client, poller }
    }

    async fn publish(&self, last: &str, qos: QoS, payload: Vec<u8>) {
        self.client
            .publish(format!("{PREFIX}/in/{DEVICE}/{last}"), qos, false, payload)
            .await
            .expect("publish queued");
    }

    /// Talks speech in a loop at 20 ms a frame until `stop`, then lets go.
    fn talk_until(self, stop: CancellationToken) -> tokio::task::JoinHandle<Self> {
        let (_, packets) = bridge_common::speech_packets();
        tokio::spawn(async move {
            self.publish(
                "start",
                QoS::AtLeastOnce,
                br#"{"talker":"Kitchen"}"#.to_vec(),
            )
            .await;
            let mut pace = tokio::time::interval(Duration::from_millis(20));
            for (seq, packet) in packets.iter().cycle().enumerate() {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = pace.tick() => {}
                }
                let mut payload = (seq as u32).to_be_bytes().to_vec();
                payload.extend_from_slice(packet);
                self.publish("audio", QoS::AtMostOnce, payload).await;
            }
            self.publish("end", QoS::AtLeastOnce, Vec::new()).await;
            self
        })
    }
}

impl Drop for Intercom {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

async fn room_audio(setup: &bridge_common::Setup) -> Vec<Value> {
    setup
        .synapse
        .client(&setup.alice)
        .room_messages(&setup.room_id, 100)
        .await
        .expect("messages")
        .into_iter()
        .filter(|e| e["type"] == "m.room.message" && e["content"]["msgtype"] == "m.audio")
        .collect()
}

/// READY=1 once the channels run, STATUS= with the floor, WATCHDOG=1 at half of
/// WATCHDOG_USEC, STOPPING=1 on SIGTERM — read off a notify socket of our own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_status_watchdog_and_stopping() {
    let setup = bridge_common::setup().await;
    let port = free_port();
    let config = write_config(&setup, &config_text(&setup, port, None));
    let socket_path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    let socket_env = socket_path.display().to_string();
    // 1 s watchdog: a ping every 500 ms.
    let mut child = spawn(
        &config,
        setup.dir.path().join("bridge.log"),
        &[("NOTIFY_SOCKET", &socket_env), ("WATCHDOG_USEC", "1000000")],
    );
    let mut seen: Vec<String> = Vec::new();
    let started = Instant::now();
    let mut watchdogs = Vec::new();
    let deadline = started + WAIT;
    while watchdogs.len() < 3 {
        let mut buf = vec![0u8; 4096];
        let n = match tokio::time::timeout_at(deadline.into(), socket.recv(&mut buf)).await {
            Ok(received) => received.expect("recv"),
            Err(_) => panic!("notify messages so far: {seen:?}\n{}", child.log_tail(40)),
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        for line in message.lines() {
            if line == "WATCHDOG=1" {
                watchdogs.push(Instant::now());
            }
            seen.push(line.to_owned());
        }
    }
    let ready = seen
        .iter()
        .position(|l| l == "READY=1")
        .unwrap_or_else(|| panic!("no READY=1 before the watchdog pings: {seen:?}"));
    assert!(
        seen.iter()
            .any(|l| l.starts_with("STATUS=") && l.contains("ops: idle")),
        "no STATUS line with the channel's floor: {seen:?}"
    );
    let first_ping = seen.iter().position(|l| l == "WATCHDOG=1").expect("ping");
    assert!(ready < first_ping, "WATCHDOG=1 before READY=1: {seen:?}");
    // Half of 1 s, give or take a loaded machine; never as slow as the timeout.
    for pair in watchdogs.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap < Duration::from_millis(900), "pings {gap:?} apart");
    }
    // /health agrees that the bridge is ready.
    let (code, body) = get(port, "/health").await;
    assert_eq!(code, 200, "{body}");

    child.stop(Duration::from_secs(10)).await.expect("stopped");
    // The process has exited: whatever it sent is waiting in the socket.
    let mut rest = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(n) = socket.try_recv(&mut buf) {
        rest.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(
        rest.iter().any(|m| m.contains("STOPPING=1")),
        "no STOPPING=1 after SIGTERM: {rest:?}"
    );
}

/// During a transmission from an intercom, /status names the holder and
/// /metrics shows the counters moving; SIGTERM mid-transmission stops the
/// bridge within 5 s, and the recording cut by it is posted exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_transmission_stops_within_5_s_and_the_recording_is_posted_once() {
    let setup = bridge_common::setup().await;
    let broker = Mosquitto::builder()
        .start()
        .await
        .expect("mosquitto starts");
    let port = free_port();
    let config = write_config(&setup, &config_text(&setup, port, Some(&broker)));
    let mut first = spawn(&config, setup.dir.path().join("bridge-first.log"), &[]);
    healthy(&mut first, port).await;
    until(&mut first, "the MQTT endpoint to connect", || async move {
        let status = status(port).await;
        let endpoints = status["channels"][0]["endpoints"].as_array()?.clone();
        endpoints
            .iter()
            .any(|e| e["id"] == "mqtt.lobby" && e["state"] == "connected")
            .then_some(())
    })
    .await;
    let before = get(port, "/metrics").await.1;
    let grants_before = metric(
        &before,
        "walkie_floor_grants_total",
        &[("channel", "ops"), ("endpoint", "mqtt.lobby")],
    )
    .unwrap_or(0.0);

    let intercom = Intercom::connect(&broker).await;
    let stop_talking = CancellationToken::new();
    let talking = intercom.talk_until(stop_talking.clone());
    let holder: Value = until(&mut first, "/status to show the holder", || async move {
        let status = status(port).await;
        let holder = status["channels"][0]["holder"].clone();
        (!holder.is_null()).then_some(holder)
    })
    .await;
    assert_eq!(holder["talker"], "Kitchen (Intercom)", "{holder}");
    assert_eq!(holder["endpoint"], "mqtt.lobby", "{holder}");
    // A second of speech in, the counters have moved.
    let scrape = until(&mut first, "frames in the metrics", || async move {
        let text = get(port, "/metrics").await.1;
        let out = metric(
            &text,
            "walkie_endpoint_frames_out_total",
            &[("channel", "ops"), ("endpoint", "matrix.ops")],
        )?;
        (out >= 50.0).then_some(text)
    })
    .await;
    let grants = metric(
        &scrape,
        "walkie_floor_grants_total",
        &[("channel", "ops"), ("endpoint", "mqtt.lobby")],
    )
    .expect("grants counted");
    assert_eq!(grants, grants_before + 1.0, "{scrape}");
    let frames_in = metric(
        &scrape,
        "walkie_endpoint_frames_in_total",
        &[("channel", "ops"), ("endpoint", "mqtt.lobby")],
    )
    .expect("frames in counted");
    assert!(frames_in >= 50.0, "{frames_in} frames in");
    assert!(
        metric(
            &scrape,
            "walkie_added_latency_seconds_count",
            &[("endpoint", "matrix.ops")]
        )
        .is_some_and(|n| n >= 50.0),
        "no added-latency samples:\n{scrape}"
    );
    assert_eq!(
        metric(&scrape, "walkie_floor_held", &[("channel", "ops")]),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &scrape,
            "walkie_endpoint_connected",
            &[("endpoint", "mqtt.lobby")]
        ),
        Some(1.0)
    );

    // SIGTERM while the intercom is still talking.
    let sent = Instant::now();
    let exit = first.stop(Duration::from_secs(5)).await.expect("stopped");
    let took = sent.elapsed();
    eprintln!("SIGTERM mid-transmission: exited in {took:?} with {exit}");
    assert!(
        exit.success(),
        "not a clean exit within 5 s ({exit}):\n{}",
        first.log_tail(40)
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let log = std::fs::read_to_string(first.log_path()).expect("log");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(
        log.contains("reason=shutdown") || log.contains("reason=Shutdown"),
        "the floor was not released on the way out:\n{log}"
    );
    stop_talking.cancel();
    let _intercom = talking.await.expect("intercom task");

    // The cut recording is in the outbox (if the outbox had not posted it yet);
    // the next run posts what is left, and nothing twice.
    let mut second = spawn(&config, setup.dir.path().join("bridge-second.log"), &[]);
    healthy(&mut second, port).await;
    let matrix = setup.synapse.client(&setup.alice);
    let message = matrix
        .sync_until(
            |e| e.event_type() == "m.room.message" && e.content()["msgtype"] == "m.audio",
            WAIT,
        )
        .await
        .expect("the recording is posted");
    assert!(
        message.sender().starts_with("@walkie_mqtt_"),
        "posted by {}",
        message.sender()
    );
    let duration = message.content()["info"]["duration"]
        .as_u64()
        .expect("duration");
    // Every frame the matrix endpoint had received before SIGTERM is in the
    // recording, which plays them minus the Opus pre-skip (6.5 ms at 48 kHz).
    let frames_before_sigterm = metric(
        &scrape,
        "walkie_endpoint_frames_out_total",
        &[("channel", "ops"), ("endpoint", "matrix.ops")],
    )
    .expect("frames out counted");
    let pre_skip_ms = f64::from(walkie_endpoint::audio::DEFAULT_PRE_SKIP) / 48.0;
    let least_ms = (frames_before_sigterm * 20.0 - pre_skip_ms).floor();
    assert!(
        duration as f64 >= least_ms,
        "the recording holds {duration} ms; {frames_before_sigterm} frames \
         ({least_ms} ms after the pre-skip) had reached the room before SIGTERM"
    );
    until(&mut second, "an empty outbox", || async move {
        (status(port).await["outbox"]["depth"] == json!(0)).then_some(())
    })
    .await;
    assert_eq!(room_audio(&setup).await.len(), 1, "posted more than once");
    second.stop(Duration::from_secs(5)).await.expect("stopped");
}

/// SIGKILL (no shutdown path at all) mid-transmission: the pages already written
/// are salvaged at the next start and posted once; nothing is posted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_transmission_posts_the_cut_recording_exactly_once_after_restart() {
    let setup = bridge_common::setup().await;
    let broker = Mosquitto::builder()
        .start()
        .await
        .expect("mosquitto starts");
    let port = free_port();
    let config = write_config(&setup, &config_text(&setup, port, Some(&broker)));
    let mut first = spawn(&config, setup.dir.path().join("bridge-first.log"), &[]);
    healthy(&mut first, port).await;
    mqtt_connected(&mut first, port).await;
    let intercom = Intercom::connect(&broker).await;
    let stop_talking = CancellationToken::new();
    let talking = intercom.talk_until(stop_talking.clone());
    // Three seconds in: the recorder has written whole pages of it.
    until(&mut first, "3 s of the talk recorded", || async move {
        let text = get(port, "/metrics").await.1;
        let out = metric(
            &text,
            "walkie_endpoint_frames_out_total",
            &[("channel", "ops"), ("endpoint", "matrix.ops")],
        )?;
        (out >= 150.0).then_some(())
    })
    .await;
    first.kill().expect("SIGKILL");
    stop_talking.cancel();
    let _intercom = talking.await.expect("intercom task");

    let mut second = spawn(&config, setup.dir.path().join("bridge-second.log"), &[]);
    healthy(&mut second, port).await;
    let matrix = setup.synapse.client(&setup.alice);
    let message = matrix
        .sync_until(
            |e| e.event_type() == "m.room.message" && e.content()["msgtype"] == "m.audio",
            WAIT,
        )
        .await
        .expect("the salvaged recording is posted");
    let duration = message.content()["info"]["duration"]
        .as_u64()
        .expect("duration");
    eprintln!("SIGKILL after 3 s of talk: {duration} ms salvaged and posted");
    // Pages reach the disk about once a second; the kill loses at most the one in
    // progress.
    assert!(
        duration >= 1_500,
        "only {duration} ms of the 3 s spoken before the kill survived"
    );
    until(&mut second, "an empty outbox", || async move {
        (status(port).await["outbox"]["depth"] == json!(0)).then_some(())
    })
    .await;
    assert_eq!(room_audio(&setup).await.len(), 1, "posted more than once");
    second.stop(Duration::from_secs(5)).await.expect("stopped");
}

async fn mqtt_connected(child: &mut ChildGuard, port: u16) {
    until(child, "the MQTT endpoint to connect", || async move {
        let status = status(port).await;
        let endpoints = status["channels"][0]["endpoints"].as_array()?.clone();
        endpoints
            .iter()
            .any(|e| e["id"] == "mqtt.lobby" && e["state"] == "connected")
            .then_some(())
    })
    .await;
}

/// The broker dies in the middle of the second of three talks and comes back:
/// each talk is archived once — the cut one as far as it got — none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_mid_stream_loses_no_transmission_and_doubles_none() {
    let setup = bridge_common::setup().await;
    let mut broker = Mosquitto::builder()
        .start()
        .await
        .expect("mosquitto starts");
    let port = free_port();
    let config = write_config(&setup, &config_text(&setup, port, Some(&broker)));
    let mut bridge = spawn(&config, setup.dir.path().join("bridge.log"), &[]);
    healthy(&mut bridge, port).await;
    mqtt_connected(&mut bridge, port).await;
    let mut intercom = Intercom::connect(&broker).await;
    for talk in 1..=3 {
        let stop_talking = CancellationToken::new();
        let talking = intercom.talk_until(stop_talking.clone());
        let frames = move || async move {
            let text = get(port, "/metrics").await.1;
            metric(
                &text,
                "walkie_endpoint_frames_out_total",
                &[("channel", "ops"), ("endpoint", "matrix.ops")],
            )
        };
        let before = frames().await.unwrap_or(0.0);
        until(&mut bridge, "2 s of the talk", || async move {
            let now = frames().await?;
            (now >= before + 100.0).then_some(())
        })
        .await;
        if talk == 2 {
            broker.stop().await.expect("mosquitto stops");
            broker.start_again().await.expect("mosquitto is back");
        }
        stop_talking.cancel();
        intercom = talking.await.expect("intercom task");
        // Each talk's voice message before the next talk starts.
        let deadline = Instant::now() + WAIT;
        while room_audio(&setup).await.len() < talk {
            assert!(
                Instant::now() < deadline,
                "talk {talk} was not archived:\n{}",
                bridge.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if talk == 2 {
            mqtt_connected(&mut bridge, port).await;
        }
    }
    until(&mut bridge, "an empty outbox", || async move {
        (status(port).await["outbox"]["depth"] == json!(0)).then_some(())
    })
    .await;
    let audio = room_audio(&setup).await;
    let durations: Vec<u64> = audio
        .iter()
        .filter_map(|e| e["content"]["info"]["duration"].as_u64())
        .collect();
    eprintln!("broker killed mid-talk 2: archived durations {durations:?} ms");
    assert_eq!(audio.len(), 3, "archived {} voice messages", audio.len());
    assert!(durations.iter().all(|d| *d >= 1500), "{durations:?}");
    bridge.stop(Duration::from_secs(5)).await.expect("stopped");
}

/// SIGHUP with a channel added: it comes up beside the running one. SIGHUP with a
/// broken file: the errors are logged and both channels keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_a_channel_and_a_broken_file_changes_nothing() {
    let setup = bridge_common::setup().await;
    let broker = Mosquitto::builder()
        .start()
        .await
        .expect("mosquitto starts");
    let lobby = setup
        .synapse
        .client(&setup.alice)
        .create_room(
            &CreateRoom::new()
                .name("Lobby")
                .alias("lobby")
                .preset(Preset::Public)
                .power_levels(
                    json!({ "users": { format!("@walkie:{}", bridge_common::SERVER): 100 } }),
                ),
        )
        .await
        .expect("lobby room");
    let port = free_port();
    let base = config_text(&setup, port, None);
    let config = write_config(&setup, &base);
    let mut child = spawn(&config, setup.dir.path().join("bridge.log"), &[]);
    healthy(&mut child, port).await;
    let names = |status: &Value| -> Vec<String> {
        status["channels"]
            .as_array()
            .map(|c| {
                c.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(names(&status(port).await), ["ops"]);

    let added = format!(
        "{base}\n[[channel]]\nname = \"lobby\"\nroom = \"#lobby:{}\"\nendpoints = [\"mqtt.lobby\"]\n\n[mqtt.lobby]\nbroker = \"{}\"\nprefix = \"{PREFIX}\"\n",
        bridge_common::SERVER,
        broker.url()
    );
    std::fs::write(&config, &added).expect("config written");
    signal(&child, "HUP");
    until(
        &mut child,
        "the lobby channel with its intercom",
        || async move {
            let status = status(port).await;
            let lobby = status["channels"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "lobby")?
                .clone();
            lobby["endpoints"]
                .as_array()?
                .iter()
                .any(|e| e["id"] == "mqtt.lobby" && e["state"] == "connected")
                .then_some(())
        },
    )
    .await;
    assert_eq!(names(&status(port).await), ["lobby", "ops"]);
    let log = std::fs::read_to_string(child.log_path()).expect("log");
    assert!(log.contains("configuration reloaded"), "{log}");
    // The bot joined the new room.
    let members = setup
        .synapse
        .client(&setup.alice)
        .joined_members(&lobby)
        .await
        .expect("members");
    assert!(
        members.contains(&format!("@walkie:{}", bridge_common::SERVER)),
        "{members:?}"
    );

    // A changed endpoint restarts its channel only; a changed database waits
    // for a restart and says so.
    let changed = added
        .replace(
            &format!("prefix = \"{PREFIX}\""),
            "prefix = \"walkie/lobby2\"",
        )
        .replace("walkie.db", "elsewhere.db");
    std::fs::write(&config, &changed).expect("config written");
    signal(&child, "HUP");
    let path = child.log_path().to_owned();
    let log = until(&mut child, "the second reload", || {
        let path = path.clone();
        async move {
            let log = std::fs::read_to_string(&path).ok()?;
            (log.matches("configuration reloaded").count() == 2).then_some(log)
        }
    })
    .await;
    let line = log
        .lines()
        .rfind(|l| l.contains("configuration reloaded"))
        .expect("reload line");
    assert!(line.contains(r#"restarted=["lobby"]"#), "{line}");
    assert!(line.contains(r#"unchanged=["ops"]"#), "{line}");
    assert!(
        log.contains("[database] changed: restart walkie-bridge to apply it"),
        "{log}"
    );
    until(
        &mut child,
        "the intercom back on its new prefix",
        || async move {
            let status = status(port).await;
            let lobby = status["channels"]
                .as_array()?
                .iter()
                .find(|c| c["name"] == "lobby")?
                .clone();
            lobby["endpoints"]
                .as_array()?
                .iter()
                .any(|e| e["id"] == "mqtt.lobby" && e["state"] == "connected")
                .then_some(())
        },
    )
    .await;

    std::fs::write(
        &config,
        added.replace("idle_release_ms = 1500", "idle_release_ms = \"soon\""),
    )
    .expect("config written");
    signal(&child, "HUP");
    let path = child.log_path().to_owned();
    until(&mut child, "the reload errors in the log", || {
        let path = path.clone();
        async move {
            let log = std::fs::read_to_string(&path).ok()?;
            log.contains("the configuration has errors; the running configuration stays")
                .then_some(log)
        }
    })
    .await;
    let log = std::fs::read_to_string(child.log_path()).expect("log");
    assert!(
        log.contains("floor.idle_release_ms"),
        "the error names the key:\n{log}"
    );
    assert!(child.is_running(), "a broken file stopped the bridge");
    assert_eq!(names(&status(port).await), ["lobby", "ops"]);
    let (code, _) = get(port, "/health").await;
    assert_eq!(code, 200);

    // Taking the channel out again stops it; the other one stays.
    std::fs::write(&config, &base).expect("config written");
    signal(&child, "HUP");
    until(&mut child, "the lobby channel to stop", || async move {
        (names(&status(port).await) == ["ops"]).then_some(())
    })
    .await;
    let exit = child.stop(Duration::from_secs(5)).await.expect("stopped");
    assert!(exit.success(), "{exit}");
}

/// Under systemd: stderr is the journal stream (JOURNAL_STREAM names it), so lines
/// carry a syslog priority and no timestamp or colour; `logging.level` is read from
/// the file and changed by SIGHUP without a restart (RUST_LOG unset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_lines_carry_priorities_and_sighup_changes_the_log_level() {
    use std::os::unix::fs::MetadataExt;
    let setup = bridge_common::setup().await;
    let port = free_port();
    let base = config_text(&setup, port, None);
    let quiet = format!("{base}\n[logging]\nlevel = \"warn\"\n");
    let config = write_config(&setup, &quiet);
    // ChildGuard appends stdout and stderr to this file: its device and inode are
    // what systemd would put in JOURNAL_STREAM for the journal's socket.
    let log_path = setup.dir.path().join("journal.log");
    std::fs::write(&log_path, "").expect("log file");
    let meta = std::fs::metadata(&log_path).expect("log metadata");
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
    command.args(["run", "-c"]).arg(&config);
    command
        .env_remove("RUST_LOG")
        .env("JOURNAL_STREAM", &stream);
    let mut child = ChildGuard::spawn("walkie-bridge", command, log_path.clone()).expect("starts");
    healthy(&mut child, port).await;
    let log = std::fs::read_to_string(&log_path).expect("log");
    assert!(
        !log.contains("walkie-bridge ready"),
        "an INFO line at level warn:\n{log}"
    );

    std::fs::write(&config, format!("{base}\n[logging]\nlevel = \"info\"\n")).expect("config");
    signal(&child, "HUP");
    let path = log_path.clone();
    let log = until(&mut child, "INFO lines after the reload", || {
        let path = path.clone();
        async move {
            let log = std::fs::read_to_string(&path).ok()?;
            log.contains("configuration reloaded").then_some(log)
        }
    })
    .await;
    let reloaded = log
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .expect("line");
    assert!(
        reloaded.starts_with("<6> INFO") || reloaded.starts_with("<6>INFO"),
        "not a journal line with priority 6: {reloaded:?}"
    );
    assert!(
        !reloaded.contains('\u{1b}'),
        "ANSI colour in the journal: {reloaded:?}"
    );
    // No timestamp of our own (RFC 3339, as the fmt layer writes it): journald
    // stamps each line.
    let stamped = |w: &str| w.len() > 10 && w.as_bytes()[4] == b'-' && w.as_bytes()[10] == b'T';
    assert!(
        !reloaded.split_whitespace().any(stamped),
        "a timestamp in the journal: {reloaded:?}"
    );
    let exit = child.stop(Duration::from_secs(5)).await.expect("stopped");
    assert!(exit.success(), "{exit}");
}

/// The pid of the process whose command line mentions `needle` (the harness
/// keeps no pid of Synapse; its config path is unique to the test).
fn pid_with_arg(needle: &str) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            String::from_utf8_lossy(&cmdline)
                .contains(needle)
                .then_some(pid)
        })
}

fn signal_pid(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// A process stopped (SIGSTOP) until this is dropped, also when a test fails.
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Self {
        signal_pid(pid, "STOP");
        Self(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        signal_pid(self.0, "CONT");
    }
}

/// Reads notify messages until one holds `line`; returns every line read.
async fn notify_until(
    socket: &UnixDatagram,
    child: &ChildGuard,
    line: &str,
    within: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let mut buf = vec![0u8; 4096];
        let n = match tokio::time::timeout_at(deadline.into(), socket.recv(&mut buf)).await {
            Ok(received) => received.expect("recv"),
            Err(_) => panic!(
                "no {line} within {within:?}; notify messages: {seen:?}\n{}",
                child.log_tail(40)
            ),
        };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let found = message.lines().any(|l| l == line);
        seen.extend(message.lines().map(str::to_owned));
        if found {
            return seen;
        }
    }
}

/// Issue 14.10: a SIGHUP reload that takes longer than the watchdog interval
/// (it starts a channel while the homeserver hangs) must not starve systemd's
/// watchdog: WATCHDOG=1 keeps coming between RELOADING=1 and the READY=1 that
/// ends the reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_is_fed_while_a_slow_reload_runs() {
    let setup = bridge_common::setup().await;
    setup
        .synapse
        .client(&setup.alice)
        .create_room(&bridge_common::ops_room().name("Lobby").alias("lobby"))
        .await
        .expect("lobby room");
    let port = free_port();
    let base = config_text(&setup, port, None);
    let config = write_config(&setup, &base);
    let socket_path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    let socket_env = socket_path.display().to_string();
    // 1 s watchdog: a ping every 500 ms.
    let mut child = spawn(
        &config,
        setup.dir.path().join("bridge.log"),
        &[("NOTIFY_SOCKET", &socket_env), ("WATCHDOG_USEC", "1000000")],
    );
    notify_until(&socket, &child, "READY=1", WAIT).await;
    healthy(&mut child, port).await;

    let synapse =
        pid_with_arg(&setup.synapse.config_path().display().to_string()).expect("Synapse's pid");
    std::fs::write(
        &config,
        format!(
            "{base}\n[[channel]]\nname = \"lobby\"\nroom = \"#lobby:{}\"\nendpoints = []\n",
            bridge_common::SERVER
        ),
    )
    .expect("config written");
    // The homeserver hangs: preparing the new channel's room waits for it.
    let frozen = Frozen::new(synapse);
    signal(&child, "HUP");
    let before = notify_until(&socket, &child, "RELOADING=1", WAIT).await;
    let reloading_at = Instant::now();
    // Six intervals' worth of hang: at least three pings must come meanwhile.
    let hang = Duration::from_secs(3);
    let mut during = Vec::new();
    let mut buf = vec![0u8; 4096];
    while let Ok(received) =
        tokio::time::timeout_at((reloading_at + hang).into(), socket.recv(&mut buf)).await
    {
        let n = received.expect("recv");
        during.extend(
            String::from_utf8_lossy(&buf[..n])
                .lines()
                .map(str::to_owned),
        );
    }
    drop(frozen);
    assert!(
        !during.iter().any(|l| l == "READY=1"),
        "the reload ended while the homeserver hung; the test proves nothing: {during:?}"
    );
    let pings = during.iter().filter(|l| *l == "WATCHDOG=1").count();
    assert!(
        pings >= 3,
        "{pings} WATCHDOG=1 in the {hang:?} a reload ran (interval 500 ms): systemd would \
         kill the bridge mid-reload. Notify lines during the reload: {during:?} (before: {} lines)",
        before.len()
    );
    // Once the homeserver answers, the reload completes and the channel runs.
    notify_until(&socket, &child, "READY=1", WAIT).await;
    until(&mut child, "the lobby channel", || async move {
        let status = status(port).await;
        status["channels"]
            .as_array()?
            .iter()
            .any(|c| c["name"] == "lobby")
            .then_some(())
    })
    .await;
    child.stop(Duration::from_secs(10)).await.expect("stopped");
}
