//! The recorder writes transmissions to the spool unchanged, drops noise, and
//! recovery loses nothing a crash left behind.

#[path = "archive_common/mod.rs"]
mod archive_common;
#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::time::Duration;

use archive_common::{
    files_in, meta, open_store, opus_packets, opusinfo_length_ms, record, sqlite_url,
};
use walkie_bridge::archive::{recover_spool, spool_path, Recorder, WaveformSource};
use walkie_endpoint::audio::{
    decode_ogg_opus, read_ogg_opus, OpusDecoder, DEFAULT_PRE_SKIP, FRAME_SAMPLES,
};
use walkie_endpoint::AudioFrame;

const ROOM: &str = "!room:walkie.test";
const SENDER: &str = "@walkie_mumble_bob:walkie.test";

/// Playback length in ms of `packets` 20 ms packets after the pre-skip.
fn playback_ms(packets: usize) -> u64 {
    let samples = packets * FRAME_SAMPLES - usize::from(DEFAULT_PRE_SKIP);
    (samples as u64 * 1000 + 24_000) / 48_000
}

#[test]
fn speech_is_recorded_packet_for_packet() {
    let speech = common::speech(48_000);
    let packets = opus_packets(&speech);
    let spool = tempfile::tempdir().expect("temp dir");
    let m = meta(ROOM, SENDER);
    let tx = m.tx;
    let item = record(spool.path(), m.clone(), &packets);

    assert_eq!(item.path, spool_path(spool.path(), tx));
    assert_eq!(
        files_in(spool.path()),
        [format!("{tx}.ogg")],
        "no .part left"
    );
    let bytes = std::fs::read(&item.path).expect("read spool file");
    assert_eq!(item.size, bytes.len() as u64);
    assert_eq!(item.mimetype, "audio/ogg");
    assert_eq!(
        (item.room_id.as_str(), item.sender.as_str()),
        (ROOM, SENDER)
    );
    assert_eq!(item.created_at, m.started_at);

    let audio = read_ogg_opus(&bytes).expect("our reader reads the spool file");
    assert_eq!(audio.packets.len(), packets.len());
    assert!(
        audio
            .packets
            .iter()
            .zip(&packets)
            .all(|(a, b)| a[..] == b[..]),
        "packets are passed through unchanged"
    );
    assert!(audio
        .tags
        .comments
        .iter()
        .any(|c| c == "ARTIST=bob (Mumble)"));

    let speech_ms = speech.len() as f64 / 48.0;
    let opusinfo_ms = opusinfo_length_ms(&item.path);
    assert_eq!(item.duration_ms, playback_ms(packets.len()));
    assert!(
        (item.duration_ms as f64 - speech_ms).abs() <= 20.0,
        "{} vs {speech_ms}",
        item.duration_ms
    );
    assert!(
        (opusinfo_ms - item.duration_ms as f64).abs() <= 1.0,
        "opusinfo {opusinfo_ms}"
    );

    assert_eq!(item.waveform.len(), 100);
    assert_eq!(item.waveform.iter().max(), Some(&1024));
    // Speech has pauses: a flat waveform would mean the levels were not tracked.
    assert!(
        item.waveform.iter().filter(|&&v| v < 200).count() >= 5,
        "{:?}",
        item.waveform
    );
    let decoded = decode_ogg_opus(&bytes).expect("decodes");
    assert_eq!(decoded.pcm.len() as u64, audio.samples);
    println!(
        "speech {speech_ms:.1} ms, recorded {} ms, opusinfo {opusinfo_ms:.1} ms, {} packets, {} bytes",
        item.duration_ms,
        packets.len(),
        item.size
    );
}

