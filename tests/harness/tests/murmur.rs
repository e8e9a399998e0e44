//! The harness against real Mumble servers (Debian 12's murmurd 1.3.4, Debian 13's
//! mumble-server 1.5) and pymumble.

#[path = "../../../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use walkie_harness::{on_every_mumble_server, MumbleEvent, MumbleServer, MumbleTestClient, Murmur};

const WAIT: Duration = Duration::from_secs(30);

async fn start(server: MumbleServer) -> Murmur {
    let started = Instant::now();
    let murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops", "Ops/Sub"])
        .welcome("Welcome to the <b>walkie</b> test server")
        .start()
        .await
        .expect("murmurd starts");
    eprintln!(
        "{} on {} ready in {:?} (launch to listening {:?})",
        server.label(),
        murmur.address(),
        started.elapsed(),
        murmur.started_in()
    );
    murmur
}

fn names(users: &[&str]) -> Vec<String> {
    users.iter().map(|u| u.to_string()).collect()
}

on_every_mumble_server!(
    #[tokio::test]
    murmurd_starts_and_a_client_enters_ops,
    speech_from_one_client_reaches_the_other,
    text_messages_reach_the_other_client,
    stop_and_start_again_keep_port_and_channels,
    kill_and_start_again_works,
    a_taken_port_fails_the_start_instead_of_hanging,
);

async fn murmurd_starts_and_a_client_enters_ops(server: MumbleServer) {
    let murmur = start(server).await;
    let version = murmur.binary_version().await.unwrap();
    let (major, minor) = server.version();
    assert!(
        version.starts_with(&format!("{major}.{minor}.")),
        "{server:?} runs {version}"
    );
    assert_eq!(murmur.host(), "127.0.0.1");
    assert_eq!(
        murmur.url(),
        format!("mumble://127.0.0.1:{}", murmur.port())
    );
    assert_eq!(murmur.channels(), names(&["Ops", "Ops/Sub"]));
    assert!(!murmur.superuser_password().is_empty());

    let alice = MumbleTestClient::join(&murmur, "alice", "Ops")
        .await
        .expect("alice connects and enters Ops");
    assert_eq!(alice.users().await.unwrap(), names(&["alice"]));

    let bob = MumbleTestClient::join(&murmur, "bob", "Ops/Sub")
        .await
        .expect("bob enters Ops/Sub");
    let everyone = alice.all_users().await.unwrap();
    let placed: Vec<(&str, &str)> = everyone
        .iter()
        .map(|u| (u.name.as_str(), u.channel.as_str()))
        .collect();
    assert_eq!(placed, [("alice", "Ops"), ("bob", "Ops/Sub")]);
    assert_eq!(bob.users().await.unwrap(), names(&["bob"]));

    // A channel that was not created is an error, not a silent stay in Root.
    let carol = MumbleTestClient::spawn().await.unwrap();
    let error = carol
        .connect(murmur.host(), murmur.port(), "carol", "Nowhere")
        .await
        .unwrap_err();
    assert!(error.to_string().contains("Nowhere"), "{error}");

    // The SuperUser password the harness set is the one murmurd checks.
    let admin = MumbleTestClient::spawn().await.unwrap();
    admin
        .connect_with_password(
            murmur.host(),
            murmur.port(),
            "SuperUser",
            murmur.superuser_password(),
            "",
        )
        .await
        .expect("SuperUser logs in with the harness's password");
    let intruder = MumbleTestClient::spawn().await.unwrap();
    intruder
        .connect_with_password(murmur.host(), murmur.port(), "SuperUser", "wrong", "")
        .await
        .expect_err("a wrong SuperUser password is rejected");
}

