//! A bridged room changes under the bridge (issue 13.2): members are kicked, banned
//! or leave, opt out, power levels change, the room becomes encrypted or is
//! replaced. Real Synapse, the daemon in-process, real live clients.

#[path = "bridge_common/mod.rs"]
mod bridge_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;
#[path = "live_common/mod.rs"]
mod live_common;

use std::time::{Duration, Instant};

use bridge_common::{setup, start_daemon, Running, Setup, SERVER, WAIT};
use live_common::{Incoming, LiveClient};
use serde_json::{json, Value};
use walkie_endpoint::Downlink;
use walkie_harness::TestUser;

/// How soon a member who is gone must lose their live session.
const END_WITHIN: Duration = Duration::from_secs(1);

/// Synapse with alice's room, bob joined, and the daemon with `test.radio`.
async fn bridge() -> (Setup, Running, TestUser) {
    let setup = setup().await;
    let bob = setup.member("bob").await;
    let running = start_daemon(&setup.config).await;
    (setup, running, bob)
}

/// Bob on a live client, holding the floor.
async fn bob_talking(setup: &Setup, bob: &TestUser) -> LiveClient {
    let mut client = LiveClient::logon_ok(setup.listen, &setup.synapse, bob).await;
    let stream = client.start_stream().await;
    let granted = client.until_floor("granted").await;
    assert_eq!(granted["stream_id"], stream, "{granted}");
    client
}

/// Waits (up to a few seconds, to show how late it would be) until the bridge
/// closes the connection; returns how long that took and the `on_error` it sent
/// last, which says why. Panics if it never happens.
async fn until_cut_off(
    client: &mut LiveClient,
    since: Instant,
    what: &str,
) -> (Duration, Option<Value>) {
    let give_up = since + Duration::from_secs(5);
    let mut why = None;
    loop {
        let left = give_up.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, client.next()).await {
            Ok(Incoming::Closed) => return (since.elapsed(), why),
            Ok(Incoming::Json(event)) if event["command"] == "on_error" => why = Some(event),
            Ok(_) => continue,
            Err(_) => panic!(
                "{what}: the live session still runs {:?} later",
                since.elapsed()
            ),
        }
    }
}

fn assert_reason(why: Option<Value>, code: &str) {
    let why = why.expect("the page is told why before the close");
    assert_eq!(why["error"], code, "{why}");
}

