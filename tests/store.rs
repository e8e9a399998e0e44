//! The store against real databases. Every case of the suite is a function of the
//! database URL; `suite!` runs each one on a fresh SQLite file in a temp dir (one
//! test per case) and all of them, each on its own database, on a throwaway
//! PostgreSQL cluster started for the run (`postgres_runs_the_whole_suite`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Barrier;
use walkie_bridge::store::{
    Backend, OptIn, OutboxEntry, OutboxItem, Pruned, PuppetProfile, Retention, Store, StoreError,
};
use walkie_endpoint::{EndpointId, TxId};

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        /// Each case on its own SQLite file, in a folder that does not exist yet.
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().expect("temp dir");
                    super::$case(&super::sqlite_url(dir.path())).await;
                }
            )*
        }

        /// Every case, each on a new database of one cluster; the failing case
        /// names itself in its panic message.
        async fn run_suite_on(cluster: &postgres::Cluster) {
            $(
                let url = cluster.create_database(stringify!($case)).await;
                $case(&url).await;
            )*
        }
    };
}

suite!(
    migrations_run_once_and_again_on_reopen,
    newer_schema_is_refused,
    handled_txns_survive_reopen_and_prune,
    inbound_events_are_taken_once_replayed_until_done_and_pruned,
    concurrent_claims_of_one_txn_have_one_winner,
    rooms_are_saved_and_replaced,
    puppets_keep_profile_rooms_and_registration,
    opt_ins_cover_devices_and_expire,
    outbox_moves_through_upload_post_and_failure,
    retention_prunes_each_table_past_its_time,
    a_mumble_identity_is_kept_once_and_survives_reopen,
);

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("state/walkie.db").display())
}

async fn open(url: &str) -> Store {
    match Store::connect(url).await {
        Ok(store) => store,
        Err(e) => panic!("connect {url}: {e}"),
    }
}

/// A store closed and opened again: what a restart sees.
async fn reopen(store: Store, url: &str) -> Store {
    store.close().await;
    open(url).await
}

/// Now, to the millisecond the database keeps.
fn now_ms() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).expect("ms fit u64"))
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// Runs one statement outside the store, as another program (or an older or newer
/// bridge) would.
async fn raw_execute(url: &str, sql: &str) {
    let result = if url.starts_with("sqlite:") {
        let pool = sqlx::SqlitePool::connect(url).await.expect("raw sqlite");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .map(|_| ());
        pool.close().await;
        r
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("raw postgres");
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&pool)
            .await
            .map(|_| ());
        pool.close().await;
        r
    };
    result.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

// ---------------------------------------------------------------- the suite

async fn migrations_run_once_and_again_on_reopen(url: &str) {
    let store = open(url).await;
    let expected = if url.starts_with("sqlite:") {
        Backend::Sqlite
    } else {
        Backend::Postgres
    };
    assert_eq!(store.backend(), expected);
    store
        .save_room("#ops:example.org", "!a:example.org")
        .await
        .unwrap();
    // Were the migrations run again, CREATE TABLE would fail on the second open.
    let store = reopen(store, url).await;
    let store = reopen(store, url).await;
    assert_eq!(
        store
            .resolved_room("#ops:example.org")
            .await
            .unwrap()
            .as_deref(),
        Some("!a:example.org")
    );
    // A second pool beside the first (another process on the same database).
    let other = open(url).await;
    assert_eq!(
        other
            .resolved_room("#ops:example.org")
            .await
            .unwrap()
            .as_deref(),
        Some("!a:example.org")
    );
    other.close().await;
    store.close().await;
}

async fn newer_schema_is_refused(url: &str) {
    open(url).await.close().await;
    // What a much later walkie-bridge would have recorded after its migration
    // 1000 (far beyond this build's, whatever migrations it gains).
    let checksum = if url.starts_with("sqlite:") {
        "X'00'"
    } else {
        "'\\x00'::bytea"
    };
    let sql = format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (1000, 'from the future', TRUE, {checksum}, 1)"
    );
    raw_execute(url, &sql).await;
    match Store::connect(url).await {
        Err(StoreError::TooNew { found, known, .. }) => {
            assert_eq!(found, 1000);
            assert!((2..1000).contains(&known), "known {known}");
        }
        other => panic!("expected TooNew, got {other:?}"),
    }
}

