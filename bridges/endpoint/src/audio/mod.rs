//! Codec helpers on real libraries (libopus, rubato, ogg).
//!
//! Internal audio is Opus at 48 kHz mono in 20 ms frames (DESIGN.md §2); this
//! module converts to and from what each side needs: PCM at other rates, VOX
//! and level metering for radios, Ogg Opus files and MSC1767 waveforms for the
//! Matrix archive.

mod codec;
mod error;
mod import;
mod level;
mod live_resample;
mod ogg_opus;
mod resample;
mod vox;
mod waveform;

pub use codec::{
    frames_of, packet_samples, EncoderSettings, OpusApplication, OpusDecoder, OpusEncoder,
    DEFAULT_BITRATE, DEFAULT_PRE_SKIP, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE,
};
pub use error::AudioError;
pub use import::{import_voice_message, sniff_format, ImportLimits, Imported, SourceFormat};
pub use level::{dbfs, DBFS_FLOOR};
pub use live_resample::{LiveResampler, LIVE_SINC_LEN};
pub use ogg_opus::{
    decode_ogg_opus, encode_ogg_opus, read_ogg_opus, DecodedOggOpus, OggOpusAudio, OggOpusOptions,
    OggOpusReader, OggOpusStats, OggOpusWriter, OpusHead, OpusTags, VENDOR,
};
pub use resample::{resample, Resampler, MAX_RATE, MIN_RATE, SUPPORTED_RATES};
pub use vox::{VoxConfig, VoxDetector, VoxEvent};
pub use waveform::{
    duration_ms, waveform, Waveform, WAVEFORM_MAX, WAVEFORM_MIN_REFERENCE_DBFS, WAVEFORM_POINTS,
};
