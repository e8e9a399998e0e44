//! The one error type of the audio helpers.

/// Everything that can go wrong while coding, resampling or (de)muxing audio.
///
/// Variants carry enough context to tell a user *which* input was bad; none of
/// them is raised by a bug in the caller's arithmetic alone, so callers can
/// match on them to decide whether to drop a packet or give up on a stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AudioError {
    /// libopus refused an operation (bad packet, bad argument, internal error).
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// The encoder only takes exactly one 20 ms frame.
    #[error("expected a frame of {expected} samples, got {got}")]
    FrameSize {
        /// Samples the call needs.
        expected: usize,
        /// Samples it was given.
        got: usize,
    },
    /// Bitrate outside what Opus can produce.
    #[error("bitrate {0} bit/s is outside 6000..=510000")]
    Bitrate(i32),
    /// A packet that is not a decodable Opus packet.
    #[error("invalid Opus packet: {0}")]
    InvalidPacket(String),
    /// A sample rate the resampler does not handle.
    #[error("sample rate {0} Hz is not supported (1000..=384000 Hz)")]
    UnsupportedRate(u32),
    /// rubato refused to build or run.
    #[error("resampler: {0}")]
    Resample(String),
    /// The bytes are not an Ogg stream carrying Opus at all.
    #[error("not an Ogg Opus stream: {0}")]
    NotOpus(String),
    /// An Ogg Opus stream that breaks RFC 3533 / RFC 7845.
    #[error("malformed Ogg Opus stream: {0}")]
    Malformed(String),
    /// The stream stops before its end-of-stream page.
    #[error("truncated Ogg Opus stream: {0}")]
    Truncated(String),
    /// A valid stream using a feature this bridge does not handle (e.g. surround mappings).
    #[error("unsupported Ogg Opus stream: {0}")]
    Unsupported(String),
    /// A caller-supplied value that cannot be honoured.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// An imported file is larger than the caller allows; refused before parsing.
    #[error("file is {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Size of the input in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// An imported file plays longer than the caller allows; decoding stopped
    /// as soon as the limit was passed.
    #[error("audio is longer than the limit of {limit_ms} ms (stopped after {decoded_ms} ms)")]
    TooLong {
        /// The limit in milliseconds.
        limit_ms: u64,
        /// How much had been read when decoding stopped, in milliseconds.
        decoded_ms: u64,
    },
    /// Bytes that are not audio in a format the bridge imports.
    #[error("unsupported audio format: {0}")]
    UnsupportedFormat(String),
    /// A file of a recognised format that cannot be decoded (damaged or cut off).
    #[error("corrupt {format} file: {reason}")]
    Corrupt {
        /// The format the bytes were recognised as.
        format: &'static str,
        /// What is wrong with them.
        reason: String,
    },
    /// A well-formed file without a single sample of audio.
    #[error("{format} file contains no audio")]
    NoAudio {
        /// The format the bytes were recognised as.
        format: &'static str,
    },
    /// The underlying reader or writer failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
