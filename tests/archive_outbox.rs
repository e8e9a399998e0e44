//! The outbox against a real Synapse: recordings become playable voice
//! messages, exactly once, whatever the homeserver or the bridge does meanwhile.

#[path = "archive_common/mod.rs"]
mod archive_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::future::Future;
use std::time::{Duration, Instant};

use archive_common::{meta, open_store, opus_packets, record, sqlite_url};
use ruma::{OwnedMxcUri, RoomId, UserId};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use url::Url;
use walkie_bridge::archive::{
    voice_message_content, voice_message_file_name, Outbox, OutboxItem, OutboxSettings,
    OutboxWaker, VoiceMessage,
};
use walkie_bridge::config::Secret;
use walkie_bridge::matrix::Homeserver;
use walkie_bridge::store::Store;
use walkie_endpoint::audio::decode_ogg_opus;
use walkie_harness::{synapse_python, AppserviceRegistration, CreateRoom, MatrixClient, Synapse};

const PUPPET_LOCALPART: &str = "walkie_mumble_bob";
const PUPPET: &str = "@walkie_mumble_bob:walkie.test";
const WAIT: Duration = Duration::from_secs(20);

struct Env {
    synapse: Synapse,
    hs: Homeserver,
    alice: MatrixClient,
    room: String,
    spool: TempDir,
    db: TempDir,
    store: Store,
}

impl Env {
    async fn start(puppet_joined: bool) -> Env {
        let as_token = format!("as-{}", walkie_endpoint::TxId::generate());
        let registration = AppserviceRegistration::for_test(
            "walkie",
            "",
            &as_token,
            "hs-unused",
            "walkie",
            "@walkie_.*:walkie\\.test",
        );
        let synapse = Synapse::builder()
            .server_name("walkie.test")
            .appservice_registration(&registration)
            .start()
            .await
            .expect("Synapse starts");
        let alice = synapse.client(&synapse.register_user("alice", false).await.expect("alice"));
        let room = alice
            .create_room(&CreateRoom::new().name("Ops"))
            .await
            .expect("room");
        let url = Url::parse(&synapse.url()).expect("url");
        let hs = Homeserver::new(url, Secret::new(as_token)).expect("client");
        hs.register(PUPPET_LOCALPART)
            .await
            .expect("register puppet");
        let db = tempfile::tempdir().expect("temp dir");
        let store = open_store(&sqlite_url(db.path())).await;
        let env = Env {
            synapse,
            hs,
            alice,
            room,
            spool: tempfile::tempdir().expect("temp dir"),
            db,
            store,
        };
        if puppet_joined {
            env.join_puppet().await;
        }
        env
    }

    async fn join_puppet(&self) {
        self.alice.invite(&self.room, PUPPET).await.expect("invite");
        self.hs
            .join(&self.room, &UserId::parse(PUPPET).expect("user id"))
            .await
            .expect("puppet joins");
    }

    fn record(&self, seconds: f64) -> OutboxItem {
        let speech = common::speech(48_000);
        let n = ((seconds * 48_000.0) as usize).min(speech.len());
        record(
            self.spool.path(),
            meta(&self.room, PUPPET),
            &opus_packets(&speech[..n]),
        )
    }

    fn spawn_outbox(&self, store: Store, settings: OutboxSettings) -> Running {
        let outbox = Outbox::with_settings(store, self.hs.clone(), settings);
        let waker = outbox.waker();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(outbox.run(shutdown.clone()));
        Running {
            waker,
            shutdown,
            task,
        }
    }

    /// The voice messages in the room, oldest first.
    async fn voice_messages(&self) -> Vec<Value> {
        let mut events: Vec<Value> = self
            .alice
            .room_messages(&self.room, 100)
            .await
            .expect("messages")
            .into_iter()
            .filter(|e| e["type"] == "m.room.message" && e["content"]["msgtype"] == "m.audio")
            .collect();
        events.reverse();
        events
    }

    /// Rows Synapse's media repository holds for uploads by `user`.
    fn media_uploaded_by(&self, user: &str) -> usize {
        let db = self.synapse.dir().join("homeserver.db");
        let out = std::process::Command::new(synapse_python())
            .arg("-c")
            .arg(
                "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); \
                 print(c.execute('SELECT COUNT(*) FROM local_media_repository WHERE user_id=?', \
                 (sys.argv[2],)).fetchone()[0])",
            )
            .arg(&db)
            .arg(user)
            .output()
            .expect("run python");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("count")
    }
}