async fn a_mumble_identity_is_kept_once_and_survives_reopen(url: &str) {
    let store = open(url).await;
    assert_eq!(store.mumble_identity("mumble.ops").await.unwrap(), None);
    store
        .save_mumble_identity_if_absent("mumble.ops", "cert-1", "key-1")
        .await
        .unwrap();
    // A second start that raced the first keeps the first's.
    store
        .save_mumble_identity_if_absent("mumble.ops", "cert-2", "key-2")
        .await
        .unwrap();
    store.close().await;
    let store = open(url).await;
    assert_eq!(
        store.mumble_identity("mumble.ops").await.unwrap(),
        Some(("cert-1".to_string(), "key-1".to_string()))
    );
    assert_eq!(store.mumble_identity("mumble.other").await.unwrap(), None);
    store.close().await;
}

async fn handled_txns_survive_reopen_and_prune(url: &str) {
    let store = open(url).await;
    assert!(!store.txn_handled("t1").await.unwrap());
    assert!(
        store.mark_txn_handled("t1").await.unwrap(),
        "first claim wins"
    );
    assert!(
        !store.mark_txn_handled("t1").await.unwrap(),
        "second claim loses"
    );
    assert!(store.txn_handled("t1").await.unwrap());
    assert!(!store.txn_handled("t2").await.unwrap());

    let store = reopen(store, url).await;
    assert!(store.txn_handled("t1").await.unwrap());
    assert!(
        !store.mark_txn_handled("t1").await.unwrap(),
        "still handled after restart"
    );
    assert!(store.mark_txn_handled("t2").await.unwrap());

    let now = SystemTime::now();
    assert_eq!(store.prune_txns(now - secs(86_400)).await.unwrap(), 0);
    assert_eq!(store.prune_txns(now + secs(60)).await.unwrap(), 2);
    assert!(!store.txn_handled("t1").await.unwrap());
    assert!(
        store.mark_txn_handled("t1").await.unwrap(),
        "pruned ids are new again"
    );
    store.close().await;
}

async fn inbound_events_are_taken_once_replayed_until_done_and_pruned(url: &str) {
    let store = open(url).await;
    let json = |n: u32| format!(r#"{{"event_id":"$e{n}"}}"#);
    for n in [1, 2, 3] {
        assert!(store
            .queue_inbound(&format!("$e{n}"), "!r:x", &json(n))
            .await
            .unwrap());
    }
    assert!(
        !store.queue_inbound("$e2", "!r:x", &json(2)).await.unwrap(),
        "a redelivery is not taken again"
    );
    store.inbound_done("$e2").await.unwrap();
    assert!(store.inbound_handled("$e2").await.unwrap());
    assert!(!store.inbound_handled("$e1").await.unwrap());

    let store = reopen(store, url).await;
    let pending: Vec<String> = store
        .pending_inbound()
        .await
        .unwrap()
        .into_iter()
        .map(|p| p.event_id)
        .collect();
    assert_eq!(
        pending,
        ["$e1", "$e3"],
        "in the order taken, handled left out"
    );
    assert_eq!(store.pending_inbound().await.unwrap()[0].event, json(1));
    assert!(
        !store.queue_inbound("$e2", "!r:x", &json(2)).await.unwrap(),
        "handled stays handled after a restart"
    );

    let now = SystemTime::now();
    assert_eq!(store.prune_inbound(now - secs(86_400)).await.unwrap(), 0);
    assert_eq!(store.prune_inbound(now + secs(60)).await.unwrap(), 3);
    assert!(store.pending_inbound().await.unwrap().is_empty());
    store.close().await;
}

async fn concurrent_claims_of_one_txn_have_one_winner(url: &str) {
    // Two pools on one database: two bridge processes sharing it, or one.
    let stores = [open(url).await, open(url).await];
    for round in 0..3 {
        let txn = format!("txn-{round}");
        let barrier = Arc::new(Barrier::new(20));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let store = stores[i % 2].clone();
                let barrier = barrier.clone();
                let txn = txn.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.mark_txn_handled(&txn).await
                })
            })
            .collect();
        let mut winners = 0;
        for task in tasks {
            if task.await.expect("task").expect("claim") {
                winners += 1;
            }
        }
        assert_eq!(winners, 1, "round {round}: claims that won");
    }
    for store in stores {
        store.close().await;
    }
}

