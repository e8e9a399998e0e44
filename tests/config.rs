//! Configuration: the example against the structs, every invalid fixture against
//! its expected key and reason (library and CLI), environment overrides, warnings,
//! registration output, and secrets kept out of Debug output.
//!
//! Fixtures state their expectations in header comments:
//! `# expect: <key> | <reason substring>` — for invalid files an error, for valid
//! files a warning.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use walkie_bridge::config::{
    Config, ConfigErrors, Cos, CosLine, EndpointId, EndpointKind, EndpointSpec, Payload, Ptt,
    RoomRef, Warning, WaveformSource,
};
use walkie_bridge::hub::FloorSettings;

const NO_ENV: [(OsString, OsString); 0] = [];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn example() -> PathBuf {
    root().join("config/example.toml")
}

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = root().join("tests/fixtures/config").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn fixture(kind: &str, name: &str) -> PathBuf {
    root().join("tests/fixtures/config").join(kind).join(name)
}

/// `(key, reason substring)` pairs from the `# expect:` header lines.
fn expectations(path: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("# expect: "))
        .map(|l| {
            let (key, reason) = l
                .split_once(" | ")
                .unwrap_or_else(|| panic!("{}: bad expect line {l:?}", path.display()));
            (key.to_owned(), reason.to_owned())
        })
        .collect()
}

fn load(path: &Path) -> Result<(Config, Vec<Warning>), ConfigErrors> {
    Config::load_with_env(path, NO_ENV)
}

/// The CLI with no `WALKIE…` variables leaking in from the test's own environment.
fn cli(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().to_uppercase().starts_with("WALKIE") {
            cmd.env_remove(name);
        }
    }
    cmd.env_remove("RUST_LOG").args(args);
    cmd
}

fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run walkie-bridge");
    (
        status.code().expect("exited normally"),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

#[test]
fn example_passes_check_config() {
    let path = example();
    let (code, stdout, stderr) = run(&mut cli(&["check-config", path.to_str().unwrap()]));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stdout.trim(), "ok: 2 channels, 4 endpoints");
    assert!(
        !stderr.contains("warning"),
        "the example should have no warnings: {stderr}"
    );
}