async fn speech_from_one_client_reaches_the_other(server: MumbleServer) {
    let murmur = start(server).await;
    let alice = MumbleTestClient::join(&murmur, "alice", "Ops")
        .await
        .unwrap();
    let bob = MumbleTestClient::join(&murmur, "bob", "Ops").await.unwrap();
    alice
        .wait_for_users(|users| users == names(&["alice", "bob"]), WAIT)
        .await
        .expect("alice sees bob in Ops");

    let source_path = common::fixtures().path("speech48000.wav");
    let (source, rate) = common::read_wav(&source_path);
    assert_eq!(rate, 48_000);

    bob.record_start().await.unwrap();
    let sent = alice.send_wav(&source_path, true).await.unwrap();
    assert_eq!(sent.samples, source.len() as u64);
    assert_eq!(sent.frames, source.len().div_ceil(960) as u64);
    // The transmission's end is the terminator frame: await it, then stop.
    bob.wait_for_event(
        |e| matches!(e, MumbleEvent::VoiceEnd { user, .. } if user == "alice"),
        WAIT,
    )
    .await
    .expect("bob receives alice's terminator");
    let dir = tempfile::tempdir().unwrap();
    let recording = bob.record_stop(dir.path()).await.unwrap();
    assert_eq!(
        recording.streams.keys().collect::<Vec<_>>(),
        ["alice"],
        "{recording:?}"
    );
    let stream = recording.get("alice").unwrap();
    assert_eq!(stream.terminators, 1, "{stream:?}");
    assert_eq!(stream.packets, sent.frames, "{stream:?}");

    let (received, rate) = common::read_wav(&stream.path);
    assert_eq!(rate, 48_000);
    assert_eq!(received.len() as u64, stream.samples);
    let source_ms = source.len() as f64 / 48.0;
    let received_ms = received.len() as f64 / 48.0;
    // Find the codec delay on half a second of speech, then correlate everything.
    let (start, _) = common::active_span(&source, 1000);
    let window = &source[start..start + 24_000];
    let (lag, _) = common::best_lag(window, &received[start..], 0..=2_400);
    let correlation = common::correlation_at(&source, &received, lag);
    let (source_db, received_db) = (common::energy_db(&source), common::energy_db(&received));
    eprintln!(
        "speech: source {source_ms:.1} ms, received {received_ms:.1} ms, lag {lag} samples \
         ({:.2} ms), correlation {correlation:.4}, energy {source_db:.2} → {received_db:.2} dBFS, \
         {} packets, sent in {:.3} s, first packet {:.3} s, last {:.3} s after record_start",
        lag as f64 / 48.0,
        stream.packets,
        sent.seconds,
        stream.first_at.unwrap(),
        stream.last_at.unwrap(),
    );
    assert!(
        (received_ms - source_ms).abs() <= 100.0,
        "received {received_ms:.1} ms of {source_ms:.1} ms"
    );
    assert!(
        correlation >= 0.8,
        "correlation {correlation:.4} at lag {lag}"
    );
    assert!(
        (received_db - source_db).abs() < 3.0,
        "energy {source_db:.2} → {received_db:.2} dBFS"
    );
    // Real time: 20 ms packets paced by the clock, not dumped at once.
    assert!(
        sent.seconds > source_ms / 1000.0 - 0.5,
        "{:.3} s to send {source_ms:.1} ms",
        sent.seconds
    );
}

async fn text_messages_reach_the_other_client(server: MumbleServer) {
    let murmur = start(server).await;
    let alice = MumbleTestClient::join(&murmur, "alice", "Ops")
        .await
        .unwrap();
    let bob = MumbleTestClient::join(&murmur, "bob", "Ops").await.unwrap();
    alice
        .wait_for_users(|users| users.contains(&"bob".to_string()), WAIT)
        .await
        .unwrap();

    alice
        .send_text("bob", "Floor is taken by <b>carol</b>")
        .await
        .unwrap();
    let text = bob
        .wait_for_text(|t| t.sender.as_deref() == Some("alice"), WAIT)
        .await
        .expect("bob gets alice's private message");
    assert_eq!(text.message, "Floor is taken by <b>carol</b>");
    assert!(text.private);

    bob.send_channel_text("over").await.unwrap();
    let text = alice
        .wait_for_text(|t| t.message == "over", WAIT)
        .await
        .expect("alice gets bob's channel message");
    assert_eq!(text.sender.as_deref(), Some("bob"));
    assert!(!text.private);

    // Only alice's: 1.5 also warns clients older than 1.4 (pymumble says 1.2)
    // about channel listeners, from the server (no sender).
    let bobs = bob.text_messages().await.unwrap();
    let from_users: Vec<_> = bobs.iter().filter(|t| t.sender.is_some()).collect();
    assert_eq!(from_users.len(), 1, "{bobs:?}");
    // The sender does not receive its own messages.
    assert!(alice
        .text_messages()
        .await
        .unwrap()
        .iter()
        .all(|t| t.sender.is_none() || t.sender.as_deref() == Some("bob")));
    assert!(alice.send_text("nobody", "hello").await.is_err());
}