async fn rooms_are_saved_and_replaced(url: &str) {
    let store = open(url).await;
    assert_eq!(store.resolved_room("#ops:example.org").await.unwrap(), None);
    store
        .save_room("#ops:example.org", "!old:example.org")
        .await
        .unwrap();
    store
        .save_room("#lobby:example.org", "!lobby:example.org")
        .await
        .unwrap();
    store
        .save_room("#ops:example.org", "!new:example.org")
        .await
        .unwrap();
    let store = reopen(store, url).await;
    assert_eq!(
        store
            .resolved_room("#ops:example.org")
            .await
            .unwrap()
            .as_deref(),
        Some("!new:example.org")
    );
    assert_eq!(
        store
            .resolved_room("#lobby:example.org")
            .await
            .unwrap()
            .as_deref(),
        Some("!lobby:example.org")
    );
    store.close().await;
}

async fn puppets_keep_profile_rooms_and_registration(url: &str) {
    let store = open(url).await;
    let alice = "@walkie_mumble_alice:example.org";
    assert_eq!(store.puppet(alice).await.unwrap(), None);
    match store.mark_puppet_joined(alice, "!ops:example.org").await {
        Err(StoreError::UnknownPuppet { user_id }) => assert_eq!(user_id, alice),
        other => panic!("expected UnknownPuppet, got {other:?}"),
    }

    let mut profile = PuppetProfile {
        user_id: alice.to_owned(),
        endpoint: EndpointId::new("mumble.ops"),
        talker_name: "alice".to_owned(),
        display_name: "alice (Mumble)".to_owned(),
        registered: false,
    };
    store.upsert_puppet(&profile).await.unwrap();
    let stored = store.puppet(alice).await.unwrap().expect("stored");
    assert_eq!(stored.profile, profile);
    assert!(stored.joined_rooms.is_empty());

    assert!(store
        .mark_puppet_joined(alice, "!ops:example.org")
        .await
        .unwrap());
    assert!(!store
        .mark_puppet_joined(alice, "!ops:example.org")
        .await
        .unwrap());
    assert!(store
        .mark_puppet_joined(alice, "!b:example.org")
        .await
        .unwrap());
    assert!(store
        .puppet_joined(alice, "!ops:example.org")
        .await
        .unwrap());
    assert!(!store
        .puppet_joined(alice, "!other:example.org")
        .await
        .unwrap());
    assert!(!store
        .puppet_joined("@walkie_mqtt_bob:example.org", "!ops:example.org")
        .await
        .unwrap());

    profile.registered = true;
    store.upsert_puppet(&profile).await.unwrap();
    // A late write of an older profile: new name taken, registration kept.
    profile.registered = false;
    profile.display_name = "Alice (Mumble)".to_owned();
    store.upsert_puppet(&profile).await.unwrap();

    let store = reopen(store, url).await;
    let stored = store.puppet(alice).await.unwrap().expect("stored");
    assert!(stored.profile.registered, "registration never goes back");
    assert_eq!(stored.profile.display_name, "Alice (Mumble)");
    assert_eq!(
        stored
            .joined_rooms
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["!b:example.org", "!ops:example.org"]
    );

    assert!(store
        .mark_puppet_left(alice, "!b:example.org")
        .await
        .unwrap());
    assert!(!store
        .mark_puppet_left(alice, "!b:example.org")
        .await
        .unwrap());
    assert!(!store.puppet_joined(alice, "!b:example.org").await.unwrap());
    assert!(store
        .puppet_joined(alice, "!ops:example.org")
        .await
        .unwrap());
    store.close().await;
}