#[test]
fn example_deserializes_to_the_structs() {
    let (config, warnings) = load(&example()).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");

    assert_eq!(config.homeserver.url.as_str(), "http://127.0.0.1:8008/");
    assert_eq!(config.homeserver.domain, "example.org");
    let a = &config.appservice;
    assert_eq!(a.listen.to_string(), "127.0.0.1:29333");
    assert_eq!(a.url.as_str(), "http://127.0.0.1:29333/");
    assert_eq!(
        (
            a.id.as_str(),
            a.bot_localpart.as_str(),
            a.puppet_prefix.as_str()
        ),
        ("walkie", "walkie", "walkie_")
    );
    assert_ne!(a.as_token.expose(), a.hs_token.expose());
    assert_eq!(
        config.database.url,
        "sqlite:///var/lib/walkie-bridge/walkie.db"
    );
    assert_eq!(
        config.floor.settings(),
        FloorSettings {
            max_talk: Duration::from_secs(60),
            idle_release: Duration::from_millis(1500),
            hang: Duration::from_millis(300),
            queue: true,
            queue_max: 10,
        }
    );
    assert_eq!(config.archive.min_archive, Duration::from_millis(300));
    assert_eq!(config.archive.waveform, WaveformSource::Decoded);
    assert_eq!(config.logging.level, "info");
    assert!(config.live.enabled);
    assert_eq!(config.live.homeserver_url, config.homeserver.url);
    assert_eq!(config.live.openid_url, config.homeserver.url);
    assert_eq!(config.live.max_clients, 50);
    assert_eq!(
        config.live.limits,
        walkie_bridge::config::LiveLimits {
            max_connections: 400,
            max_connections_per_ip: 16,
            logon_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            max_failed_logons: 10,
            max_failed_logons_per_ip: 30,
            max_presses_per_minute: 60,
        }
    );
    assert_eq!(
        config.live.trusted_proxies,
        [
            "127.0.0.1".parse::<std::net::IpAddr>().unwrap(),
            "::1".parse().unwrap()
        ]
    );
    assert_eq!(
        config.http,
        walkie_bridge::config::HttpConfig {
            header_timeout: Duration::from_secs(10),
            max_connections: 256,
            max_connections_per_ip: 16,
            homeserver_addresses: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            homeserver_connections: 64,
        }
    );

    let [channel, net] = config.channels.as_slice() else {
        panic!("two channels expected: {:?}", config.channels);
    };
    assert_eq!(channel.name, "ops");
    assert_eq!(channel.room, RoomRef::Alias("#ops:example.org".into()));
    let ids: Vec<String> = channel.endpoints.iter().map(ToString::to_string).collect();
    assert_eq!(ids, ["mumble.ops", "mqtt.lobby", "radio.uhf"]);
    assert_eq!(net.name, "net");
    let Some(EndpointSpec::SvxReflector(svx)) =
        config.endpoint(&"svxreflector.net".parse().unwrap())
    else {
        panic!("svxreflector.net missing");
    };
    assert_eq!(svx.server.to_string(), "reflector.example.org:5300");
    assert_eq!((svx.callsign.as_str(), svx.talkgroup), ("N0CALL", Some(91)));
    assert_eq!(svx.auth_key.expose(), "change me");
    assert_eq!(svx.transmit_allow.len(), 2);

    let Some(EndpointSpec::Mumble(m)) =
        config.endpoint(&EndpointId::new(EndpointKind::Mumble, "ops"))
    else {
        panic!("mumble.ops missing");
    };
    assert_eq!(m.server.to_string(), "mumble.example.org:64738");
    assert_eq!((m.channel.as_str(), m.username.as_str()), ("Ops", "walkie"));
    assert!(m.password.is_none() && !m.accept_invalid_cert && !m.announce_talker);

    let Some(EndpointSpec::Mqtt(q)) = config.endpoint(&"mqtt.lobby".parse().unwrap()) else {
        panic!("mqtt.lobby missing");
    };
    assert_eq!(
        (q.broker.tls, q.broker.host.as_str(), q.broker.port),
        (false, "127.0.0.1", 1883)
    );
    assert_eq!(q.prefix, "walkie/lobby");
    assert_eq!(q.payload, Payload::Opus);
    assert_eq!(q.keep_alive, Duration::from_secs(30));
    assert_eq!(q.max_priority, walkie_endpoint::Priority::Normal);
    assert!(q.device_max_priority.is_empty());

    let Some(EndpointSpec::Radio(r)) = config.endpoint(&"radio.uhf".parse().unwrap()) else {
        panic!("radio.uhf missing");
    };
    assert_eq!(r.port.as_deref(), Some(Path::new("/dev/ttyUSB0")));
    assert_eq!(r.ptt, Ptt::Rts);
    assert_eq!(
        r.cos,
        Cos::Line {
            line: CosLine::Cts,
            active_low: false
        }
    );
    assert_eq!(r.callsign.as_deref(), Some("N0CALL"));
    assert_eq!(r.tx_delay, Duration::from_millis(150));
    assert_eq!(r.tx_timeout, Duration::from_secs(180));
    assert_eq!(r.vox.threshold_dbfs, -40.0);
    assert_eq!(r.id_interval, Duration::from_secs(600));
    use walkie_endpoint::{Identity, Talker};
    let user = "@k1abc:example.org";
    let matrix = Talker {
        matrix_user_id: Some(user.into()),
        ..Talker::new(user, "k1abc")
    };
    assert!(r.transmit_allow[1].matches("live.ops", &matrix));
    let registered = |name: &str| {
        Talker::new(name, name).with_identity(Identity::Registered {
            user_id: 7,
            certificate: None,
        })
    };
    assert!(r.transmit_allow[2].matches("mumble.ops", &registered("n0call")));
    assert!(!r.transmit_allow[2].matches("mumble.ops", &registered("k1abc")));
    // A guest who calls themselves n0call is not the registered n0call.
    assert!(!r.transmit_allow[2].matches("mumble.ops", &Talker::unverified("n0call", "n0call")));
    assert_eq!((r.id_wpm, r.id_tone_hz), (20, 800));
    assert!(r.rigctld.is_none());
}