async fn member_change(setup: &Setup, user: &TestUser, membership: &str) -> Instant {
    let alice = setup.synapse.client(&setup.alice);
    alice
        .send_state(
            &setup.room_id,
            "m.room.member",
            user.user_id.as_str(),
            &json!({ "membership": membership, "reason": "test" }),
        )
        .await
        .expect("membership change");
    Instant::now()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kicked_members_live_session_ends_within_a_second() {
    let (setup, running, bob) = bridge().await;
    let mut client = bob_talking(&setup, &bob).await;
    let since = member_change(&setup, &bob, "leave").await;
    let (took, why) = until_cut_off(&mut client, since, "kicked").await;
    eprintln!("kicked: live session ended after {took:?}: {why:?}");
    assert_reason(why, "not_member");
    assert!(
        took <= END_WITHIN,
        "kicked, but cut off only after {took:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_members_live_session_ends_within_a_second() {
    let (setup, running, bob) = bridge().await;
    let mut client = bob_talking(&setup, &bob).await;
    let since = member_change(&setup, &bob, "ban").await;
    let (took, why) = until_cut_off(&mut client, since, "banned").await;
    eprintln!("banned: live session ended after {took:?}: {why:?}");
    assert_reason(why, "not_member");
    assert!(
        took <= END_WITHIN,
        "banned, but cut off only after {took:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_leaves_loses_the_live_session_within_a_second() {
    let (setup, running, bob) = bridge().await;
    let mut client = bob_talking(&setup, &bob).await;
    setup
        .synapse
        .client(&bob)
        .leave(&setup.room_id)
        .await
        .expect("bob leaves");
    let since = Instant::now();
    let (took, why) = until_cut_off(&mut client, since, "left").await;
    eprintln!("left: live session ended after {took:?}: {why:?}");
    assert_reason(why, "not_member");
    assert!(took <= END_WITHIN, "left, but cut off only after {took:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wt_off_ends_the_running_live_talk_at_once() {
    let (setup, running, bob) = bridge().await;
    let mut client = bob_talking(&setup, &bob).await;
    setup
        .synapse
        .client(&bob)
        .send_text(&setup.room_id, "!wt off")
        .await
        .expect("!wt off");
    let since = Instant::now();
    let (took, why) = until_cut_off(&mut client, since, "!wt off").await;
    eprintln!("!wt off: live session ended after {took:?}: {why:?}");
    assert_reason(why, "not_opted_in");
    assert!(
        took <= END_WITHIN,
        "opted out, but cut off only after {took:?}"
    );
    running.stop().await;
}

/// The next notice of the bot whose body passes `pick`.
async fn bot_notice(setup: &Setup, pick: impl Fn(&str) -> bool) -> String {
    let bot = format!("@walkie:{SERVER}");
    let alice = setup.synapse.client(&setup.alice);
    let notice = alice
        .sync_until(
            |e| {
                e.sender() == bot
                    && e.content()["msgtype"] == "m.notice"
                    && e.body().is_some_and(&pick)
            },
            WAIT,
        )
        .await
        .expect("the bot's notice");
    notice.body().unwrap_or_default().to_owned()
}

/// The channel's hub stops: the test endpoint's link closes.
async fn channel_stops(running: &mut Running) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, running.link.recv()).await {
            Ok(Err(_)) => return,
            Ok(Ok(Downlink::Floor(_) | Downlink::Audio(_))) => continue,
            Err(_) => panic!("the channel still runs {WAIT:?} later"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstoned_room_stops_its_channel_with_a_notice_naming_the_new_room() {
    let (setup, mut running, bob) = bridge().await;
    let mut client = LiveClient::logon_ok(setup.listen, &setup.synapse, &bob).await;
    let alice = setup.synapse.client(&setup.alice);
    let new_room = format!("!replacement:{SERVER}");
    alice
        .send_state(
            &setup.room_id,
            "m.room.tombstone",
            "",
            &json!({ "body": "moved", "replacement_room": new_room }),
        )
        .await
        .expect("tombstone");
    let notice = bot_notice(&setup, |b| b.contains(&new_room)).await;
    eprintln!("tombstone notice: {notice}");
    channel_stops(&mut running).await;
    let _ = until_cut_off(&mut client, Instant::now(), "tombstoned").await;
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_that_becomes_encrypted_keeps_its_channel_and_posts_encrypted() {
    let (setup, mut running, _bob) = bridge().await;
    let alice = setup.synapse.client(&setup.alice);
    alice
        .send_state(
            &setup.room_id,
            "m.room.encryption",
            "",
            &json!({ "algorithm": "m.megolm.v1.aes-sha2" }),
        )
        .await
        .expect("encryption");
    // Issue 15: the channel goes on, and its next voice message is encrypted.
    let (_, packets) = bridge_common::speech_packets();
    bridge_common::transmit(&mut running.link, "kilo", &packets).await;
    let puppet = format!("@walkie_test_kilo:{SERVER}");
    let event = alice
        .sync_until(
            |e| {
                e.sender() == puppet
                    && matches!(e.event_type(), "m.room.encrypted" | "m.room.message")
            },
            WAIT,
        )
        .await
        .expect("the transmission is archived");
    assert_eq!(
        event.event_type(),
        "m.room.encrypted",
        "{:?}",
        event.content()
    );
    assert_eq!(event.content()["algorithm"], "m.megolm.v1.aes-sha2");
    running.stop().await;
}

/// The room's `m.room.power_levels`, with `user` at `level`.
async fn set_power_level(setup: &Setup, user: &str, level: i64) {
    let alice = setup.synapse.client(&setup.alice);
    let mut levels: Value = alice
        .get_state(&setup.room_id, "m.room.power_levels", "")
        .await
        .expect("power levels")
        .expect("the room has power levels");
    levels["users"][user] = json!(level);
    alice
        .send_state(&setup.room_id, "m.room.power_levels", "", &levels)
        .await
        .expect("power levels changed");
}

/// The real binary with a radio on rigctld that only members of power level 50
/// may key: raising bob to 50 lets his next voice message key it at once (the
/// cached levels used to last a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_level_change_takes_effect_at_once_for_the_radio_gate() {
    use walkie_endpoint::audio::encode_ogg_opus;
    use walkie_harness::{ChildGuard, Rigctld};

    let setup = setup().await;
    let bob = setup.member("bob").await;
    let bob_client = setup.synapse.client(&bob);
    let rig = Rigctld::start();
    let dir = setup.dir.path();
    let config_path = bridge_common::write_rigctld_radio_config(
        &setup,
        &rig.address(),
        "transmit_min_power_level = 50",
        |text| text,
    );
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_walkie-bridge"));
    command.args(["run", "-c"]).arg(&config_path);
    command.env("HOME", dir).env("RUST_LOG", "info");
    let mut bridge = ChildGuard::spawn("walkie-bridge", command, dir.join("bridge.log"))
        .expect("walkie-bridge starts");
    let alice = setup.synapse.client(&setup.alice);
    let bot = format!("@walkie:{SERVER}");
    alice
        .sync_until(
            |e| e.sender() == bot && e.content()["membership"] == "join",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("the bot never joined ({e}): {}", bridge.log_tail(40)));
    bridge_common::opt_in(&bob_client, &setup.room_id).await;

    let speech = common::speech(48_000);
    let ogg = encode_ogg_opus(&speech, 24_000).expect("Ogg Opus");
    let ms = speech.len() as u64 * 1000 / 48_000;
    // Power level 0: the radio declines, and the gate caches the levels.
    let first = bob_client
        .send_voice_message(&setup.room_id, ogg.clone(), ms)
        .await
        .expect("voice message");
    alice
        .sync_until(
            |e| {
                e.sender() == bot
                    && e.content()["m.relates_to"]["event_id"] == first.as_str()
                    && e.body().is_some_and(|b| b.contains("radio.uhf"))
            },
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("no decline from the radio ({e}): {}", bridge.log_tail(40)));
    assert!(!rig.ptt_keyed(), "keyed for power level 0");

    set_power_level(&setup, bob.user_id.as_str(), 50).await;
    // Once the change is in the room, the next voice message keys the radio.
    alice
        .sync_until(
            |e| {
                e.event_type() == "m.room.power_levels"
                    && e.content()["users"][bob.user_id.as_str()] == 50
            },
            WAIT,
        )
        .await
        .expect("power levels changed");
    let second = bob_client
        .send_voice_message(&setup.room_id, ogg, ms)
        .await
        .expect("voice message");
    let deadline = Instant::now() + WAIT;
    while !rig.ptt_keyed() {
        if Instant::now() > deadline {
            let declined = alice
                .room_messages(&setup.room_id, 50)
                .await
                .expect("messages")
                .into_iter()
                .filter(|e| e["content"]["m.relates_to"]["event_id"] == second.as_str())
                .map(|e| e["content"]["body"].clone())
                .collect::<Vec<_>>();
            panic!(
                "power level 50 did not key the radio: {declined:?}\n{}",
                bridge.log_tail(30)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = bridge.stop(Duration::from_secs(5)).await;
}
