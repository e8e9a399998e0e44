//! Issue 14.8: the daemon's panic hook unkeys every radio whatever panicked. A
//! panic elsewhere in the process, mid-transmission, must not leave the radio's
//! transmit machine believing it is on the air: it notices the unkey it did not
//! order and keys again, through `tx_delay`, only for the current talker's next
//! audio — never a radio keyed that the machine does not know about.
//!
//! Its own test binary: the panic hook is process-wide and would unkey the
//! radios of every other test running beside it.

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
mod radio_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use radio_common::*;
use walkie_endpoint::{AllowEveryone, ConnectionState, StreamKey};

/// Waits until the card has played an audible period after `after`.
async fn wait_audible_after(rig: &Rig, after: Instant) -> Instant {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some((t, _)) = rig
            .card
            .played()
            .into_iter()
            .find(|(t, p)| *t > after && walkie_endpoint::audio::dbfs(p) > -40.0)
        {
            return t;
        }
        assert!(Instant::now() < deadline, "nothing audible after {after:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_panic_hook_unkeys_the_radio_keys_again_through_tx_delay_for_the_talker() {
    walkie_radio::ptt::safety::install_panic_hook();
    // Speech without pauses longer than a frame or two: noise at speech level.
    let steady = common::noise(48_000 * 4, -20.0, 7);
    let mut rig = Rig::start(radio_settings(tx_settings()), Arc::new(AllowEveryone));
    rig.wait_health(ConnectionState::Connected).await;

    let tx = take(&mut rig.talker, 1, "alice").await;
    let talking = talk(&rig.talker, 1, &steady);
    let panicking = async {
        let keyed_at = rig.wait_rts(true).await;
        wait_audible_after(&rig, keyed_at).await;
        let changes_before = rig.rts().len();
        // A panic somewhere else in the process, while alice is on the air.
        // (Joined off this task: alice's audio keeps flowing meanwhile.)
        let panicked = tokio::task::spawn_blocking(|| {
            std::thread::spawn(|| panic!("injected: a bug elsewhere in the daemon"))
                .join()
                .is_err()
        });
        assert!(panicked.await.expect("joined"), "the thread panicked");
        // The hook's unkey and the re-key can both happen before a poll comes
        // round (the panic's backtrace alone can take that long): look at the
        // changes since the panic, not at the line's level now.
        let (unkey, unkeyed_at) = rig.wait_rts_change(changes_before, false).await;
        // The transmit machine must key again for alice's next audio.
        let (_, rekeyed_at) = rig.wait_rts_change(unkey + 1, true).await;
        let resumed_at = wait_audible_after(&rig, rekeyed_at).await;
        (unkeyed_at, rekeyed_at, resumed_at)
    };
    let ((), (unkeyed_at, rekeyed_at, resumed_at)) = tokio::join!(talking, panicking);
    rig.talker.talk_end(StreamKey(1)).await.expect("hub");
    let _ = hear_until_released(&mut rig.listener, tx).await;
    let ended_at = rig.wait_rts(false).await;
    let rts = rig.rts();
    rig.stop().await;

    let off_for = rekeyed_at.duration_since(unkeyed_at);
    let key_to_audio = resumed_at.duration_since(rekeyed_at);
    println!(
        "unkeyed by the hook, keyed again after {off_for:?}, audio {key_to_audio:?} after \
         the re-key (tx_delay 150 ms); RTS {:?}",
        rts.iter().map(|(_, l)| *l).collect::<Vec<_>>()
    );
    assert!(
        off_for < Duration::from_millis(500),
        "keyed again only {off_for:?} after the hook"
    );
    // alice is on the air again (the re-key goes through tx_delay: see
    // tx_sequences.rs, where time is exact).
    assert!(
        key_to_audio < Duration::from_millis(500),
        "audio only {key_to_audio:?} after the re-key"
    );
    // Open, key, hook, re-key, end: nothing else.
    assert_eq!(rts.len(), 5, "RTS sequence {rts:?}");
    assert!(ended_at > rekeyed_at);
}
