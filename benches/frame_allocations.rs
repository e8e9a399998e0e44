//! Heap allocations per 20 ms frame on the audio hot path (issue #16, item 2),
//! counted by a global allocator that wraps the system's. Each stage runs on 60 s
//! of espeak-ng speech after a warm-up of 50 frames; the figure is allocations per
//! frame (0.02 means one every 50 frames: a buffer that grows or a page of the
//! archive file). Prints a table; never fails on a count.
//!
//! Run: `cargo bench --bench frame_allocations` (a few seconds; espeak-ng, sox).
//!
//! Stages: pcm16 device → Opus (`PcmToOpus`); the hub's decode for PCM consumers
//! (`TransmissionDecoder`); 48 kHz → pcm16 device (`PcmToPcm16`); the recorder
//! (`Recorder::push`, Ogg pages to a temp dir, waveform from the hub's PCM); the
//! MQTT audio framing (`wire::frame_audio`).

#[path = "../bridges/endpoint/tests/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use walkie_bridge::archive::{Recorder, RecordingMeta};
use walkie_bridge::hub::pcm::TransmissionDecoder;
use walkie_endpoint::audio::{frames_of, OpusEncoder};
use walkie_endpoint::{AudioFrame, TxId};
use walkie_mqtt::transcode::{PcmToOpus, PcmToPcm16, PCM16_FRAME_BYTES};
use walkie_mqtt::wire::frame_audio;

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const SECONDS: usize = 60;
const WARM_UP: usize = 50;
/// Frames a channel's audio ring holds (`AUDIO_DOWNLINK_FRAMES` in the hub).
const RING: usize = 250;

/// Allocations per call of `step` over `frames` calls, after [`WARM_UP`] calls.
fn per_frame(frames: usize, mut step: impl FnMut(usize)) -> f64 {
    for i in 0..WARM_UP {
        step(i);
    }
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for i in WARM_UP..WARM_UP + frames {
        step(i);
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / frames as f64
}

fn main() {
    let speech16 = common::speech(16_000);
    let speech48 = common::speech(48_000);
    let frames = SECONDS * 50;
    let pcm16: Vec<u8> = speech16
        .iter()
        .cycle()
        .take((frames + WARM_UP) * 320)
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let long48: Vec<i16> = speech48
        .iter()
        .copied()
        .cycle()
        .take((frames + WARM_UP) * 960)
        .collect();
    let mut encoder = OpusEncoder::new().expect("encoder");
    let opus: Vec<_> = frames_of(&long48)
        .map(|f| encoder.encode(&f).expect("encode"))
        .collect();

    let mut rows = Vec::new();

    let mut up = PcmToOpus::new().expect("pcm16 → Opus");
    let mut packets = Vec::new();
    // The channel's audio ring keeps the last 250 frames (5 s) alive, and with
    // them the encoder's arena blocks they were split off.
    let mut ring = std::collections::VecDeque::with_capacity(RING + 1);
    rows.push((
        "pcm16 device → Opus (PcmToOpus::push_into)",
        per_frame(frames, |i| {
            let at = i * PCM16_FRAME_BYTES;
            up.push_into(&pcm16[at..at + PCM16_FRAME_BYTES], &mut packets)
                .expect("push");
            for packet in packets.drain(..) {
                if ring.len() == RING {
                    ring.pop_front();
                }
                ring.push_back(packet);
            }
        }),
    ));

    let mut decoder = TransmissionDecoder::new(TxId::generate()).expect("decoder");
    let mut decoded = std::collections::VecDeque::with_capacity(RING + 1);
    rows.push((
        "hub decode for PCM consumers (TransmissionDecoder)",
        per_frame(frames, |i| {
            let mut frame = AudioFrame::opus(i as u32, opus[i].clone());
            decoder.decode_into(&mut frame);
            // The channel's audio ring holds the frame until it is overwritten.
            if decoded.len() == RING {
                decoded.pop_front();
            }
            decoded.push_back(frame);
        }),
    ));

    let mut down = PcmToPcm16::new().expect("48 kHz → pcm16");
    rows.push((
        "48 kHz → pcm16 device (PcmToPcm16::push_each)",
        per_frame(frames, |i| {
            down.push_each(&long48[i * 960..(i + 1) * 960], |frame| {
                std::hint::black_box(frame);
            })
            .expect("push");
        }),
    ));

    let spool = tempfile::tempdir().expect("temp dir");
    let meta = RecordingMeta {
        tx: TxId::generate(),
        channel: "bench".into(),
        room_id: "!bench:walkie.test".into(),
        sender: "@walkie_bench:walkie.test".into(),
        talker: "bench".into(),
        started_at: SystemTime::now(),
    };
    let mut recorder = Recorder::start(spool.path(), meta).expect("recorder");
    let mut hub = TransmissionDecoder::new(TxId::generate()).expect("decoder");
    let with_pcm: Vec<AudioFrame> = (0..frames + WARM_UP)
        .map(|i| {
            let mut frame = AudioFrame::opus(i as u32, opus[i].clone());
            hub.decode_into(&mut frame);
            frame
        })
        .collect();
    rows.push((
        "recorder, Ogg page per second (Recorder::push)",
        per_frame(frames, |i| recorder.push(&with_pcm[i]).expect("push")),
    ));

    let mut ogg = walkie_endpoint::audio::OggOpusWriter::new(std::io::sink(), 312).expect("ogg");
    rows.push((
        "  of which the Ogg writer (OggOpusWriter::write_packet)",
        per_frame(frames, |i| ogg.write_packet(&opus[i]).expect("write")),
    ));
    let mut waveform = walkie_endpoint::audio::Waveform::new();
    rows.push((
        "  of which the waveform (Waveform::push_pcm)",
        per_frame(frames, |i| {
            waveform.push_pcm(with_pcm[i].pcm.as_deref().unwrap_or_default())
        }),
    ));

    rows.push((
        "MQTT audio framing (wire::frame_audio)",
        per_frame(frames, |i| {
            std::hint::black_box(frame_audio(i as u32, &opus[i]));
        }),
    ));

    println!("heap allocations per 20 ms frame ({SECONDS} s of speech per stage)");
    for (stage, count) in rows {
        println!("  {count:>7.3}  {stage}");
    }
}