/// Decode once per transmission: frames the hub decoded for another endpoint are
/// not decoded again for the waveform, and the waveform is the same either way.
#[test]
fn frames_the_hub_decoded_are_not_decoded_again() {
    let speech = common::speech(48_000);
    let packets = opus_packets(&speech);
    let spool = tempfile::tempdir().expect("temp dir");

    let mut alone = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    let mut beside_pcm = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    let mut hub = OpusDecoder::new().expect("the hub's decoder");
    for (seq, p) in packets.iter().enumerate() {
        let seq = seq as u32;
        alone.push(&AudioFrame::opus(seq, p.clone())).expect("push");
        let mut frame = AudioFrame::opus(seq, p.clone());
        // What the hub hands on after a lost frame: concealment in front.
        let mut pcm = if seq == 40 {
            hub.decode_lost()
        } else {
            Vec::new()
        };
        pcm.extend(hub.decode(p).expect("decode"));
        frame.pcm = Some(pcm.into());
        beside_pcm.push(&frame).expect("push");
    }
    assert_eq!(alone.stats().decoded_here, packets.len() as u64);
    assert_eq!(beside_pcm.stats().decoded_here, 0, "decoded a second time");
    let a = alone.finish(Duration::ZERO).expect("finish").expect("item");
    let b = beside_pcm
        .finish(Duration::ZERO)
        .expect("finish")
        .expect("item");
    let differ = a
        .waveform
        .iter()
        .zip(&b.waveform)
        .filter(|(x, y)| x.abs_diff(**y) > 16)
        .count();
    assert!(differ <= 2, "{:?}\n{:?}", a.waveform, b.waveform);
}

/// `archive.waveform = "estimated"`: nothing is decoded, the pauses draw low and
/// the speech high, and the picture follows the decoded one.
#[test]
fn an_estimated_waveform_decodes_nothing_and_shows_speech_and_pauses() {
    let speech = common::speech(48_000);
    let mut pcm = speech.clone();
    // 2 s of silence, then the same words 12 dB quieter.
    pcm.extend(std::iter::repeat_n(0, 96_000));
    pcm.extend(speech.iter().map(|&s| s / 4));
    let packets = opus_packets(&pcm);
    let spool = tempfile::tempdir().expect("temp dir");
    let mut decoded = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    let mut estimated =
        Recorder::start_with(spool.path(), meta(ROOM, SENDER), WaveformSource::Estimated)
            .expect("start");
    for (seq, p) in packets.iter().enumerate() {
        decoded
            .push(&AudioFrame::opus(seq as u32, p.clone()))
            .expect("push");
        estimated
            .push(&AudioFrame::opus(seq as u32, p.clone()))
            .expect("push");
    }
    assert_eq!(estimated.stats().decoded_here, 0, "decoded for an estimate");
    let a = decoded
        .finish(Duration::ZERO)
        .expect("finish")
        .expect("item");
    let b = estimated
        .finish(Duration::ZERO)
        .expect("finish")
        .expect("item");
    println!("decoded:   {:?}\nestimated: {:?}", a.waveform, b.waveform);
    assert_eq!(a.duration_ms, b.duration_ms);
    assert_eq!(b.waveform.len(), 100);
    // The pause: points wholly inside it.
    let total = pcm.len() as f64;
    let first = (speech.len() as f64 / total * 100.0).ceil() as usize + 1;
    let last = ((speech.len() + 96_000) as f64 / total * 100.0).floor() as usize - 1;
    assert!(
        b.waveform[first..last].iter().all(|&v| v < 100),
        "pause {first}..{last}: {:?}",
        &b.waveform[first..last]
    );
    let loud = b.waveform.iter().filter(|&&v| v > 300).count();
    assert!(loud >= 40, "only {loud} points above 300");
    // Packet sizes show where the words are, not how loud they are: the quieter
    // half draws as high as the first, which caps the agreement (0.64 here).
    let r = pearson(&a.waveform, &b.waveform);
    println!("correlation with the decoded waveform: {r:.3}");
    assert!(r > 0.5, "correlation {r:.3}");
}

