//! The harness against a real Synapse.

use std::time::Duration;

use serde_json::json;
use walkie_harness::{
    free_port, AppserviceRegistration, CreateRoom, MatrixClient, Preset, Synapse, SyncEventKind,
};

const WAIT: Duration = Duration::from_secs(30);

async fn start() -> Synapse {
    Synapse::builder()
        .server_name("walkie.test")
        .start()
        .await
        .expect("Synapse starts")
}

#[tokio::test]
async fn synapse_starts_and_answers_versions() {
    let synapse = start().await;
    assert!(synapse.url().starts_with("http://127.0.0.1:"));
    assert_eq!(synapse.server_name(), "walkie.test");
    let versions = MatrixClient::new(synapse.url(), "")
        .versions()
        .await
        .expect("/versions answers");
    let versions = versions["versions"].as_array().expect("versions list");
    assert!(
        versions.iter().any(|v| v == "v1.11"),
        "unexpected versions: {versions:?}"
    );
}

#[tokio::test]
async fn users_register_and_exchange_a_message() {
    let synapse = start().await;
    let alice = synapse.register_user("alice", false).await.unwrap();
    let bob = synapse.register_user("bob", true).await.unwrap();
    assert_eq!(alice.user_id, "@alice:walkie.test");
    assert_eq!(bob.user_id, "@bob:walkie.test");
    assert!(!alice.device_id.is_empty());

    let alice_client = synapse.client(&alice);
    let bob_client = synapse.client(&bob);
    assert_eq!(alice_client.whoami().await.unwrap().user_id, alice.user_id);

    // Registering the same user twice is refused with the Matrix errcode.
    let error = synapse.register_user("alice", false).await.unwrap_err();
    assert_eq!(error.status(), Some(400), "{error}");
    assert_eq!(error.errcode(), Some("M_USER_IN_USE"), "{error}");

    let room = alice_client
        .create_room(
            &CreateRoom::new()
                .name("Ops")
                .alias("ops")
                .invite(&bob.user_id)
                .preset(Preset::Private),
        )
        .await
        .unwrap();
    assert_eq!(
        alice_client
            .resolve_alias("#ops:walkie.test")
            .await
            .unwrap(),
        room
    );

    let invite = bob_client
        .sync_until(
            |e| {
                e.kind == SyncEventKind::Invite
                    && e.room_id == room
                    && e.event_type() == "m.room.member"
                    && e.state_key() == Some(bob.user_id.as_str())
                    && e.content()["membership"] == "invite"
            },
            WAIT,
        )
        .await
        .expect("bob sees the invite");
    assert_eq!(invite.sender(), alice.user_id);
    assert_eq!(bob_client.join("#ops:walkie.test").await.unwrap(), room);

    let sent = alice_client.send_text(&room, "over to you").await.unwrap();
    let received = bob_client
        .sync_until(
            |e| e.room_id == room && e.event_type() == "m.room.message",
            WAIT,
        )
        .await
        .expect("bob receives alice's message");
    assert_eq!(received.event_id(), Some(sent.as_str()));
    assert_eq!(received.sender(), alice.user_id);
    assert_eq!(received.body(), Some("over to you"));

    // Two events in one batch are both found, in turn.
    bob_client.send_text(&room, "one").await.unwrap();
    bob_client.send_text(&room, "two").await.unwrap();
    for body in ["two", "one"] {
        alice_client
            .sync_until(|e| e.room_id == room && e.body() == Some(body), WAIT)
            .await
            .unwrap_or_else(|e| panic!("alice sees {body:?}: {e}"));
    }

    let messages = bob_client.room_messages(&room, 3).await.unwrap();
    let bodies: Vec<_> = messages
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(bodies, ["two", "one", "over to you"]);

    let members = alice_client.joined_members(&room).await.unwrap();
    assert!(members.contains(&bob.user_id), "{members:?}");
}

#[tokio::test]
async fn sync_until_times_out_when_nothing_matches() {
    let synapse = start().await;
    let alice = synapse.register_user("alice", false).await.unwrap();
    let error = synapse
        .client(&alice)
        .sync_until(
            |e| e.event_type() == "never.sent",
            Duration::from_millis(500),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, walkie_harness::Error::Timeout { .. }),
        "{error}"
    );
}

