//! The Mumble bot's own certificate, on both server versions: made on the first
//! start, kept in the database, presented again after a restart, so an
//! administrator can register the bot and it keeps its name.

mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use tokio::sync::mpsc;
use walkie_harness::{on_every_mumble_server, MumbleServer, Murmur};
use walkie_mumble::{
    ConnectConfig, Connection, ConnectionHandle, Event, MumbleError, TransportMode, User,
};

const WAIT: Duration = Duration::from_secs(30);

/// A Mumble client of our own that watches Ops.
async fn observer(murmur: &Murmur, name: &str) -> (ConnectionHandle, mpsc::Receiver<Event>) {
    Connection::connect(client_config(murmur, name))
        .await
        .unwrap_or_else(|e| panic!("{name} cannot connect: {e}"))
}

fn client_config(murmur: &Murmur, name: &str) -> ConnectConfig {
    let mut config = ConnectConfig::new(murmur.address(), name, "Ops");
    config.accept_invalid_cert = true;
    config.transport = TransportMode::TcpOnly;
    config
}

/// The user `name` once the server has told `observer` about them.
async fn user_named(observer: &ConnectionHandle, name: &str) -> User {
    tokio::time::timeout(WAIT, observer.wait_for_user(|u| u.name == name))
        .await
        .unwrap_or_else(|_| panic!("{name} never appeared"))
        .expect("the observer stays connected")
}

on_every_mumble_server!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    a_registered_bot_keeps_its_certificate_and_its_name,
);

async fn a_registered_bot_keeps_its_certificate_and_its_name(server: MumbleServer) {
    let setup = bridge_common::setup().await;
    let mut murmur = Murmur::builder()
        .server(server)
        .channels(&["Ops"])
        .start()
        .await
        .expect("the Mumble server starts");
    // The test config names no client_cert: the bridge makes the bot's own.
    let config = setup.config_with_mumble(&murmur.address());

    let running = bridge_common::start_daemon(&config).await;
    let watching = observer(&murmur, "observer").await;
    let bot = user_named(&watching.0, "walkie").await;
    let first = bot
        .cert_hash
        .clone()
        .expect("the bot presents a certificate");
    assert_eq!(bot.user_id, None, "nobody has registered the bot yet");
    running.stop().await;
    drop(watching);

    // The administrator registers the bot by the certificate it showed.
    murmur.stop().await.expect("stop");
    murmur
        .register_by_certificate(7, "walkie", &first)
        .await
        .expect("register the bot");
    murmur.start_again().await.expect("the server is back");

    // Nobody else can take the name now.
    match Connection::connect(client_config(&murmur, "walkie")).await {
        Err(MumbleError::Rejected { kind, reason }) => {
            println!("an impostor named walkie was refused: {kind}: {reason}")
        }
        Ok(_) => panic!("an impostor without the certificate logged in as walkie"),
        Err(other) => panic!("expected a refusal, got {other}"),
    }

    // The bridge again, on the same database: the same certificate, so the
    // server knows the bot as its registered user 7.
    let running = bridge_common::start_daemon(&config).await;
    let watching = observer(&murmur, "observer").await;
    let bot = user_named(&watching.0, "walkie").await;
    assert_eq!(bot.cert_hash.as_deref(), Some(first.as_str()));
    assert_eq!(
        bot.user_id,
        Some(7),
        "the server knows the bot as registered"
    );
    running.stop().await;
}