async fn opt_ins_cover_devices_and_expire(url: &str) {
    let store = open(url).await;
    let u = "@carol:example.org";
    let t0 = now_ms();
    let hour = secs(3600);
    assert_eq!(store.opted_in(u, Some("PHONE"), t0).await.unwrap(), None);
    assert_eq!(store.opted_in(u, None, t0).await.unwrap(), None);

    // One device, for an hour.
    store
        .set_opt_in(u, Some("PHONE"), Some(t0 + hour))
        .await
        .unwrap();
    let phone = store
        .opted_in(u, Some("PHONE"), t0)
        .await
        .unwrap()
        .expect("phone");
    assert_eq!(phone.user_id, u);
    assert_eq!(phone.device_id.as_deref(), Some("PHONE"));
    assert_eq!(phone.until, Some(t0 + hour));
    assert_eq!(
        store.opted_in(u, Some("LAPTOP"), t0).await.unwrap(),
        None,
        "other device"
    );
    assert!(
        store.opted_in(u, None, t0).await.unwrap().is_some(),
        "device unknown: any counts"
    );
    assert!(store
        .opted_in(u, Some("PHONE"), t0 + hour - Duration::from_millis(1))
        .await
        .unwrap()
        .is_some());
    assert_eq!(
        store.opted_in(u, Some("PHONE"), t0 + hour).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store.opted_in(u, None, t0 + hour).await.unwrap(),
        None,
        "expired"
    );
    assert_eq!(
        store.opted_in("@dave:example.org", None, t0).await.unwrap(),
        None
    );

    // User-wide and permanent: covers every device and outlasts the phone's.
    store.set_opt_in(u, None, None).await.unwrap();
    for (device, at) in [
        (Some("LAPTOP"), t0),
        (Some("PHONE"), t0),
        (None, t0),
        (Some("PHONE"), t0 + 10 * hour),
    ] {
        let found = store.opted_in(u, device, at).await.unwrap();
        assert!(
            matches!(
                &found,
                Some(OptIn {
                    device_id: None,
                    until: None,
                    ..
                })
            ),
            "{device:?}: {found:?}"
        );
    }
    let listed: Vec<Option<String>> = store
        .opt_ins(u, t0)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.device_id)
        .collect();
    assert_eq!(listed, [None, Some("PHONE".to_owned())]);
    assert_eq!(
        store.opt_ins(u, t0 + hour).await.unwrap().len(),
        1,
        "phone expired"
    );

    // Clearing a device leaves the user-wide opt-in, which still covers it.
    assert_eq!(store.clear_opt_in(u, Some("PHONE")).await.unwrap(), 1);
    assert!(store
        .opted_in(u, Some("PHONE"), t0)
        .await
        .unwrap()
        .is_some());
    // Setting again replaces.
    store
        .set_opt_in(u, Some("PHONE"), Some(t0 + hour))
        .await
        .unwrap();
    store
        .set_opt_in(u, Some("PHONE"), Some(t0 + 2 * hour))
        .await
        .unwrap();
    assert_eq!(store.opt_ins(u, t0).await.unwrap().len(), 2);

    let store = reopen(store, url).await;
    assert_eq!(
        store.opt_ins(u, t0).await.unwrap().len(),
        2,
        "survives restart"
    );
    // Clearing the user clears every device.
    assert_eq!(store.clear_opt_in(u, None).await.unwrap(), 2);
    assert_eq!(store.opted_in(u, Some("PHONE"), t0).await.unwrap(), None);
    assert_eq!(store.opted_in(u, None, t0).await.unwrap(), None);

    // Pruning deletes what expired, not what is due later or permanent.
    store
        .set_opt_in(u, Some("A"), Some(t0 + secs(1)))
        .await
        .unwrap();
    store
        .set_opt_in(u, Some("B"), Some(t0 + secs(10)))
        .await
        .unwrap();
    store
        .set_opt_in("@dave:example.org", None, None)
        .await
        .unwrap();
    assert_eq!(store.prune_opt_ins(t0 + secs(5)).await.unwrap(), 1);
    let left: Vec<Option<String>> = store
        .opt_ins(u, t0)
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.device_id)
        .collect();
    assert_eq!(
        left,
        [Some("B".to_owned())],
        "A is gone even when asked about t0"
    );
    assert!(store
        .opted_in("@dave:example.org", None, t0 + 1000 * hour)
        .await
        .unwrap()
        .is_some());
    store.close().await;
}