#[test]
fn minimal_config_takes_the_design_defaults() {
    let (config, _) = load(&fixture("valid", "minimal.toml")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.floor.settings(), FloorSettings::default());
    assert_eq!(
        config.channels[0].room,
        RoomRef::Id("!opaqueRoomIdOfRoomVersion12".into())
    );
    let Some(EndpointSpec::Radio(r)) = config.endpoint(&"radio.uhf".parse().unwrap()) else {
        panic!("radio.uhf missing");
    };
    assert_eq!((r.ptt, r.cos, r.ptt_invert), (Ptt::Rts, Cos::Vox, false));
    assert_eq!(
        (r.audio_in.as_str(), r.audio_out.as_str()),
        ("default", "default")
    );
    assert_eq!(r.ptt_hang, Duration::from_millis(200));
    assert_eq!(r.vox.attack, Duration::from_millis(40));
    assert_eq!(r.vox.hang, Duration::from_millis(800));
    assert_eq!(r.rx_mute_after_tx, Duration::from_millis(500));
    assert!(r.callsign.is_none() && r.transmit_allow.is_empty());
    assert!(config.database.url.starts_with("sqlite://"));
    assert_eq!(
        config.http,
        walkie_bridge::config::HttpConfig::default(),
        "[http] defaults as documented"
    );
    assert_eq!(
        config.status.listen,
        Some(
            walkie_bridge::config::DEFAULT_STATUS_LISTEN
                .parse()
                .unwrap()
        ),
        "status pages default to loopback"
    );
}

#[test]
fn status_listen_can_be_turned_off_and_warns_off_loopback() {
    let text = std::fs::read_to_string(fixture("valid", "minimal.toml")).unwrap();
    let off = format!("{text}\n[status]\nlisten = \"\"\n");
    let (config, warnings) =
        Config::from_toml_str(&off, "off.toml", NO_ENV).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.status.listen, None);
    assert!(warnings.is_empty(), "{warnings:?}");
    let open = format!("{text}\n[status]\nlisten = \"0.0.0.0:29334\"\n");
    let (config, warnings) =
        Config::from_toml_str(&open, "open.toml", NO_ENV).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.status.listen, Some("0.0.0.0:29334".parse().unwrap()));
    assert!(
        warnings
            .iter()
            .any(|w| w.to_string().contains("status.listen") && w.to_string().contains("no login")),
        "{warnings:?}"
    );
}

#[test]
fn every_invalid_fixture_fails_with_its_key_and_reason() {
    let files = fixtures("invalid");
    assert!(files.len() >= 12, "fixtures missing: {files:?}");
    for path in files {
        let expected = expectations(&path);
        assert!(!expected.is_empty(), "{}: no expect lines", path.display());
        let errors = match load(&path) {
            Ok(_) => panic!("{} was accepted", path.display()),
            Err(errors) => errors,
        };
        for (key, reason) in &expected {
            assert!(
                errors
                    .iter()
                    .any(|e| e.key.as_deref() == Some(key.as_str()) && e.reason.contains(reason)),
                "{}: expected `{key}: …{reason}…`, got:\n{errors}",
                path.display()
            );
        }
        for e in errors.iter() {
            assert_eq!(e.file, path, "errors name the file");
        }
    }
}

#[test]
fn check_config_reports_every_error_and_exits_2() {
    for path in fixtures("invalid") {
        let shown = path.to_str().unwrap();
        let (code, stdout, stderr) = run(&mut cli(&["check-config", "-c", shown]));
        assert_eq!(code, 2, "{shown}: stderr: {stderr}");
        assert!(stdout.is_empty(), "{shown}: {stdout}");
        for (key, reason) in expectations(&path) {
            let line = stderr
                .lines()
                .find(|l| l.starts_with(&format!("error: {shown}: {key}: ")))
                .unwrap_or_else(|| panic!("{shown}: no error line for {key} in:\n{stderr}"));
            assert!(line.contains(&reason), "{line:?} lacks {reason:?}");
        }
    }
}

#[test]
fn missing_endpoint_message_names_file_key_and_reason() {
    let path = fixture("invalid", "missing-endpoint.toml");
    let errors = load(&path).unwrap_err();
    assert_eq!(
        errors.to_string(),
        format!(
            "{}: channel[0].endpoints[1]: no endpoint \"mqtt.lobby\" is configured",
            path.display()
        )
    );
}

