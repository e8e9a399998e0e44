//! Issue 14.3: the radio's serial port (PTT on RTS, COS on CTS) vanishes — a
//! USB adapter pulled out mid-transmission — and comes back. The endpoint must
//! notice, unkey what it can, close the port, say so on `/status`, reopen it
//! every 2 s without flooding the log, and drive the line unkeyed on reopen.
//!
//! Its own test binary: it counts the log lines of the whole process.

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
mod radio_common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use radio_common::*;
use walkie_endpoint::{AllowEveryone, ConnectionState, StreamKey};
use walkie_endpoint::{Downlink, FloorEvent, HubLink};

static LOG: Mutex<Vec<u8>> = Mutex::new(Vec::new());

struct Capture;

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&LOG).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn capture_logs() {
    tracing_subscriber::fmt()
        .with_writer(|| Capture)
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .try_init()
        .expect("the only subscriber of this test binary");
}

/// Warning and error lines logged since byte `from` of the capture.
fn loud_lines(from: usize) -> Vec<String> {
    let log = lock(&LOG);
    String::from_utf8_lossy(&log[from.min(log.len())..])
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

fn log_len() -> usize {
    lock(&LOG).len()
}

/// What `link` has been sent and not yet read.
async fn pending(link: &mut HubLink) -> Vec<Downlink> {
    let mut out = Vec::new();
    while let Ok(Ok(down)) = tokio::time::timeout(Duration::from_millis(20), link.recv()).await {
        out.push(down);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serial_port_that_vanishes_is_reported_closed_and_reopened_every_2_s() {
    capture_logs();
    let speech = common::speech(48_000);
    let mut rig = Rig::start(radio_settings(tx_settings()), Arc::new(AllowEveryone));
    rig.wait_ptt_opens(1).await;
    rig.wait_health(ConnectionState::Connected).await;

    let tx = take(&mut rig.talker, 1, "alice").await;
    talk(&rig.talker, 1, &speech[..24_000]).await;
    rig.wait_rts(true).await;

    // The USB adapter is pulled out mid-transmission: PTT and COS fail alike.
    let log_from = log_len();
    let unplugged_at = Instant::now();
    rig.lines.set_unplugged(true);
    rig.cos.set_failing(true);
    // alice talks on and ends while the port is gone: the release's unkey fails.
    talk(&rig.talker, 1, &speech[24_000..72_000]).await;
    rig.talker.talk_end(StreamKey(1)).await.expect("hub");
    let _ = hear_until_released(&mut rig.listener, tx).await;
    let during = loud_lines(log_from);
    println!(
        "{} warning/error lines in the {:?} after the unplug",
        during.len(),
        unplugged_at.elapsed()
    );

    // Noticed within moments; give it 3 s to show what the log does meanwhile.
    let deadline = unplugged_at + Duration::from_secs(3);
    // The assertions below say what happened if it did not.
    let _ = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        rig.health
            .wait_until(|h| h.state() == ConnectionState::Disconnected),
    )
    .await;
    let loud = loud_lines(log_from);
    assert_eq!(
        rig.health.state(),
        ConnectionState::Disconnected,
        "{:?} after the unplug /status still says {} ({:?}); the log has {} warning/error lines, \
         the last: {:?}",
        unplugged_at.elapsed(),
        rig.health.state(),
        rig.health.reason(),
        loud.len(),
        loud.last()
    );
    let reason = rig.health.reason().unwrap_or_default();
    println!("/status says: {reason}");
    assert!(reason.contains("port lost"), "reason: {reason}");
    // alice was told that the radio stopped carrying her.
    let told: Vec<String> = pending(&mut rig.talker)
        .await
        .into_iter()
        .filter_map(|d| match d {
            Downlink::Floor(FloorEvent::Declined { reason, .. }) => Some(reason),
            _ => None,
        })
        .collect();
    println!("alice was told: {told:?}");
    assert!(
        told.iter().any(|r| r.contains("port")),
        "alice was not told: {told:?}"
    );

    // Reopened every 2 s while it is gone.
    let opened_before = lock(&rig.ptt_opens).len();
    let opens = rig.wait_ptt_opens(opened_before + 2).await;
    let retries: Vec<&(Instant, bool)> =
        opens.iter().filter(|(at, _)| *at > unplugged_at).collect();
    assert!(retries.iter().all(|(_, ok)| !ok), "opened while unplugged");
    let gap = retries[retries.len() - 1]
        .0
        .duration_since(retries[retries.len() - 2].0);
    println!("reopen attempts every {gap:?}");
    assert!(
        gap >= Duration::from_millis(1_900) && gap < Duration::from_millis(2_500),
        "retried after {gap:?}"
    );
    let loud = loud_lines(log_from);
    println!(
        "{} warning/error lines over {:?} unplugged:\n{}",
        loud.len(),
        unplugged_at.elapsed(),
        loud.join("\n")
    );
    assert!(
        loud.len() <= 8,
        "{} warning/error lines while the port was gone",
        loud.len()
    );
    assert_eq!(
        rig.health.state(),
        ConnectionState::Disconnected,
        "the sound card is fine, the port is not"
    );

    // Plugged back in: both lines come up asserted (Linux, on open); the reopen
    // must drive RTS to unkeyed at once.
    let replugged_at = Instant::now();
    rig.cos.set_failing(false);
    rig.lines.set_unplugged(false);
    rig.wait_health(ConnectionState::Connected).await;
    let back_after = replugged_at.elapsed();
    println!("connected again {back_after:?} after the replug");
    assert!(
        back_after < Duration::from_millis(3_000),
        "back only {back_after:?} after the replug (retry every 2 s)"
    );
    assert!(
        !rig.lines.levels_now().rts,
        "RTS left asserted after reopen"
    );
    assert!(
        rig.rts().iter().any(|(at, l)| *at > replugged_at && !l),
        "the reopen never drove RTS low: {:?}",
        rig.rts()
    );
    assert_eq!(rig.health.reconnects(), 1);

    // And the radio works again.
    let tx = take(&mut rig.talker, 2, "alice").await;
    talk(&rig.talker, 2, &speech[..24_000]).await;
    let keyed_at = rig.wait_rts(true).await;
    assert!(keyed_at > replugged_at);
    rig.talker.talk_end(StreamKey(2)).await.expect("hub");
    let _ = hear_until_released(&mut rig.listener, tx).await;
    rig.wait_rts(false).await;
    rig.stop().await;
}
