//! `walkie-bridge doctor` (the real binary) against a real Synapse and a real
//! SvxReflector: a good setup passes every check, with the bridge running and
//! without it (then doctor's own stand-in answers the homeserver's ping); each
//! broken piece is one ✗ line that says what to do, and exit 1.

mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::path::Path;

use bridge_common::{Setup, SERVER};
use walkie_harness::{Mosquitto, Murmur, SvxReflector, SvxReflectorVersion, PERMISSION_SPEAK};

const KEY: &str = "a shared key";
const BROKER_USER: &str = "bridge";
const BROKER_PASSWORD: &str = "broker password";

/// The servers of a setup besides Synapse.
struct Servers {
    reflector: SvxReflector,
    broker: Mosquitto,
    murmur: Murmur,
}

async fn servers() -> Servers {
    Servers {
        reflector: reflector().await,
        broker: Mosquitto::builder()
            .credentials(BROKER_USER, BROKER_PASSWORD)
            .start()
            .await
            .expect("mosquitto starts"),
        murmur: Murmur::builder()
            .channels(&["Ops"])
            .start()
            .await
            .expect("murmurd starts"),
    }
}

/// The test configuration with `[svxreflector.net]` on the channel; `edit`
/// breaks what a test wants broken.
fn write_config(
    setup: &Setup,
    servers: &Servers,
    edit: impl Fn(String) -> String,
) -> std::path::PathBuf {
    let (reflector, broker) = (&servers.reflector, &servers.broker);
    let text = bridge_common::config_text_with(
        &setup.synapse.url(),
        setup.listen,
        setup.dir.path(),
        &servers.murmur.address(),
    )
    .replace(
        r#"endpoints = ["mumble.ops"]"#,
        r#"endpoints = ["mumble.ops", "svxreflector.net", "mqtt.lobby"]"#,
    )
        + &*format!(
            "\n[svxreflector.net]\nserver = \"{}\"\ncallsign = \"SM0BRG\"\nauth_key = \"{KEY}\"\n\
             \n[status]\nlisten = \"127.0.0.1:{}\"\n\
             \n[mqtt.lobby]\nbroker = \"{}\"\nprefix = \"walkie/lobby\"\nusername = \"{BROKER_USER}\"\n\
             password = \"{BROKER_PASSWORD}\"\n",
            reflector.address(),
            walkie_harness::free_port(),
            broker.url()
        );
    let path = setup.dir.path().join("doctor.toml");
    std::fs::write(&path, edit(text)).expect("config written");
    path
}

/// The /status port written into `config`.
fn status_port(config: &Path) -> u16 {
    let text = std::fs::read_to_string(config).expect("config");
    let config = bridge_common::load(&text);
    config.status.listen.expect("status listens").port()
}

/// Exit code and the printed lines.
fn doctor(config: &Path) -> (i32, String) {
    doctor_at_home(config, None)
}

/// `HOME` decides where alsa-lib finds the test's `.asoundrc` (its sound cards).
fn doctor_at_home(config: &Path, home: Option<&Path>) -> (i32, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
    command
        .args(["doctor", "-c"])
        .arg(config)
        .env_remove("WALKIE_CONFIG");
    if let Some(home) = home {
        command.env("HOME", home);
    }
    let out = command.output().expect("walkie-bridge doctor");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), stdout)
}

fn line<'a>(output: &'a str, start: &str) -> &'a str {
    output
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{output}"))
}