struct Running {
    waker: OutboxWaker,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(35), self.task)
            .await
            .expect("outbox stops after its request in flight")
            .expect("outbox task did not panic");
    }
}

fn quick_poll() -> OutboxSettings {
    OutboxSettings {
        poll: Duration::from_millis(200),
        ..OutboxSettings::default()
    }
}

/// Polls `check` until it returns `Some`, failing after `within`.
async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_becomes_a_playable_voice_message() {
    let env = Env::start(true).await;
    let speech = common::speech(48_000);
    let item = env.record(f64::INFINITY);
    env.store.enqueue_outbox(&item).await.expect("enqueue");
    let released = Instant::now();
    let outbox = env.spawn_outbox(env.store.clone(), quick_poll());
    outbox.waker.wake();

    let event = env
        .alice
        .sync_until(
            |e| e.sender() == PUPPET && e.content()["msgtype"] == "m.audio",
            WAIT,
        )
        .await
        .expect("the voice message reaches a syncing client");
    let visible = released.elapsed();
    let c = event.content().clone();
    assert_eq!(event.event_type(), "m.room.message");
    assert_eq!(c["body"], "Voice message");
    let url = c["url"].as_str().expect("url").to_owned();
    assert!(url.starts_with("mxc://walkie.test/"), "{url}");
    assert_eq!(c["info"]["mimetype"], "audio/ogg");
    assert_eq!(c["info"]["size"], item.size);
    let duration = c["info"]["duration"].as_u64().expect("info.duration");
    assert_eq!(duration, item.duration_ms);
    let speech_ms = speech.len() as f64 / 48.0;
    assert!(
        (duration as f64 - speech_ms).abs() <= 50.0,
        "{duration} ms vs {speech_ms} ms"
    );
    assert_eq!(c["org.matrix.msc1767.audio"]["duration"], duration);
    let waveform = c["org.matrix.msc1767.audio"]["waveform"]
        .as_array()
        .expect("waveform");
    assert!(
        (30..=120).contains(&waveform.len()),
        "{} points",
        waveform.len()
    );
    assert!(waveform
        .iter()
        .all(|v| v.as_u64().is_some_and(|v| v <= 1024)));
    assert!(
        waveform.iter().any(|v| v == 1024),
        "normalised to the loudest bucket"
    );
    assert_eq!(c["org.matrix.msc3245.voice"], json!({}));
    assert_eq!(c["org.matrix.msc1767.text"], "Voice message");
    let file = &c["org.matrix.msc1767.file"];
    assert_eq!(file["url"], url);
    assert_eq!(file["mimetype"], "audio/ogg");
    assert_eq!(file["size"], item.size);
    assert_eq!(
        file["name"],
        voice_message_file_name("ops", item.created_at)
    );

    let bytes = env
        .alice
        .download(&url)
        .await
        .expect("authenticated download");
    assert_eq!(bytes.len() as u64, item.size);
    let decoded = decode_ogg_opus(&bytes).expect("decodes");
    let decoded_ms = decoded.pcm.len() as f64 / 48.0;
    assert!(
        (decoded_ms - duration as f64).abs() <= 50.0,
        "decoded {decoded_ms} ms"
    );
    assert!(
        (decoded_ms - speech_ms).abs() <= 50.0,
        "decoded {decoded_ms} ms vs {speech_ms}"
    );
    // Two seconds of words from the middle, against the decoded file.
    let window = &speech[48_000..48_000 * 3];
    let test = &decoded.pcm[48_000 - 960..48_000 * 3 + 960];
    let (lag, corr) = common::best_lag(window, test, 0..=1920);
    let lag = lag - 960;
    assert!(corr > 0.7, "correlation {corr:.3} at lag {lag}");
    assert!(lag.abs() <= 48, "decoded audio is offset by {lag} samples");

    eventually(
        "the item to leave the queue and its file the spool",
        WAIT,
        || async {
            (env.store.outbox_depth().await.expect("depth") == 0 && !item.path.exists())
                .then_some(())
        },
    )
    .await;
    assert_eq!(env.voice_messages().await.len(), 1);
    outbox.stop().await;
    println!(
        "speech {speech_ms:.0} ms, info.duration {duration} ms, decoded {decoded_ms:.1} ms, \
         {} waveform points, correlation {corr:.3} at lag {lag}, enqueue→visible {visible:?}",
        waveform.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transmissions_while_synapse_is_down_are_posted_exactly_once_when_it_returns() {
    let mut env = Env::start(true).await;
    let outbox = env.spawn_outbox(env.store.clone(), quick_poll());
    env.synapse.stop().await.expect("Synapse stops");
    let down = Instant::now();

    let items: Vec<OutboxItem> = [1.0, 1.5, 2.0].map(|s| env.record(s)).into();
    for item in &items {
        env.store.enqueue_outbox(item).await.expect("enqueue");
        outbox.waker.wake();
    }
    let store = env.store.clone();
    eventually("a failed attempt for each of the three", WAIT, || async {
        let mut failed = 0;
        for item in &items {
            let entry = store
                .outbox_entry(item.tx)
                .await
                .expect("store")
                .expect("queued");
            if entry.attempts >= 1 && entry.last_error.is_some() && entry.mxc_uri.is_none() {
                failed += 1;
            }
        }
        (failed == items.len()).then_some(())
    })
    .await;
    for item in &items {
        let entry = store
            .outbox_entry(item.tx)
            .await
            .expect("store")
            .expect("queued");
        println!(
            "while down: {} attempts, last error {:?}",
            entry.attempts, entry.last_error
        );
    }

    env.synapse.start_again().await.expect("Synapse restarts");
    let back = Instant::now();
    eventually("all three posted", Duration::from_secs(25), || async {
        (store.outbox_depth().await.expect("depth") == 0).then_some(())
    })
    .await;
    let posted_after = back.elapsed();
    outbox.stop().await;

    let messages = env.voice_messages().await;
    assert_eq!(
        messages.len(),
        3,
        "each transmission exactly once: {messages:#?}"
    );
    let mut sizes: Vec<u64> = messages
        .iter()
        .map(|m| m["content"]["info"]["size"].as_u64().expect("size"))
        .collect();
    let mut expected: Vec<u64> = items.iter().map(|i| i.size).collect();
    sizes.sort_unstable();
    expected.sort_unstable();
    assert_eq!(sizes, expected);
    assert!(messages.iter().all(|m| m["sender"] == PUPPET));
    assert_eq!(env.media_uploaded_by(PUPPET), 3);
    println!(
        "down {:?}; all three posted {posted_after:?} after Synapse was back",
        back - down
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_upload_and_post_uploads_once_and_posts_once() {
    // The puppet is not in the room yet: the upload succeeds, the post is refused.
    let env = Env::start(false).await;
    let item = env.record(1.5);
    env.store.enqueue_outbox(&item).await.expect("enqueue");
    let first = env.spawn_outbox(
        env.store.clone(),
        OutboxSettings {
            max_retry: Duration::from_millis(300),
            ..quick_poll()
        },
    );
    first.waker.wake();
    let store = env.store.clone();
    let entry = eventually("an upload and a refused post", WAIT, || async {
        let entry = store
            .outbox_entry(item.tx)
            .await
            .expect("store")
            .expect("queued");
        (entry.mxc_uri.is_some() && entry.attempts >= 1).then_some(entry)
    })
    .await;
    // The bridge dies here.
    first.stop().await;
    let error = entry.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("403") && error.contains("M_FORBIDDEN"),
        "{error}"
    );
    let mxc = entry.mxc_uri.clone().expect("uploaded");
    assert!(env.voice_messages().await.is_empty());

    env.join_puppet().await;
    // A fresh process: new store connection on the same database, new worker.
    let store = open_store(&sqlite_url(env.db.path())).await;
    let second = env.spawn_outbox(store.clone(), quick_poll());
    let event = env
        .alice
        .sync_until(
            |e| e.sender() == PUPPET && e.content()["msgtype"] == "m.audio",
            WAIT,
        )
        .await
        .expect("posted after the restart");
    assert_eq!(
        event.content()["url"],
        mxc.as_str(),
        "the first upload is reused"
    );
    eventually("the queue to empty", WAIT, || async {
        (store.outbox_depth().await.expect("depth") == 0).then_some(())
    })
    .await;
    second.stop().await;
    assert_eq!(env.voice_messages().await.len(), 1);
    assert_eq!(env.media_uploaded_by(PUPPET), 1, "uploaded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_id_sent_twice_is_one_event() {
    let env = Env::start(true).await;
    let item = env.record(1.0);
    env.store.enqueue_outbox(&item).await.expect("enqueue");
    let puppet = UserId::parse(PUPPET).expect("user id");
    let room = RoomId::parse(&env.room).expect("room id");
    let name = voice_message_file_name(&item.channel, item.created_at);
    let mxc: OwnedMxcUri = env
        .hs
        .upload(
            std::fs::read(&item.path).expect("read"),
            "audio/ogg",
            &name,
            &puppet,
        )
        .await
        .expect("upload");
    env.store
        .outbox_uploaded(item.tx, mxc.as_str())
        .await
        .expect("record upload");
    let content = voice_message_content(&VoiceMessage::of(&item, &mxc, &name));
    let txn = item.tx.to_string();
    let first = env
        .hs
        .send(&room, "m.room.message", &txn, &content, &puppet)
        .await
        .expect("send");
    let again = env
        .hs
        .send(&room, "m.room.message", &txn, &content, &puppet)
        .await
        .expect("send again");
    assert_eq!(first, again, "the homeserver dedupes on the transaction id");

    // The bridge died after that post, before recording it: the outbox posts again.
    let outbox = env.spawn_outbox(env.store.clone(), quick_poll());
    outbox.waker.wake();
    let store = env.store.clone();
    eventually("the queue to empty", WAIT, || async {
        (store.outbox_depth().await.expect("depth") == 0).then_some(())
    })
    .await;
    outbox.stop().await;
    let messages = env.voice_messages().await;
    assert_eq!(messages.len(), 1, "{messages:#?}");
    assert_eq!(messages[0]["event_id"], first.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_spool_file_is_given_up_unless_already_uploaded() {
    let env = Env::start(true).await;
    let gone = env.record(1.0);
    env.store.enqueue_outbox(&gone).await.expect("enqueue");
    std::fs::remove_file(&gone.path).expect("remove");

    let uploaded = env.record(1.2);
    env.store.enqueue_outbox(&uploaded).await.expect("enqueue");
    let puppet = UserId::parse(PUPPET).expect("user id");
    let mxc = env
        .hs
        .upload(
            std::fs::read(&uploaded.path).expect("read"),
            "audio/ogg",
            "x.ogg",
            &puppet,
        )
        .await
        .expect("upload");
    env.store
        .outbox_uploaded(uploaded.tx, mxc.as_str())
        .await
        .expect("record upload");
    std::fs::remove_file(&uploaded.path).expect("remove");

    let outbox = env.spawn_outbox(env.store.clone(), quick_poll());
    outbox.waker.wake();
    let store = env.store.clone();
    eventually("both to leave the queue", WAIT, || async {
        (store.outbox_depth().await.expect("depth") == 0).then_some(())
    })
    .await;
    outbox.stop().await;
    let gone_entry = env
        .store
        .outbox_entry(gone.tx)
        .await
        .expect("store")
        .expect("kept");
    assert_eq!(gone_entry.attempts, 0, "no retry loop");
    let messages = env.voice_messages().await;
    assert_eq!(
        messages.len(),
        1,
        "only the uploaded one is posted: {messages:#?}"
    );
    assert_eq!(messages[0]["content"]["url"], mxc.as_str());
    assert_eq!(env.store.posted_count().await.expect("count"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recordings_a_crash_kept_from_the_outbox_are_posted_after_recovery() {
    let env = Env::start(true).await;
    // Finished and renamed, but the bridge died before enqueueing it.
    let finished = env.record(1.0);
    // Cut off mid-recording: a .part with a second of complete pages.
    let speech = common::speech(48_000);
    let mut recorder =
        walkie_bridge::archive::Recorder::start(env.spool.path(), meta(&env.room, PUPPET))
            .expect("start");
    for (seq, p) in opus_packets(&speech[..48_000 * 2]).into_iter().enumerate() {
        recorder
            .push(&walkie_endpoint::AudioFrame::opus(seq as u32, p))
            .expect("push");
    }
    let cut_tx = recorder.meta().tx;
    drop(recorder);

    let recovery = walkie_bridge::archive::recover_spool(env.spool.path(), &env.store)
        .await
        .expect("recovery");
    assert_eq!(recovery.salvaged, [cut_tx]);
    assert_eq!(recovery.enqueued.len(), 2);
    let outbox = env.spawn_outbox(env.store.clone(), quick_poll());
    outbox.waker.wake();
    let store = env.store.clone();
    eventually("both posted", WAIT, || async {
        (store.outbox_depth().await.expect("depth") == 0).then_some(())
    })
    .await;
    outbox.stop().await;
    let messages = env.voice_messages().await;
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let durations: Vec<u64> = messages
        .iter()
        .map(|m| m["content"]["info"]["duration"].as_u64().expect("duration"))
        .collect();
    // Oldest first: the finished one started before the cut one.
    assert_eq!(durations[0], finished.duration_ms);
    assert_eq!(
        durations[1], 994,
        "the one complete page (50 packets) of the cut recording"
    );
    assert!(archive_common::files_in(env.spool.path()).is_empty());
}
