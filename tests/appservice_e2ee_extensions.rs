//! What a real Synapse (the harness's, with its default `experimental_features`)
//! pushes to the bridge's own generated registration for encrypted rooms
//! (issue 15, docs/encryption.md "Implementation"): to-device messages of a
//! puppet's device (MSC2409/MSC4203), its one-time-key counts and unused fallback
//! key types, and device-list changes of users sharing a room (MSC3202). Also
//! that MSC4190 is on: the appservice creates a device for a puppet, and
//! `/register` without `inhibit_login` is refused.
//!
//! The appservice here is a bare listener that records transaction bodies; the
//! keys are the raw JSON names, because that is what this test pins.

use std::time::Duration;

use axum::extract::{Path, State};
use axum::routing::put;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use walkie_bridge::config::Config;
use walkie_bridge::registration::Registration;
use walkie_harness::{CreateRoom, Synapse, SynapseBuilder};

const AS_TOKEN: &str = "as-token-e2ee-test-0123456789abcdef";
const HS_TOKEN: &str = "hs-token-e2ee-test-fedcba9876543210";
const WAIT: Duration = Duration::from_secs(30);
const PUPPET: &str = "@walkie_e2ee:walkie.test";
const DEVICE: &str = "WALKIEE2EE";

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

/// Records every transaction body Synapse pushes.
async fn record(
    State(bodies): State<mpsc::UnboundedSender<Value>>,
    Path(_txn): Path<String>,
    Json(body): Json<Value>,
) -> Json<Value> {
    // The receiver lives as long as the test; a send error only means it ended.
    let _ = bodies.send(body);
    Json(json!({}))
}

struct Transactions {
    bodies: mpsc::UnboundedReceiver<Value>,
    seen: Vec<Value>,
}

impl Transactions {
    /// The first transaction (already seen or still to come) for which `found`
    /// gives a value.
    async fn find<T>(&mut self, what: &str, mut found: impl FnMut(&Value) -> Option<T>) -> T {
        if let Some(hit) = self.seen.iter().find_map(&mut found) {
            return hit;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let body = tokio::time::timeout_at(deadline, self.bodies.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "no transaction with {what} within {WAIT:?}; got {:#?}",
                        self.seen
                    )
                })
                .expect("the listener keeps running");
            let hit = found(&body);
            self.seen.push(body);
            if let Some(hit) = hit {
                return hit;
            }
        }
    }
}

struct As {
    http: reqwest::Client,
    base: String,
}

impl As {
    /// A client-server call as the appservice, optionally as `user` on `device`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        user: Option<&str>,
        device: Option<&str>,
        body: &Value,
    ) -> (u16, Value) {
        let mut query = Vec::new();
        if let Some(user) = user {
            query.push(("user_id", user));
        }
        if let Some(device) = device {
            query.push(("device_id", device));
        }
        let response = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(AS_TOKEN)
            .query(&query)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let json = response.json().await.unwrap_or(Value::Null);
        (status, json)
    }
}

async fn start() -> (Synapse, Transactions, tempfile::TempDir) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let registration = Registration::from_config(&config(port, dir.path()))
        .to_yaml()
        .unwrap();
    let (tx, bodies) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(record))
        .with_state(tx);
    tokio::spawn(async move { axum::serve(listener, app).await });
    let synapse = SynapseBuilder::new()
        .server_name("walkie.test")
        .appservice_registration(registration)
        .start()
        .await
        .expect("Synapse starts with the bridge's registration");
    let transactions = Transactions {
        bodies,
        seen: Vec::new(),
    };
    (synapse, transactions, dir)
}