async fn reflector() -> SvxReflector {
    SvxReflector::builder(SvxReflectorVersion::V19_09)
        .node("SM0BRG", KEY)
        .start()
        .await
        .expect("reflector starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_setup_passes_with_and_without_the_bridge_running() {
    let setup = bridge_common::setup().await;
    let servers = servers().await;
    let reflector = &servers.reflector;
    let config = write_config(&setup, &servers, |t| t);
    // The bridge joins its room when it starts; doctor then finds it there.
    let running = bridge_common::start_daemon(&bridge_common::load(
        &std::fs::read_to_string(&config).expect("config"),
    ))
    .await;
    reflector
        .wait_for_log("SM0BRG: Login OK", bridge_common::WAIT)
        .await
        .expect("the bridge's node logs in");
    // And its Mumble bot is in Ops (/status has no push: asked every 100 ms).
    let status = status_port(&config);
    let deadline = std::time::Instant::now() + bridge_common::WAIT;
    loop {
        let answer = reqwest::get(format!("http://127.0.0.1:{status}/status")).await;
        let text = match answer {
            Ok(answer) => answer.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let mumble_connected = status["channels"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| {
                e.iter()
                    .any(|e| e["id"] == "mumble.ops" && e["state"] == "connected")
            });
        if mumble_connected {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the bot never connected: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (code, out) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || doctor(&config)
    })
    .await
    .expect("doctor");
    assert_eq!(code, 0, "{out}");
    assert!(
        line(&out, "✓ appservice").contains("the running bridge"),
        "{out}"
    );
    // Its node is logged in, and a second login would be refused: /status says.
    assert!(
        line(&out, "✓ svxreflector.net").contains("the running bridge is connected"),
        "{out}"
    );
    running.stop().await;

    let (code, out) = tokio::task::spawn_blocking(move || doctor(&config))
        .await
        .expect("doctor");
    assert_eq!(code, 0, "{out}");
    for start in [
        "✓ config",
        "✓ homeserver",
        "✓ as_token",
        "✓ appservice",
        "✓ room #ops",
        "✓ svxreflector.net",
        "✓ mqtt.lobby",
        "✓ mumble.ops",
    ] {
        line(&out, start);
    }
    assert!(line(&out, "✓ appservice").contains("stand-in"), "{out}");
    assert!(
        line(&out, "✓ as_token").contains(&format!("@walkie:{SERVER}")),
        "{out}"
    );
    assert!(!out.contains('✗'), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_piece_is_one_cross_with_what_to_do() {
    let setup = bridge_common::setup().await;
    let servers = servers().await;
    let run = |edit: Box<dyn Fn(String) -> String + Send>| {
        let config = write_config(&setup, &servers, edit);
        tokio::task::spawn_blocking(move || doctor(&config))
    };

    // The bot has never joined the room (the bridge never ran).
    let (code, out) = run(Box::new(|t| t)).await.expect("doctor");
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "✗ room #ops").contains("cannot read"), "{out}");
    assert!(out.contains(&format!("→ invite @walkie:{SERVER}")), "{out}");
    assert_eq!(out.matches('✗').count(), 1, "{out}");

    // A config whose tokens are not the registration's.
    let (code, out) = run(Box::new(|t| {
        t.replace("as-token-for-the-matrix-bridge-test", "another-as-token")
    }))
    .await
    .expect("doctor");
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "✗ as_token").contains("refused"), "{out}");
    assert!(out.contains("generate-registration"), "{out}");
    let (code, out) = run(Box::new(|t| {
        t.replace("hs-token-for-the-matrix-bridge-test", "another-hs-token")
    }))
    .await
    .expect("doctor");
    assert_eq!(code, 1, "{out}");
    line(&out, "✓ as_token");
    assert!(line(&out, "✗ appservice").contains("M_BAD_STATUS"), "{out}");
    assert!(out.contains("another hs_token"), "{out}");

    // The reflector does not know this key.
    let (code, out) = run(Box::new(|t| {
        t.replace(&format!("auth_key = \"{KEY}\""), "auth_key = \"wrong\"")
    }))
    .await
    .expect("doctor");
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "✗ svxreflector.net").contains("Access denied"),
        "{out}"
    );
    assert!(out.contains("ask the reflector's sysop"), "{out}");

    // The broker does not take this password.
    let (code, out) = run(Box::new(|t| t.replace(BROKER_PASSWORD, "not the password")))
        .await
        .expect("doctor");
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "✗ mqtt.lobby").contains("refused the login"),
        "{out}"
    );

    // No such Mumble channel.
    let (code, out) = run(Box::new(|t| {
        t.replace("channel = \"Ops\"", "channel = \"Nowhere\"")
    }))
    .await
    .expect("doctor");
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "✗ mumble.ops").contains("Nowhere"), "{out}");

    // No homeserver there: nothing after it can be checked.
    let (code, out) = run(Box::new(|t| {
        t.replace(&setup.synapse.url(), "http://127.0.0.1:9")
    }))
    .await
    .expect("doctor");
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "✗ homeserver").contains("unreachable"), "{out}");
    assert!(!out.contains("as_token"), "{out}");
}

