//! The control-channel messages this client uses, as prost types.
//!
//! Written by hand from Mumble's `Mumble.proto` (proto2) rather than generated:
//! we need 14 of its 27 messages, the field numbers are frozen by the wire
//! protocol, and this keeps protoc (or a protobuf compiler in build.rs) out of
//! the build. Enums are kept as `int32` (wire-identical) and interpreted where
//! used. Unknown fields a newer server sends are skipped by prost.

use prost::Message;

/// Message type numbers of the TCP framing (the first two bytes of a frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum MessageType {
    Version = 0,
    UdpTunnel = 1,
    Authenticate = 2,
    Ping = 3,
    Reject = 4,
    ServerSync = 5,
    ChannelRemove = 6,
    ChannelState = 7,
    UserRemove = 8,
    UserState = 9,
    BanList = 10,
    TextMessage = 11,
    PermissionDenied = 12,
    Acl = 13,
    QueryUsers = 14,
    CryptSetup = 15,
    ContextActionModify = 16,
    ContextAction = 17,
    UserList = 18,
    VoiceTarget = 19,
    PermissionQuery = 20,
    CodecVersion = 21,
    UserStats = 22,
    RequestBlob = 23,
    ServerConfig = 24,
    SuggestConfig = 25,
    PluginDataTransmission = 26,
}

impl MessageType {
    pub fn from_u16(v: u16) -> Option<Self> {
        use MessageType::*;
        Some(match v {
            0 => Version,
            1 => UdpTunnel,
            2 => Authenticate,
            3 => Ping,
            4 => Reject,
            5 => ServerSync,
            6 => ChannelRemove,
            7 => ChannelState,
            8 => UserRemove,
            9 => UserState,
            10 => BanList,
            11 => TextMessage,
            12 => PermissionDenied,
            13 => Acl,
            14 => QueryUsers,
            15 => CryptSetup,
            16 => ContextActionModify,
            17 => ContextAction,
            18 => UserList,
            19 => VoiceTarget,
            20 => PermissionQuery,
            21 => CodecVersion,
            22 => UserStats,
            23 => RequestBlob,
            24 => ServerConfig,
            25 => SuggestConfig,
            26 => PluginDataTransmission,
            _ => return None,
        })
    }
}

/// A message that knows its own frame type.
pub trait ControlMessage: Message + Default {
    const TYPE: MessageType;
}

macro_rules! control {
    ($($name:ident),*) => {
        $(impl ControlMessage for $name {
            const TYPE: MessageType = MessageType::$name;
        })*
    };
}
control!(
    Version,
    Authenticate,
    Ping,
    Reject,
    ServerSync,
    ChannelRemove,
    ChannelState,
    UserRemove,
    UserState,
    TextMessage,
    PermissionDenied,
    CryptSetup,
    CodecVersion,
    ServerConfig
);

