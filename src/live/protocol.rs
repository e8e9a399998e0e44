//! The live-talk wire protocol (docs/live-protocol.md): JSON text messages for
//! control, binary frames for audio, shaped like the Zello channel API so anyone
//! who wrote a Zello client recognises it.
//!
//! Parsing never panics and never trusts a length: every message from a client is
//! checked here before anything else sees it.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Binary frame type of an audio packet (Zello's `0x01`).
pub const FRAME_AUDIO: u8 = 0x01;
/// type (1) + stream id (4) + packet id (4).
pub const FRAME_HEADER: usize = 9;
/// The largest Opus packet (RFC 6716 §3.4: 1275 bytes per frame, and a 20 ms
/// packet holds at most one 20 ms frame; a little slack for padding).
pub const MAX_OPUS: usize = 1500;
/// The only audio format on the wire: 48 kHz mono Opus in 20 ms packets, the
/// bridge's internal format, so a live stream passes through without transcoding.
pub const SAMPLE_RATE: u32 = 48_000;
pub const PACKET_MS: u32 = 20;
/// The protocol's version, in `/live/config.json`: 2 lets one connection log on
/// to several channels (docs/live-protocol.md).
pub const VERSION: u32 = 2;
/// Longest opt-in a logon may ask for (a year): anything longer is "until opted out".
pub const MAX_LISTEN_S: u64 = 366 * 24 * 3600;

/// A message from the client. Unknown fields are ignored, so clients written for
/// Zello (`codec_header`, …) or for a later version still talk to this one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Command {
    Logon(Logon),
    Logoff(Logoff),
    StartStream(StartStream),
    StopStream(StopStream),
    GetHistory(GetHistory),
    PlayRecording(PlayRecording),
}

impl Command {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Logon(l) => l.seq,
            Self::Logoff(l) => l.seq,
            Self::StartStream(s) => s.seq,
            Self::StopStream(s) => s.seq,
            Self::GetHistory(h) => h.seq,
            Self::PlayRecording(p) => p.seq,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Logon {
    pub seq: u64,
    /// The bridge's channel name (`[[channel]] name`).
    pub channel: String,
    /// Who the client says it is; the OpenID token must belong to this user.
    pub user_id: String,
    /// The Matrix device the client runs on; opt-ins are per device.
    pub device_id: String,
    /// From `POST /_matrix/client/v3/user/{userId}/openid/request_token`.
    pub openid_token: String,
    /// Opt this device in to the channel (MSC4002) while logging on.
    #[serde(default)]
    pub listen: bool,
    /// With `listen`: the opt-in ends after this many seconds; none: until `!wt off`.
    #[serde(default)]
    pub listen_for_s: Option<u64>,
}

/// Leaves one channel of a connection logged on to several (protocol 2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Logoff {
    pub seq: u64,
    pub channel: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StartStream {
    pub seq: u64,
    /// The channel to talk on; needed only when the connection is logged on to
    /// more than one (protocol 2).
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(rename = "type", default = "audio")]
    pub kind: String,
    #[serde(default = "opus")]
    pub codec: String,
    #[serde(default)]
    pub sample_rate: Option<u32>,
    /// Milliseconds per packet.
    #[serde(default)]
    pub packet_duration: Option<u32>,
}

fn audio() -> String {
    "audio".into()
}

fn opus() -> String {
    "opus".into()
}

