//! The live WebSocket against people who never log on: idle sockets, floods of
//! bad logons and bad messages, silent connections (issue 13.3), and what such
//! people can make the bridge write to its log (13.4, 13.8).
//!
//! The first test runs the real binary under a 1024-descriptor limit (the soft
//! limit a process gets without the unit's `LimitNOFILE`); the others run the
//! daemon in-process and read its log through a capturing subscriber, installed
//! before anything else in this test binary logs.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
#[path = "live_common/mod.rs"]
mod live_common;

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bridge_common::{
    is_voice_message_from, metric, raise_own_descriptor_limit, setup, spawn_under_default_nofile,
    speech_packets, start_daemon, Setup, SERVER, WAIT,
};
use live_common::{Incoming, LiveClient};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;
use walkie_harness::{free_port, TestUser};

// ---- a log the tests can read ----------------------------------------------

#[derive(Clone)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Everything the daemons of this test binary logged (debug and up of the
/// bridge, as an operator chasing a problem would run it).
fn captured_log() -> Captured {
    static LOG: OnceLock<Captured> = OnceLock::new();
    LOG.get_or_init(|| {
        let log = Captured(Arc::new(Mutex::new(Vec::new())));
        let writer = log.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(
                "walkie_bridge=debug,info",
            ))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        log
    })
    .clone()
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

// ---- helpers ----------------------------------------------------------------

async fn bridge_with(
    edit: impl FnOnce(&mut walkie_bridge::config::Config),
) -> (Setup, bridge_common::Running, TestUser) {
    let mut setup = setup().await;
    edit(&mut setup.config);
    let bob = setup.member("bob").await;
    let running = start_daemon(&setup.config).await;
    (setup, running, bob)
}

fn error_code(answer: &Value) -> &str {
    assert_eq!(answer["command"], "on_error", "not an error: {answer}");
    answer["error"].as_str().unwrap_or("")
}

/// Waits for the bridge to close `client`; how long it took.
async fn closed_within(client: &mut LiveClient, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        match tokio::time::timeout_at(tokio::time::Instant::from_std(start + limit), client.next())
            .await
        {
            Ok(Incoming::Closed) => return start.elapsed(),
            Ok(_) => continue,
            Err(_) => panic!("the bridge did not close the connection within {limit:?}"),
        }
    }
}

fn bad_logon(seq: u64, user: &TestUser) -> Value {
    json!({
        "command": "logon", "seq": seq, "channel": "ops", "user_id": user.user_id,
        "device_id": user.device_id, "openid_token": "forged-forged-forged", "listen": true,
    })
}

// ---- 13.3: exhaustion under the default descriptor limit -------------------

const MAX_CONNECTIONS: usize = 300;
const PER_IP: usize = 8;
const FAILED_PER_CONNECTION: usize = 3;
const FAILED_PER_IP: usize = 6;