/// A Mumble channel where the bot may not speak: logged in, and told it is
/// not heard there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mumble_channel_where_the_bot_may_not_speak_is_a_cross() {
    let setup = bridge_common::setup().await;
    let mut servers = servers().await;
    servers.murmur = Murmur::builder()
        .channels(&["Ops"])
        .deny_everyone("Ops", PERMISSION_SPEAK)
        .start()
        .await
        .expect("murmurd starts");
    let config = write_config(&setup, &servers, |t| t);
    let (code, out) = tokio::task::spawn_blocking(move || doctor(&config))
        .await
        .expect("doctor");
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "✗ mumble.ops").contains("may not speak"),
        "{out}"
    );
    assert!(out.contains("Speak permission"), "{out}");
}

/// A radio keyed through rigctld: doctor opens its PTT and reads it unkeyed,
/// even from keyed (what `unkey` does), and opens its sound card (ALSA's null
/// PCM behind a named hint); with nobody at the address, a cross, and a card
/// that does not exist is one too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_radio_on_rigctld_reads_unkeyed_and_a_dead_rigctld_is_a_cross() {
    let setup = bridge_common::setup().await;
    let servers = servers().await;
    let rig = walkie_harness::Rigctld::start();
    rig.rigctl(&["T", "1"]);
    assert!(rig.ptt_keyed(), "the rig starts keyed");
    let home = setup.dir.path().to_path_buf();
    std::fs::write(
        home.join(".asoundrc"),
        "pcm.doctor_card {\n    type null\n    hint { show on description \"walkie test: a card\" }\n}\n",
    )
    .expect("asoundrc");
    let radio = |address: String, card: &'static str| {
        move |text: String| {
            text + &*format!(
                "\n[radio.uhf]\nptt = \"rigctld\"\nrigctld = \"{address}\"\ncos = \"vox\"\n\
                 audio_in = \"{card}\"\naudio_out = \"{card}\"\n"
            )
        }
    };
    let config = write_config(&setup, &servers, radio(rig.address(), "doctor_card"));
    let at = home.clone();
    let (code, out) = tokio::task::spawn_blocking(move || doctor_at_home(&config, Some(&at)))
        .await
        .expect("doctor");
    assert!(
        line(&out, "✓ radio.uhf rigctld").contains("reads unkeyed"),
        "{out}"
    );
    assert!(
        line(&out, "✓ radio.uhf sound card doctor_card").contains("capture at"),
        "{out}"
    );
    assert!(!rig.ptt_keyed(), "doctor left the rig keyed");
    // The bot has never joined the room here: that is the one other cross.
    assert_eq!((code, out.matches('✗').count()), (1, 1), "{out}");

    let nobody = format!("127.0.0.1:{}", walkie_harness::free_port());
    let config = write_config(&setup, &servers, radio(nobody, "no_such_card"));
    let (code, out) = tokio::task::spawn_blocking(move || doctor_at_home(&config, Some(&home)))
        .await
        .expect("doctor");
    assert_eq!(code, 1, "{out}");
    assert!(
        line(&out, "✗ radio.uhf rigctld").contains("rigctld"),
        "{out}"
    );
    assert!(
        line(&out, "✗ radio.uhf sound card no_such_card").contains("no_such_card"),
        "{out}"
    );
}

/// A serial PTT on a port that is not there: the port's own line says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_serial_port_is_a_cross_of_its_own() {
    let setup = bridge_common::setup().await;
    let servers = servers().await;
    let config = write_config(&setup, &servers, |text| {
        text + "\n[radio.uhf]\nptt = \"rts\"\nport = \"/dev/ttyWALKIE-not-plugged-in\"\ncos = \"vox\"\n"
    });
    let (code, out) = tokio::task::spawn_blocking(move || doctor(&config))
        .await
        .expect("doctor");
    assert_eq!(code, 1, "{out}");
    let port = line(&out, "✗ radio.uhf /dev/ttyWALKIE-not-plugged-in");
    assert!(port.contains("No such file"), "{out}");
}