#[test]
fn unused_endpoint_is_a_warning_and_exits_0() {
    let path = fixture("valid", "unused-endpoint.toml");
    let (code, stdout, stderr) = run(&mut cli(&["check-config", path.to_str().unwrap()]));
    assert_eq!(code, 0, "stderr: {stderr}");
    assert_eq!(stdout.trim(), "ok: 1 channels, 4 endpoints");
    for (key, message) in expectations(&path) {
        assert!(
            stderr.lines().any(|l| l.starts_with("warning: ")
                && l.contains(&format!(": {key}: "))
                && l.contains(&message)),
            "no warning for {key}: {stderr}"
        );
    }
    let (_, warnings) = load(&path).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[test]
fn missing_file_exits_2() {
    let (code, _, stderr) = run(&mut cli(&["check-config", "/nonexistent/walkie.toml"]));
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/walkie.toml: cannot read the file"));
}

#[test]
fn walkie_config_env_names_the_file() {
    let path = fixture("invalid", "bad-room.toml");
    let (code, _, stderr) = run(cli(&["check-config"]).env("WALKIE_CONFIG", &path));
    assert_eq!(code, 2);
    assert!(stderr.contains("channel[0].room"), "{stderr}");
}

#[test]
fn env_overrides_typed_values() {
    let env = [
        ("WALKIE__FLOOR__MAX_TALK_S", "30"),
        ("WALKIE__FLOOR__QUEUE", "false"),
        ("WALKIE__RADIO__UHF__TX_DELAY_MS", "250"),
        ("WALKIE__RADIO__UHF__VOX_THRESHOLD_DBFS", "-35.5"),
        ("WALKIE__MQTT__LOBBY__PAYLOAD", "pcm16"),
        ("WALKIE__APPSERVICE__AS_TOKEN", "0123"),
        ("UNRELATED__FLOOR__MAX_TALK_S", "7"),
    ];
    let (config, _) = Config::load_with_env(example(), env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.floor.max_talk, Duration::from_secs(30));
    assert!(!config.floor.queue);
    let Some(EndpointSpec::Radio(r)) = config.endpoint(&"radio.uhf".parse().unwrap()) else {
        panic!("radio.uhf missing");
    };
    assert_eq!(r.tx_delay, Duration::from_millis(250));
    assert_eq!(r.vox.threshold_dbfs, -35.5);
    let Some(EndpointSpec::Mqtt(q)) = config.endpoint(&"mqtt.lobby".parse().unwrap()) else {
        panic!("mqtt.lobby missing");
    };
    assert_eq!(q.payload, Payload::Pcm16);
    // A numeric-looking token must not be reparsed into 123.
    assert_eq!(config.appservice.as_token.expose(), "0123");
}

#[test]
fn env_override_reaches_the_cli() {
    let path = example();
    let path = path.to_str().unwrap();

    let (code, _, stderr) = run(cli(&["check-config", path]).env("WALKIE__FLOOR__MAX_TALK_S", "0"));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("floor.max_talk_s: must not be 0")
            && stderr.contains("environment variable WALKIE__FLOOR__MAX_TALK_S"),
        "{stderr}"
    );

    let (code, stdout, stderr) = run(cli(&["generate-registration", "-c", path])
        .env("WALKIE__APPSERVICE__LISTEN", "127.0.0.1:40000"));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("url: http://127.0.0.1:40000\n"), "{stdout}");
}

#[derive(serde::Deserialize)]
struct Registration {
    id: String,
    url: String,
    as_token: String,
    hs_token: String,
    sender_localpart: String,
    rate_limited: bool,
    receive_ephemeral: bool,
    #[serde(rename = "de.sorunome.msc2409.push_ephemeral")]
    push_ephemeral: bool,
    #[serde(rename = "org.matrix.msc3202")]
    msc3202: bool,
    #[serde(rename = "io.element.msc4190")]
    msc4190: bool,
    protocols: Vec<String>,
    namespaces: Namespaces,
}

#[derive(serde::Deserialize)]
struct Namespaces {
    users: Vec<Namespace>,
}

#[derive(serde::Deserialize)]
struct Namespace {
    exclusive: bool,
    regex: String,
}

#[test]
fn generate_registration_prints_parseable_yaml() {
    let path = example();
    let (code, stdout, stderr) = run(&mut cli(&[
        "generate-registration",
        "-c",
        path.to_str().unwrap(),
    ]));
    assert_eq!(code, 0, "{stderr}");
    let reg: Registration =
        serde_norway::from_str(&stdout).unwrap_or_else(|e| panic!("{e}\n{stdout}"));
    let (config, _) = load(&path).unwrap();

    assert_eq!(reg.id, "walkie");
    assert_eq!(reg.url, "http://127.0.0.1:29333");
    assert_eq!(reg.as_token, config.appservice.as_token.expose());
    assert_eq!(reg.hs_token, config.appservice.hs_token.expose());
    assert_eq!(reg.sender_localpart, "walkie");
    assert!(!reg.rate_limited && reg.receive_ephemeral && reg.push_ephemeral);
    assert!(reg.msc3202 && reg.msc4190, "what encrypted rooms need");
    assert!(reg.protocols.is_empty());
    assert!(reg.namespaces.users.iter().all(|n| n.exclusive));

    let regexes: Vec<regex::Regex> = reg
        .namespaces
        .users
        .iter()
        .map(|n| regex::Regex::new(&n.regex).unwrap())
        .collect();
    let claimed = |user: &str| regexes.iter().any(|r| r.is_match(user));
    assert_eq!(reg.namespaces.users[0].regex, r"^@walkie_.*:example\.org$");
    assert!(claimed("@walkie_mumble_alice:example.org"));
    assert!(claimed("@walkie:example.org"), "the bot");
    assert!(!claimed("@alice:example.org"));
    assert!(!claimed("@walkie_x:exampleXorg"), "the dot is escaped");
    assert!(!claimed("@walkie_x:example.org.evil.test"));
}