impl StartStream {
    /// Why the bridge cannot take this stream, if it cannot.
    pub fn unsupported(&self) -> Option<String> {
        if self.kind != "audio" {
            return Some(format!(
                "stream type {:?} is not supported; use \"audio\"",
                self.kind
            ));
        }
        if self.codec != "opus" {
            return Some(format!(
                "codec {:?} is not supported; use \"opus\"",
                self.codec
            ));
        }
        if let Some(rate) = self.sample_rate.filter(|r| *r != SAMPLE_RATE) {
            return Some(format!(
                "sample rate {rate} is not supported; use {SAMPLE_RATE}"
            ));
        }
        if let Some(ms) = self.packet_duration.filter(|ms| *ms != PACKET_MS) {
            return Some(format!(
                "packet duration {ms} ms is not supported; use {PACKET_MS}"
            ));
        }
        None
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StopStream {
    pub seq: u64,
    pub stream_id: u32,
}

/// The channel's latest archived transmissions (protocol 2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct GetHistory {
    pub seq: u64,
    pub channel: String,
    /// How many, newest first (default 20, at most 50).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Sends an archived transmission's audio again, as a stream (protocol 2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PlayRecording {
    pub seq: u64,
    pub channel: String,
    pub tx_id: String,
}

/// Why a text message could not be taken as a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadMessage {
    /// The `seq` of the message when it had a readable one, so the client can
    /// match the error to its request.
    pub seq: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

/// Parses one text message. Distinguishes "not JSON", "no or unknown command" and
/// "a known command with wrong fields", because each tells the client something
/// different.
pub fn parse_command(text: &str) -> Result<Command, BadMessage> {
    let value: Value = serde_json::from_str(text).map_err(|e| BadMessage {
        seq: None,
        code: ErrorCode::BadMessage,
        message: format!("not a JSON message: {e}"),
    })?;
    let seq = value.get("seq").and_then(Value::as_u64);
    let command = match value.get("command") {
        Some(Value::String(command)) => command.clone(),
        Some(_) => {
            return Err(BadMessage {
                seq,
                code: ErrorCode::BadMessage,
                message: "\"command\" must be a string".into(),
            })
        }
        None => {
            return Err(BadMessage {
                seq,
                code: ErrorCode::BadMessage,
                message: "the message has no \"command\"".into(),
            })
        }
    };
    if !matches!(
        command.as_str(),
        "logon" | "logoff" | "start_stream" | "stop_stream" | "get_history" | "play_recording"
    ) {
        return Err(BadMessage {
            seq,
            code: ErrorCode::UnknownCommand,
            message: format!(
                "unknown command {command:?}; expected logon, logoff, start_stream, stop_stream, \
                 get_history or play_recording"
            ),
        });
    }
    serde_json::from_value(value).map_err(|e| BadMessage {
        seq,
        code: ErrorCode::BadMessage,
        message: format!("{command}: {e}"),
    })
}

/// One audio packet in a binary frame, either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioPacket {
    pub stream_id: u32,
    pub packet_id: u32,
    pub opus: Bytes,
}

/// Reads a binary frame: `[type u8][stream_id u32 BE][packet_id u32 BE][opus…]`.
pub fn parse_frame(frame: &Bytes) -> Result<AudioPacket, BadMessage> {
    let bad = |message: String| BadMessage {
        seq: None,
        code: ErrorCode::BadFrame,
        message,
    };
    if frame.len() <= FRAME_HEADER {
        return Err(bad(format!(
            "a binary frame needs a {FRAME_HEADER}-byte header and a payload; got {} bytes",
            frame.len()
        )));
    }
    if frame[0] != FRAME_AUDIO {
        return Err(bad(format!(
            "binary frame type {:#04x} is unknown; audio is {FRAME_AUDIO:#04x}",
            frame[0]
        )));
    }
    let opus_len = frame.len() - FRAME_HEADER;
    if opus_len > MAX_OPUS {
        return Err(bad(format!(
            "an Opus packet of {opus_len} bytes is larger than any 20 ms packet ({MAX_OPUS})"
        )));
    }
    let word =
        |at: usize| u32::from_be_bytes([frame[at], frame[at + 1], frame[at + 2], frame[at + 3]]);
    Ok(AudioPacket {
        stream_id: word(1),
        packet_id: word(5),
        opus: frame.slice(FRAME_HEADER..),
    })
}

pub fn encode_frame(stream_id: u32, packet_id: u32, opus: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(FRAME_HEADER + opus.len());
    out.put_u8(FRAME_AUDIO);
    out.put_u32(stream_id);
    out.put_u32(packet_id);
    out.put_slice(opus);
    out.freeze()
}

/// Machine-readable error codes of `on_error`; the `message` beside them is for people.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadMessage,
    BadFrame,
    UnknownCommand,
    NotLoggedOn,
    AlreadyLoggedOn,
    UnknownChannel,
    ChannelUnavailable,
    InvalidToken,
    TokenExpired,
    TokenMismatch,
    ForeignUser,
    BadRequest,
    NotMember,
    NotOptedIn,
    HomeserverUnavailable,
    TooManyClients,
    UnsupportedCodec,
    StreamActive,
    UnknownStream,
    UnknownRecording,
    TooSlow,
    RateLimited,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadMessage => "bad_message",
            Self::BadFrame => "bad_frame",
            Self::UnknownCommand => "unknown_command",
            Self::NotLoggedOn => "not_logged_on",
            Self::AlreadyLoggedOn => "already_logged_on",
            Self::UnknownChannel => "unknown_channel",
            Self::ChannelUnavailable => "channel_unavailable",
            Self::InvalidToken => "invalid_token",
            Self::TokenExpired => "token_expired",
            Self::TokenMismatch => "token_mismatch",
            Self::ForeignUser => "foreign_user",
            Self::BadRequest => "bad_request",
            Self::NotMember => "not_member",
            Self::NotOptedIn => "not_opted_in",
            Self::HomeserverUnavailable => "homeserver_unavailable",
            Self::TooManyClients => "too_many_clients",
            Self::UnsupportedCodec => "unsupported_codec",
            Self::StreamActive => "stream_active",
            Self::UnknownStream => "unknown_stream",
            Self::UnknownRecording => "unknown_recording",
            Self::TooSlow => "too_slow",
            Self::RateLimited => "rate_limited",
            Self::Internal => "internal",
        }
    }

    /// Whether a refused logon with this code is the client's doing (a bad or
    /// stale token, a wrong room, …) rather than the bridge's or the
    /// homeserver's: only those count against `live.max_failed_logons`.
    pub fn is_clients_fault(self) -> bool {
        !matches!(
            self,
            Self::ChannelUnavailable
                | Self::HomeserverUnavailable
                | Self::TooManyClients
                | Self::Internal
        )
    }
}

