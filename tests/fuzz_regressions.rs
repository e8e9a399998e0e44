//! Replays the fuzzers' inputs in the normal test run: every seed in
//! `fuzz/seeds/<target>/` and every crasher kept in
//! `tests/fixtures/fuzz-regressions/<target>/` goes through the very harness
//! function its cargo-fuzz target calls (the modules below are the fuzz crate's
//! own files), so a fixed bug that comes back fails `cargo test`, not just a
//! fuzzing session. docs/fuzzing.md says how to add a crasher.

#[path = "../fuzz/src/audio.rs"]
mod audio;
#[path = "../fuzz/src/config.rs"]
mod config;
#[path = "../fuzz/src/live.rs"]
mod live;
#[path = "../fuzz/src/mqtt.rs"]
mod mqtt;
#[path = "../fuzz/src/mumble.rs"]
mod mumble;

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The files of one target's seed and regression directories; either may be
/// missing (a target without crashers has no regression directory).
fn inputs(target: &str) -> Vec<PathBuf> {
    let dirs = [
        root().join("fuzz/seeds").join(target),
        root().join("tests/fixtures/fuzz-regressions").join(target),
    ];
    let mut files: Vec<PathBuf> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs `harness` on every input of `target`, naming the file that fails.
fn replay(target: &str, harness: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no seeds for fuzz target {target} under fuzz/seeds/{target}"
    );
    for file in files {
        let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = file
            .strip_prefix(root())
            .unwrap_or(Path::new("?"))
            .display()
            .to_string();
        if std::panic::catch_unwind(|| harness(&data)).is_err() {
            panic!("fuzz input {name} fails its harness again");
        }
    }
}

#[test]
fn ogg_opus() {
    replay("ogg_opus", audio::ogg_opus);
}

#[test]
fn voice_import() {
    replay("voice_import", audio::voice_import);
}

#[test]
fn mumble_control() {
    replay("mumble_control", mumble::mumble_control);
}

#[test]
fn mumble_udp() {
    replay("mumble_udp", mumble::mumble_udp);
}

#[test]
fn mqtt_payload() {
    replay("mqtt_payload", mqtt::mqtt_payload);
}

#[test]
fn live_message() {
    replay("live_message", live::live_message);
}

#[test]
fn config() {
    replay("config", config::config);
}

/// Found by `voice_import`: a WAV `fmt ` chunk with 65535 channels of 32 bits
/// overflows a u16 product inside symphonia 0.6.1 (debug builds panic there; a
/// release build wraps, into a log line only). The message must be refused with
/// an error, whichever build.
#[test]
fn wav_with_absurd_channel_count_is_refused_cleanly() {
    let file =
        root().join("tests/fixtures/fuzz-regressions/voice_import/wav-channel-count-overflow.wav");
    let data = std::fs::read(file).expect("fixture");
    let result = walkie_endpoint::audio::import_voice_message(
        &data,
        Some("audio/wav"),
        &walkie_endpoint::audio::ImportLimits::default(),
    );
    assert!(
        matches!(
            result,
            Err(walkie_endpoint::audio::AudioError::Corrupt { .. }
                | walkie_endpoint::audio::AudioError::UnsupportedFormat(_))
        ),
        "{result:?}"
    );
}
