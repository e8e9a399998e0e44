//! Helpers shared by the archive tests: speech packets, recordings, opusinfo, a store.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use walkie_bridge::archive::{OutboxItem, Recorder, RecordingMeta};
use walkie_bridge::store::Store;
use walkie_endpoint::audio::{frames_of, OpusEncoder};
use walkie_endpoint::{AudioFrame, TxId};

/// `pcm` (48 kHz mono) as the 20 ms Opus packets a talker's client would send.
pub fn opus_packets(pcm: &[i16]) -> Vec<Bytes> {
    let mut encoder = OpusEncoder::new().expect("encoder");
    assert_eq!(
        encoder.lookahead(),
        walkie_endpoint::audio::DEFAULT_PRE_SKIP,
        "the recorder assumes libopus' usual lookahead as pre-skip"
    );
    frames_of(pcm)
        .map(|f| encoder.encode(&f).expect("encode"))
        .collect()
}

/// Start time with whole milliseconds, as the store keeps it.
pub fn now_ms() -> SystemTime {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64;
    UNIX_EPOCH + Duration::from_millis(ms)
}

pub fn meta(room_id: &str, sender: &str) -> RecordingMeta {
    RecordingMeta {
        tx: TxId::generate(),
        channel: "ops".into(),
        room_id: room_id.into(),
        sender: sender.into(),
        talker: "bob (Mumble)".into(),
        started_at: now_ms(),
    }
}

/// Records `packets` (seq 0, 1, …) as one transmission and finishes it.
pub fn record(spool: &Path, meta: RecordingMeta, packets: &[Bytes]) -> OutboxItem {
    let mut recorder = Recorder::start(spool, meta).expect("start recording");
    for (seq, p) in packets.iter().enumerate() {
        recorder
            .push(&AudioFrame::opus(seq as u32, p.clone()))
            .expect("push");
    }
    recorder
        .finish(Duration::from_millis(300))
        .expect("finish")
        .expect("long enough to archive")
}

pub fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("walkie.db").display())
}

pub async fn open_store(url: &str) -> Store {
    Store::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

/// Runs opusinfo on `path`; fails on any complaint. Returns the playback length in ms.
pub fn opusinfo_length_ms(path: &Path) -> f64 {
    let out = Command::new("opusinfo")
        .arg(path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run opusinfo ({e}); install opus-tools"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "opusinfo exited {}:\n{text}",
        out.status
    );
    assert!(
        !text.contains("WARNING") && !text.contains("ERROR"),
        "opusinfo complains:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("Playback length:"))
        .unwrap_or_else(|| panic!("no playback length in:\n{text}"));
    let value = line.split("Playback length:").nth(1).expect("value").trim();
    let (min, sec) = value
        .trim_end_matches('s')
        .split_once("m:")
        .unwrap_or_else(|| panic!("unexpected length format {value:?}"));
    min.parse::<f64>().expect("minutes") * 60_000.0 + sec.parse::<f64>().expect("seconds") * 1_000.0
}

/// Names of the files directly in `dir`, sorted.
pub fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
