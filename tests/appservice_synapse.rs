//! The appservice server against a real Synapse, registered with the bridge's own
//! generated registration: a real user's message reaches the dispatcher, the
//! homeserver's ping gets through (and is refused with the wrong hs_token), and
//! events pushed while the bridge was unreachable arrive once it is back.
//!
//! Nothing sleeps: the tests await the dispatcher (bounded by a timeout), and the
//! homeserver's own ping answers only after our server answered it.

use std::time::Duration;

use ruma::events::{AnyMessageLikeEvent, AnyTimelineEvent, MessageLikeEvent};
use ruma::{OwnedUserId, UserId};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walkie_bridge::config::{Config, Secret, Url};
use walkie_bridge::matrix::appservice::{AppserviceError, RoomEvent};
use walkie_bridge::matrix::{AppserviceServer, Homeserver, Inbound};
use walkie_bridge::registration::Registration;
use walkie_bridge::store::Store;
use walkie_harness::{CreateRoom, Synapse, SynapseBuilder};

const AS_TOKEN: &str = "as-token-synapse-test-0123456789abcdef";
const HS_TOKEN: &str = "hs-token-synapse-test-fedcba9876543210";
const WAIT: Duration = Duration::from_secs(30);

/// The bridge's config, with the appservice on `port` and the database in `dir`.
fn config(port: u16, dir: &std::path::Path) -> Config {
    let text = format!(
        r##"
[homeserver]
url = "http://127.0.0.1:8008"
domain = "walkie.test"

[appservice]
listen = "127.0.0.1:{port}"
id = "walkie"
as_token = "{AS_TOKEN}"
hs_token = "{HS_TOKEN}"
bot_localpart = "walkie"
puppet_prefix = "walkie_"

[database]
url = "sqlite://{db}"

[[channel]]
name = "ops"
room = "#ops:walkie.test"
endpoints = ["mqtt.lobby"]

[mqtt.lobby]
broker = "mqtt://127.0.0.1:1883"
prefix = "walkie/lobby"
"##,
        db = dir.join("walkie.db").display()
    );
    let no_env: [(String, String); 0] = [];
    Config::from_toml_str(&text, "test.toml", no_env)
        .unwrap_or_else(|e| panic!("{e}"))
        .0
}

struct Running {
    events: mpsc::Receiver<Inbound>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AppserviceError>>,
}

async fn serve(config: &Config, listener: TcpListener) -> Running {
    let store = Store::connect(&config.database.url).await.unwrap();
    let (tx, events) = mpsc::channel(64);
    let server =
        AppserviceServer::new(&config.appservice, &config.homeserver.domain, store, tx).unwrap();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(listener, shutdown.clone()));
    Running {
        events,
        shutdown,
        task,
    }
}

