//! The appservice API over plain HTTP, as a homeserver would call it: token checks,
//! queries, and transactions — each handled once (also across a restart on the same
//! database), events in order, malformed events skipped and counted.
//!
//! Every transaction is answered only after its events are in the dispatcher's
//! queue, so once a PUT has returned, `try_recv` sees exactly what it dispatched:
//! no waiting needed.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use walkie_bridge::config::{AppserviceConfig, Secret, Url};
use walkie_bridge::matrix::appservice::{
    AppserviceError, AppserviceStats, BridgeUsers, Inbound, BODY_LIMIT,
};
use walkie_bridge::matrix::crypto::{CryptoDevices, DeviceOptions};
use walkie_bridge::matrix::{AppserviceServer, Homeserver};
use walkie_bridge::store::{PuppetProfile, Store};

const HS_TOKEN: &str = "hs-token-for-tests-0123456789abcdef";
const DOMAIN: &str = "walkie.test";
const ROOM: &str = "!room:walkie.test";

fn appservice_config(listen: SocketAddr) -> AppserviceConfig {
    AppserviceConfig {
        listen,
        url: Url::parse(&format!("http://{listen}")).unwrap(),
        id: "walkie".into(),
        as_token: Secret::new("as-token-for-tests-fedcba9876543210"),
        hs_token: Secret::new(HS_TOKEN),
        bot_localpart: "walkie".into(),
        puppet_prefix: "walkie_".into(),
    }
}

struct Db {
    dir: tempfile::TempDir,
}

impl Db {
    fn new() -> Db {
        Db {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    async fn open(&self) -> Store {
        let url = format!("sqlite://{}", self.dir.path().join("walkie.db").display());
        Store::connect(&url).await.unwrap()
    }
}

struct Bridge {
    base: String,
    events: mpsc::Receiver<Inbound>,
    stats: AppserviceStats,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), AppserviceError>>,
    http: reqwest::Client,
}

async fn start(store: Store, capacity: usize) -> Bridge {
    start_with(store, capacity, None).await
}

/// `crypto`: the transactions' device parts go to these devices.
async fn start_with(store: Store, capacity: usize, crypto: Option<CryptoDevices>) -> Bridge {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (tx, events) = mpsc::channel(capacity);
    let mut server = AppserviceServer::new(&appservice_config(address), DOMAIN, store, tx).unwrap();
    if let Some(crypto) = crypto {
        server = server.with_crypto(crypto);
    }
    let stats = server.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(listener, shutdown.clone()));
    Bridge {
        base: format!("http://{address}"),
        events,
        stats,
        shutdown,
        task,
        http: reqwest::Client::builder().no_proxy().build().unwrap(),
    }
}

impl Bridge {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: answer {status} is not JSON ({e}): {text:?}"));
        (status, value)
    }

    async fn put_txn(&self, txn_id: &str, body: &Value) -> (StatusCode, Value) {
        self.call(
            Method::PUT,
            &format!("/_matrix/app/v1/transactions/{txn_id}"),
            Some(HS_TOKEN),
            Some(body),
        )
        .await
    }

    /// Everything dispatched so far.
    fn dispatched(&mut self) -> Vec<Inbound> {
        let mut all = Vec::new();
        while let Ok(item) = self.events.try_recv() {
            all.push(item);
        }
        all
    }

    /// Stops the server and waits until it has.
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops within 10 s")
            .unwrap()
            .unwrap();
    }
}

fn message(n: u32) -> Value {
    json!({
        "type": "m.room.message",
        "event_id": format!("$event{n}"),
        "room_id": ROOM,
        "sender": "@alice:walkie.test",
        "origin_server_ts": 1_795_687_200_000u64 + u64::from(n),
        "content": {"msgtype": "m.text", "body": format!("message {n}")},
    })
}

fn transaction(events: &[Value]) -> Value {
    json!({ "events": events })
}