fn child_config(setup: &Setup, status: u16) -> String {
    let mut text = bridge_common::config_text(&setup.synapse.url(), setup.listen, setup.dir.path());
    text.push_str(&format!(
        "\n[status]\nlisten = \"127.0.0.1:{status}\"\n\n[live]\n\
         max_connections = {MAX_CONNECTIONS}\nmax_connections_per_ip = {PER_IP}\n\
         max_failed_logons = {FAILED_PER_CONNECTION}\nmax_failed_logons_per_ip = {FAILED_PER_IP}\n\
         # Longer than the test: idle sockets stay until the caps push them out.\n\
         logon_timeout_s = 300\nping_interval_s = 100\nidle_timeout_s = 300\n"
    ));
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_and_bad_logons_do_not_starve_the_bridge() {
    let _log = captured_log();
    const IDLE: usize = 1100;
    const PER_ADDRESS: usize = 10;
    raise_own_descriptor_limit(4096);
    let setup = setup().await;
    let bob = setup.member("bob").await;
    let status = free_port();
    let mut child = spawn_under_default_nofile(
        env!("CARGO_BIN_EXE_walkie-bridge"),
        &setup,
        &child_config(&setup, status),
        status,
    )
    .await;

    // Idle sockets from many addresses (never 127.0.0.1, the real client's).
    let mut idle = Vec::new();
    let mut refused = std::collections::BTreeMap::<u16, usize>::new();
    for n in 0..IDLE {
        let address = n / PER_ADDRESS;
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            1 + (address / 200) as u8,
            1 + (address % 200) as u8,
        ));
        match tokio::time::timeout(WAIT, LiveClient::connect_from(setup.listen, source)).await {
            Ok(Ok(client)) => idle.push(client),
            Ok(Err(tungstenite::Error::Http(response))) => {
                *refused.entry(response.status().as_u16()).or_default() += 1;
            }
            Ok(Err(error)) => panic!("idle socket {n}: {error}\n{}", child.log_tail(20)),
            Err(_) => panic!(
                "idle socket {n} got no answer within {WAIT:?}: the bridge is out of \
                 descriptors ({} held, refused {refused:?})\n{}",
                idle.len(),
                child.log_tail(20)
            ),
        }
    }
    eprintln!(
        "{} idle sockets upgraded, refused by status: {refused:?}",
        idle.len()
    );
    let per_ip_refusals = (PER_ADDRESS - PER_IP) * IDLE / PER_ADDRESS;
    assert_eq!(
        refused.get(&429).copied().unwrap_or(0),
        per_ip_refusals,
        "each address gets {PER_IP} connections"
    );
    let open = metric(status, "walkie_live_connections").await;
    let descriptors = std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .map(Iterator::count)
        .unwrap_or(0);
    eprintln!("the bridge holds {descriptors} descriptors, {open:?} live connections");
    assert!(
        open.is_some_and(|open| open <= MAX_CONNECTIONS as f64),
        "open live connections: {open:?} (cap {MAX_CONNECTIONS})"
    );

    // A real client still logs on, from 127.0.0.1.
    let mut talker = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;

    // Bad logons from one address, through a reverse proxy on 127.0.0.1 (trusted
    // by default): each connection is closed after a few, and after a few more
    // the address is refused without asking the homeserver. The proxy's own
    // address, the real client's, is not.
    let flooder = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let mut codes = Vec::new();
    for _ in 0..5 {
        let mut client = LiveClient::connect_forwarded_for(setup.listen, flooder)
            .await
            .expect("the flooder connects");
        for _ in 0..FAILED_PER_CONNECTION {
            let seq = client.next_seq();
            client.send_json(&bad_logon(seq, &bob)).await;
            match client.next().await {
                Incoming::Json(answer) => codes.push(error_code(&answer).to_owned()),
                other => panic!("{other:?} after {codes:?}"),
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), client.next()).await {
            Ok(Incoming::Closed) => {}
            other => panic!(
                "the connection lives on after {FAILED_PER_CONNECTION} refused logons: {other:?}"
            ),
        }
    }
    let asked = codes.iter().filter(|c| *c == "invalid_token").count();
    let limited = codes.iter().filter(|c| *c == "rate_limited").count();
    assert_eq!(
        (asked, limited),
        (FAILED_PER_IP, codes.len() - FAILED_PER_IP),
        "{codes:?}"
    );

    // A transmission from the real client is still archived.
    let (_, packets) = speech_packets();
    let stream = talker.start_stream().await;
    talker.until_floor("granted").await;
    talker
        .send_packets(stream, &packets, Duration::from_millis(2))
        .await;
    assert_eq!(talker.stop_stream(stream).await["success"], true);
    talker.until_floor("released").await;
    setup
        .synapse
        .client(&setup.alice)
        .sync_until(
            |e| is_voice_message_from(e, &format!("@walkie:{SERVER}")),
            WAIT,
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the live talk was not archived: {e}\n{}",
                child.log_tail(30)
            )
        });
    // And another logon works after all that.
    let again = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    assert!(child.is_running());
    again.close().await;
    talker.close().await;
    drop(idle);
}