/// Issue 14.5: one pass of the periodic pruning removes, from every table that
/// only grows, exactly the rows past their retention — and nothing still in use
/// (a pending voice message, a live opt-in, a recent transaction).
async fn retention_prunes_each_table_past_its_time(url: &str) {
    let store = open(url).await;
    let day = secs(86_400);
    let retention = Retention {
        posted: 7 * day,
        handled_txns: 2 * day,
        handled_events: 2 * day,
        expired_opt_ins: day,
        interval: secs(3600),
    };
    let t0 = now_ms();
    let posted = item("posted", t0);
    let pending = item("pending", t0);
    for i in [&posted, &pending] {
        store.enqueue_outbox(i).await.unwrap();
    }
    store.outbox_posted(posted.tx, "$posted").await.unwrap();
    store.mark_txn_handled("t-old").await.unwrap();
    for event in ["$handled", "$never-handled"] {
        assert!(store
            .queue_inbound(event, "!ops:example.org", "{}")
            .await
            .unwrap());
    }
    store.inbound_done("$handled").await.unwrap();
    store
        .set_opt_in("@ended:example.org", None, Some(t0))
        .await
        .unwrap();
    store
        .set_opt_in("@later:example.org", None, Some(t0 + 30 * day))
        .await
        .unwrap();
    store
        .set_opt_in("@always:example.org", None, None)
        .await
        .unwrap();

    // Nothing is old enough yet.
    assert_eq!(
        store.prune(&retention, t0 + day / 2).await.unwrap(),
        Pruned::default()
    );
    // Three days on: the transaction, both room events and the ended opt-in are
    // past their time.
    assert_eq!(
        store.prune(&retention, t0 + 3 * day).await.unwrap(),
        Pruned {
            posted: 0,
            handled_txns: 1,
            handled_events: 2,
            expired_opt_ins: 1,
        }
    );
    assert!(!store.txn_handled("t-old").await.unwrap());
    assert!(!store.inbound_handled("$handled").await.unwrap());
    assert!(store.pending_inbound().await.unwrap().is_empty());
    // Eight days on: the posted voice message too, never the pending one.
    let pruned = store.prune(&retention, t0 + 8 * day).await.unwrap();
    assert_eq!(pruned.posted, 1, "{pruned:?}");
    assert_eq!(store.outbox_entry(posted.tx).await.unwrap(), None);
    assert!(store.outbox_entry(pending.tx).await.unwrap().is_some());
    assert_eq!(store.outbox_depth().await.unwrap(), 1);
    for user in ["@later:example.org", "@always:example.org"] {
        assert!(
            store.opted_in(user, None, t0).await.unwrap().is_some(),
            "{user} still opted in"
        );
    }
    assert_eq!(
        store
            .opted_in("@ended:example.org", None, t0 - secs(1))
            .await
            .unwrap(),
        None,
        "the ended opt-in is gone, even when asked about a time it covered"
    );
    store.close().await;
}

fn item(channel: &str, created_at: SystemTime) -> OutboxItem {
    OutboxItem {
        tx: TxId::generate(),
        channel: channel.to_owned(),
        room_id: "!ops:example.org".to_owned(),
        sender: "@walkie_mumble_alice:example.org".to_owned(),
        path: PathBuf::from(format!("/var/lib/walkie-bridge/spool/{channel}.ogg")),
        duration_ms: 2_340,
        size: 18_211,
        waveform: vec![0, 17, 512, 1024, 3],
        mimetype: "audio/ogg".to_owned(),
        created_at,
        talker: "alice (Mumble)".to_owned(),
    }
}

fn txs(entries: &[OutboxEntry]) -> Vec<TxId> {
    entries.iter().map(|e| e.item.tx).collect()
}

