//! Value types that config keys parse into. Each parser returns the reason a user
//! should read, so validation can attach it to the key it came from.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use walkie_endpoint::Talker;

/// A token or password. `Debug` and `Display` print `***` so a secret cannot reach a
/// log line or an error message by accident; `expose` is the one way to read it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares without an early exit on the first differing byte, so the time taken
    /// does not tell an attacker how much of a guessed token was right.
    pub fn matches(&self, candidate: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), candidate.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The kind half of an endpoint address such as `mumble.ops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EndpointKind {
    Mumble,
    Mqtt,
    Radio,
    SvxReflector,
}

impl EndpointKind {
    pub const ALL: [EndpointKind; 4] = [Self::Mumble, Self::Mqtt, Self::Radio, Self::SvxReflector];

    /// The config table this kind lives in, and the prefix of its addresses.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mumble => "mumble",
            Self::Mqtt => "mqtt",
            Self::Radio => "radio",
            Self::SvxReflector => "svxreflector",
        }
    }
}

impl fmt::Display for EndpointKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An endpoint address, `kind.name`, as written in `[[channel]] endpoints`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointId {
    pub kind: EndpointKind,
    pub name: String,
}

impl EndpointId {
    pub fn new(kind: EndpointKind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.name)
    }
}

impl FromStr for EndpointId {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((kind, name)) = s.split_once('.') else {
            return Err(format!(
                "{s:?} is not an endpoint address: expected \"kind.name\", e.g. \"mumble.ops\""
            ));
        };
        let kind = EndpointKind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind)
            .ok_or_else(|| {
                format!("{s:?}: unknown endpoint kind {kind:?}, expected mumble, mqtt, radio or svxreflector")
            })?;
        check_endpoint_name(name).map_err(|reason| format!("{s:?}: {reason}"))?;
        Ok(Self::new(kind, name))
    }
}

/// Endpoint names end up in environment variable names (which the `config` crate
/// lowercases) and in puppet user IDs (whose localparts are lowercase), so only
/// lowercase letters, digits, `_` and `-` are accepted.
pub(crate) fn check_endpoint_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the endpoint name is empty".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    {
        return Err(format!(
            "endpoint name {name:?} may only contain lowercase letters, digits, '_' and '-'"
        ));
    }
    Ok(())
}

/// A Matrix room as a channel names it: an alias to resolve, or a room ID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RoomRef {
    /// `#local:server`
    Alias(String),
    /// `!opaque:server`, or `!opaque` alone: room version 12 IDs carry no server name.
    Id(String),
}

impl RoomRef {
    pub fn as_str(&self) -> &str {
        match self {
            Self::Alias(s) | Self::Id(s) => s,
        }
    }
}

impl fmt::Display for RoomRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoomRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const HINT: &str = "expected a room alias \"#name:server\" or a room ID \"!id:server\"";
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{s:?} contains whitespace; {HINT}"));
        }
        if s.len() > 255 {
            return Err("longer than the 255 bytes Matrix allows".into());
        }
        if let Some(rest) = s.strip_prefix('#') {
            let Some((local, server)) = rest.split_once(':') else {
                return Err(format!("{s:?} has no server name; {HINT}"));
            };
            if local.is_empty() {
                return Err(format!("{s:?} has an empty alias name; {HINT}"));
            }
            check_server_name(server).map_err(|r| format!("{s:?}: {r}"))?;
            return Ok(Self::Alias(s.to_owned()));
        }
        if let Some(rest) = s.strip_prefix('!') {
            let (opaque, server) = match rest.split_once(':') {
                Some((opaque, server)) => (opaque, Some(server)),
                None => (rest, None),
            };
            if opaque.is_empty() {
                return Err(format!("{s:?} has an empty room ID; {HINT}"));
            }
            if let Some(server) = server {
                check_server_name(server).map_err(|r| format!("{s:?}: {r}"))?;
            }
            return Ok(Self::Id(s.to_owned()));
        }
        Err(format!("{s:?}: {HINT}"))
    }
}

/// A Matrix server name: a DNS name, an IPv4 address or a bracketed IPv6 address,
/// with an optional port.
pub(crate) fn check_server_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("the server name is empty".into());
    }
    let (host, port) = split_host_port(s);
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p != 0 => {}
            _ => return Err(format!("{port:?} is not a port number")),
        }
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{host:?} is not an IPv6 address"));
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(format!("{host:?} is not a valid server name"))
    }
}