fn pearson(a: &[u16], b: &[u16]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let mean = |x: &[u16]| x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        ab += dx * dy;
        aa += dx * dx;
        bb += dy * dy;
    }
    ab / (aa * bb).sqrt()
}

#[test]
fn gaps_are_spliced_and_late_frames_dropped() {
    let speech = common::speech(48_000);
    let packets = opus_packets(&speech[..48_000 * 2]);
    let spool = tempfile::tempdir().expect("temp dir");
    let mut recorder = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    let mut expected = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        let seq = 1000 + i as u32;
        if (20..25).contains(&i) {
            continue; // lost on the way
        }
        recorder
            .push(&AudioFrame::opus(seq, p.clone()))
            .expect("push");
        expected.push(p.clone());
        if i == 40 {
            // A duplicate and a straggler from before the gap.
            recorder
                .push(&AudioFrame::opus(seq, p.clone()))
                .expect("push");
            recorder
                .push(&AudioFrame::opus(1019, packets[19].clone()))
                .expect("push");
        }
    }
    let next = 1000 + packets.len() as u32;
    recorder
        .push(&AudioFrame::opus(next, vec![]))
        .expect("empty packet is no I/O error");
    let stats = recorder.stats();
    assert_eq!(
        (stats.lost, stats.late, stats.invalid),
        (5, 2, 1),
        "{stats:?}"
    );
    assert_eq!(stats.packets as usize, expected.len());
    let item = recorder
        .finish(Duration::from_millis(300))
        .expect("finish")
        .expect("archived");
    let audio = read_ogg_opus(&std::fs::read(&item.path).expect("read")).expect("reads");
    assert!(audio
        .packets
        .iter()
        .map(Vec::as_slice)
        .eq(expected.iter().map(|b| &b[..])));
    assert_eq!(
        item.duration_ms,
        playback_ms(expected.len()),
        "the gap is not in the file"
    );
}

#[test]
fn seq_may_wrap_mid_transmission() {
    let packets = opus_packets(&common::speech(48_000)[..48_000]);
    let spool = tempfile::tempdir().expect("temp dir");
    let mut recorder = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    for (i, p) in packets.iter().enumerate() {
        let seq = (u32::MAX - 10).wrapping_add(i as u32); // wraps after 11 frames
        recorder
            .push(&AudioFrame::opus(seq, p.clone()))
            .expect("push");
    }
    let stats = recorder.stats();
    assert_eq!(
        (stats.packets as usize, stats.lost, stats.late),
        (packets.len(), 0, 0)
    );
    recorder.abort();
}

#[test]
fn short_transmissions_are_dropped_and_aborts_deleted() {
    let packets = opus_packets(&common::speech(48_000)[..48_000]);
    let spool = tempfile::tempdir().expect("temp dir");

    // 14 frames = 280 ms − pre-skip: under the default 300 ms.
    let mut recorder = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    for (seq, p) in packets[..14].iter().enumerate() {
        recorder
            .push(&AudioFrame::opus(seq as u32, p.clone()))
            .expect("push");
    }
    assert!(recorder.part_path().exists());
    let kept = recorder.finish(Duration::from_millis(300)).expect("finish");
    assert!(kept.is_none(), "a 274 ms kerchunk is noise");
    assert!(
        files_in(spool.path()).is_empty(),
        "{:?}",
        files_in(spool.path())
    );

    // 16 frames = 313.5 ms: archived.
    let mut recorder = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    for (seq, p) in packets[..16].iter().enumerate() {
        recorder
            .push(&AudioFrame::opus(seq as u32, p.clone()))
            .expect("push");
    }
    let kept = recorder.finish(Duration::from_millis(300)).expect("finish");
    assert_eq!(kept.map(|i| i.duration_ms), Some(314));

    let recorder = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    let part = recorder.part_path().to_path_buf();
    recorder.abort();
    assert!(!part.exists());
    assert_eq!(files_in(spool.path()).len(), 1);
}