#[tokio::test]
async fn transactions_carry_to_device_key_counts_and_device_lists() {
    let (synapse, mut transactions, _dir) = start().await;
    let appservice = As {
        http: reqwest::Client::new(),
        base: synapse.url(),
    };
    use reqwest::Method;

    // MSC4190 is on for the bridge's registration: no appservice login session.
    let register = |username: &str, inhibit_login: bool| {
        json!({"type": "m.login.application_service", "username": username,
               "inhibit_login": inhibit_login})
    };
    let (status, refused) = appservice
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            None,
            &register("walkie_login", false),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["errcode"], "M_APPSERVICE_LOGIN_UNSUPPORTED");
    let (status, body) = appservice
        .call(
            Method::POST,
            "/_matrix/client/v3/register",
            None,
            None,
            &register("walkie_e2ee", true),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // The appservice gives the puppet a device, and keys to it.
    let (status, body) = appservice
        .call(
            Method::PUT,
            &format!("/_matrix/client/v3/devices/{DEVICE}"),
            Some(PUPPET),
            None,
            &json!({"display_name": "walkie-bridge"}),
        )
        .await;
    assert_eq!(status, 201, "a new device: {body}");
    let (status, body) = appservice
        .call(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(PUPPET),
            Some(DEVICE),
            &json!({
                "one_time_keys": {"signed_curve25519:AAAAAQ": {"key": "otk1", "signatures": {}}},
                "fallback_keys": {"signed_curve25519:AAAAAg":
                    {"key": "fbk1", "fallback": true, "signatures": {}}},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["one_time_key_counts"]["signed_curve25519"], 1);

    // A user shares a room with the puppet and sends its device a to-device message.
    let alice = synapse.register_user("alice", false).await.unwrap();
    let alice_client = synapse.client(&alice);
    let room = alice_client
        .create_room(&CreateRoom::new().invite(PUPPET))
        .await
        .unwrap();
    let (status, body) = appservice
        .call(
            Method::POST,
            &format!("/_matrix/client/v3/join/{room}"),
            Some(PUPPET),
            None,
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let http = reqwest::Client::new();
    let sent = http
        .put(format!(
            "{}/_matrix/client/v3/sendToDevice/m.walkie.test/t1",
            synapse.url()
        ))
        .bearer_auth(&alice.access_token)
        .json(&json!({"messages": {PUPPET: {DEVICE: {"hello": "puppet"}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(sent.status().as_u16(), 200);

    let message = transactions
        .find("the to-device message", |body| {
            body["de.sorunome.msc2409.to_device"]
                .as_array()?
                .iter()
                .find(|m| m["type"] == "m.walkie.test")
                .cloned()
        })
        .await;
    assert_eq!(message["to_user_id"], PUPPET);
    assert_eq!(message["to_device_id"], DEVICE);
    assert_eq!(message["sender"], alice.user_id.as_str());
    assert_eq!(message["content"], json!({"hello": "puppet"}));

    // The recipient is "interesting", so its counts come along (both spellings).
    let counts = transactions
        .find("the puppet's one-time-key counts", |body| {
            let counts = &body["org.matrix.msc3202.device_one_time_keys_count"][PUPPET][DEVICE];
            counts.is_object().then(|| body.clone())
        })
        .await;
    for key in [
        "org.matrix.msc3202.device_one_time_keys_count",
        "org.matrix.msc3202.device_one_time_key_counts",
    ] {
        assert_eq!(
            counts[key][PUPPET][DEVICE]["signed_curve25519"], 1,
            "{key}: {counts:#}"
        );
    }
    assert_eq!(
        counts["org.matrix.msc3202.device_unused_fallback_key_types"][PUPPET][DEVICE],
        json!(["signed_curve25519"]),
        "{counts:#}"
    );

    // Alice's new device keys change her device list, which the bridge must
    // see because she shares a room with one of its users.
    let keys = json!({"device_keys": {
        "user_id": alice.user_id,
        "device_id": alice.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", alice.device_id): "curve",
            format!("ed25519:{}", alice.device_id): "ed",
        },
        "signatures": {},
    }});
    let uploaded = http
        .post(format!("{}/_matrix/client/v3/keys/upload", synapse.url()))
        .bearer_auth(&alice.access_token)
        .json(&keys)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status().as_u16(), 200);
    let lists = transactions
        .find("alice in the changed device lists", |body| {
            let lists = &body["org.matrix.msc3202.device_lists"];
            lists["changed"]
                .as_array()?
                .iter()
                .any(|u| u == alice.user_id.as_str())
                .then(|| lists.clone())
        })
        .await;
    assert!(lists["left"].is_array(), "{lists}");
}