/// Splits `host:port`, leaving the colons inside a bracketed IPv6 literal alone.
fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        return match s.find(']') {
            Some(end) => match s[end + 1..].strip_prefix(':') {
                Some(port) => (&s[..=end], Some(port)),
                None => (s, None),
            },
            None => (s, None),
        };
    }
    match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    }
}

/// `host:port` of a TCP service: a Mumble server or a rigctld.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// DNS name or IP address; IPv6 without brackets.
    pub host: String,
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (host, port) = split_host_port(s);
        let Some(port) = port else {
            return Err(format!("{s:?} is not host:port (the port is missing)"));
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(format!("{s:?}: {port:?} is not a port number (1-65535)")),
        };
        let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Some(v6) => {
                v6.parse::<std::net::Ipv6Addr>()
                    .map_err(|_| format!("{s:?}: {v6:?} is not an IPv6 address"))?;
                v6
            }
            None => {
                let valid = !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
                if !valid {
                    return Err(format!("{s:?}: {host:?} is not a host name or IP address"));
                }
                host
            }
        };
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }
}

/// How a radio's transmitter is keyed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Ptt {
    #[default]
    Rts,
    Dtr,
    RtsDtr,
    /// Through hamlib's rigctld at `rigctld = "host:port"`.
    Rigctld,
    /// The radio keys itself on its own VOX when audio arrives.
    None,
}

impl FromStr for Ptt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "rts" => Self::Rts,
            "dtr" => Self::Dtr,
            "rts+dtr" => Self::RtsDtr,
            "rigctld" => Self::Rigctld,
            "none" => Self::None,
            _ => {
                return Err(format!(
                    "{s:?} is not a PTT method: expected \"rts\", \"dtr\", \"rts+dtr\", \
                     \"rigctld\" or \"none\""
                ))
            }
        })
    }
}

impl TryFrom<String> for Ptt {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl Ptt {
    /// Whether keying drives a modem line of the serial `port`.
    pub fn uses_serial_line(self) -> bool {
        matches!(self, Self::Rts | Self::Dtr | Self::RtsDtr)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rts => "rts",
            Self::Dtr => "dtr",
            Self::RtsDtr => "rts+dtr",
            Self::Rigctld => "rigctld",
            Self::None => "none",
        }
    }
}

/// A serial modem-status line that can carry a receiver's carrier-operated squelch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CosLine {
    Cts,
    Dsr,
    Dcd,
}

impl CosLine {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cts => "cts",
            Self::Dsr => "dsr",
            Self::Dcd => "dcd",
        }
    }
}

/// Receive detection. An enum rather than a `{source, invert}` pair so that an
/// inverted VOX (`"!vox"`), which means nothing, cannot be represented.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Cos {
    /// A modem-status line; `active_low` when written with a `!` prefix.
    Line { line: CosLine, active_low: bool },
    /// Audio level on `audio_in` (`vox_*` keys).
    #[default]
    Vox,
    /// rigctld's DCD query.
    Rigctld,
}

impl Cos {
    pub fn uses_serial_line(self) -> bool {
        matches!(self, Self::Line { .. })
    }
}

impl fmt::Display for Cos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Line { line, active_low } => {
                write!(f, "{}{}", if *active_low { "!" } else { "" }, line.as_str())
            }
            Self::Vox => f.write_str("vox"),
            Self::Rigctld => f.write_str("rigctld"),
        }
    }
}

impl FromStr for Cos {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (active_low, name) = match s.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let line = match name {
            "cts" => CosLine::Cts,
            "dsr" => CosLine::Dsr,
            "dcd" => CosLine::Dcd,
            "vox" | "rigctld" if active_low => {
                return Err(format!(
                    "{s:?}: only a serial line (cts, dsr, dcd) can be inverted with '!'"
                ))
            }
            "vox" => return Ok(Self::Vox),
            "rigctld" => return Ok(Self::Rigctld),
            _ => {
                return Err(format!(
                    "{s:?} is not a receive detector: expected cts, dsr, dcd (optionally \
                     inverted as \"!cts\"), vox or rigctld"
                ))
            }
        };
        Ok(Self::Line { line, active_low })
    }
}

impl TryFrom<String> for Cos {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

/// The MQTT audio payload format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Payload {
    /// Opus packets, 48 kHz mono, 20 ms — passed through untouched.
    #[default]
    Opus,
    /// Signed 16-bit little-endian PCM at 16 kHz, for microcontrollers.
    Pcm16,
}

