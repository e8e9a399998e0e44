//! Who may key a radio from Mumble: a real murmurd with registered users, pymumble
//! clients as the people, the Mumble endpoint and a radio endpoint (fake modem
//! line and sound card, see radio_common) on one channel hub, gated by
//! `transmit_allow`. A name on Mumble is whatever the client typed; only the
//! server's registration (or a certificate) says who someone is.

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
mod radio_common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use radio_common::{radio_settings, tx_settings, PacedCard};
use ruma::UserId;
use tokio_util::sync::CancellationToken;
use walkie_bridge::config::TransmitAllow;
use walkie_bridge::hub::{ChannelHub, FloorSettings};
use walkie_bridge::matrix::Homeserver;
use walkie_bridge::transmit_policy::{RadioTransmitPolicy, RoomPowerLevels};
use walkie_endpoint::{Endpoint, EndpointId};
use walkie_harness::{on_every_mumble_server, MumbleServer, MumbleTestClient, Murmur};
use walkie_mumble::{ConnectConfig, MumbleEndpoint, MumbleEndpointConfig, TransportMode};
use walkie_radio::ptt::{FakeModemLines, Line, PttLines, SerialLinePtt};
use walkie_radio::rx::{FakeModemStatus, LineSquelch, ModemLine, StatusLine};
use walkie_radio::{RadioEndpoint, RadioHardware};

const WAIT: Duration = Duration::from_secs(30);
const PASSWORD: &str = "correct horse";

struct Station {
    murmur: Murmur,
    lines: FakeModemLines,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    dir: tempfile::TempDir,
}

fn policy(entries: &[&str]) -> Arc<RadioTransmitPolicy> {
    // Power levels are read only for transmit_min_power_level, unset here.
    let homeserver = Homeserver::new(
        "http://127.0.0.1:9".parse().expect("url"),
        walkie_bridge::config::Secret::new("unused"),
    )
    .expect("client");
    let bot = UserId::parse("@walkie:example.org").expect("user id");
    let levels = Arc::new(RoomPowerLevels::new(homeserver, bot));
    let allow: Vec<TransmitAllow> = entries
        .iter()
        .map(|e| e.parse().expect("transmit_allow entry"))
        .collect();
    Arc::new(RadioTransmitPolicy::new("radio.uhf", allow, None, levels))
}