#[tokio::test]
async fn state_events_and_power_levels_in_room_version_12() {
    let synapse = start().await;
    let alice = synapse.register_user("alice", false).await.unwrap();
    let client = synapse.client(&alice);
    let room = client
        .create_room(
            &CreateRoom::new().power_levels(json!({"events": {"org.matrix.msc4002.floor": 100}})),
        )
        .await
        .unwrap();
    let create = client
        .get_state(&room, "m.room.create", "")
        .await
        .unwrap()
        .expect("create event");
    assert_eq!(create["room_version"], "12", "{create}");
    let power = client
        .get_state(&room, "m.room.power_levels", "")
        .await
        .unwrap()
        .expect("power levels");
    assert_eq!(power["events"]["org.matrix.msc4002.floor"], 100, "{power}");
    // Room version 12: the creator has unlimited power and is not listed in users.
    assert!(power["users"].get(&alice.user_id).is_none(), "{power}");

    assert_eq!(
        client
            .get_state(&room, "org.matrix.msc4002.floor", "")
            .await
            .unwrap(),
        None
    );
    client
        .send_state(
            &room,
            "org.matrix.msc4002.floor",
            "",
            &json!({"state": "idle"}),
        )
        .await
        .unwrap();
    assert_eq!(
        client
            .get_state(&room, "org.matrix.msc4002.floor", "")
            .await
            .unwrap(),
        Some(json!({"state": "idle"}))
    );
}