impl TryFrom<String> for Payload {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "opus" => Ok(Self::Opus),
            "pcm16" => Ok(Self::Pcm16),
            _ => Err(format!(
                "{s:?} is not a payload format: expected \"opus\" or \"pcm16\""
            )),
        }
    }
}

/// A Matrix user ID pattern for `transmit_allow`, with Matrix's glob syntax (as in
/// server ACLs): `*` matches any run of characters, `?` exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserGlob(String);

impl UserGlob {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, user_id: &str) -> bool {
        glob_match(self.0.as_bytes(), user_id.as_bytes())
    }
}

impl fmt::Display for UserGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UserGlob {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        const HINT: &str = "expected a user ID like \"@alice:example.org\", \
                            optionally with * or ? (\"@*:example.org\")";
        let Some(rest) = s.strip_prefix('@') else {
            return Err(format!("{s:?} does not start with '@'; {HINT}"));
        };
        let Some((local, server)) = rest.split_once(':') else {
            return Err(format!("{s:?} has no ':server' part; {HINT}"));
        };
        if local.is_empty() || server.is_empty() {
            return Err(format!("{s:?}: {HINT}"));
        }
        // Historical user IDs allow any printable ASCII in the localpart, so only
        // what can never occur in a user ID is refused here.
        if let Some(c) = s.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!("{s:?} contains {c:?}; {HINT}"));
        }
        let server_ok = server
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]*?".contains(c));
        if !server_ok {
            return Err(format!("{s:?}: {server:?} is not a server name pattern"));
        }
        Ok(Self(s.to_owned()))
    }
}

/// One `transmit_allow` entry: who may key a radio.
///
/// `@alice:example.org` / `@*:example.org` match Matrix users (their live talk and
/// voice messages); `mumble.ops` matches every talker of that endpoint, guests
/// included. A named talker (`mumble.ops/n0call`) matches only a name something
/// vouches for: on Mumble a registered user's registered name, never a guest's
/// (DESIGN.md §4 "Trust model"). `mumble.ops/#42` is the registered user with id 42,
/// `mumble.ops/cert:<40 hex digits>` whoever holds that client certificate.
/// `*` and `?` work in both halves of the endpoint form too (`mqtt.*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransmitAllow {
    Matrix(UserGlob),
    Endpoint {
        endpoint: String,
        talker: Option<TalkerPattern>,
    },
}

/// The part after `/` of an endpoint entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TalkerPattern {
    /// A name (glob) that something vouches for; never an unverified one.
    Name(String),
    /// An account registered on the endpoint's server, by its id there.
    RegisteredId(u32),
    /// A client certificate the server checked, by its SHA-1 (lower-case hex).
    Certificate(String),
}

impl TalkerPattern {
    fn matches(&self, talker: &Talker) -> bool {
        match self {
            Self::Name(glob) => {
                talker.identity.name_is_verified()
                    && glob_match(glob.as_bytes(), talker.name.as_bytes())
            }
            Self::RegisteredId(id) => talker.identity.registered_user_id() == Some(*id),
            Self::Certificate(hash) => talker
                .identity
                .certificate()
                .is_some_and(|c| c.eq_ignore_ascii_case(hash)),
        }
    }
}

impl fmt::Display for TalkerPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::RegisteredId(id) => write!(f, "#{id}"),
            Self::Certificate(hash) => write!(f, "cert:{hash}"),
        }
    }
}

impl TransmitAllow {
    /// Whether `talker`, talking on `endpoint`, is covered by this entry.
    pub fn matches(&self, endpoint: &str, talker: &Talker) -> bool {
        match self {
            Self::Matrix(glob) => talker
                .matrix_user_id
                .as_deref()
                .is_some_and(|user| glob.matches(user)),
            Self::Endpoint {
                endpoint: pattern,
                talker: wanted,
            } => {
                glob_match(pattern.as_bytes(), endpoint.as_bytes())
                    && wanted.as_ref().is_none_or(|w| w.matches(talker))
            }
        }
    }
}

impl fmt::Display for TransmitAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Matrix(glob) => glob.fmt(f),
            Self::Endpoint {
                endpoint,
                talker: None,
            } => f.write_str(endpoint),
            Self::Endpoint {
                endpoint,
                talker: Some(talker),
            } => write!(f, "{endpoint}/{talker}"),
        }
    }
}