async fn start(murmur: Murmur, allow: &[&str]) -> Station {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut connect = ConnectConfig::new(murmur.address(), "walkie", "Ops");
    connect.accept_invalid_cert = true;
    connect.transport = TransportMode::Auto;
    let mumble = MumbleEndpoint::new(
        EndpointId::new("mumble.ops"),
        MumbleEndpointConfig {
            connect,
            announce_talker: false,
            idle_release: Duration::from_millis(1500),
            busy_notice_interval: Duration::from_secs(10),
            reconnect_cap: Duration::from_secs(30),
        },
    );
    let lines = FakeModemLines::new();
    let (ptt_lines, cos_lines) = (lines.clone(), FakeModemStatus::new());
    let opener = Box::new(move || {
        Ok(RadioHardware {
            ptt: Box::new(SerialLinePtt::new(ptt_lines.clone(), PttLines::Rts, false)?),
            squelch: Box::new(LineSquelch::new(
                cos_lines.clone(),
                StatusLine {
                    line: ModemLine::Cts,
                    inverted: false,
                },
                Duration::from_millis(30),
            )),
        })
    });
    let radio = RadioEndpoint::new(
        EndpointId::new("radio.uhf"),
        radio_settings(tx_settings()),
        opener,
        Arc::new(PacedCard::default()),
        policy(allow),
    );
    let mut hub = ChannelHub::new("ops", FloorSettings::default());
    let mumble_link = hub
        .attach(mumble.id().clone(), mumble.capabilities())
        .expect("attach");
    let radio_link = hub
        .attach(radio.id().clone(), radio.capabilities())
        .expect("attach");
    let shutdown = CancellationToken::new();
    let mut tasks = vec![tokio::spawn(hub.run(shutdown.clone()))];
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        Box::new(mumble)
            .run(mumble_link, token)
            .await
            .expect("mumble endpoint ends cleanly");
    }));
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        Box::new(radio)
            .run(radio_link, token)
            .await
            .expect("radio endpoint ends cleanly");
    }));
    Station {
        murmur,
        lines,
        shutdown,
        tasks,
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

impl Station {
    /// A pymumble user in Ops (registered when `password` is given) who has seen
    /// the bridge's bot.
    async fn user(&self, name: &str, password: &str) -> MumbleTestClient {
        self.user_with(name, password, None).await
    }

    async fn user_with(
        &self,
        name: &str,
        password: &str,
        certificate: Option<&Certificate>,
    ) -> MumbleTestClient {
        let client = MumbleTestClient::spawn().await.expect("pymumble starts");
        let files = certificate.map(|c| (c.cert.as_path(), c.key.as_path()));
        client
            .connect_as(
                self.murmur.host(),
                self.murmur.port(),
                name,
                password,
                files,
                "Ops",
            )
            .await
            .expect("pymumble joins");
        client
            .wait_for_users(|users| users.iter().any(|u| u == "walkie"), WAIT)
            .await
            .expect("the bridge's bot is in Ops");
        client
    }

    fn ever_keyed(&self) -> bool {
        self.lines
            .events()
            .iter()
            .any(|e| e.line == Line::Rts && e.level)
    }

    fn keyed(&self) -> bool {
        self.lines
            .events()
            .iter()
            .rfind(|e| e.line == Line::Rts)
            .is_some_and(|e| e.level)
    }

    async fn wait_keyed(&self, level: bool) {
        let deadline = Instant::now() + WAIT;
        while self.keyed() != level {
            assert!(
                Instant::now() < deadline,
                "the radio never went keyed={level}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        for task in self.tasks {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("stops")
                .expect("no panic");
        }
    }
}

/// A self-signed client certificate as a Mumble client makes one, and the SHA-1
/// of it that Mumble shows (lower-case hex).
struct Certificate {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    sha1: String,
}

fn certificate(dir: &Path, name: &str) -> Certificate {
    let cert = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert!(made.status.success(), "openssl req: {made:?}");
    let shown = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha1", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&shown.stdout);
    let (_, hex) = text.trim().split_once('=').expect("a fingerprint line");
    Certificate {
        cert,
        key,
        sha1: hex.replace(':', "").to_ascii_lowercase(),
    }
}

fn one_second_of_speech(dir: &Path) -> std::path::PathBuf {
    let speech = common::speech(48_000);
    let path = dir.join("speech.wav");
    common::write_wav(&path, &speech[..48_000], 48_000);
    path
}

on_every_mumble_server!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    an_unregistered_mumble_guest_with_an_allowed_name_cannot_key_the_radio,
    a_listed_certificate_keys_the_radio_for_whoever_holds_it_and_no_one_else,
);

async fn an_unregistered_mumble_guest_with_an_allowed_name_cannot_key_the_radio(
    server: MumbleServer,
) {
    let murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops"])
        .registered_user(5, "k1abc", PASSWORD)
        .registered_user(6, "k2xyz", PASSWORD)
        .start()
        .await
        .expect("murmurd starts");
    let station = start(
        murmur,
        &["mumble.ops/n0call", "mumble.ops/k2xyz", "mumble.ops/#5"],
    )
    .await;
    let wav = one_second_of_speech(station.dir.path());

    // n0call is not registered: anyone may connect under that name.
    let guest = station.user("n0call", "").await;
    let told = guest.wait_for_text(|t| t.message.contains("radio.uhf"), WAIT);
    let (sent, told) = tokio::join!(guest.send_wav(&wav, true), told);
    sent.expect("the guest talks");
    assert!(
        !station.ever_keyed(),
        "an unregistered guest named n0call keyed the radio"
    );
    let told = told.expect("the guest is told why the radio stays off");
    println!("the guest was told: {}", told.message);
    drop(guest);

    // A registered user whose registered name is listed keys it.
    let k2xyz = station.user("k2xyz", PASSWORD).await;
    let (sent, ()) = tokio::join!(k2xyz.send_wav(&wav, true), station.wait_keyed(true));
    sent.expect("k2xyz talks");
    station.wait_keyed(false).await;
    drop(k2xyz);

    // So does a registered user listed by user id, whatever their name.
    let k1abc = station.user("k1abc", PASSWORD).await;
    let (sent, ()) = tokio::join!(k1abc.send_wav(&wav, true), station.wait_keyed(true));
    sent.expect("k1abc talks");
    station.wait_keyed(false).await;
    drop(k1abc);
    station.stop().await;
}

async fn a_listed_certificate_keys_the_radio_for_whoever_holds_it_and_no_one_else(
    server: MumbleServer,
) {
    let murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops"])
        .start()
        .await
        .expect("murmurd starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let listed = certificate(dir.path(), "listed");
    let other = certificate(dir.path(), "other");
    // Upper-case as some tools print it: the hash matches regardless of case.
    let entry = format!("mumble.ops/cert:{}", listed.sha1.to_ascii_uppercase());
    let station = start(murmur, &[&entry]).await;
    let wav = one_second_of_speech(station.dir.path());

    // Another certificate does not key it.
    let stranger = station.user_with("op", "", Some(&other)).await;
    let told = stranger.wait_for_text(|t| t.message.contains("radio.uhf"), WAIT);
    let (sent, told) = tokio::join!(stranger.send_wav(&wav, true), told);
    sent.expect("the stranger talks");
    told.expect("the stranger is told why the radio stays off");
    assert!(!station.ever_keyed(), "another certificate keyed the radio");
    drop(stranger);

    // The listed one does, registered or not, whatever name its holder picks.
    let holder = station.user_with("someone", "", Some(&listed)).await;
    let (sent, ()) = tokio::join!(holder.send_wav(&wav, true), station.wait_keyed(true));
    sent.expect("the holder talks");
    station.wait_keyed(false).await;
    drop(holder);
    station.stop().await;
}