#[tokio::test]
async fn a_recording_cut_mid_page_is_salvaged_and_queued() {
    let speech = common::speech(48_000);
    let packets = opus_packets(&speech);
    let spool = tempfile::tempdir().expect("temp dir");
    let db = tempfile::tempdir().expect("temp dir");
    let store = open_store(&sqlite_url(db.path())).await;
    let m = meta(ROOM, SENDER);
    let tx = m.tx;

    let mut recorder = Recorder::start(spool.path(), m.clone()).expect("start");
    for (seq, p) in packets.iter().enumerate() {
        recorder
            .push(&AudioFrame::opus(seq as u32, p.clone()))
            .expect("push");
    }
    let part = recorder.part_path().to_path_buf();
    // The process dies: nothing finishes the file, and the last write is torn.
    drop(recorder);
    let full = std::fs::metadata(&part).expect("part exists").len();
    let cut = full * 6 / 10;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&part)
        .and_then(|f| f.set_len(cut))
        .expect("truncate");

    let recovery = recover_spool(spool.path(), &store).await.expect("recovery");
    assert_eq!(recovery.salvaged, [tx]);
    assert_eq!(recovery.enqueued, [tx]);
    assert!(recovery.broken.is_empty(), "{recovery:?}");
    assert_eq!(files_in(spool.path()), [format!("{tx}.ogg")]);

    let path = spool_path(spool.path(), tx);
    let audio =
        read_ogg_opus(&std::fs::read(&path).expect("read")).expect("strict reader accepts it");
    let n = audio.packets.len();
    assert!(
        n >= 50 && n < packets.len() * 6 / 10 + 1,
        "{n} of {} packets",
        packets.len()
    );
    assert_eq!(n % 50, 0, "whole pages of 50 packets survive");
    assert!(audio
        .packets
        .iter()
        .zip(&packets)
        .all(|(a, b)| a[..] == b[..]));
    let opusinfo_ms = opusinfo_length_ms(&path);

    let entry = store
        .outbox_entry(tx)
        .await
        .expect("store")
        .expect("queued");
    assert_eq!(entry.item.room_id, ROOM);
    assert_eq!(entry.item.sender, SENDER);
    assert_eq!(entry.item.channel, "ops");
    assert_eq!(entry.item.created_at, m.started_at);
    assert_eq!(entry.item.duration_ms, playback_ms(n));
    assert_eq!(entry.item.waveform.len(), 100);
    println!(
        "cut at {cut} of {full} bytes: salvaged {n} of {} packets, {} ms (opusinfo {opusinfo_ms:.1} ms)",
        packets.len(),
        entry.item.duration_ms
    );

    let again = recover_spool(spool.path(), &store).await.expect("recovery");
    assert_eq!(again, Default::default(), "recovery is idempotent");
}

#[tokio::test]
async fn unreadable_parts_are_moved_aside_not_deleted() {
    let spool = tempfile::tempdir().expect("temp dir");
    let db = tempfile::tempdir().expect("temp dir");
    let store = open_store(&sqlite_url(db.path())).await;

    let garbage = meta(ROOM, SENDER).tx;
    std::fs::write(
        spool.path().join(format!("{garbage}.ogg.part")),
        b"not ogg at all",
    )
    .expect("write");
    // Headers only: the process died within the first second of talking.
    let headers_only = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    let headers_tx = headers_only.meta().tx;
    drop(headers_only);
    std::fs::write(spool.path().join("README"), b"someone else's").expect("write");

    let recovery = recover_spool(spool.path(), &store).await.expect("recovery");
    assert!(
        recovery.enqueued.is_empty() && recovery.salvaged.is_empty(),
        "{recovery:?}"
    );
    let broken = spool.path().join("broken");
    let mut expected = vec![
        format!("{garbage}.ogg.part"),
        format!("{headers_tx}.ogg.part"),
    ];
    expected.sort();
    assert_eq!(files_in(&broken), expected);
    assert_eq!(recovery.broken.len(), 2);
    assert_eq!(
        std::fs::read(broken.join(format!("{garbage}.ogg.part"))).expect("kept"),
        b"not ogg at all"
    );
    assert_eq!(files_in(spool.path()), ["README", "broken"]);
    assert_eq!(store.outbox_depth().await.expect("depth"), 0);
}

