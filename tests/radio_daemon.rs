//! The real `walkie-bridge` process with a radio keyed through a real hamlib
//! rigctld: a Matrix user's voice message keys it, and a SIGTERM in the middle of
//! that transmission leaves the rig unkeyed (read back with `rigctl t`) and the
//! process gone within 5 s.
//!
//! The sound card is ALSA's `null` PCM (found by name through its hint in a
//! private asoundrc): there is no card here, and what is played does not matter
//! to this test — only the PTT does.

mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use bridge_common::{setup, SERVER};
use walkie_endpoint::audio::encode_ogg_opus;
use walkie_harness::{ChildGuard, Rigctld};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_transmission_unkeys_the_radio_and_the_bridge_exits_within_5_s() {
    let setup = setup().await;
    let rig = Rigctld::start();
    let dir = setup.dir.path();
    let config_path =
        bridge_common::write_rigctld_radio_config(&setup, &rig.address(), "", |text| text);
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
    command.args(["run", "-c"]).arg(&config_path);
    command
        .env("HOME", dir)
        .env("RUST_LOG", "walkie_radio=debug,info");
    let mut bridge = ChildGuard::spawn("walkie-bridge", command, dir.join("bridge.log"))
        .expect("walkie-bridge starts");

    let alice = setup.synapse.client(&setup.alice);
    let bot = format!("@walkie:{SERVER}");
    // The bot hears the room once it has joined it.
    alice
        .sync_until(
            |e| e.sender() == bot && e.content()["membership"] == "join",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("the bot never joined ({e}): {}", bridge.log_tail(40)));
    bridge_common::opt_in(&alice, &setup.room_id).await;
    assert!(!rig.ptt_keyed(), "keyed before anyone talked");

    let speech = common::speech(48_000);
    let ogg = encode_ogg_opus(&speech, 24_000).expect("Ogg Opus");
    alice
        .send_voice_message(&setup.room_id, ogg, speech.len() as u64 * 1000 / 48_000)
        .await
        .expect("voice message");
    let deadline = Instant::now() + WAIT;
    while !rig.ptt_keyed() {
        assert!(
            Instant::now() < deadline,
            "the voice message never keyed the radio: {}",
            bridge.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Mid-transmission: the message lasts 6.7 s.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(rig.ptt_keyed(), "unkeyed before the SIGTERM");
    let signalled = Instant::now();
    let status = bridge.stop(Duration::from_secs(5)).await.expect("reaped");
    let took = signalled.elapsed();
    let keyed_after = rig.ptt_keyed();
    println!("SIGTERM → exit in {took:?}, {status}; rig keyed afterwards: {keyed_after}");
    assert!(
        !keyed_after,
        "the rig is still keyed: {}",
        bridge.log_tail(40)
    );
    assert!(took < Duration::from_secs(5), "took {took:?} to exit");
    assert!(
        status.success(),
        "exit status {status}: {}",
        bridge.log_tail(40)
    );
}
