//! Signal level in dBFS.

/// What [`dbfs`] reports for digital silence (and empty input), in dBFS.
///
/// A finite floor rather than `-inf`, so levels can be compared, averaged,
/// logged and serialised without special cases. It is below anything 16-bit
/// PCM can express (one LSB of RMS is about -90 dBFS).
pub const DBFS_FLOOR: f32 = -120.0;

/// RMS level of `pcm` in dBFS, relative to a full-scale square wave.
///
/// A full-scale sine reads about -3.01 dBFS; silence and empty input read
/// [`DBFS_FLOOR`], as does anything quieter than it.
pub fn dbfs(pcm: &[i16]) -> f32 {
    if pcm.is_empty() {
        return DBFS_FLOOR;
    }
    let sum: f64 = pcm.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    rms_to_dbfs((sum / pcm.len() as f64).sqrt())
}

/// Converts an RMS amplitude in sample units (full scale = 32768) to dBFS.
pub(crate) fn rms_to_dbfs(rms: f64) -> f32 {
    if rms <= 0.0 {
        return DBFS_FLOOR;
    }
    ((20.0 * (rms / 32_768.0).log10()) as f32).max(DBFS_FLOOR)
}

/// Converts a level in dBFS back to an RMS amplitude in sample units.
pub(crate) fn dbfs_to_rms(level: f32) -> f64 {
    if level <= DBFS_FLOOR {
        return 0.0;
    }
    32_768.0 * 10f64.powf(f64::from(level) / 20.0)
}
