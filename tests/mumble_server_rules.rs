//! What a Mumble server's administrator decides that the bridge cannot change,
//! told to the operator on both server versions: a channel where the bot may not
//! speak (the server suppresses it) shows as the endpoint's warning in /status.

mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use walkie_harness::{free_port, on_every_mumble_server, MumbleServer, Murmur, PERMISSION_SPEAK};

const WAIT: Duration = Duration::from_secs(30);

/// The `mumble.ops` endpoint as /status shows it.
async fn mumble_endpoint_status(port: u16) -> serde_json::Value {
    let status: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/status"))
        .await
        .expect("/status answers")
        .json()
        .await
        .expect("/status is JSON");
    status["channels"][0]["endpoints"]
        .as_array()
        .and_then(|endpoints| endpoints.iter().find(|e| e["id"] == "mumble.ops"))
        .cloned()
        .unwrap_or_else(|| panic!("no mumble.ops in /status: {status}"))
}

/// /status until `done` holds for the Mumble endpoint (it has no push to await).
async fn mumble_status_until(
    port: u16,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let endpoint = mumble_endpoint_status(port).await;
        if done(&endpoint) {
            return endpoint;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/status never showed it: {endpoint}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

on_every_mumble_server!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_channel_where_the_bot_may_not_speak_is_a_warning_in_status,
);

async fn a_channel_where_the_bot_may_not_speak_is_a_warning_in_status(server: MumbleServer) {
    let setup = bridge_common::setup().await;
    let murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops", "Lobby"])
        .deny_everyone("Ops", PERMISSION_SPEAK)
        .start()
        .await
        .expect("the Mumble server starts");
    let status_port = free_port();
    let text = bridge_common::config_text_with(
        &setup.synapse.url(),
        setup.listen,
        setup.dir.path(),
        &murmur.address(),
    ) + &*format!("\n[status]\nlisten = \"127.0.0.1:{status_port}\"\n");
    let running = bridge_common::start_daemon(&bridge_common::load(&text)).await;

    let endpoint = mumble_status_until(status_port, |e| {
        e["state"] == "connected" && e["warning"].is_string()
    })
    .await;
    let warning = endpoint["warning"].as_str().unwrap_or_default();
    println!("{}: /status warns: {warning}", server.label());
    assert!(
        warning.contains("Root/Ops") && warning.contains("Speak"),
        "{warning}"
    );
    running.stop().await;
}
