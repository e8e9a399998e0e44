//! Level meter and VOX on real speech, silence and noise.

mod common;

use common::{active_span, noise, sine, speech};
use walkie_endpoint::audio::{dbfs, VoxConfig, VoxDetector, VoxEvent, DBFS_FLOOR, FRAME_SAMPLES};

#[test]
fn dbfs_of_reference_signals() {
    let full = sine(1_000.0, 32_767.0, 48_000, 48_000);
    let half = sine(1_000.0, 16_384.0, 48_000, 48_000);
    println!(
        "full-scale sine {:.3} dBFS, half {:.3} dBFS",
        dbfs(&full),
        dbfs(&half)
    );
    assert!((dbfs(&full) + 3.01).abs() < 0.05);
    assert!((dbfs(&half) + 9.03).abs() < 0.05);
    assert!(
        (dbfs(&[i16::MIN; 960]) - 0.0).abs() < 1e-3,
        "full-scale square is 0 dBFS"
    );
    assert_eq!(dbfs(&[0; 960]), DBFS_FLOOR);
    assert_eq!(dbfs(&[]), DBFS_FLOOR);
    assert!((dbfs(&noise(48_000, -60.0, 1)) + 60.0).abs() < 0.5);
    assert!(dbfs(&[1; 960]) > DBFS_FLOOR, "one LSB is above the floor");
}

/// Speech framed by silence, with a pause inserted in the middle.
fn speech_with_pause(pause_ms: usize) -> (Vec<i16>, usize, usize) {
    let s = speech(48_000);
    let half = s.len() / 2;
    let lead = vec![0i16; 48_000];
    let mut pcm = lead.clone();
    pcm.extend_from_slice(&s[..half]);
    pcm.extend(std::iter::repeat_n(0, pause_ms * 48));
    pcm.extend_from_slice(&s[half..]);
    pcm.extend(std::iter::repeat_n(0, 48_000 * 2));
    let (first, last) = active_span(&pcm, 1_000);
    (pcm, first, last)
}

fn run(vox: &mut VoxDetector, pcm: &[i16], chunk: usize) -> Vec<VoxEvent> {
    pcm.chunks(chunk).flat_map(|c| vox.push(c)).collect()
}

#[test]
fn opens_on_speech_holds_through_pauses_and_closes_after_hang() {
    let (pcm, first, last) = speech_with_pause(300);
    let mut vox = VoxDetector::new(VoxConfig::default());
    let events = run(&mut vox, &pcm, FRAME_SAMPLES);
    println!(
        "speech from {} ms to {} ms; events {events:?}",
        first / 48,
        last / 48
    );
    assert_eq!(
        events.len(),
        2,
        "one transmission, not split by a 300 ms pause: {events:?}"
    );
    let VoxEvent::Opened { at_ms: opened } = events[0] else {
        panic!("first event {events:?}")
    };
    let VoxEvent::Closed { at_ms: closed } = events[1] else {
        panic!("second event {events:?}")
    };
    let (first_ms, last_ms) = (first as u64 / 48, last as u64 / 48);
    // Opens no earlier than the attack after the first loud sample, and within
    // the attack plus the 20 ms frame it started in plus a syllable's rise time.
    assert!(
        opened >= first_ms + 40 - 20,
        "opened at {opened} ms, speech at {first_ms} ms"
    );
    assert!(
        opened <= first_ms + 40 + 60,
        "opened at {opened} ms, speech at {first_ms} ms"
    );
    assert!(
        closed >= last_ms + 800 - 20,
        "closed at {closed} ms, last speech {last_ms} ms"
    );
    assert!(
        closed <= last_ms + 800 + 60,
        "closed at {closed} ms, last speech {last_ms} ms"
    );
    assert!(!vox.is_open());
}

#[test]
fn a_long_pause_splits_the_transmission() {
    let (pcm, _, _) = speech_with_pause(1_500);
    let mut vox = VoxDetector::new(VoxConfig::default());
    let events = run(&mut vox, &pcm, FRAME_SAMPLES);
    let opened = events
        .iter()
        .filter(|e| matches!(e, VoxEvent::Opened { .. }))
        .count();
    assert_eq!(opened, 2, "{events:?}");
}

#[test]
fn chunking_does_not_change_decisions() {
    let (pcm, _, _) = speech_with_pause(300);
    let by_frame = run(
        &mut VoxDetector::new(VoxConfig::default()),
        &pcm,
        FRAME_SAMPLES,
    );
    for chunk in [1usize, 441, 1_000, 48_000] {
        assert_eq!(
            run(&mut VoxDetector::new(VoxConfig::default()), &pcm, chunk),
            by_frame,
            "chunk {chunk}"
        );
    }
}

#[test]
fn never_opens_on_silence_or_low_noise() {
    let mut vox = VoxDetector::new(VoxConfig::default());
    assert!(run(&mut vox, &vec![0; 48_000 * 10], FRAME_SAMPLES).is_empty());
    for level in [-60.0, -50.0, -45.0] {
        let mut vox = VoxDetector::new(VoxConfig::default());
        let events = run(&mut vox, &noise(48_000 * 10, level, 42), FRAME_SAMPLES);
        assert!(
            events.is_empty(),
            "{level} dBFS noise opened VOX: {events:?}"
        );
    }
    // Noise above the threshold does open: the detector is not simply dead.
    let mut vox = VoxDetector::new(VoxConfig::default());
    assert!(!run(&mut vox, &noise(48_000, -30.0, 42), FRAME_SAMPLES).is_empty());
}

#[test]
fn a_click_shorter_than_the_attack_is_ignored() {
    let mut vox = VoxDetector::new(VoxConfig::default());
    let mut pcm = vec![0i16; 48_000];
    pcm.extend(noise(FRAME_SAMPLES, -10.0, 3)); // 20 ms burst < 40 ms attack
    pcm.extend(vec![0i16; 48_000]);
    assert!(run(&mut vox, &pcm, FRAME_SAMPLES).is_empty());
}

#[test]
fn levels_can_be_fed_directly_and_reset_closes() {
    let mut vox = VoxDetector::new(VoxConfig {
        threshold_dbfs: -40.0,
        attack_ms: 40,
        hang_ms: 100,
    });
    assert_eq!(vox.push_level(-20.0, 20), None);
    assert_eq!(
        vox.push_level(-20.0, 20),
        Some(VoxEvent::Opened { at_ms: 40 })
    );
    assert_eq!(vox.push_level(-50.0, 60), None);
    assert_eq!(vox.push_level(-20.0, 20), None, "voice resets the hang");
    assert_eq!(vox.push_level(-50.0, 60), None);
    assert_eq!(
        vox.push_level(-50.0, 40),
        Some(VoxEvent::Closed { at_ms: 220 })
    );
    vox.push_level(-20.0, 40);
    assert!(vox.is_open());
    assert_eq!(vox.reset(), Some(VoxEvent::Closed { at_ms: 260 }));
    assert_eq!(vox.reset(), None);
    assert!(vox.push(&[]).is_empty());
}

#[test]
fn works_at_16k() {
    let s = speech(16_000);
    let mut pcm = vec![0i16; 16_000];
    pcm.extend_from_slice(&s);
    pcm.extend(vec![0i16; 32_000]);
    let mut vox = VoxDetector::with_sample_rate(VoxConfig::default(), 16_000);
    let events = run(&mut vox, &pcm, 320);
    assert_eq!(events.len(), 2, "{events:?}");
}
