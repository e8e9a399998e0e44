//! The demo's steps (what the README's first command shows) on every Mumble
//! server: a Mumble user's talk archived in the room, a Matrix voice message heard
//! on Mumble, an MQTT intercom heard on Mumble and archived. Each step waits for
//! its outcome and fails the test when it does not come.

mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
mod demo_common;

use walkie_harness::{on_every_mumble_server, MumbleServer};

on_every_mumble_server!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    the_demo_runs,
);

async fn the_demo_runs(server: MumbleServer) {
    demo_common::run(server, false)
        .await
        .unwrap_or_else(|e| panic!("the demo failed on {}: {e:#}", server.label()));
}