/// Someone who talks, as the client shows them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Person {
    /// Stable within its side: a Matrix user ID, a Mumble user name, a device id.
    pub name: String,
    pub display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matrix_user_id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FloorState {
    /// Nobody talks and nobody waits.
    Idle,
    /// Someone else talks (`talker`, `source`).
    Taken,
    /// Your stream holds the floor: send audio now.
    Granted,
    /// Your stream was refused (`reason`, maybe `holder`).
    Denied,
    /// Your stream waits at `position`.
    Queued,
    /// Your transmission was cut off (`reason`: max talk time, revoked, …): stop.
    Revoked,
    /// Your transmission ended normally (you stopped, or went silent).
    Released,
    /// An endpoint (`by`) will not carry your transmission (`reason`); the others
    /// still hear you.
    Declined,
}

/// An `on_floor` event: `state` and whichever other fields apply to it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FloorUpdate {
    pub state: FloorState,
    /// The channel this is about (protocol 2: a connection may hear several).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tx_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<Person>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub talker: Option<Person>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl FloorUpdate {
    pub fn new(state: FloorState) -> Self {
        Self {
            state,
            channel: None,
            stream_id: None,
            tx_id: None,
            position: None,
            reason: None,
            holder: None,
            talker: None,
            source: None,
            by: None,
        }
    }

    pub fn channel(mut self, channel: &str) -> Self {
        self.channel = Some(channel.to_owned());
        self
    }

    pub fn stream(mut self, id: u32) -> Self {
        self.stream_id = Some(id);
        self
    }

    pub fn tx(mut self, tx: impl ToString) -> Self {
        self.tx_id = Some(tx.to_string());
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn event(self) -> Event {
        Event::OnFloor(self)
    }
}

/// A message from the bridge that is not the answer to a command.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum Event {
    OnFloor(FloorUpdate),
    OnStreamStart {
        stream_id: u32,
        #[serde(rename = "type")]
        kind: &'static str,
        codec: &'static str,
        sample_rate: u32,
        packet_duration: u32,
        channel: String,
        /// The talker's stable name (Zello's `from`).
        from: String,
        display_name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        matrix_user_id: Option<String>,
        /// The endpoint the talk comes from (`mumble.ops`, `live.ops`, …), or
        /// `archive` for a replay.
        source: String,
        tx_id: String,
        /// A recording played again at the client's request, not a live talk.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replay: bool,
    },
    OnStreamStop {
        stream_id: u32,
        channel: String,
        reason: String,
    },
    /// `online` after a logon; `offline` (with `reason`) when the bridge ended
    /// the connection's logon to the channel (protocol 2).
    OnChannelStatus {
        channel: String,
        status: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room_id: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        users_online: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    OnError {
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// The channel the error is about, when it is about one.
        #[serde(skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
        error: ErrorCode,
        message: String,
    },
}

impl Event {
    /// An `on_floor` with only `state` set.
    pub fn floor(state: FloorState) -> Self {
        FloorUpdate::new(state).event()
    }

    pub fn error(seq: Option<u64>, error: ErrorCode, message: impl Into<String>) -> Self {
        Self::OnError {
            seq,
            channel: None,
            error,
            message: message.into(),
        }
    }