async fn outbox_moves_through_upload_post_and_failure(url: &str) {
    let store = open(url).await;
    let t0 = now_ms();
    // Enqueued out of order; served by when the transmission started.
    let a = item("a", t0 + secs(2));
    let b = item("b", t0);
    let c = item("c", t0 + secs(1));
    for i in [&a, &b, &c] {
        assert!(store.enqueue_outbox(i).await.unwrap());
    }
    let mut again = a.clone();
    again.channel = "changed".to_owned();
    assert!(
        !store.enqueue_outbox(&again).await.unwrap(),
        "idempotent on tx id"
    );

    assert_eq!(store.outbox_depth().await.unwrap(), 3);
    assert_eq!(store.posted_count().await.unwrap(), 0);
    assert_eq!(
        store.outbox_oldest_age(t0 + secs(10)).await.unwrap(),
        Some(secs(10))
    );
    assert_eq!(
        store.outbox_oldest_age(t0 - secs(10)).await.unwrap(),
        Some(Duration::ZERO)
    );

    let due = store.due_outbox(t0 + secs(10), 10).await.unwrap();
    assert_eq!(txs(&due), [b.tx, c.tx, a.tx]);
    assert_eq!(
        due[0],
        OutboxEntry {
            item: b.clone(),
            mxc_uri: None,
            mxc_encryption: None,
            attempts: 0,
            next_attempt_at: t0,
            last_error: None,
        }
    );
    assert_eq!(due[2].item, a, "the first enqueue stays");
    assert_eq!(
        txs(&store.due_outbox(t0 + secs(10), 2).await.unwrap()),
        [b.tx, c.tx]
    );
    assert_eq!(
        txs(&store
            .due_outbox(t0 + Duration::from_millis(500), 10)
            .await
            .unwrap()),
        [b.tx],
        "due from when it was recorded"
    );

    // b fails before upload: it waits a minute; the others go on.
    assert!(store
        .outbox_failed(b.tx, "homeserver down", t0 + secs(60))
        .await
        .unwrap());
    assert_eq!(
        txs(&store.due_outbox(t0 + secs(10), 10).await.unwrap()),
        [c.tx, a.tx]
    );
    let due = store.due_outbox(t0 + secs(60), 10).await.unwrap();
    assert_eq!(txs(&due), [b.tx, c.tx, a.tx]);
    assert_eq!(
        (due[0].attempts, due[0].last_error.as_deref()),
        (1, Some("homeserver down"))
    );

    // Upload succeeds, the send fails: the URI is kept for the retry.
    assert!(store
        .outbox_uploaded(b.tx, "mxc://example.org/first")
        .await
        .unwrap());
    assert!(store
        .outbox_uploaded(b.tx, "mxc://example.org/second")
        .await
        .unwrap());
    assert!(store
        .outbox_failed(b.tx, "send: 502", t0 + secs(120))
        .await
        .unwrap());
    assert_eq!(
        store.outbox_depth().await.unwrap(),
        3,
        "failures stay queued"
    );

    // A restart in between.
    let store = reopen(store, url).await;
    let b_entry = store.outbox_entry(b.tx).await.unwrap().expect("b");
    assert_eq!(b_entry.mxc_uri.as_deref(), Some("mxc://example.org/first"));
    assert_eq!(b_entry.attempts, 2);
    assert_eq!(b_entry.next_attempt_at, t0 + secs(120));
    assert_eq!(b_entry.last_error.as_deref(), Some("send: 502"));
    assert_eq!(
        txs(&store.due_outbox(t0 + secs(119), 10).await.unwrap()),
        [c.tx, a.tx]
    );

    // An encrypted upload keeps its key with its URI, across a restart; a second
    // upload changes neither; a discarded one leaves room for a new pair.
    assert!(store
        .outbox_uploaded_encrypted(c.tx, "mxc://example.org/enc1", r#"{"k":1}"#)
        .await
        .unwrap());
    assert!(store
        .outbox_uploaded_encrypted(c.tx, "mxc://example.org/enc2", r#"{"k":2}"#)
        .await
        .unwrap());
    let store = reopen(store, url).await;
    let c_entry = store.outbox_entry(c.tx).await.unwrap().expect("c");
    assert_eq!(c_entry.mxc_uri.as_deref(), Some("mxc://example.org/enc1"));
    assert_eq!(c_entry.mxc_encryption.as_deref(), Some(r#"{"k":1}"#));
    assert!(store.outbox_upload_discarded(c.tx).await.unwrap());
    let c_entry = store.outbox_entry(c.tx).await.unwrap().expect("c");
    assert_eq!((c_entry.mxc_uri, c_entry.mxc_encryption), (None, None));
    assert!(store
        .outbox_uploaded_encrypted(c.tx, "mxc://example.org/enc3", r#"{"k":3}"#)
        .await
        .unwrap());
    let c_entry = store.outbox_entry(c.tx).await.unwrap().expect("c");
    assert_eq!(c_entry.mxc_encryption.as_deref(), Some(r#"{"k":3}"#));
    assert!(store.outbox_upload_discarded(c.tx).await.unwrap());

    // Posted: out of the queue, counted, and deaf to late reports.
    assert!(store.outbox_posted(b.tx, "$event_b").await.unwrap());
    assert!(!store.outbox_posted(b.tx, "$again").await.unwrap());
    // The live page's history: posted transmissions of the channel, who talked.
    let archived = store.archived("b", 10).await.unwrap();
    assert_eq!(txs(&archived), [b.tx]);
    assert_eq!(archived[0].item.talker, "alice (Mumble)");
    assert_eq!(
        archived[0].mxc_uri.as_deref(),
        Some("mxc://example.org/first")
    );
    assert!(
        store.archived("c", 10).await.unwrap().is_empty(),
        "not posted yet"
    );
    assert!(!store.outbox_failed(b.tx, "late", t0).await.unwrap());
    assert!(!store
        .outbox_uploaded(b.tx, "mxc://example.org/late")
        .await
        .unwrap());
    assert!(!store
        .outbox_posted(TxId::generate(), "$unknown")
        .await
        .unwrap());
    assert_eq!(store.outbox_depth().await.unwrap(), 2);
    assert_eq!(store.posted_count().await.unwrap(), 1);
    assert_eq!(
        store.outbox_oldest_age(t0 + secs(10)).await.unwrap(),
        Some(secs(9))
    );
    assert_eq!(
        txs(&store.due_outbox(t0 + secs(3600), 10).await.unwrap()),
        [c.tx, a.tx]
    );
    let b_entry = store
        .outbox_entry(b.tx)
        .await
        .unwrap()
        .expect("posted rows are kept");
    assert_eq!(b_entry.mxc_uri.as_deref(), Some("mxc://example.org/first"));
    assert_eq!(b_entry.last_error, None);

    let store = reopen(store, url).await;
    assert_eq!(store.posted_count().await.unwrap(), 1);
    let now = SystemTime::now();
    assert_eq!(store.prune_posted(now - secs(3600)).await.unwrap(), 0);
    assert_eq!(store.prune_posted(now + secs(60)).await.unwrap(), 1);
    assert_eq!(store.posted_count().await.unwrap(), 0);
    assert_eq!(store.outbox_entry(b.tx).await.unwrap(), None);

    assert!(store.outbox_posted(c.tx, "$event_c").await.unwrap());
    assert!(store.outbox_posted(a.tx, "$event_a").await.unwrap());
    assert_eq!(store.outbox_depth().await.unwrap(), 0);
    assert_eq!(store.outbox_oldest_age(t0).await.unwrap(), None);
    assert!(store
        .due_outbox(t0 + secs(3600), 10)
        .await
        .unwrap()
        .is_empty());
    store.close().await;
}

// ---------------------------------------------------------------- SQLite only

#[tokio::test]
async fn sqlite_file_and_folder_are_created() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = sqlite_url(dir.path());
    assert!(!dir.path().join("state").exists());
    let store = open(&url).await;
    assert!(dir.path().join("state/walkie.db").is_file());
    store.close().await;
}

#[tokio::test]
async fn sqlite_in_memory_keeps_data_while_open() {
    let store = open("sqlite::memory:").await;
    assert!(store.mark_txn_handled("t").await.unwrap());
    assert!(store.txn_handled("t").await.unwrap());
    store.close().await;
}

#[tokio::test]
async fn unusable_sqlite_path_says_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("plain-file");
    std::fs::write(&file, "x").expect("write");
    let url = format!("sqlite://{}/walkie.db", file.display());
    let e = Store::connect(&url).await.expect_err("a file is no folder");
    let text = e.to_string();
    assert!(matches!(e, StoreError::Open { .. }), "{e:?}");
    assert!(
        text.starts_with(&format!("cannot open database {url}: ")),
        "{text}"
    );
    assert!(text.ends_with("plain-file is not a folder"), "{text}");

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, [b'x'; 4096]).expect("write");
    let url = format!("sqlite://{}", garbage.display());
    let text = Store::connect(&url)
        .await
        .expect_err("not SQLite")
        .to_string();
    assert!(text.contains("file is not a database"), "{text}");
}

#[tokio::test]
async fn other_urls_are_refused_and_passwords_hidden() {
    let e = Store::connect("mysql://root@localhost/walkie")
        .await
        .expect_err("mysql");
    assert!(matches!(e, StoreError::UnsupportedUrl { .. }), "{e:?}");

    // Nobody listens on a port just freed.
    let port = free_port();
    let url = format!("postgres://walkie:hunter2@127.0.0.1:{port}/walkie");
    let text = Store::connect(&url)
        .await
        .expect_err("no server")
        .to_string();
    assert!(
        text.starts_with(&format!(
            "cannot open database postgres://walkie:***@127.0.0.1:{port}/walkie: "
        )),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

// ---------------------------------------------------------------- PostgreSQL

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_runs_the_whole_suite() {
    let cluster = postgres::Cluster::start();
    run_suite_on(&cluster).await;
}

mod postgres {
    //! A throwaway PostgreSQL cluster: `initdb` into a temp dir, `pg_ctl start` on
    //! a free loopback port with its socket in that dir, trust auth, fsync off;
    //! stopped (immediate) and deleted on drop, also when a case panics. As root,
    //! the server runs as the `postgres` user (it refuses root).

    use super::*;

    pub struct Cluster {
        dir: tempfile::TempDir,
        bin: PathBuf,
        as_postgres: bool,
        port: u16,
    }

    const INSTALL_HINT: &str =
        "PostgreSQL server binaries not found: install Debian `postgresql` (scripts/setup.sh)";

    impl Cluster {
        pub fn start() -> Cluster {
            let bin = bindir().expect(INSTALL_HINT);
            let as_postgres = running_as_root();
            let dir = tempfile::tempdir().expect("temp dir");
            if as_postgres {
                run(Command::new("chown").arg("postgres:").arg(dir.path()));
            }
            let data = dir.path().join("data");
            run(command(&bin, "initdb", as_postgres)
                .args(["--auth=trust", "--username=postgres", "--encoding=UTF8"])
                .args(["--locale=C", "--no-sync", "--no-instructions", "-D"])
                .arg(&data));
            // A port freed just now could be taken before the server binds it;
            // then the start fails and another port is tried.
            let mut last_log = String::new();
            for _ in 0..3 {
                let port = free_port();
                let options = format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                     -c synchronous_commit=off -c full_page_writes=off",
                    dir.path().display()
                );
                let log = dir.path().join("server.log");
                let out = command(&bin, "pg_ctl", as_postgres)
                    .args(["-w", "-t", "60", "-D"])
                    .arg(&data)
                    .arg("-l")
                    .arg(&log)
                    .args(["-o", &options, "start"])
                    .output()
                    .expect("pg_ctl runs");
                if out.status.success() {
                    return Cluster {
                        dir,
                        bin,
                        as_postgres,
                        port,
                    };
                }
                last_log = format!(
                    "{}{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            panic!("PostgreSQL did not start:\n{last_log}");
        }

        fn url(&self, database: &str) -> String {
            format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
        }

        /// A new, empty database for one case.
        pub async fn create_database(&self, name: &str) -> String {
            let admin = sqlx::PgPool::connect(&self.url("postgres"))
                .await
                .expect("connect to the cluster");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&admin)
                .await
                .expect("create database");
            admin.close().await;
            self.url(name)
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            let _ = command(&self.bin, "pg_ctl", self.as_postgres)
                .args(["-w", "-m", "immediate", "-D"])
                .arg(self.dir.path().join("data"))
                .arg("stop")
                .output();
        }
    }

    /// The newest `/usr/lib/postgresql/N/bin` (Debian), else `pg_config --bindir`.
    fn bindir() -> Option<PathBuf> {
        let debian = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let version: u32 = e.file_name().to_str()?.parse().ok()?;
                let bin = e.path().join("bin");
                bin.join("pg_ctl").is_file().then_some((version, bin))
            })
            .max();
        if let Some((_, bin)) = debian {
            return Some(bin);
        }
        let out = Command::new("pg_config").arg("--bindir").output().ok()?;
        let bin = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
        bin.join("pg_ctl").is_file().then_some(bin)
    }

    fn running_as_root() -> bool {
        Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.trim_ascii() == b"0")
            .unwrap_or(false)
    }

    fn command(bin: &Path, program: &str, as_postgres: bool) -> Command {
        let program = bin.join(program);
        if as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        }
    }

    fn run(command: &mut Command) {
        let out = command.output().expect("command runs");
        assert!(
            out.status.success(),
            "{command:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
