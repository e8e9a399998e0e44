//! Faults the bridge must live through without losing or doubling a transmission:
//! a full spool, a broker and a Mumble server that die mid-stream, a bridge
//! SIGKILLed mid-transmission, and garbage from each side.

mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use bridge_common::{is_voice_message_from, setup, speech_packets, transmit, SERVER, WAIT};
use walkie_harness::{free_port, on_every_mumble_server, MumbleServer};

/// A tmpfs of `size` over `dir`, unmounted when dropped (also on a failed test).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("mount(8)");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs (the test runs as root, as CI does): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Fills the file system to the last byte; returns the filler to delete.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.dir.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 4096];
        loop {
            match file.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

async fn scrape(port: u16) -> String {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("metrics text")
}

/// The value of the first sample of `name` whose labels contain every `label`.
fn sample(metrics: &str, name: &str, labels: &[&str]) -> Option<f64> {
    metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_refuses_to_record_raises_the_alarm_and_recovers() {
    let setup = setup().await;
    let spool = Tmpfs::mount(&setup.dir.path().join("spool"), "64k");
    let filler = spool.fill();
    let status_port = free_port();
    let text = bridge_common::config_text(&setup.synapse.url(), setup.listen, setup.dir.path())
        + &*format!("\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n");
    let config = bridge_common::load(&text);
    let mut running = bridge_common::start_daemon(&config).await;
    let alice = setup.synapse.client(&setup.alice);
    let bot = format!("@walkie:{SERVER}");
    let puppet = format!("@walkie_test_kilo:{SERVER}");
    let (_, packets) = speech_packets();

    // Full: the transmission is heard live but cannot be kept; the room is told.
    transmit(&mut running.link, "kilo", &packets).await;
    alice
        .sync_until(
            |e| {
                e.sender() == bot
                    && e.content()["msgtype"] == "m.notice"
                    && e.body().is_some_and(|b| b.contains("archive is full"))
            },
            WAIT,
        )
        .await
        .expect("the bot says the archive is full");
    let metrics = scrape(status_port).await;
    assert_eq!(
        sample(&metrics, "walkie_archive_spool_full", &["channel=\"ops\""]),
        Some(1.0),
        "no spool-full alarm in:\n{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "walkie_archive_errors_total",
            &["reason=\"spool_full\""]
        )
        .is_some_and(|n| n >= 1.0),
        "spool-full errors not counted"
    );
    // Nothing half-written is left behind to be posted later.
    let leftovers: Vec<_> = std::fs::read_dir(&spool.dir)
        .expect("spool")
        .flatten()
        .map(|e| e.file_name())
        .filter(|name| name != "filler")
        .collect();
    assert!(leftovers.is_empty(), "left in the spool: {leftovers:?}");

    // Space again: the next transmission is archived, the alarm clears.
    std::fs::remove_file(filler).expect("free the spool");
    transmit(&mut running.link, "kilo", &packets).await;
    alice
        .sync_until(|e| is_voice_message_from(e, &puppet), WAIT)
        .await
        .expect("the next transmission is archived");
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = scrape(status_port).await;
        if sample(&metrics, "walkie_archive_spool_full", &["channel=\"ops\""]) == Some(0.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the alarm never cleared:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let posted = bridge_common::voice_messages(&alice, &setup.room_id, &puppet).await;
    assert_eq!(posted.len(), 1, "voice messages posted: {}", posted.len());
    running.stop().await;
}

/// What a Matrix user sends the bridge as a voice message when it is not one:
/// each is refused in the message's thread with the reason, counted, and never
/// reaches the channel; a real one afterwards still does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_voice_messages_are_refused_with_a_reason_and_the_bridge_goes_on() {
    let setup = setup().await;
    let status_port = free_port();
    let text = bridge_common::config_text(&setup.synapse.url(), setup.listen, setup.dir.path())
        + &*format!("\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n");
    let config = bridge_common::load(&text);
    let mut running = bridge_common::start_daemon(&config).await;
    let alice = setup.synapse.client(&setup.alice);
    let bot = format!("@walkie:{SERVER}");
    bridge_common::opt_in(&alice, &setup.room_id).await;

    let speech = common::speech(48_000);
    let ogg = walkie_endpoint::audio::encode_ogg_opus(&speech, 24_000).expect("Ogg Opus");
    let mut noise = vec![0u8; 64 * 1024];
    let mut state = 0x2545_f491_u32;
    for byte in noise.iter_mut() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        *byte = state as u8;
    }
    let oversized = vec![0x4fu8; 21 * 1024 * 1024];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated in its first page",
            ogg[..200].to_vec(),
            "Not transmitted",
        ),
        ("random bytes", noise, "Not transmitted"),
        ("over 20 MiB", oversized, "Not transmitted"),
    ];
    for (what, bytes, expected) in cases {
        let event_id = alice
            .send_voice_message(&setup.room_id, bytes, 6_000)
            .await
            .expect("voice message sent");
        let notice = alice
            .sync_until(
                |e| {
                    e.sender() == bot
                        && e.content()["m.relates_to"]["event_id"] == event_id.as_str()
                },
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("no answer to the {what} voice message: {e}"));
        let body = notice.body().unwrap_or_default().to_owned();
        println!("{what}: {body}");
        assert!(body.contains(expected), "{what}: {body}");
    }
    let metrics = scrape(status_port).await;
    assert_eq!(
        sample(
            &metrics,
            "walkie_voice_in_failed_total",
            &["channel=\"ops\""]
        ),
        Some(3.0),
        "{metrics}"
    );
    // None of them took the floor; a real voice message does.
    alice
        .send_voice_message(&setup.room_id, ogg, 6_744)
        .await
        .expect("voice message sent");
    match bridge_common::next_floor(&mut running.link).await {
        walkie_endpoint::FloorEvent::Taken { talker, .. } => {
            assert_eq!(
                talker.matrix_user_id.as_deref(),
                Some(setup.alice.user_id.as_str())
            );
        }
        other => panic!("expected the real voice message to take the floor, got {other:?}"),
    }
    running.stop().await;
}

