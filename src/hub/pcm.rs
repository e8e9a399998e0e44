//! Decoding the floor holder's Opus to PCM, once per transmission, for the endpoints
//! that asked for PCM (`Capabilities::needs_pcm`).
//!
//! Opus decoding is stateful, so it must see one stream's packets in order; the hub
//! is the one place that does, and decoding there once is cheaper than one decoder
//! per consumer.

use std::sync::Arc;
use walkie_endpoint::audio::OpusDecoder;
use walkie_endpoint::{AudioFrame, TxId};

/// Lost frames concealed in one go. A longer gap is a talker that stalled, not packet
/// loss: inventing more than 100 ms of sound would only delay the rest.
const MAX_CONCEALED_FRAMES: u32 = 5;

/// What happened to one frame, for counting.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DecodeOutcome {
    /// Frames of packet-loss concealment put in front of this frame's audio.
    pub concealed: u32,
    /// The frame arrived after a later one; its slot was already concealed.
    pub late: bool,
    /// libopus refused the packet; concealment stands in for it.
    pub corrupt: bool,
}

pub struct TransmissionDecoder {
    tx: TxId,
    decoder: OpusDecoder,
    next_seq: Option<u32>,
    /// One frame's PCM is put together here, then copied once into the shared
    /// `Arc` every consumer reads: one allocation per frame, for all of them.
    pcm: Vec<i16>,
}

impl TransmissionDecoder {
    pub fn new(tx: TxId) -> Result<Self, walkie_endpoint::audio::AudioError> {
        Ok(Self {
            tx,
            decoder: OpusDecoder::new()?,
            next_seq: None,
            pcm: Vec::with_capacity(walkie_endpoint::audio::FRAME_SAMPLES),
        })
    }

    pub fn tx(&self) -> TxId {
        self.tx
    }

    /// Fills `frame.pcm`. Concealment for frames lost just before this one is put in
    /// front, so a consumer that plays `pcm` back to back keeps the talker's timing.
    /// A late frame gets no PCM: its time slot has already been played.
    pub fn decode_into(&mut self, frame: &mut AudioFrame) -> DecodeOutcome {
        let mut outcome = DecodeOutcome::default();
        let gap = match self.next_seq {
            None => 0,
            Some(expected) => {
                let ahead = frame.seq.wrapping_sub(expected);
                // More than half the sequence space ahead means behind.
                if ahead > u32::MAX / 2 {
                    outcome.late = true;
                    return outcome;
                }
                ahead
            }
        };
        self.pcm.clear();
        for _ in 0..gap.min(MAX_CONCEALED_FRAMES) {
            self.pcm
                .extend_from_slice(self.decoder.decode_lost_to_slice());
            outcome.concealed += 1;
        }
        match self.decoder.decode_to_slice(&frame.opus) {
            Ok(samples) => self.pcm.extend_from_slice(samples),
            Err(error) => {
                tracing::debug!(tx = %self.tx, seq = frame.seq, %error, "undecodable Opus packet concealed");
                outcome.corrupt = true;
                self.pcm
                    .extend_from_slice(self.decoder.decode_lost_to_slice());
            }
        }
        self.next_seq = Some(frame.seq.wrapping_add(1));
        frame.pcm = Some(Arc::from(&self.pcm[..]));
        outcome
    }
}