#[tokio::test]
async fn a_finished_file_missing_from_the_outbox_is_queued_once() {
    let packets = opus_packets(&common::speech(48_000)[..48_000 * 2]);
    let spool = tempfile::tempdir().expect("temp dir");
    let db = tempfile::tempdir().expect("temp dir");
    let store = open_store(&sqlite_url(db.path())).await;

    // Crash between rename and enqueue.
    let lost = record(spool.path(), meta(ROOM, SENDER), &packets);
    // Enqueued normally.
    let queued = record(spool.path(), meta(ROOM, SENDER), &packets);
    assert!(store.enqueue_outbox(&queued).await.expect("enqueue"));
    // Posted, but the crash came before its file was deleted.
    let posted = record(spool.path(), meta(ROOM, SENDER), &packets);
    store.enqueue_outbox(&posted).await.expect("enqueue");
    store
        .outbox_posted(posted.tx, "$posted")
        .await
        .expect("posted");

    let recovery = recover_spool(spool.path(), &store).await.expect("recovery");
    assert_eq!(recovery.enqueued, [lost.tx]);
    assert_eq!(recovery.removed, std::slice::from_ref(&posted.path));
    let entry = store
        .outbox_entry(lost.tx)
        .await
        .expect("store")
        .expect("queued");
    assert_eq!(
        entry.item, lost,
        "rebuilt from the file alone, identical to what finish returned"
    );
    assert!(queued.path.exists() && lost.path.exists() && !posted.path.exists());
    assert_eq!(store.outbox_depth().await.expect("depth"), 2);

    let again = recover_spool(spool.path(), &store).await.expect("recovery");
    assert_eq!(again, Default::default());
}

/// Issue 14.1: recovery running while a recorder writes (a second daemon on the
/// same spool, or recovery started late) leaves its `.part` alone: the recorder
/// finishes the whole transmission, and nothing is salvaged or moved aside.
#[tokio::test]
async fn recovery_leaves_a_recording_in_progress_alone() {
    let packets = opus_packets(&common::speech(48_000)[..48_000 * 3]);
    let spool = tempfile::tempdir().expect("temp dir");
    let db = tempfile::tempdir().expect("temp dir");
    let store = open_store(&sqlite_url(db.path())).await;

    let mut recorder = Recorder::start(spool.path(), meta(ROOM, SENDER)).expect("start");
    let tx = recorder.meta().tx;
    let (first, rest) = packets.split_at(packets.len() / 2);
    for (seq, p) in first.iter().enumerate() {
        recorder
            .push(&AudioFrame::opus(seq as u32, p.clone()))
            .expect("push");
    }

    let recovery = recover_spool(spool.path(), &store).await.expect("recovery");
    assert_eq!(
        recovery,
        Default::default(),
        "recovery touched the file of a running recorder"
    );
    assert_eq!(files_in(spool.path()), [format!("{tx}.ogg.part")]);

    for (seq, p) in rest.iter().enumerate() {
        recorder
            .push(&AudioFrame::opus((first.len() + seq) as u32, p.clone()))
            .expect("push");
    }
    let item = recorder
        .finish(Duration::from_millis(300))
        .expect("the recorder finishes its own file")
        .expect("long enough");
    assert_eq!(item.duration_ms, playback_ms(packets.len()));
    assert_eq!(files_in(spool.path()), [format!("{tx}.ogg")]);
    assert_eq!(store.outbox_depth().await.expect("depth"), 0);
}
