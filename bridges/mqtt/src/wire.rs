//! What travels on the topics: the binary audio framing, the sequence-number
//! rules, and the JSON control messages (README.md, "Messages").

use serde::{Deserialize, Serialize};
use walkie_endpoint::{DenyReason, Priority, ReleaseReason};

use crate::error::InputError;

/// Bytes of the big-endian sequence number in front of every audio payload.
pub const SEQ_BYTES: usize = 4;

/// Splits an audio payload into its sequence number and the audio after it.
pub fn parse_audio(payload: &[u8]) -> Result<(u32, &[u8]), InputError> {
    let (head, audio) = payload
        .split_first_chunk::<SEQ_BYTES>()
        .ok_or(InputError::ShortAudio)?;
    if audio.is_empty() {
        return Err(InputError::EmptyAudio);
    }
    Ok((u32::from_be_bytes(*head), audio))
}

pub fn frame_audio(seq: u32, audio: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(SEQ_BYTES + audio.len());
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend_from_slice(audio);
    payload
}

/// What to do with a frame, judged by its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqVerdict {
    /// Use it; `lost` frames before it never arrived.
    Accept { lost: u32 },
    /// Same number as the last accepted frame.
    Duplicate,
    /// Older than the last accepted frame: its time has passed.
    Late,
}

/// Sequence numbers of one device talk. Numbers wrap at 2³²; "behind" means
/// less than half the number space behind, as in RTP.
#[derive(Debug, Default, Clone)]
pub struct SeqTracker {
    last: Option<u32>,
}

impl SeqTracker {
    pub fn check(&mut self, seq: u32) -> SeqVerdict {
        let Some(last) = self.last else {
            self.last = Some(seq);
            return SeqVerdict::Accept { lost: 0 };
        };
        let ahead = seq.wrapping_sub(last);
        if ahead == 0 {
            SeqVerdict::Duplicate
        } else if ahead > u32::MAX / 2 {
            SeqVerdict::Late
        } else {
            self.last = Some(seq);
            SeqVerdict::Accept { lost: ahead - 1 }
        }
    }
}

/// A device's `start`. Every field is optional, and an empty payload is a valid
/// start, so the simplest firmware can send nothing but `""`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct DeviceStart {
    /// Shown as the talker ("Front door"); the device id if absent.
    #[serde(default)]
    pub talker: Option<String>,
    #[serde(default)]
    pub priority: WirePriority,
}

impl DeviceStart {
    pub fn parse(payload: &[u8]) -> Result<Self, InputError> {
        if payload.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(payload).map_err(|e| InputError::BadJson(e.to_string()))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WirePriority {
    #[default]
    Normal,
    High,
    Emergency,
}

impl From<WirePriority> for Priority {
    fn from(p: WirePriority) -> Self {
        match p {
            WirePriority::Normal => Priority::Normal,
            WirePriority::High => Priority::High,
            WirePriority::Emergency => Priority::Emergency,
        }
    }
}

/// The retained state of the channel's floor on `{prefix}/floor`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum FloorState {
    Idle,
    Taken {
        talker: String,
        /// The endpoint the talker is on (`mumble.ops`, `mqtt.lobby`).
        source: String,
        tx_id: String,
        /// Unix time in milliseconds when the floor was taken.
        since_ts: u64,
    },
}

/// `{prefix}/out/start`: the channel's floor holder starts talking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutStart {
    pub tx_id: String,
    pub talker: String,
    pub source: String,
    pub codec: String,
    pub sample_rate: u32,
    pub frame_ms: u32,
}

/// `{prefix}/out/end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutEnd {
    pub tx_id: String,
    pub reason: String,
}

/// `{prefix}/in/{device}/floor`: the bridge's answer to one device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum FloorAnswer {
    Granted {
        tx_id: String,
    },
    Queued {
        position: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        holder: Option<String>,
    },
    Denied {
        reason: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        holder: Option<String>,
        /// With `priority_too_high`: the highest priority this device may ask for.
        #[serde(skip_serializing_if = "Option::is_none")]
        max_priority: Option<String>,
    },
    /// The device's talk is over without its `end`: idle timeout, max talk
    /// time, pre-empted by an emergency, bridge reconnected.
    Released {
        reason: String,
    },
    /// Another endpoint (a radio) does not carry this talk; everyone else still
    /// hears it. `endpoint` is who declined, `reason` is for people.
    Declined {
        endpoint: String,
        reason: String,
    },
}

/// The device asked for a priority above its `max_priority`.
pub const REASON_PRIORITY_TOO_HIGH: &str = "priority_too_high";

pub fn priority_name(priority: Priority) -> &'static str {
    match priority {
        Priority::Normal => "normal",
        Priority::High => "high",
        Priority::Emergency => "emergency",
    }
}