// ---- 13.3: deadlines and presses --------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_and_presses_are_rate_limited() {
    let _log = captured_log();
    let (setup, running, bob) = bridge_with(|config| {
        let limits = &mut config.live.limits;
        limits.logon_timeout = Duration::from_secs(2);
        limits.ping_interval = Duration::from_secs(1);
        limits.idle_timeout = Duration::from_secs(3);
        limits.max_presses_per_minute = 2;
    })
    .await;

    // Never logs on: closed at the logon deadline.
    let mut anonymous = LiveClient::connect(setup.listen).await;
    let took = closed_within(&mut anonymous, Duration::from_secs(10)).await;
    assert!(took >= Duration::from_millis(1500), "closed after {took:?}");

    // Logged on, and answering pings (reading): stays, though it sends nothing.
    let mut listening = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    // Logged on, then deaf: no pongs, so it is closed at the idle timeout.
    let mut deaf = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    let quiet = Instant::now();
    let listened = async {
        while quiet.elapsed() < Duration::from_secs(5) {
            let next = tokio::time::timeout(Duration::from_millis(200), listening.next()).await;
            if let Ok(Incoming::Closed) = next {
                panic!("a client that answers pings was closed");
            }
        }
    };
    listened.await;
    // Only now does the deaf client read: its pings, then the close.
    let took = closed_within(&mut deaf, Duration::from_secs(1)).await;
    eprintln!("deaf client: closed ({took:?} after it read again)");

    // Presses beyond max_presses_per_minute are refused.
    for _ in 0..2 {
        let stream = listening.start_stream().await;
        listening.until_floor("granted").await;
        assert_eq!(listening.stop_stream(stream).await["success"], true);
        listening.until_floor("released").await;
    }
    let seq = listening.next_seq();
    listening
        .send_json(&json!({ "command": "start_stream", "seq": seq }))
        .await;
    let answer = listening.answer(seq).await;
    assert_eq!(error_code(&answer), "rate_limited", "{answer}");
    listening.close().await;
    running.stop().await;
}

// ---- 13.4: tokens stay out of the log ---------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_check_that_fails_in_transport_logs_no_token() {
    let log = captured_log();
    // Nothing listens there: the check fails with a connection error, whose text
    // names the URL the token is in.
    let dead = free_port();
    let (setup, running, bob) = bridge_with(|config| {
        config.live.openid_url = format!("http://127.0.0.1:{dead}/").parse().unwrap();
    })
    .await;
    let token = "walkie-secret-openid-token-4f1c9a";
    let mut client = LiveClient::connect(setup.listen).await;
    let seq = client.next_seq();
    client
        .send_json(&json!({
            "command": "logon", "seq": seq, "channel": "ops", "user_id": bob.user_id,
            "device_id": bob.device_id, "openid_token": token, "listen": true,
        }))
        .await;
    let answer = client.answer(seq).await;
    assert_eq!(error_code(&answer), "homeserver_unavailable", "{answer}");
    client.close().await;
    running.stop().await;
    let text = log.text();
    let failure = text
        .lines()
        .find(|l| l.contains("cannot check an OpenID token"))
        .expect("the failed check is logged");
    eprintln!("{failure}");
    let leaks: Vec<&str> = text.lines().filter(|l| l.contains(token)).collect();
    assert!(
        leaks.is_empty(),
        "the token is in the log:\n{}",
        leaks.join("\n")
    );
    assert!(!answer.to_string().contains(token), "{answer}");
}

// ---- 13.8: what anonymous clients make the bridge log ------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unverified_input_is_clipped_and_bad_message_warnings_are_rate_limited() {
    let log = captured_log();
    let (setup, running, _bob) = bridge_with(|_| {}).await;
    let mut client = LiveClient::connect(setup.listen).await;

    // A claimed user ID as long as a message may be.
    let long = format!("@{}:{SERVER}", "q".repeat(60_000));
    let seq = client.next_seq();
    client
        .send_json(&json!({
            "command": "logon", "seq": seq, "channel": "ops", "user_id": long,
            "device_id": "DEVICE", "openid_token": "t",
        }))
        .await;
    let answer = client.answer(seq).await;
    assert_eq!(error_code(&answer), "bad_request", "{answer}");

    // A stream of bad messages from a client that never logged on.
    const BAD: usize = 200;
    for n in 0..BAD {
        client
            .send_text(format!(
                "{{\"command\":\"dance\",\"seq\":{n},\"step\":\"{}\"}}",
                "z".repeat(n)
            ))
            .await;
    }
    for n in 0..BAD {
        let answer = client.next_json().await;
        assert_eq!(answer["seq"], n, "{answer}");
    }
    client.close().await;
    running.stop().await;

    let text = log.text();
    let clipped = "q".repeat(300);
    let long_lines: Vec<usize> = text
        .lines()
        .filter(|l| l.contains(&clipped))
        .map(str::len)
        .collect();
    assert!(
        long_lines.is_empty(),
        "{} log lines carry the unverified user ID, of lengths {long_lines:?}",
        long_lines.len()
    );
    let warnings = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("bad message from a live client"))
        .count();
    eprintln!("{warnings} warnings for {BAD} bad messages");
    assert!(
        warnings <= 10,
        "{warnings} warnings for {BAD} bad messages from one anonymous client"
    );
    assert!(
        answer.to_string().len() < 2048,
        "the answer echoes it all back"
    );
}