#[test]
fn generate_registration_refuses_a_bad_config() {
    let path = fixture("invalid", "equal-tokens.toml");
    let (code, stdout, stderr) = run(&mut cli(&[
        "generate-registration",
        "-c",
        path.to_str().unwrap(),
    ]));
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(
        !stderr.contains("test-as-token"),
        "a token leaked: {stderr}"
    );
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let (config, _) =
        load(&fixture("valid", "with-secrets.toml")).unwrap_or_else(|e| panic!("{e}"));
    let debug = format!("{config:?} {:#?}", config.endpoints);
    for secret in [
        "test-as-token",
        "test-hs-token",
        "mumble-secret-pw",
        "mqtt-secret-pw",
    ] {
        assert!(!debug.contains(secret), "{secret} leaked into Debug output");
    }
    assert!(debug.contains("***"));
    let Some(EndpointSpec::Mumble(m)) = config.endpoint(&"mumble.ops".parse().unwrap()) else {
        panic!("mumble.ops missing");
    };
    assert_eq!(
        m.password.as_ref().map(|p| p.expose()),
        Some("mumble-secret-pw")
    );
}

/// Every endpoint of the example (Mumble, MQTT, radio) is built: `run` gets past
/// building them to waiting for the homeserver, and SIGTERM ends that wait cleanly.
/// The example's paths and addresses are moved to a temp dir and free ports with
/// `WALKIE__` overrides; its homeserver is a port nobody listens on.
#[test]
fn run_builds_every_endpoint_of_the_example_and_stops_on_sigterm_while_waiting() {
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port()
    };
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let mut cmd = cli(&["run", "-c", example().to_str().unwrap()]);
    cmd.env(
        "WALKIE__HOMESERVER__URL",
        format!("http://127.0.0.1:{}", free()),
    )
    .env(
        "WALKIE__DATABASE__URL",
        format!("sqlite://{}", dir.path().join("walkie.db").display()),
    )
    .env("WALKIE__ARCHIVE__SPOOL_DIR", dir.path().join("spool"))
    .env(
        "WALKIE__APPSERVICE__LISTEN",
        format!("127.0.0.1:{}", free()),
    )
    .env("WALKIE__STATUS__LISTEN", format!("127.0.0.1:{}", free()))
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&log).unwrap());
    let mut child = cmd.spawn().expect("walkie-bridge runs");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let stderr = std::fs::read_to_string(&log).unwrap_or_default();
        if stderr.contains("homeserver not reachable yet") {
            assert!(
                !stderr.contains("cannot run this configuration"),
                "{stderr}"
            );
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("run exited ({status}) before waiting for the homeserver:\n{stderr}");
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("run never waited for the homeserver:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "no exit within 5 s of SIGTERM:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

#[test]
fn run_with_a_bad_config_exits_2() {
    let path = fixture("invalid", "bad-listen.toml");
    let (code, _, stderr) = run(&mut cli(&["run", "-c", path.to_str().unwrap()]));
    assert_eq!(code, 2);
    assert!(stderr.contains("appservice.listen"), "{stderr}");
}

/// `--version` says the release and the commit the binary was built from, so an
/// operator's bug report names the exact code.
#[test]
fn version_names_the_release_and_the_commit() {
    let (code, stdout, _) = run(&mut cli(&["--version"]));
    assert_eq!(code, 0);
    let line = stdout.trim();
    let expected_start = format!("walkie-bridge {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected_start), "{line}");
    let commit = line[expected_start.len()..]
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("{line}"));
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(root())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    match head {
        // Built in this checkout: this commit, dirty or not.
        Some(head) => assert_eq!(commit.trim_end_matches("-dirty"), head, "{line}"),
        // No git here (a source tarball): the build could not know.
        None => assert_eq!(commit, "unknown", "{line}"),
    }
}