impl Running {
    /// Room events until (and including) the one with `event_id`.
    async fn until(&mut self, event_id: &str) -> Vec<RoomEvent> {
        let mut seen = Vec::new();
        loop {
            let item = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{event_id} not dispatched within {WAIT:?}; got {seen:#?}")
                })
                .expect("the server keeps its dispatcher");
            if let Inbound::RoomEvent(event) = item {
                let done = event.event_id.as_str() == event_id;
                seen.push(event);
                if done {
                    return seen;
                }
            }
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

async fn synapse(config: &Config) -> Synapse {
    let registration = Registration::from_config(config).to_yaml().unwrap();
    SynapseBuilder::new()
        .server_name("walkie.test")
        .appservice_registration(registration)
        .start()
        .await
        .expect("Synapse starts with the bridge's registration")
}

fn homeserver(synapse: &Synapse) -> Homeserver {
    Homeserver::new(Url::parse(&synapse.url()).unwrap(), Secret::new(AS_TOKEN)).unwrap()
}

fn bot() -> OwnedUserId {
    UserId::parse("@walkie:walkie.test").unwrap()
}

fn body(event: &RoomEvent) -> String {
    match event.event.deserialize() {
        Ok(AnyTimelineEvent::MessageLike(AnyMessageLikeEvent::RoomMessage(
            MessageLikeEvent::Original(message),
        ))) => message.content.body().to_owned(),
        other => panic!("not a room message: {other:?}"),
    }
}

#[tokio::test]
async fn a_real_users_message_reaches_the_dispatcher() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = config(listener.local_addr().unwrap().port(), dir.path());
    let mut bridge = serve(&config, listener).await;
    let synapse = synapse(&config).await;

    let alice = synapse.register_user("alice", false).await.unwrap();
    let alice_client = synapse.client(&alice);
    let room = alice_client
        .create_room(&CreateRoom::new().invite(bot().as_str()))
        .await
        .unwrap();
    homeserver(&synapse).join(&room, &bot()).await.unwrap();
    let sent = alice_client
        .send_text(&room, "over to you, walkie")
        .await
        .unwrap();

    let events = bridge.until(&sent).await;
    let message = events.last().unwrap();
    assert_eq!(message.room_id.as_str(), room);
    assert_eq!(message.sender.as_str(), alice.user_id);
    assert_eq!(message.event_type.to_string(), "m.room.message");
    assert!(!message.from_bridge);
    assert_eq!(body(message), "over to you, walkie");

    // The invite and the bot's join came first, in that order, the join marked as
    // the bridge's own.
    let memberships: Vec<(&str, bool)> = events
        .iter()
        .filter(|e| e.state_key.as_deref() == Some(bot().as_str()))
        .map(|e| (e.sender.as_str(), e.from_bridge))
        .collect();
    assert_eq!(
        memberships,
        [
            (alice.user_id.as_str(), false),
            ("@walkie:walkie.test", true)
        ],
        "{events:#?}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn the_homeservers_ping_gets_through_only_with_the_right_hs_token() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = config(address.port(), dir.path());
    let bridge = serve(&config, listener).await;
    let synapse = synapse(&config).await;
    let hs = homeserver(&synapse);

    hs.ping("walkie")
        .await
        .expect("Synapse reaches the bridge and the bridge accepts its token");
    bridge.stop().await;

    // The same address, a bridge that expects another hs_token.
    let mut wrong = config.clone();
    wrong.appservice.hs_token = Secret::new("not-the-registered-token");
    let listener = TcpListener::bind(address).await.unwrap();
    let bridge = serve(&wrong, listener).await;
    let error = hs
        .ping("walkie")
        .await
        .expect_err("the bridge refuses Synapse");
    assert_eq!(error.errcode(), Some("M_BAD_STATUS"), "{error}");
    assert!(error.to_string().contains("403"), "{error}");
    bridge.stop().await;
}

#[tokio::test]
async fn events_pushed_while_the_bridge_was_unreachable_arrive_once_it_is_back() {
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = config(listener.local_addr().unwrap().port(), dir.path());
    let synapse = synapse(&config).await;

    let alice = synapse.register_user("alice", false).await.unwrap();
    let alice_client = synapse.client(&alice);
    let room = alice_client
        .create_room(&CreateRoom::new().invite(bot().as_str()))
        .await
        .unwrap();
    // The invite makes Synapse push a transaction. Take the connection and drop
    // it: to Synapse the bridge is down, and it starts backing off.
    let (connection, _) = tokio::time::timeout(WAIT, listener.accept())
        .await
        .expect("Synapse pushes the invite")
        .unwrap();
    drop(connection);
    let hs = homeserver(&synapse);
    hs.join(&room, &bot()).await.unwrap();
    let missed = alice_client
        .send_text(&room, "anyone there?")
        .await
        .unwrap();

    // Back up. A successful ping makes Synapse retry at once rather than after
    // its backoff.
    let mut bridge = serve(&config, listener).await;
    hs.ping("walkie").await.unwrap();
    let events = bridge.until(&missed).await;
    assert_eq!(body(events.last().unwrap()), "anyone there?");

    let later = alice_client.send_text(&room, "still there?").await.unwrap();
    let after = bridge.until(&later).await;
    let all: Vec<&str> = events
        .iter()
        .chain(&after)
        .map(|e| e.event_id.as_str())
        .collect();
    assert_eq!(all.iter().filter(|id| **id == missed).count(), 1, "{all:?}");
    bridge.stop().await;
}