#[tokio::test]
async fn media_round_trip_through_authenticated_download() {
    let synapse = start().await;
    let alice = synapse.register_user("alice", false).await.unwrap();
    let bob = synapse.register_user("bob", false).await.unwrap();
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mxc = synapse
        .client(&alice)
        .upload(bytes.clone(), "application/octet-stream", "blob.bin")
        .await
        .unwrap();
    assert!(mxc.starts_with("mxc://walkie.test/"), "{mxc}");
    let downloaded = synapse.client(&bob).download(&mxc).await.unwrap();
    assert_eq!(downloaded.len(), bytes.len());
    assert!(downloaded == bytes, "downloaded bytes differ");

    // Without authentication the v1 endpoint refuses; the old v3 download is gone.
    let media_id = mxc.rsplit('/').next().unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let unauthenticated = http
        .get(format!(
            "{}/_matrix/client/v1/media/download/walkie.test/{media_id}",
            synapse.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    let legacy = http
        .get(format!(
            "{}/_matrix/media/v3/download/walkie.test/{media_id}",
            synapse.url()
        ))
        .bearer_auth(&alice.access_token)
        .send()
        .await
        .unwrap();
    assert_eq!(legacy.status(), 404);
}

#[tokio::test]
async fn voice_message_carries_msc3245_fields() {
    let synapse = start().await;
    let alice = synapse.register_user("alice", false).await.unwrap();
    let client = synapse.client(&alice);
    let room = client.create_room(&CreateRoom::new()).await.unwrap();
    let ogg = b"OggS not really opus".to_vec();
    let event_id = client
        .send_voice_message(&room, ogg.clone(), 1_500)
        .await
        .unwrap();
    let event = client
        .sync_until(|e| e.event_id() == Some(event_id.as_str()), WAIT)
        .await
        .unwrap();
    let content = event.content();
    assert_eq!(content["msgtype"], "m.audio");
    assert_eq!(content["info"]["mimetype"], "audio/ogg");
    assert_eq!(content["info"]["duration"], 1_500);
    assert_eq!(content["info"]["size"], ogg.len());
    assert_eq!(content["org.matrix.msc1767.audio"]["duration"], 1_500);
    assert_eq!(content["org.matrix.msc3245.voice"], json!({}));
    let url = content["url"].as_str().unwrap();
    assert_eq!(client.download(url).await.unwrap(), ogg);
}

#[tokio::test]
async fn openid_token_is_accepted_by_userinfo() {
    let synapse = start().await;
    let alice = synapse.register_user("alice", false).await.unwrap();
    let token = synapse.client(&alice).openid_token().await.unwrap();
    assert_eq!(token.matrix_server_name, "walkie.test");
    assert_eq!(token.token_type, "Bearer");
    // What the live endpoint will do: check the token against the homeserver.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let info: serde_json::Value = http
        .get(format!(
            "{}/_matrix/federation/v1/openid/userinfo",
            synapse.url()
        ))
        .query(&[("access_token", &token.access_token)])
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["sub"], alice.user_id);
}

#[tokio::test]
async fn data_survives_stop_and_start_again() {
    let mut synapse = start().await;
    let url = synapse.url();
    let alice = synapse.register_user("alice", false).await.unwrap();
    let room = synapse
        .client(&alice)
        .create_room(&CreateRoom::new().alias("kept"))
        .await
        .unwrap();
    synapse
        .client(&alice)
        .send_text(&room, "before")
        .await
        .unwrap();

    synapse.stop().await.unwrap();
    assert!(!synapse.is_running());
    let error = synapse.client(&alice).whoami().await.unwrap_err();
    assert!(
        matches!(error, walkie_harness::Error::Http { .. }),
        "a stopped Synapse still answered: {error}"
    );

    synapse.start_again().await.unwrap();
    assert_eq!(synapse.url(), url);
    let client = synapse.client(&alice);
    assert_eq!(
        client.resolve_alias("#kept:walkie.test").await.unwrap(),
        room
    );
    let messages = client.room_messages(&room, 1).await.unwrap();
    assert_eq!(messages[0]["content"]["body"], "before");

    // A crash (SIGKILL) loses nothing that was acknowledged either.
    client.send_text(&room, "acknowledged").await.unwrap();
    synapse.kill().unwrap();
    synapse.start_again().await.unwrap();
    let messages = synapse
        .client(&alice)
        .room_messages(&room, 1)
        .await
        .unwrap();
    assert_eq!(messages[0]["content"]["body"], "acknowledged");
}

#[tokio::test]
async fn appservice_registration_is_accepted() {
    let registration = AppserviceRegistration::for_test(
        "walkie",
        &format!("http://127.0.0.1:{}", free_port()),
        "as-token-for-test",
        "hs-token-for-test",
        "walkie",
        "@walkie_.*:walkie\\.test",
    );
    let synapse = Synapse::builder()
        .server_name("walkie.test")
        .appservice_registration(&registration)
        .start()
        .await
        .expect("Synapse starts with the registration");
    let bot = MatrixClient::appservice(
        synapse.url(),
        &registration.as_token,
        Some("@walkie:walkie.test"),
    );
    assert_eq!(bot.whoami().await.unwrap().user_id, "@walkie:walkie.test");

    // A wrong as_token is refused.
    let stranger = MatrixClient::appservice(synapse.url(), "wrong", Some("@walkie:walkie.test"));
    let error = stranger.whoami().await.unwrap_err();
    assert_eq!(error.status(), Some(401), "{error}");
    assert_eq!(error.errcode(), Some("M_UNKNOWN_TOKEN"), "{error}");
}

#[tokio::test]
async fn appservice_registration_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("registration.yaml");
    let registration = AppserviceRegistration::for_test(
        "from-file",
        "",
        "file-as-token",
        "file-hs-token",
        "filebot",
        "@file_.*:walkie\\.test",
    );
    std::fs::write(&path, registration.to_yaml()).unwrap();
    let synapse = Synapse::builder()
        .appservice_registration(path.as_path())
        .start()
        .await
        .expect("Synapse starts with the registration file");
    let bot = MatrixClient::appservice(synapse.url(), "file-as-token", None);
    assert_eq!(bot.whoami().await.unwrap().user_id, "@filebot:walkie.test");
}

#[tokio::test]
async fn a_broken_config_fails_with_the_log_tail() {
    let error = Synapse::builder()
        .appservice_registration("id: broken\nas_token: x\n")
        .start()
        .await
        .expect_err("Synapse must refuse an incomplete registration");
    let text = error.to_string();
    assert!(text.contains("exited during start-up"), "{text}");
    assert!(
        text.contains("hs_token"),
        "the reason is in the tail: {text}"
    );
    assert!(text.contains("homeserver.log"), "{text}");
}