fn talker_pattern(entry: &str, kind: &str, talker: &str) -> Result<TalkerPattern, String> {
    const HINT: &str = "expected a name (\"mumble.ops/n0call\", registered users only), a \
                        registered user id (\"mumble.ops/#42\") or a certificate hash \
                        (\"mumble.ops/cert:<sha1>\")";
    if talker.is_empty() || talker.chars().any(char::is_control) {
        return Err(format!("{entry:?}: the talker after '/' is empty; {HINT}"));
    }
    if kind == "mqtt" {
        // The broker's ACL on the prefix is what vouches for an MQTT talker; any
        // client allowed to publish there can use any device id.
        let endpoint = entry.split_once('/').map_or(entry, |(e, _)| e);
        return Err(format!(
            "{entry:?}: MQTT device ids are labels any client that may publish under the \
             prefix can choose, so an entry cannot name one; the broker's ACL on the prefix \
             is what vouches: list the endpoint ({endpoint:?})"
        ));
    }
    if let Some(id) = talker.strip_prefix('#') {
        return id.parse().map(TalkerPattern::RegisteredId).map_err(|_| {
            format!("{entry:?}: a registered user id is a number (\"mumble.ops/#42\")")
        });
    }
    if let Some(hash) = talker.strip_prefix("cert:") {
        if hash.len() != 40 || !hash.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(format!(
                "{entry:?}: a certificate hash is 40 hex digits (the SHA-1 Mumble shows in \
                 a user's information)"
            ));
        }
        return Ok(TalkerPattern::Certificate(hash.to_ascii_lowercase()));
    }
    Ok(TalkerPattern::Name(talker.to_owned()))
}

impl FromStr for TransmitAllow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with('@') {
            return s.parse().map(Self::Matrix);
        }
        const HINT: &str = "expected a Matrix user ID or glob (\"@alice:example.org\", \"@*:example.org\") \
                            or an endpoint with an optional talker (\"mumble.ops\", \"mumble.ops/alice\")";
        let (endpoint, talker) = match s.split_once('/') {
            Some((endpoint, talker)) => (endpoint, Some(talker)),
            None => (s, None),
        };
        let Some((kind, name)) = endpoint.split_once('.') else {
            return Err(format!(
                "{s:?} is neither a Matrix user ID nor an endpoint; {HINT}"
            ));
        };
        let name_ok = |part: &str| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-*?".contains(c))
        };
        if !name_ok(kind) || !name_ok(name) {
            return Err(format!(
                "{s:?}: {endpoint:?} is not an endpoint name pattern; {HINT}"
            ));
        }
        Ok(Self::Endpoint {
            endpoint: endpoint.to_owned(),
            talker: talker.map(|t| talker_pattern(s, kind, t)).transpose()?,
        })
    }
}

