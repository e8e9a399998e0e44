//! `!wt` commands: parsing (durations, junk) and execution against a SQLite store in
//! a temp dir — opt in with and without an expiry, status, opt out, expiry, and
//! device versus user-wide opt-ins.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ruma::{user_id, UserId};
use walkie_bridge::matrix::commands::{
    execute, may_transmit, parse, parse_duration, Command, Reply,
};
use walkie_bridge::store::Store;

const HOUR: Duration = Duration::from_secs(3600);

fn on(secs: u64) -> Option<Command> {
    Some(Command::On {
        duration: Some(Duration::from_secs(secs)),
    })
}

fn is_invalid(command: Option<Command>) -> bool {
    matches!(command, Some(Command::Invalid { .. }))
}

#[test]
fn the_four_commands_parse() {
    assert_eq!(parse("!wt help"), Some(Command::Help));
    assert_eq!(parse("!wt"), Some(Command::Help));
    assert_eq!(parse("!wt on"), Some(Command::On { duration: None }));
    assert_eq!(parse("!wt off"), Some(Command::Off));
    assert_eq!(parse("!wt status"), Some(Command::Status));
    assert_eq!(parse("  !WT   Status  "), Some(Command::Status));
    assert_eq!(
        parse("!wt on forever"),
        Some(Command::On { duration: None })
    );
}

#[test]
fn durations_parse_in_every_unit_and_sum() {
    assert_eq!(parse("!wt on 8h"), on(8 * 3600));
    assert_eq!(parse("!wt on 30m"), on(30 * 60));
    assert_eq!(parse("!wt on 2d"), on(2 * 86_400));
    assert_eq!(parse("!wt on 90s"), on(90));
    assert_eq!(parse("!wt on 1w"), on(7 * 86_400));
    assert_eq!(parse("!wt on 1h30m"), on(5400));
    assert_eq!(parse("!wt on 1h 30m"), on(5400));
    assert_eq!(parse("!wt on 8 hours"), on(8 * 3600));
    assert_eq!(parse("!wt on 8H"), on(8 * 3600));
    assert_eq!(
        parse_duration("366d"),
        Ok(Duration::from_secs(366 * 86_400))
    );
}