    /// An `on_error` about one channel.
    pub fn channel_error(
        seq: Option<u64>,
        channel: &str,
        error: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Self::OnError {
            seq,
            channel: Some(channel.to_owned()),
            error,
            message: message.into(),
        }
    }

    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail (no maps with non-string
        // keys, no custom serialisers).
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The answer to a command that succeeded, matched to it by `seq`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Success {
    pub seq: u64,
    pub success: bool,
    /// The channel the answered command was about (logon, logoff, start_stream).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// With `listen`: until when this device is opted in (unix ms); absent: no expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listening_until_ms: Option<u64>,
    /// `get_history`: the channel's latest archived transmissions, newest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transmissions: Option<Vec<super::history::Archived>>,
    /// `play_recording`: how long the recording plays.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl Success {
    pub fn new(seq: u64) -> Self {
        Self {
            seq,
            success: true,
            channel: None,
            stream_id: None,
            user_id: None,
            display_name: None,
            listening_until_ms: None,
            transmissions: None,
            duration_ms: None,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logon_parses_with_defaults_and_ignores_unknown_fields() {
        let command = parse_command(
            r#"{"command":"logon","seq":1,"channel":"ops","user_id":"@a:x","device_id":"D",
                "openid_token":"t","auth_token":"zello-extra"}"#,
        )
        .unwrap();
        let Command::Logon(logon) = command else {
            panic!("not a logon: {command:?}")
        };
        assert!(!logon.listen);
        assert_eq!(logon.listen_for_s, None);
        assert_eq!(logon.channel, "ops");
    }

    #[test]
    fn protocol_2_commands_name_their_channel() {
        let command = parse_command(r#"{"command":"logoff","seq":7,"channel":"net"}"#).unwrap();
        assert_eq!(
            command,
            Command::Logoff(Logoff {
                seq: 7,
                channel: "net".into()
            })
        );
        let Command::StartStream(start) =
            parse_command(r#"{"command":"start_stream","seq":8,"channel":"net"}"#).unwrap()
        else {
            panic!("not a start_stream")
        };
        assert_eq!(start.channel.as_deref(), Some("net"));
        let e = parse_command(r#"{"command":"logoff","seq":9}"#).unwrap_err();
        assert_eq!((e.seq, e.code), (Some(9), ErrorCode::BadMessage));
        let json = FloorUpdate::new(FloorState::Idle)
            .channel("net")
            .event()
            .to_json();
        assert_eq!(
            json,
            r#"{"command":"on_floor","state":"idle","channel":"net"}"#
        );
    }

    #[test]
    fn bad_messages_keep_their_seq_and_say_what_is_wrong() {
        let e = parse_command("{not json").unwrap_err();
        assert_eq!((e.seq, e.code), (None, ErrorCode::BadMessage));
        let e = parse_command(r#"{"seq":4,"command":"dance"}"#).unwrap_err();
        assert_eq!((e.seq, e.code), (Some(4), ErrorCode::UnknownCommand));
        let e = parse_command(r#"{"seq":5,"command":"stop_stream"}"#).unwrap_err();
        assert_eq!((e.seq, e.code), (Some(5), ErrorCode::BadMessage));
        assert!(e.message.contains("stream_id"), "{}", e.message);
        let e = parse_command(r#"{"seq":6}"#).unwrap_err();
        assert_eq!((e.seq, e.code), (Some(6), ErrorCode::BadMessage));
    }

    #[test]
    fn start_stream_accepts_only_48k_20ms_opus() {
        let parse = |text: &str| match parse_command(text).unwrap() {
            Command::StartStream(s) => s,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            parse(r#"{"command":"start_stream","seq":1}"#).unwrap_supported(),
            ()
        );
        assert!(parse(r#"{"command":"start_stream","seq":1,"codec":"pcm"}"#)
            .unsupported()
            .is_some());
        assert!(
            parse(r#"{"command":"start_stream","seq":1,"packet_duration":60}"#)
                .unsupported()
                .is_some()
        );
        assert!(
            parse(r#"{"command":"start_stream","seq":1,"sample_rate":16000}"#)
                .unsupported()
                .is_some()
        );
    }

    impl StartStream {
        fn unwrap_supported(&self) {
            assert_eq!(self.unsupported(), None);
        }
    }

    #[test]
    fn frames_round_trip_and_bad_ones_are_refused() {
        let frame = encode_frame(7, 0x0102_0304, b"opus");
        assert_eq!(&frame[..9], &[1, 0, 0, 0, 7, 1, 2, 3, 4]);
        let packet = parse_frame(&frame).unwrap();
        assert_eq!((packet.stream_id, packet.packet_id), (7, 0x0102_0304));
        assert_eq!(&packet.opus[..], b"opus");
        assert!(parse_frame(&Bytes::from_static(&[1, 0, 0])).is_err());
        assert!(parse_frame(&Bytes::from_static(&[1, 0, 0, 0, 7, 0, 0, 0, 1])).is_err());
        assert!(parse_frame(&encode_frame(7, 1, b"x").slice(0..10).clone()).is_ok());
        let mut wrong_type = encode_frame(7, 1, b"x").to_vec();
        wrong_type[0] = 2;
        assert!(parse_frame(&Bytes::from(wrong_type)).is_err());
        assert!(parse_frame(&encode_frame(7, 1, &[0u8; MAX_OPUS + 1])).is_err());
    }

    #[test]
    fn events_leave_out_what_does_not_apply() {
        let json = Event::floor(FloorState::Idle).to_json();
        assert_eq!(json, r#"{"command":"on_floor","state":"idle"}"#);
        let json = Event::error(Some(3), ErrorCode::NotMember, "no").to_json();
        assert_eq!(
            json,
            r#"{"command":"on_error","seq":3,"error":"not_member","message":"no"}"#
        );
    }
}
