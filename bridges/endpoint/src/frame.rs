//! The unit of audio inside the bridge.

use crate::ids::TxId;
use bytes::Bytes;
use std::sync::Arc;

/// One Opus packet of 48 kHz mono audio, normally 20 ms. Endpoints that speak Opus
/// pass `opus` through untouched; PCM is only present when some endpoint of the
/// channel asked for it (`Capabilities::needs_pcm`), and then it is decoded once by
/// the hub and shared, because Opus decoding is stateful per stream and doing it in
/// every consumer would cost N decoders for one talker.
#[derive(Debug, Clone, PartialEq)]
pub struct AudioFrame {
    /// Sender's sequence number, per stream; a gap means frames were lost.
    pub seq: u32,
    pub opus: Bytes,
    /// 48 kHz mono samples of `opus`, when decoded. On the way down to an endpoint
    /// that needs PCM this may be longer than one frame: concealment for frames lost
    /// just before is put in front, so playing `pcm` back to back keeps the talker's
    /// timing. A frame that came late (its slot already concealed) carries `None`
    /// and is to be skipped by PCM consumers.
    pub pcm: Option<Arc<[i16]>>,
}

impl AudioFrame {
    pub fn opus(seq: u32, opus: impl Into<Bytes>) -> Self {
        Self {
            seq,
            opus: opus.into(),
            pcm: None,
        }
    }
}

/// A frame of the floor holder's transmission on its way to another endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct DownFrame {
    pub tx: TxId,
    pub frame: AudioFrame,
}