/// The bodies of dispatched room messages, in dispatch order.
fn bodies(dispatched: &[Inbound]) -> Vec<String> {
    dispatched
        .iter()
        .map(|item| match item {
            Inbound::RoomEvent(event) => {
                let json: Value = serde_json::from_str(event.event.json().get()).unwrap();
                json["content"]["body"].as_str().unwrap().to_owned()
            }
            other => panic!("expected a room event, got {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn every_route_wants_the_hs_token() {
    let db = Db::new();
    let bridge = start(db.open().await, 16).await;
    let txn = transaction(&[]);
    let routes: [(Method, &str, Option<&Value>); 4] = [
        (
            Method::PUT,
            "/_matrix/app/v1/transactions/auth1",
            Some(&txn),
        ),
        (Method::POST, "/_matrix/app/v1/ping", Some(&json!({}))),
        (
            Method::GET,
            "/_matrix/app/v1/users/@walkie:walkie.test",
            None,
        ),
        (
            Method::GET,
            "/_matrix/app/v1/rooms/%23ops:walkie.test",
            None,
        ),
    ];
    for (method, path, body) in routes {
        let (status, answer) = bridge.call(method.clone(), path, None, body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path}: {answer}"
        );
        assert_eq!(answer["errcode"], "M_MISSING_TOKEN", "{method} {path}");

        let (status, answer) = bridge.call(method.clone(), path, Some(""), body).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "empty token, {method} {path}"
        );
        assert_eq!(answer["errcode"], "M_MISSING_TOKEN");

        for wrong in [
            "wrong",
            &HS_TOKEN[..HS_TOKEN.len() - 1],
            &format!("{HS_TOKEN}x"),
        ] {
            let (status, answer) = bridge.call(method.clone(), path, Some(wrong), body).await;
            assert_eq!(
                status,
                StatusCode::FORBIDDEN,
                "{wrong:?}, {method} {path}: {answer}"
            );
            assert_eq!(answer["errcode"], "M_UNKNOWN_TOKEN", "{method} {path}");
        }
    }

    let (status, answer) = bridge
        .call(
            Method::POST,
            "/_matrix/app/v1/ping",
            Some(HS_TOKEN),
            Some(&json!({"transaction_id": "t1"})),
        )
        .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    let (status, answer) = bridge.put_txn("auth1", &txn).await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));

    // The legacy query parameter still works; the header wins when both are given.
    let (status, answer) = bridge
        .call(
            Method::POST,
            &format!("/_matrix/app/v1/ping?access_token={HS_TOKEN}"),
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!((status, answer), (StatusCode::OK, json!({})));
    let (status, answer) = bridge
        .call(
            Method::POST,
            "/_matrix/app/v1/ping?access_token=wrong",
            None,
            Some(&json!({})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    bridge.stop().await;
}

#[tokio::test]
async fn the_user_query_knows_the_bot_and_registered_puppets_only() {
    let db = Db::new();
    let store = db.open().await;
    store
        .upsert_puppet(&PuppetProfile {
            user_id: "@walkie_mumble_alice:walkie.test".into(),
            endpoint: walkie_endpoint::EndpointId::new("mumble.ops"),
            talker_name: "alice".into(),
            display_name: "alice (Mumble)".into(),
            registered: true,
        })
        .await
        .unwrap();
    store
        .upsert_puppet(&PuppetProfile {
            user_id: "@walkie_mumble_carol:walkie.test".into(),
            endpoint: walkie_endpoint::EndpointId::new("mumble.ops"),
            talker_name: "carol".into(),
            display_name: "carol (Mumble)".into(),
            registered: false,
        })
        .await
        .unwrap();
    let bridge = start(store, 16).await;
    let query = |user: &str| {
        let path = format!(
            "/_matrix/app/v1/users/{}",
            user.replace('@', "%40").replace(':', "%3A")
        );
        let bridge = &bridge;
        async move { bridge.call(Method::GET, &path, Some(HS_TOKEN), None).await }
    };
    for known in ["@walkie:walkie.test", "@walkie_mumble_alice:walkie.test"] {
        assert_eq!(query(known).await, (StatusCode::OK, json!({})), "{known}");
    }
    for unknown in [
        "@walkie_mumble_bob:walkie.test",
        "@walkie_mumble_carol:walkie.test",
        "@alice:walkie.test",
        "@walkie:elsewhere.test",
        "@walkie_mumble_alice:elsewhere.test",
        "not a user id",
    ] {
        let (status, answer) = query(unknown).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}: {answer}");
        assert_eq!(answer["errcode"], "M_NOT_FOUND", "{unknown}");
    }

    let (status, answer) = bridge
        .call(
            Method::GET,
            "/_matrix/app/v1/rooms/%23walkie_ops:walkie.test",
            Some(HS_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["errcode"], "M_NOT_FOUND");

    let (status, answer) = bridge
        .call(
            Method::GET,
            "/_matrix/app/v1/thirdparty/protocol/x",
            Some(HS_TOKEN),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["errcode"], "M_UNRECOGNIZED");
    bridge.stop().await;
}

#[tokio::test]
async fn events_are_dispatched_in_order_with_their_envelope() {
    let db = Db::new();
    let mut bridge = start(db.open().await, 64).await;
    let events: Vec<Value> = (1..=20).map(message).collect();
    assert_eq!(
        bridge.put_txn("order1", &transaction(&events)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        bridge
            .put_txn("order2", &transaction(&[message(21), message(22)]))
            .await
            .0,
        StatusCode::OK
    );
    let dispatched = bridge.dispatched();
    let expected: Vec<String> = (1..=22).map(|n| format!("message {n}")).collect();
    assert_eq!(bodies(&dispatched), expected);

    let Inbound::RoomEvent(first) = &dispatched[0] else {
        panic!("{:?}", dispatched[0]);
    };
    assert_eq!(first.txn_id, "order1");
    assert_eq!(first.room_id.as_str(), ROOM);
    assert_eq!(first.sender.as_str(), "@alice:walkie.test");
    assert_eq!(first.event_id.as_str(), "$event1");
    assert_eq!(first.event_type.to_string(), "m.room.message");
    assert!(!first.from_bridge);
    assert_eq!(first.state_key, None);
    assert_eq!(bridge.stats.transactions(), 2);
    assert_eq!(bridge.stats.events(), 22);
    bridge.stop().await;
}

#[tokio::test]
async fn the_bridges_own_users_are_marked() {
    let db = Db::new();
    let mut bridge = start(db.open().await, 16).await;
    let mut from_bot = message(1);
    from_bot["sender"] = json!("@walkie:walkie.test");
    let mut from_puppet = message(2);
    from_puppet["sender"] = json!("@walkie_mumble_alice:walkie.test");
    let mut lookalike = message(3);
    lookalike["sender"] = json!("@walkie_mumble_alice:elsewhere.test");
    let join = json!({
        "type": "m.room.member",
        "event_id": "$join",
        "room_id": ROOM,
        "sender": "@walkie:walkie.test",
        "state_key": "@walkie:walkie.test",
        "origin_server_ts": 1,
        "content": {"membership": "join"},
    });
    let body = transaction(&[from_bot, from_puppet, lookalike, join]);
    assert_eq!(bridge.put_txn("own1", &body).await.0, StatusCode::OK);
    let flags: Vec<(bool, Option<String>)> = bridge
        .dispatched()
        .into_iter()
        .map(|item| match item {
            Inbound::RoomEvent(e) => (e.from_bridge, e.state_key),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        flags,
        [
            (true, None),
            (true, None),
            (false, None),
            (true, Some("@walkie:walkie.test".to_owned())),
        ]
    );
    bridge.stop().await;
}

#[tokio::test]
async fn a_repeated_transaction_is_dispatched_once() {
    let db = Db::new();
    let mut bridge = start(db.open().await, 16).await;
    let body = transaction(&[message(1), message(2)]);
    assert_eq!(
        bridge.put_txn("42", &body).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(bodies(&bridge.dispatched()), ["message 1", "message 2"]);

    assert_eq!(
        bridge.put_txn("42", &body).await,
        (StatusCode::OK, json!({}))
    );
    assert!(
        bridge.dispatched().is_empty(),
        "the repeat dispatched nothing"
    );
    assert_eq!(bridge.stats.repeated_transactions(), 1);

    // Another id is another transaction.
    assert_eq!(
        bridge.put_txn("43", &transaction(&[message(3)])).await.0,
        StatusCode::OK
    );
    assert_eq!(bodies(&bridge.dispatched()), ["message 3"]);
    bridge.stop().await;
}

#[tokio::test]
async fn a_handled_transaction_stays_handled_after_a_restart() {
    let db = Db::new();
    let body = transaction(&[message(1)]);
    let mut first = start(db.open().await, 16).await;
    assert_eq!(first.put_txn("7", &body).await.0, StatusCode::OK);
    let dispatched = first.dispatched();
    assert_eq!(bodies(&dispatched), ["message 1"]);
    handle_all(&dispatched).await;
    first.stop().await;

    // A new process: new server, new store handle, the same database file.
    let mut second = start(db.open().await, 16).await;
    assert_eq!(
        second.put_txn("7", &body).await,
        (StatusCode::OK, json!({}))
    );
    assert!(second.dispatched().is_empty(), "handled before the restart");
    assert_eq!(second.stats.repeated_transactions(), 1);
    assert_eq!(
        second.put_txn("8", &transaction(&[message(2)])).await.0,
        StatusCode::OK
    );
    assert_eq!(bodies(&second.dispatched()), ["message 2"]);
    second.stop().await;
}

/// What a consumer does once it has acted on the events.
async fn handle_all(dispatched: &[Inbound]) {
    for item in dispatched {
        if let Inbound::RoomEvent(event) = item {
            event.handled.done().await;
        }
    }
}

/// Issue 14.6: the transaction was acknowledged, but the process died before
/// its event was acted on. The next start hands it out again, before any new
/// transaction, and a redelivery of it is not handed out a third time.
#[tokio::test]
async fn an_event_acknowledged_but_not_handled_is_dispatched_again_after_a_restart() {
    let db = Db::new();
    let mut first = start(db.open().await, 16).await;
    assert_eq!(
        first
            .put_txn("7", &transaction(&[message(1), message(2)]))
            .await
            .0,
        StatusCode::OK
    );
    let dispatched = first.dispatched();
    assert_eq!(bodies(&dispatched), ["message 1", "message 2"]);
    // Only the first was acted on before the "crash".
    handle_all(&dispatched[..1]).await;
    first.stop().await;

    let mut second = start(db.open().await, 16).await;
    assert_eq!(
        second
            .put_txn("8", &transaction(&[message(2), message(3)]))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        bodies(&second.dispatched()),
        ["message 2", "message 3"],
        "the unhandled event first, once; then the new one"
    );
    second.stop().await;
}

#[tokio::test]
async fn a_malformed_event_is_skipped_and_counted() {
    let db = Db::new();
    let mut bridge = start(db.open().await, 16).await;
    let mut bad_sender = message(2);
    bad_sender["sender"] = json!("alice without an at sign");
    let no_room = {
        let mut e = message(3);
        e.as_object_mut().unwrap().remove("room_id");
        e
    };
    let body = transaction(&[
        message(1),
        bad_sender,
        message(4),
        json!(42),
        no_room,
        message(5),
    ]);
    assert_eq!(
        bridge.put_txn("bad1", &body).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(
        bodies(&bridge.dispatched()),
        ["message 1", "message 4", "message 5"]
    );
    assert_eq!(bridge.stats.bad_events(), 3);
    assert_eq!(bridge.stats.events(), 3);
    bridge.stop().await;
}

#[tokio::test]
async fn malformed_device_parts_are_dropped_and_counted_and_cost_no_event() {
    let db = Db::new();
    let appservice = appservice_config("127.0.0.1:1".parse().unwrap());
    // No device has a store, so nothing is opened and this homeserver (which
    // would refuse connections) is never called.
    let crypto = CryptoDevices::new(
        Homeserver::new(
            Url::parse("http://127.0.0.1:9").unwrap(),
            appservice.as_token.clone(),
        )
        .unwrap(),
        BridgeUsers::new(&appservice, DOMAIN).unwrap(),
        DeviceOptions::new(db.dir.path().join("crypto"), None),
    );
    let mut bridge = start_with(db.open().await, 16, Some(crypto.clone())).await;
    let mut body = transaction(&[message(1), message(2)]);
    body["de.sorunome.msc2409.to_device"] = json!([
        {"type": "m.test", "sender": "@alice:walkie.test", "content": {}},
        {"type": "m.test", "sender": "@alice:walkie.test", "content": {},
         "to_user_id": "@walkie_mumble_bob:walkie.test", "to_device_id": "WALKIEXXXXXXXXXX"}
    ]);
    body["org.matrix.msc3202.device_lists"] = json!({"changed": "everyone"});
    body["org.matrix.msc3202.device_one_time_keys_count"] = json!({
        "not a user": {},
        "@walkie_mumble_bob:walkie.test": {"WALKIEXXXXXXXXXX": {"signed_curve25519": 3}}
    });
    body["org.matrix.msc3202.device_unused_fallback_key_types"] = json!(7);
    assert_eq!(
        bridge.put_txn("devices1", &body).await,
        (StatusCode::OK, json!({}))
    );
    assert_eq!(bodies(&bridge.dispatched()), ["message 1", "message 2"]);
    // The to-device message without recipient, the lists, one user's counts, the
    // fallback map.
    assert_eq!(bridge.stats.bad_device_parts(), 4);
    assert_eq!(bridge.stats.bad_events(), 0);
    let stats = crypto.stats();
    assert_eq!(
        (stats.opened(), stats.open_failures(), stats.requests()),
        (0, 0, 0)
    );
    assert_eq!(crypto.open_count(), 0);
    bridge.stop().await;
}

#[tokio::test]
async fn an_event_delivered_again_in_another_transaction_is_dropped() {
    let db = Db::new();
    let mut bridge = start(db.open().await, 16).await;
    assert_eq!(
        bridge.put_txn("a", &transaction(&[message(1)])).await.0,
        StatusCode::OK
    );
    assert_eq!(
        bridge
            .put_txn("b", &transaction(&[message(1), message(2)]))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(bodies(&bridge.dispatched()), ["message 1", "message 2"]);
    assert_eq!(bridge.stats.duplicate_events(), 1);
    bridge.stop().await;
}

#[tokio::test]
async fn ephemeral_events_under_both_names_are_dispatched_once() {
    let db = Db::new();
    let mut bridge = start(db.open().await, 16).await;
    let typing = json!({
        "type": "m.typing",
        "room_id": ROOM,
        "content": {"user_ids": ["@alice:walkie.test"]},
    });
    let presence = json!({"type": "m.presence", "sender": "@alice:walkie.test", "content": {}});
    let both = json!({
        "events": [message(1)],
        "ephemeral": [typing.clone(), presence],
        "de.sorunome.msc2409.ephemeral": [typing.clone()],
    });
    assert_eq!(bridge.put_txn("eph1", &both).await.0, StatusCode::OK);
    let unstable_only = json!({ "events": [], "de.sorunome.msc2409.ephemeral": [typing, "junk"] });
    assert_eq!(
        bridge.put_txn("eph2", &unstable_only).await.0,
        StatusCode::OK
    );

    let kinds: Vec<String> = bridge
        .dispatched()
        .into_iter()
        .map(|item| match item {
            Inbound::RoomEvent(e) => format!("{} {}", e.txn_id, e.event_type),
            Inbound::Ephemeral(e) => {
                assert_eq!(e.room_id.as_str(), ROOM);
                format!("{} {}", e.txn_id, e.event_type)
            }
        })
        .collect();
    assert_eq!(
        kinds,
        ["eph1 m.room.message", "eph1 m.typing", "eph2 m.typing"]
    );
    assert_eq!(bridge.stats.bad_events(), 1, "the junk ephemeral event");
    bridge.stop().await;
}

#[tokio::test]
async fn a_body_that_is_no_transaction_is_refused_and_not_recorded() {
    let db = Db::new();
    let mut bridge = start(db.open().await, 16).await;
    let (status, answer) = bridge
        .put_txn("junk", &json!({"events": "not a list"}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["errcode"], "M_BAD_JSON");

    let response = bridge
        .http
        .put(format!("{}/_matrix/app/v1/transactions/junk", bridge.base))
        .bearer_auth(HS_TOKEN)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["errcode"], "M_NOT_JSON");

    // Not recorded: the same id with a proper body is handled.
    assert_eq!(
        bridge.put_txn("junk", &transaction(&[message(1)])).await.0,
        StatusCode::OK
    );
    assert_eq!(bodies(&bridge.dispatched()), ["message 1"]);
    bridge.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused() {
    let db = Db::new();
    let mut bridge = start(db.open().await, 16).await;
    let mut big = message(1);
    big["content"]["body"] = json!("x".repeat(BODY_LIMIT));
    let response = bridge
        .http
        .put(format!("{}/_matrix/app/v1/transactions/big", bridge.base))
        .bearer_auth(HS_TOKEN)
        .json(&transaction(&[big]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(bridge.dispatched().is_empty());
    bridge.stop().await;
}

#[tokio::test]
async fn a_store_failure_answers_500_so_the_homeserver_retries() {
    let db = Db::new();
    let store = db.open().await;
    let mut bridge = start(store.clone(), 16).await;
    store.close().await;
    let (status, answer) = bridge.put_txn("s1", &transaction(&[message(1)])).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(answer["errcode"], "M_UNKNOWN");
    assert!(bridge.dispatched().is_empty());
    bridge.stop().await;

    // The retry, once the database is back, is handled.
    let mut again = start(db.open().await, 16).await;
    assert_eq!(
        again.put_txn("s1", &transaction(&[message(1)])).await.0,
        StatusCode::OK
    );
    assert_eq!(bodies(&again.dispatched()), ["message 1"]);
    again.stop().await;
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_stalled_dispatcher() {
    let db = Db::new();
    let store = db.open().await;
    // Room for one event; nobody reads after the first.
    let mut bridge = start(store.clone(), 1).await;
    let put = {
        let http = bridge.http.clone();
        let url = format!("{}/_matrix/app/v1/transactions/stall", bridge.base);
        let body = transaction(&[message(1), message(2), message(3)]);
        tokio::spawn(async move {
            http.put(url)
                .bearer_auth(HS_TOKEN)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // Taking the first lets the second in; the third then waits for good.
    let first = bridge.events.recv().await.unwrap();
    assert_eq!(bodies(&[first]), ["message 1"]);
    bridge.shutdown.cancel();
    let status = tokio::time::timeout(Duration::from_secs(10), put)
        .await
        .expect("the stalled transaction is answered")
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::timeout(Duration::from_secs(10), bridge.task)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
    assert!(
        !store.txn_handled("stall").await.unwrap(),
        "not recorded, so the homeserver sends it again"
    );
}