pub fn deny_reason(reason: DenyReason) -> &'static str {
    match reason {
        DenyReason::Busy => "busy",
        DenyReason::NotPermitted => "not_permitted",
        DenyReason::RateLimited => "rate_limited",
    }
}

pub fn release_reason(reason: ReleaseReason) -> &'static str {
    match reason {
        ReleaseReason::TalkerDone => "talker_done",
        ReleaseReason::IdleTimeout => "idle_timeout",
        ReleaseReason::MaxTalkTime => "max_talk_time",
        ReleaseReason::Revoked => "revoked",
        ReleaseReason::EndpointGone => "endpoint_gone",
        ReleaseReason::Shutdown => "shutdown",
    }
}

/// Why the bridge cut a transmission itself: its broker connection was lost.
pub const REASON_RECONNECTED: &str = "bridge_reconnected";

pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail (no maps with non-string
    // keys, no custom Serialize impls); an empty object is a safe fallback.
    serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_framing_round_trips_and_rejects_short_payloads() {
        let payload = frame_audio(0x0102_0304, b"abc");
        assert_eq!(&payload[..4], &[1, 2, 3, 4]);
        assert_eq!(parse_audio(&payload), Ok((0x0102_0304, &b"abc"[..])));
        assert_eq!(parse_audio(&[0, 0, 1]), Err(InputError::ShortAudio));
        assert_eq!(parse_audio(&[]), Err(InputError::ShortAudio));
        assert_eq!(parse_audio(&[0, 0, 0, 1]), Err(InputError::EmptyAudio));
    }

    #[test]
    fn sequence_numbers_drop_duplicates_and_late_frames_and_count_gaps() {
        let mut t = SeqTracker::default();
        assert_eq!(t.check(10), SeqVerdict::Accept { lost: 0 });
        assert_eq!(t.check(11), SeqVerdict::Accept { lost: 0 });
        assert_eq!(t.check(11), SeqVerdict::Duplicate);
        assert_eq!(t.check(14), SeqVerdict::Accept { lost: 2 });
        assert_eq!(t.check(12), SeqVerdict::Late);
        assert_eq!(t.check(15), SeqVerdict::Accept { lost: 0 });
    }

    #[test]
    fn sequence_numbers_wrap() {
        let mut t = SeqTracker::default();
        assert_eq!(t.check(u32::MAX - 1), SeqVerdict::Accept { lost: 0 });
        assert_eq!(t.check(u32::MAX), SeqVerdict::Accept { lost: 0 });
        assert_eq!(t.check(1), SeqVerdict::Accept { lost: 1 });
        assert_eq!(t.check(u32::MAX), SeqVerdict::Late);
    }

    #[test]
    fn device_start_accepts_empty_partial_and_full_json() {
        assert_eq!(DeviceStart::parse(b"").unwrap(), DeviceStart::default());
        assert_eq!(DeviceStart::parse(b"{}").unwrap(), DeviceStart::default());
        let s = DeviceStart::parse(br#"{"talker":"Front door","priority":"emergency"}"#).unwrap();
        assert_eq!(s.talker.as_deref(), Some("Front door"));
        assert_eq!(Priority::from(s.priority), Priority::Emergency);
        assert!(matches!(
            DeviceStart::parse(b"{not json"),
            Err(InputError::BadJson(_))
        ));
        assert!(DeviceStart::parse(br#"{"priority":"urgent"}"#).is_err());
    }

    #[test]
    fn control_json_has_the_documented_shape() {
        let idle: serde_json::Value = serde_json::from_slice(&to_json(&FloorState::Idle)).unwrap();
        assert_eq!(idle, serde_json::json!({"state": "idle"}));
        let taken = FloorState::Taken {
            talker: "alice (Mumble)".into(),
            source: "mumble.ops".into(),
            tx_id: "abc".into(),
            since_ts: 5,
        };
        let v: serde_json::Value = serde_json::from_slice(&to_json(&taken)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"state":"taken","talker":"alice (Mumble)","source":"mumble.ops","tx_id":"abc","since_ts":5})
        );
        let denied = FloorAnswer::Denied {
            reason: "busy".into(),
            holder: Some("alice (Mumble)".into()),
            max_priority: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&to_json(&denied)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"result":"denied","reason":"busy","holder":"alice (Mumble)"})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&to_json(&FloorAnswer::Granted { tx_id: "t".into() })).unwrap();
        assert_eq!(v, serde_json::json!({"result":"granted","tx_id":"t"}));
        let too_high = FloorAnswer::Denied {
            reason: REASON_PRIORITY_TOO_HIGH.into(),
            holder: None,
            max_priority: Some(priority_name(Priority::Normal).into()),
        };
        let v: serde_json::Value = serde_json::from_slice(&to_json(&too_high)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"result":"denied","reason":"priority_too_high","max_priority":"normal"})
        );
    }
}
