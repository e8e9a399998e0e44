//! Voice messages: the Ogg Opus reader and `import_voice_message`.

use std::time::Duration;

use walkie_endpoint::audio::{
    decode_ogg_opus, import_voice_message, read_ogg_opus, sniff_format, waveform, ImportLimits,
    OggOpusReader,
};

/// Target `ogg_opus`: the RFC 7845 reader, whole-file and streaming, and the
/// decoder behind the archive's waveform.
pub fn ogg_opus(data: &[u8]) {
    let _ = sniff_format(data);
    let whole = read_ogg_opus(data);
    // The streaming reader must agree with the whole-file one packet for packet.
    if let Ok(mut reader) = OggOpusReader::new(data) {
        let mut packets = 0usize;
        while let Ok(Some(packet)) = reader.next_packet() {
            assert!(!packet.is_empty(), "reader returned an empty packet");
            packets += 1;
        }
        if let Ok(audio) = &whole {
            assert_eq!(
                audio.packets.len(),
                packets,
                "streaming and whole reads differ"
            );
        }
    }
    if let Ok(audio) = &whole {
        assert!(audio.samples <= audio.decoded_samples);
        // Every packet is at least one byte and at most 120 ms.
        assert!(audio.decoded_samples <= data.len() as u64 * 5_760);
    }
    if let Ok(decoded) = decode_ogg_opus(data) {
        let _ = waveform(&decoded.pcm);
        assert!(decoded.pcm.len() as u64 <= data.len() as u64 * 5_760);
    }
}

/// Limits of the `voice_import` target: the daemon's byte limit, but a short
/// duration cap so that a file claiming a long gap does not spend a second
/// encoding silence on every run (the cap is enforced the same way at any value).
pub const FUZZ_IMPORT_LIMITS: ImportLimits = ImportLimits {
    max_bytes: 16 * 1024 * 1024,
    max_duration: Duration::from_secs(5),
};

/// Target `voice_import`: what a Matrix client's voice message goes through,
/// with each of the mimetypes a client might claim.
pub fn voice_import(data: &[u8]) {
    // The claimed mimetype is only a hint; vary it without spending input bytes.
    const CLAIMS: [Option<&str>; 5] = [
        None,
        Some("audio/ogg"),
        Some("audio/mp4"),
        Some("audio/mpeg"),
        Some("application/octet-stream"),
    ];
    let mimetype = CLAIMS[data.len() % CLAIMS.len()];
    if let Ok(imported) = import_voice_message(data, mimetype, &FUZZ_IMPORT_LIMITS) {
        assert!(
            !imported.packets.is_empty(),
            "imported a message without packets"
        );
        // The duration cap holds, with the slack of rounding to whole frames.
        let cap_ms = FUZZ_IMPORT_LIMITS.max_duration.as_millis() as u64;
        assert!(
            imported.duration_ms <= cap_ms + 20,
            "imported {} ms past the cap of {cap_ms} ms",
            imported.duration_ms
        );
        if !imported.passthrough {
            // Our own encoder: 20 ms per packet, the audio plus lookahead and padding.
            let max_packets = (imported.duration_ms as usize + 60) / 20 + 2;
            assert!(imported.packets.len() <= max_packets);
        }
    }
}