#[test]
fn junk_after_the_prefix_is_invalid_with_a_reason() {
    for junk in [
        "!wt on 8",
        "!wt on h",
        "!wt on 8x",
        "!wt on 0m",
        "!wt on -5m",
        "!wt on 8h please",
        "!wt on 367d",
        "!wt on 99999999999999999999s",
        "!wt on 9999999999999999w",
        "!wt off now",
        "!wt status please",
        "!wt help me",
        "!wt of",
        "!wt start",
    ] {
        let parsed = parse(junk);
        assert!(is_invalid(parsed.clone()), "{junk:?} → {parsed:?}");
    }
    match parse("!wt on 8x") {
        Some(Command::Invalid { reason }) => assert!(reason.contains("unit"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn other_messages_are_no_commands() {
    for body in [
        "",
        "hello",
        "wt on",
        "!wtf",
        "!wton",
        "say !wt on",
        "!w t on",
    ] {
        assert_eq!(parse(body), None, "{body:?}");
    }
}

#[test]
fn a_reply_fallback_is_skipped() {
    assert_eq!(
        parse("> <@bob:example.org> how do I talk?\n> second line\n\n!wt on 8h"),
        on(8 * 3600)
    );
    assert_eq!(parse("> <@bob:example.org> !wt off\n\nthanks"), None);
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
}

async fn store() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("walkie.db").display());
    let store = Store::connect(&url).await.unwrap();
    Fixture { _dir: dir, store }
}

/// 2026-11-26 10:00:00 UTC.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_795_687_200)
}

async fn run(
    store: &Store,
    body: &str,
    user: &UserId,
    device: Option<&str>,
    at: SystemTime,
) -> Reply {
    let command = parse(body).unwrap_or_else(|| panic!("{body:?} is a command"));
    execute(&command, user, device, store, at).await.unwrap()
}

#[tokio::test]
async fn on_with_an_expiry_lasts_until_then() {
    let f = store().await;
    let alice = user_id!("@alice:example.org");
    assert!(!may_transmit(&f.store, alice, None, now()).await.unwrap());

    let reply = run(&f.store, "!wt on 8h", alice, None, now()).await;
    assert_eq!(
        reply.text,
        "You can now talk and be heard on the walkie-talkie for 8 hours, until \
         2026-11-26 18:00 UTC. Say `!wt off` to stop."
    );
    assert!(reply
        .html
        .as_deref()
        .is_some_and(|h| h.contains("<code>!wt off</code>")));

    assert!(may_transmit(&f.store, alice, None, now()).await.unwrap());
    assert!(may_transmit(
        &f.store,
        alice,
        None,
        now() + 8 * HOUR - Duration::from_millis(1)
    )
    .await
    .unwrap());
    assert!(
        !may_transmit(&f.store, alice, None, now() + 8 * HOUR)
            .await
            .unwrap(),
        "the opt-in ends at its expiry"
    );
    let bob = user_id!("@bob:example.org");
    assert!(
        !may_transmit(&f.store, bob, None, now()).await.unwrap(),
        "only alice opted in"
    );

    let status = run(&f.store, "!wt status", alice, None, now() + HOUR).await;
    assert!(status.text.contains("You can talk"), "{}", status.text);
    assert!(
        status
            .text
            .contains("all your devices, until 2026-11-26 18:00 UTC (7 hours from now)"),
        "{}",
        status.text
    );

    let expired = run(&f.store, "!wt status", alice, None, now() + 9 * HOUR).await;
    assert!(
        expired.text.starts_with("You are not opted in"),
        "{}",
        expired.text
    );
}

#[tokio::test]
async fn on_without_a_duration_lasts_until_off() {
    let f = store().await;
    let alice = user_id!("@alice:example.org");
    let reply = run(&f.store, "!wt on", alice, None, now()).await;
    assert_eq!(
        reply.text,
        "You can now talk and be heard on the walkie-talkie until you say `!wt off`."
    );
    let years = Duration::from_secs(10 * 365 * 86_400);
    assert!(may_transmit(&f.store, alice, None, now() + years)
        .await
        .unwrap());
    let status = run(&f.store, "!wt status", alice, None, now()).await;
    assert!(
        status.text.contains("until you say `!wt off`"),
        "{}",
        status.text
    );

    let off = run(&f.store, "!wt off", alice, None, now()).await;
    assert!(
        off.text.starts_with("You can no longer talk"),
        "{}",
        off.text
    );
    assert!(!may_transmit(&f.store, alice, None, now()).await.unwrap());

    let again = run(&f.store, "!wt off", alice, None, now()).await;
    assert!(
        again.text.starts_with("You were not opted in"),
        "{}",
        again.text
    );
}

#[tokio::test]
async fn a_second_on_replaces_the_first() {
    let f = store().await;
    let alice = user_id!("@alice:example.org");
    run(&f.store, "!wt on", alice, None, now()).await;
    run(&f.store, "!wt on 30m", alice, None, now()).await;
    assert!(!may_transmit(&f.store, alice, None, now() + HOUR)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_device_opt_in_covers_that_device_only() {
    let f = store().await;
    let alice = user_id!("@alice:example.org");
    let reply = run(&f.store, "!wt on 2d", alice, Some("PHONE"), now()).await;
    assert!(
        reply.text.starts_with("You can now talk from device PHONE"),
        "{}",
        reply.text
    );

    assert!(may_transmit(&f.store, alice, Some("PHONE"), now())
        .await
        .unwrap());
    assert!(!may_transmit(&f.store, alice, Some("LAPTOP"), now())
        .await
        .unwrap());
    // A voice message does not say which device sent it: any opt-in counts.
    assert!(may_transmit(&f.store, alice, None, now()).await.unwrap());

    let laptop = run(&f.store, "!wt status", alice, Some("LAPTOP"), now()).await;
    assert!(
        laptop.text.starts_with("You are not opted in"),
        "{}",
        laptop.text
    );
    let phone = run(&f.store, "!wt status", alice, Some("PHONE"), now()).await;
    assert!(
        phone
            .text
            .contains("device PHONE, until 2026-11-28 10:00 UTC"),
        "{}",
        phone.text
    );

    run(&f.store, "!wt off", alice, Some("PHONE"), now()).await;
    assert!(!may_transmit(&f.store, alice, Some("PHONE"), now())
        .await
        .unwrap());
    assert!(!may_transmit(&f.store, alice, None, now()).await.unwrap());
}

#[tokio::test]
async fn a_user_wide_opt_in_covers_every_device_and_outlives_a_device_off() {
    let f = store().await;
    let alice = user_id!("@alice:example.org");
    run(&f.store, "!wt on", alice, None, now()).await;
    run(&f.store, "!wt on 1h", alice, Some("PHONE"), now()).await;
    assert!(may_transmit(&f.store, alice, Some("LAPTOP"), now())
        .await
        .unwrap());

    let off = run(&f.store, "!wt off", alice, Some("PHONE"), now()).await;
    assert!(
        off.text
            .contains("your opt-in for all your devices still lets it talk"),
        "{}",
        off.text
    );
    assert!(may_transmit(&f.store, alice, Some("PHONE"), now())
        .await
        .unwrap());

    // From a room (device unknown) `off` ends every opt-in.
    run(&f.store, "!wt on 1h", alice, Some("PHONE"), now()).await;
    run(&f.store, "!wt off", alice, None, now()).await;
    assert!(!may_transmit(&f.store, alice, Some("PHONE"), now())
        .await
        .unwrap());
    assert!(!may_transmit(&f.store, alice, Some("LAPTOP"), now())
        .await
        .unwrap());
}

#[tokio::test]
async fn help_and_invalid_commands_answer_with_the_commands() {
    let f = store().await;
    let alice = user_id!("@alice:example.org");
    let help = run(&f.store, "!wt help", alice, None, now()).await;
    for command in ["!wt on", "!wt off", "!wt status"] {
        assert!(help.text.contains(command), "{}", help.text);
    }
    let invalid = run(&f.store, "!wt start", alice, None, now()).await;
    assert!(
        invalid
            .text
            .starts_with("`!wt start` is not a command I know."),
        "{}",
        invalid.text
    );
    assert!(invalid.text.ends_with(&help.text), "{}", invalid.text);
    assert!(
        !may_transmit(&f.store, alice, None, now()).await.unwrap(),
        "help changes nothing"
    );
}