/// Iterative glob match with single-star backtracking: linear in practice, no
/// recursion for a hostile pattern to blow up.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use walkie_endpoint::Identity;

    #[test]
    fn secret_is_masked_in_debug_and_display() {
        let s = Secret::new("hunter2-token");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(s.expose(), "hunter2-token");
        assert!(s.matches("hunter2-token"));
        assert!(!s.matches("hunter2-tokeN"));
        assert!(!s.matches("hunter2"));
    }

    #[test]
    fn endpoint_ids_parse_and_print() {
        let id: EndpointId = "radio.uhf".parse().unwrap();
        assert_eq!(id, EndpointId::new(EndpointKind::Radio, "uhf"));
        assert_eq!(id.to_string(), "radio.uhf");
        assert!("uhf".parse::<EndpointId>().is_err());
        assert!("xmpp.uhf".parse::<EndpointId>().is_err());
        assert!("radio.".parse::<EndpointId>().is_err());
        assert!("radio.UHF".parse::<EndpointId>().is_err());
    }

    #[test]
    fn rooms() {
        assert!(matches!("#ops:example.org".parse(), Ok(RoomRef::Alias(_))));
        assert!(matches!("!abc:example.org".parse(), Ok(RoomRef::Id(_))));
        assert!(matches!("!abcDEF123".parse(), Ok(RoomRef::Id(_))));
        assert!(matches!("#ops:[::1]:8448".parse(), Ok(RoomRef::Alias(_))));
        for bad in [
            "ops",
            "#ops",
            "#:example.org",
            "!",
            "#ops:exa mple.org",
            "@u:x",
        ] {
            assert!(bad.parse::<RoomRef>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn host_ports() {
        let hp: HostPort = "mumble.example.org:64738".parse().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("mumble.example.org", 64738));
        let v6: HostPort = "[::1]:4532".parse().unwrap();
        assert_eq!(v6.host, "::1");
        assert_eq!(v6.to_string(), "[::1]:4532");
        for bad in [
            "mumble.example.org",
            "host:0",
            "host:99999",
            ":80",
            "[::1]",
            "a b:1",
        ] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cos_parses_inversion_only_for_lines() {
        assert_eq!(
            "!dcd".parse::<Cos>(),
            Ok(Cos::Line {
                line: CosLine::Dcd,
                active_low: true
            })
        );
        assert_eq!(
            "cts".parse::<Cos>(),
            Ok(Cos::Line {
                line: CosLine::Cts,
                active_low: false
            })
        );
        assert_eq!("vox".parse::<Cos>(), Ok(Cos::Vox));
        assert_eq!("rigctld".parse::<Cos>(), Ok(Cos::Rigctld));
        assert!("!vox".parse::<Cos>().is_err());
        assert!("ri".parse::<Cos>().is_err());
        assert_eq!(
            "!dsr".parse::<Cos>().map(|c| c.to_string()).unwrap(),
            "!dsr"
        );
    }

    #[test]
    fn transmit_allow_entries() {
        let matrix_user = Talker {
            matrix_user_id: Some("@bob:example.org".into()),
            ..Talker::new("@bob:example.org", "bob")
        };
        let matrix: TransmitAllow = "@*:example.org".parse().unwrap();
        assert!(matrix.matches("live.ops", &matrix_user));
        assert!(!matrix.matches("mumble.ops", &Talker::new("@bob:example.org", "x")));
        let guest = Talker::unverified("alice", "alice (Mumble)");
        let endpoint: TransmitAllow = "mumble.ops".parse().unwrap();
        assert!(endpoint.matches("mumble.ops", &guest));
        assert!(!endpoint.matches("mumble.ops2", &guest));
        let registered =
            Talker::new("alice", "alice (Mumble)").with_identity(Identity::Registered {
                user_id: 42,
                certificate: Some("ab".repeat(20)),
            });
        let talker: TransmitAllow = "mumble.*/al?ce".parse().unwrap();
        assert!(talker.matches("mumble.hq", &registered));
        assert!(
            !talker.matches("mumble.hq", &guest),
            "a guest's name is no identity"
        );
        assert!(!talker.matches("mumble.hq", &Talker::new("bob", "bob")));
        assert!(!talker.matches("mqtt.hq", &registered));
        let by_id: TransmitAllow = "mumble.ops/#42".parse().unwrap();
        assert!(by_id.matches("mumble.ops", &registered));
        assert!(!by_id.matches("mumble.ops", &guest));
        let by_cert: TransmitAllow = format!("mumble.ops/cert:{}", "AB".repeat(20))
            .parse()
            .unwrap();
        assert!(by_cert.matches("mumble.ops", &registered));
        let guest_with_cert = Talker::unverified("x", "x").with_identity(Identity::Unverified {
            certificate: Some("ab".repeat(20)),
        });
        assert!(by_cert.matches("mumble.ops", &guest_with_cert));
        assert!(!by_cert.matches("mumble.ops", &guest));
        assert_eq!(
            by_cert.to_string(),
            format!("mumble.ops/cert:{}", "ab".repeat(20))
        );
        assert_eq!(by_id.to_string(), "mumble.ops/#42");
        for bad in [
            "alice",
            "Mumble.ops",
            "mumble.",
            "mumble.ops/",
            "@alice",
            "mqtt.lobby/door",
            "mumble.ops/#-1",
            "mumble.ops/cert:abc",
        ] {
            assert!(bad.parse::<TransmitAllow>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn user_globs() {
        let g: UserGlob = "@*:example.org".parse().unwrap();
        assert!(g.matches("@alice:example.org"));
        assert!(!g.matches("@alice:example.org.evil"));
        let g: UserGlob = "@k?abc:*".parse().unwrap();
        assert!(g.matches("@k1abc:radio.example"));
        assert!(!g.matches("@k12abc:radio.example"));
        for bad in ["alice", "@alice", "@:x", "@a b:x", "@a:ex/ample"] {
            assert!(bad.parse::<UserGlob>().is_err(), "{bad} accepted");
        }
    }
}