on_every_mumble_server!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    murmurd_killed_mid_stream_loses_no_transmission_and_doubles_none,
);

/// murmurd dies in the middle of the second of three talks and comes back: each
/// talk is archived once — the cut one as far as it got — and none twice.
async fn murmurd_killed_mid_stream_loses_no_transmission_and_doubles_none(server: MumbleServer) {
    use walkie_endpoint::{Downlink, FloorEvent};
    use walkie_harness::{MumbleTestClient, Murmur};

    let setup = setup().await;
    let mut murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops"])
        .start()
        .await
        .expect("murmurd starts");
    let config = setup.config_with_mumble(&murmur.address());
    let mut running = bridge_common::start_daemon(&config).await;
    let matrix = setup.synapse.client(&setup.alice);
    let puppet = format!("@walkie_mumble_alice:{SERVER}");
    let speech = common::speech(48_000);
    let wav = setup.dir.path().join("speech.wav");
    common::write_wav(&wav, &speech, 48_000);
    let archived = |n: usize| {
        let matrix = &matrix;
        let puppet = &puppet;
        let room = &setup.room_id;
        async move {
            let deadline = Instant::now() + WAIT;
            loop {
                let posted = bridge_common::voice_messages(matrix, room, puppet).await;
                if posted.len() >= n {
                    return posted;
                }
                assert!(Instant::now() < deadline, "talk {n} was not archived");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    // Talk 1, whole.
    let alice = MumbleTestClient::join(&murmur, "alice", "Ops")
        .await
        .expect("alice joins");
    alice
        .wait_for_users(|users| users.iter().any(|u| u == "walkie"), WAIT)
        .await
        .expect("the bridge's bot is in Ops");
    alice.send_wav(&wav, true).await.expect("talk 1");
    archived(1).await;

    // Everything the test endpoint heard of talk 1, up to the idle floor after it.
    loop {
        if let FloorEvent::Idle = bridge_common::next_floor(&mut running.link).await {
            break;
        }
    }

    // Talk 2, cut two seconds in by murmurd dying.
    let link = &mut running.link;
    let server = &mut murmur;
    let cut = async {
        let mut talk = None;
        let mut frames = 0;
        loop {
            match tokio::time::timeout(WAIT, link.recv()).await {
                Ok(Ok(Downlink::Floor(FloorEvent::Taken { tx, .. }))) => talk = Some(tx),
                Ok(Ok(Downlink::Audio(frame))) if Some(frame.tx) == talk => {
                    frames += 1;
                    if frames == 100 {
                        server.kill().expect("kill murmurd");
                    }
                }
                Ok(Ok(Downlink::Floor(FloorEvent::Released { tx, .. }))) if Some(tx) == talk => {
                    return frames;
                }
                Ok(Ok(_)) => {}
                other => panic!("talk 2 did not end on the hub: {other:?}"),
            }
        }
    };
    let (_, frames) = tokio::join!(alice.send_wav(&wav, true), cut);
    drop(alice);
    archived(2).await;

    // Talk 3, once the bridge is back on the restarted server.
    murmur.start_again().await.expect("murmurd back");
    let alice = MumbleTestClient::join(&murmur, "alice", "Ops")
        .await
        .expect("alice joins again");
    alice
        .wait_for_users(
            |users| users.iter().any(|u| u == "walkie"),
            Duration::from_secs(40),
        )
        .await
        .expect("the bot comes back");
    alice.send_wav(&wav, true).await.expect("talk 3");
    let posted = archived(3).await;
    // Give a duplicate the time it would need to show up, then count again.
    let outbox = walkie_bridge::store::Store::connect(&format!(
        "sqlite://{}",
        setup.dir.path().join("walkie.db").display()
    ))
    .await
    .expect("store");
    let deadline = Instant::now() + WAIT;
    while outbox.outbox_depth().await.expect("depth") > 0 {
        assert!(Instant::now() < deadline, "the outbox did not drain");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let again = archived(3).await;
    let durations: Vec<u64> = again
        .iter()
        .filter_map(|e| e["content"]["info"]["duration"].as_u64())
        .collect();
    println!("murmurd killed {frames} frames into talk 2: archived {durations:?} ms");
    assert_eq!(posted.len(), 3);
    assert_eq!(again.len(), 3, "a talk was archived twice: {durations:?}");
    assert!(
        durations[1] >= 1_500 && durations[1] < 6_000,
        "the cut talk holds {} ms",
        durations[1]
    );
    running.stop().await;
}