/// `version` is the 1.2–1.4 encoding: major << 16 | minor << 8 | patch.
/// Servers ≥ 1.5 add `version_v2` (major << 48 | minor << 32 | patch << 16).
#[derive(Clone, PartialEq, Message)]
pub struct Version {
    #[prost(uint32, optional, tag = "1")]
    pub version: Option<u32>,
    #[prost(string, optional, tag = "2")]
    pub release: Option<String>,
    #[prost(string, optional, tag = "3")]
    pub os: Option<String>,
    #[prost(string, optional, tag = "4")]
    pub os_version: Option<String>,
    #[prost(uint64, optional, tag = "5")]
    pub version_v2: Option<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Authenticate {
    #[prost(string, optional, tag = "1")]
    pub username: Option<String>,
    #[prost(string, optional, tag = "2")]
    pub password: Option<String>,
    #[prost(string, repeated, tag = "3")]
    pub tokens: Vec<String>,
    #[prost(int32, repeated, packed = "false", tag = "4")]
    pub celt_versions: Vec<i32>,
    #[prost(bool, optional, tag = "5")]
    pub opus: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Ping {
    #[prost(uint64, optional, tag = "1")]
    pub timestamp: Option<u64>,
    #[prost(uint32, optional, tag = "2")]
    pub good: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    pub late: Option<u32>,
    #[prost(uint32, optional, tag = "4")]
    pub lost: Option<u32>,
    #[prost(uint32, optional, tag = "5")]
    pub resync: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    pub udp_packets: Option<u32>,
    #[prost(uint32, optional, tag = "7")]
    pub tcp_packets: Option<u32>,
    #[prost(float, optional, tag = "8")]
    pub udp_ping_avg: Option<f32>,
    #[prost(float, optional, tag = "9")]
    pub udp_ping_var: Option<f32>,
    #[prost(float, optional, tag = "10")]
    pub tcp_ping_avg: Option<f32>,
    #[prost(float, optional, tag = "11")]
    pub tcp_ping_var: Option<f32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Reject {
    #[prost(int32, optional, tag = "1")]
    pub r#type: Option<i32>,
    #[prost(string, optional, tag = "2")]
    pub reason: Option<String>,
}

impl Reject {
    pub fn kind_name(&self) -> &'static str {
        match self.r#type.unwrap_or(0) {
            1 => "WrongVersion",
            2 => "InvalidUsername",
            3 => "WrongUserPW",
            4 => "WrongServerPW",
            5 => "UsernameInUse",
            6 => "ServerFull",
            7 => "NoCertificate",
            8 => "AuthenticatorFail",
            _ => "None",
        }
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct ServerSync {
    #[prost(uint32, optional, tag = "1")]
    pub session: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub max_bandwidth: Option<u32>,
    #[prost(string, optional, tag = "3")]
    pub welcome_text: Option<String>,
    #[prost(uint64, optional, tag = "4")]
    pub permissions: Option<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChannelRemove {
    #[prost(uint32, required, tag = "1")]
    pub channel_id: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChannelState {
    #[prost(uint32, optional, tag = "1")]
    pub channel_id: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub parent: Option<u32>,
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    #[prost(uint32, repeated, packed = "false", tag = "4")]
    pub links: Vec<u32>,
    #[prost(string, optional, tag = "5")]
    pub description: Option<String>,
    #[prost(uint32, repeated, packed = "false", tag = "6")]
    pub links_add: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "7")]
    pub links_remove: Vec<u32>,
    #[prost(bool, optional, tag = "8")]
    pub temporary: Option<bool>,
    #[prost(int32, optional, tag = "9")]
    pub position: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct UserRemove {
    #[prost(uint32, required, tag = "1")]
    pub session: u32,
    #[prost(uint32, optional, tag = "2")]
    pub actor: Option<u32>,
    #[prost(string, optional, tag = "3")]
    pub reason: Option<String>,
    #[prost(bool, optional, tag = "4")]
    pub ban: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
pub struct UserState {
    #[prost(uint32, optional, tag = "1")]
    pub session: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub actor: Option<u32>,
    #[prost(string, optional, tag = "3")]
    pub name: Option<String>,
    #[prost(uint32, optional, tag = "4")]
    pub user_id: Option<u32>,
    #[prost(uint32, optional, tag = "5")]
    pub channel_id: Option<u32>,
    #[prost(bool, optional, tag = "6")]
    pub mute: Option<bool>,
    #[prost(bool, optional, tag = "7")]
    pub deaf: Option<bool>,
    #[prost(bool, optional, tag = "8")]
    pub suppress: Option<bool>,
    #[prost(bool, optional, tag = "9")]
    pub self_mute: Option<bool>,
    #[prost(bool, optional, tag = "10")]
    pub self_deaf: Option<bool>,
    #[prost(string, optional, tag = "14")]
    pub comment: Option<String>,
    /// SHA-1 (hex) of the user's client certificate.
    #[prost(string, optional, tag = "15")]
    pub hash: Option<String>,
    #[prost(bytes = "vec", optional, tag = "16")]
    pub comment_hash: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TextMessage {
    #[prost(uint32, optional, tag = "1")]
    pub actor: Option<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "2")]
    pub session: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "3")]
    pub channel_id: Vec<u32>,
    #[prost(uint32, repeated, packed = "false", tag = "4")]
    pub tree_id: Vec<u32>,
    #[prost(string, required, tag = "5")]
    pub message: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct PermissionDenied {
    #[prost(uint32, optional, tag = "1")]
    pub permission: Option<u32>,
    #[prost(uint32, optional, tag = "2")]
    pub channel_id: Option<u32>,
    #[prost(uint32, optional, tag = "3")]
    pub session: Option<u32>,
    #[prost(string, optional, tag = "4")]
    pub reason: Option<String>,
    #[prost(int32, optional, tag = "5")]
    pub r#type: Option<i32>,
    #[prost(string, optional, tag = "6")]
    pub name: Option<String>,
}

impl PermissionDenied {
    pub fn describe(&self) -> String {
        let kind = match self.r#type.unwrap_or(0) {
            0 => "denied",
            1 => "permission denied",
            2 => "cannot modify SuperUser",
            3 => "invalid channel name",
            4 => "text too long",
            6 => "not permitted in temporary channel",
            7 => "requires a certificate",
            8 => "invalid user name",
            9 => "channel is full",
            10 => "nesting limit reached",
            _ => "denied",
        };
        match &self.reason {
            Some(r) if !r.is_empty() => format!("{kind}: {r}"),
            _ => kind.to_owned(),
        }
    }
}

/// Key and nonces of the UDP crypto. All three set: (re)initialise. Only the
/// server nonce: the server answers our resync request. Empty: the server asks
/// us for our (client) nonce.
#[derive(Clone, PartialEq, Message)]
pub struct CryptSetup {
    #[prost(bytes = "vec", optional, tag = "1")]
    pub key: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub client_nonce: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub server_nonce: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct CodecVersion {
    #[prost(int32, required, tag = "1")]
    pub alpha: i32,
    #[prost(int32, required, tag = "2")]
    pub beta: i32,
    #[prost(bool, required, tag = "3")]
    pub prefer_alpha: bool,
    #[prost(bool, optional, tag = "4")]
    pub opus: Option<bool>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServerConfig {
    #[prost(uint32, optional, tag = "1")]
    pub max_bandwidth: Option<u32>,
    #[prost(string, optional, tag = "2")]
    pub welcome_text: Option<String>,
    #[prost(bool, optional, tag = "3")]
    pub allow_html: Option<bool>,
    #[prost(uint32, optional, tag = "4")]
    pub message_length: Option<u32>,
    #[prost(uint32, optional, tag = "5")]
    pub image_message_length: Option<u32>,
    #[prost(uint32, optional, tag = "6")]
    pub max_users: Option<u32>,
}

/// Mumble's 1.2–1.4 version number.
pub const fn version_v1(major: u32, minor: u32, patch: u32) -> u32 {
    major << 16 | minor << 8 | patch
}

/// A Mumble version (major.minor.patch), ordered as versions are.
///
/// Two encodings travel in the `Version` message: `version_v1` (field 1,
/// `major << 16 | minor << 8 | patch`, 1.2–1.4) and `version_v2` (field 5,
/// `major << 48 | minor << 32 | patch << 16`, added in 1.5; the low 16 bits
/// are unused). A 1.5 peer prefers v2 and falls back to v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MumbleVersion {
    pub major: u16,
    pub minor: u16,
    pub patch: u16,
}

impl MumbleVersion {
    /// The first version with the protobuf UDP voice format
    /// (`Mumble::Protocol::PROTOBUF_INTRODUCTION_VERSION`).
    pub const PROTOBUF_INTRODUCTION: MumbleVersion = MumbleVersion::new(1, 5, 0);

    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        MumbleVersion {
            major,
            minor,
            patch,
        }
    }

    pub const fn from_v2(v: u64) -> Self {
        MumbleVersion::new((v >> 48) as u16, (v >> 32) as u16, (v >> 16) as u16)
    }

    pub const fn from_v1(v: u32) -> Self {
        MumbleVersion::new(
            (v >> 16) as u16,
            ((v >> 8) & 0xFF) as u16,
            (v & 0xFF) as u16,
        )
    }

    pub const fn v2(self) -> u64 {
        (self.major as u64) << 48 | (self.minor as u64) << 32 | (self.patch as u64) << 16
    }

    /// The legacy encoding; minor and patch saturate at 255, as Mumble's
    /// `toLegacyVersion` does.
    pub const fn v1(self) -> u32 {
        let minor = if self.minor > 0xFF {
            0xFF
        } else {
            self.minor as u32
        };
        let patch = if self.patch > 0xFF {
            0xFF
        } else {
            self.patch as u32
        };
        (self.major as u32) << 16 | minor << 8 | patch
    }

    /// The version a `Version` message announces: `version_v2` if present,
    /// else `version_v1`, as Mumble's `MumbleProto::getVersion` reads it.
    pub fn of(v: &Version) -> Option<Self> {
        match (v.version_v2, v.version) {
            (Some(v2), _) => Some(MumbleVersion::from_v2(v2)),
            (None, Some(v1)) => Some(MumbleVersion::from_v1(v1)),
            (None, None) => None,
        }
    }
}

impl std::fmt::Display for MumbleVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// (major, minor, patch) of a server's Version message, preferring the 1.5 field.
pub fn server_version(v: &Version) -> Option<(u64, u64, u64)> {
    if let Some(v2) = v.version_v2 {
        return Some((v2 >> 48, (v2 >> 32) & 0xFFFF, (v2 >> 16) & 0xFFFF));
    }
    v.version.map(|v1| {
        (
            u64::from(v1 >> 16),
            u64::from((v1 >> 8) & 0xFF),
            u64::from(v1 & 0xFF),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_bytes_match_the_proto() {
        // field 1 varint 0x10304, field 2 "x".
        let v = Version {
            version: Some(version_v1(1, 3, 4)),
            release: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            v.encode_to_vec(),
            [0x08, 0x84, 0x86, 0x04, 0x12, 0x01, b'x']
        );
        // Authenticate.opus is field 5, bool.
        let a = Authenticate {
            username: Some("u".into()),
            opus: Some(true),
            ..Default::default()
        };
        assert_eq!(a.encode_to_vec(), [0x0A, 0x01, b'u', 0x28, 0x01]);
        // TextMessage.session is non-packed (proto2) field 2.
        let t = TextMessage {
            session: vec![3],
            message: "hi".into(),
            ..Default::default()
        };
        assert_eq!(t.encode_to_vec(), [0x10, 0x03, 0x2A, 0x02, b'h', b'i']);
    }

    #[test]
    fn versions() {
        let v = Version {
            version: Some(0x0001_0304),
            ..Default::default()
        };
        assert_eq!(server_version(&v), Some((1, 3, 4)));
        let v = Version {
            version: Some(0x0001_0500),
            version_v2: Some(1 << 48 | 5 << 32 | 700 << 16),
            ..Default::default()
        };
        assert_eq!(server_version(&v), Some((1, 5, 700)));
    }

    #[test]
    fn version_encodings() {
        let v = MumbleVersion::new(1, 5, 735);
        // 1 << 48 | 5 << 32 | 735 << 16
        assert_eq!(v.v2(), 0x0001_0005_02DF_0000);
        assert_eq!(MumbleVersion::from_v2(v.v2()), v);
        // Patch 735 does not fit the legacy byte: saturates like toLegacyVersion.
        assert_eq!(v.v1(), 0x0001_05FF);
        assert_eq!(MumbleVersion::new(1, 3, 4).v1(), 0x0001_0304);
        assert_eq!(
            MumbleVersion::from_v1(0x0001_0304),
            MumbleVersion::new(1, 3, 4)
        );
        assert!(MumbleVersion::new(1, 4, 287) < MumbleVersion::PROTOBUF_INTRODUCTION);
        assert!(MumbleVersion::new(1, 6, 0) > MumbleVersion::PROTOBUF_INTRODUCTION);
        assert!(MumbleVersion::new(2, 0, 0) > MumbleVersion::new(1, 255, 255));
        assert_eq!(MumbleVersion::new(1, 5, 0).to_string(), "1.5.0");
        // version_v2 wins over version_v1; either alone works; neither is None.
        let msg = |v1, v2| Version {
            version: v1,
            version_v2: v2,
            ..Default::default()
        };
        assert_eq!(
            MumbleVersion::of(&msg(Some(0x0001_0500), Some(1 << 48 | 6 << 32))),
            Some(MumbleVersion::new(1, 6, 0))
        );
        assert_eq!(
            MumbleVersion::of(&msg(Some(0x0001_0404), None)),
            Some(MumbleVersion::new(1, 4, 4))
        );
        assert_eq!(MumbleVersion::of(&msg(None, None)), None);
        // version_v2 is field 5, uint64 varint: key 0x28.
        let bytes = msg(None, Some(MumbleVersion::new(1, 5, 0).v2())).encode_to_vec();
        assert_eq!(bytes, [0x28, 0x80, 0x80, 0x80, 0x80, 0xD0, 0x80, 0x40]);
    }

    #[test]
    fn all_known_types_map() {
        for v in 0..=26u16 {
            assert_eq!(MessageType::from_u16(v).map(|t| t as u16), Some(v));
        }
        assert_eq!(MessageType::from_u16(27), None);
    }
}