async fn stop_and_start_again_keep_port_and_channels(server: MumbleServer) {
    let mut murmur = start(server).await;
    let port = murmur.port();
    let alice = MumbleTestClient::join(&murmur, "alice", "Ops/Sub")
        .await
        .unwrap();

    murmur.stop().await.unwrap();
    assert!(!murmur.is_running());
    alice
        .wait_for_event(|e| *e == MumbleEvent::Disconnected, WAIT)
        .await
        .expect("alice notices the server is gone");
    let error = alice
        .connect(murmur.host(), port, "alice", "Ops/Sub")
        .await
        .expect_err("nothing listens while murmurd is stopped");
    eprintln!("connect to the stopped server: {error}");

    murmur.start_again().await.expect("murmurd starts again");
    eprintln!("restart after stop: {:?}", murmur.started_in());
    assert_eq!(murmur.port(), port);
    alice
        .connect(murmur.host(), port, "alice", "Ops/Sub")
        .await
        .expect("alice is back in Ops/Sub after the restart");
    assert_eq!(alice.users().await.unwrap(), names(&["alice"]));
}

async fn kill_and_start_again_works(server: MumbleServer) {
    let mut murmur = start(server).await;
    let port = murmur.port();
    let alice = MumbleTestClient::join(&murmur, "alice", "Ops")
        .await
        .unwrap();
    let bob = MumbleTestClient::join(&murmur, "bob", "Ops").await.unwrap();

    murmur.kill().unwrap();
    assert!(!murmur.is_running());
    for client in [&alice, &bob] {
        client
            .wait_for_event(|e| *e == MumbleEvent::Disconnected, WAIT)
            .await
            .expect("the clients notice the crash");
    }

    murmur
        .start_again()
        .await
        .expect("murmurd starts again after SIGKILL");
    eprintln!("restart after kill: {:?}", murmur.started_in());
    assert_eq!(murmur.port(), port);
    alice
        .connect(murmur.host(), port, "alice", "Ops")
        .await
        .unwrap();
    bob.connect(murmur.host(), port, "bob", "Ops")
        .await
        .unwrap();
    alice
        .wait_for_users(|users| users == names(&["alice", "bob"]), WAIT)
        .await
        .expect("both are back in Ops");
    alice.send_text("bob", "still there?").await.unwrap();
    bob.wait_for_text(|t| t.message == "still there?", WAIT)
        .await
        .unwrap();
}

async fn a_taken_port_fails_the_start_instead_of_hanging(server: MumbleServer) {
    let mut murmur = start(server).await;
    murmur.stop().await.unwrap();
    // Something else takes murmurd's port while it is down. murmurd 1.3.4 does not
    // exit then (it logs the failure and runs on with the server stopped), and the
    // port does accept connections — the other listener's. The harness reads the log.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", murmur.port())).unwrap();
    let started = Instant::now();
    let error = murmur.start_again().await.expect_err("the port is taken");
    let text = error.to_string();
    assert!(text.contains("could not bind"), "{text}");
    assert!(text.contains("already in use"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(!murmur.is_running());

    drop(squatter);
    murmur.start_again().await.expect("the port is free again");
    let alice = MumbleTestClient::join(&murmur, "alice", "Ops")
        .await
        .unwrap();
    assert_eq!(alice.users().await.unwrap(), names(&["alice"]));
}
