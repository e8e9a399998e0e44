//! Raw file → typed [`Config`], collecting every error instead of stopping at the
//! first, so one `check-config` run shows everything there is to fix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use url::Url;
use walkie_endpoint::audio::EncoderSettings;
use walkie_endpoint::Priority;

use crate::archive::WaveformSource;

use super::error::{ConfigError, Warning};
use super::schema::{
    RawAppservice, RawArchive, RawChannel, RawConfig, RawDatabase, RawEncryption, RawFloor,
    RawHomeserver, RawHttp, RawLive, RawLogging, RawMqtt, RawMumble, RawRadio, RawStatus,
    RawSvxReflector,
};
use super::types::{
    check_endpoint_name, check_server_name, Cos, HostPort, Ptt, RoomRef, Secret, TransmitAllow,
};
use super::{
    AppserviceConfig, ArchiveConfig, Broker, ChannelConfig, Config, DatabaseConfig,
    EncryptionConfig, EndpointId, EndpointKind, EndpointSpec, FloorConfig, HomeserverConfig,
    HttpConfig, LiveConfig, LiveLimits, LoggingConfig, MqttConfig, MumbleConfig, RadioConfig,
    Resource, StatusConfig, SvxReflectorConfig, VoxConfig,
};

/// Endpoint tables as found: `declared` includes those that failed validation, so a
/// channel naming one is not told it does not exist.
#[derive(Default)]
struct Endpoints {
    declared: BTreeSet<EndpointId>,
    valid: BTreeMap<EndpointId, EndpointSpec>,
}

struct Report<'a> {
    file: &'a Path,
    errors: Vec<ConfigError>,
    warnings: Vec<Warning>,
}

impl Report<'_> {
    fn error(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            key: Some(key.into()),
            reason: reason.into(),
        });
    }

    fn warn(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(Warning {
            file: self.file.to_owned(),
            key: key.into(),
            message: message.into(),
        });
    }

    /// Records a failed parse under `key`; `None` then stands for "already reported".
    fn check<T>(&mut self, key: impl Into<String>, result: Result<T, String>) -> Option<T> {
        result.map_err(|reason| self.error(key, reason)).ok()
    }

    fn in_range(&mut self, key: &str, value: u64, range: RangeInclusive<u64>, unit: &str) -> u64 {
        if !range.contains(&value) {
            let why = if value == 0 {
                "must not be 0".to_owned()
            } else {
                format!("{value} {unit} is out of range")
            };
            self.error(
                key,
                format!("{why}: expected {}..={} {unit}", range.start(), range.end()),
            );
        }
        value
    }

    fn millis(&mut self, key: &str, value: u64, range: RangeInclusive<u64>) -> Duration {
        Duration::from_millis(self.in_range(key, value, range, "ms"))
    }

    fn secs(&mut self, key: &str, value: u64, range: RangeInclusive<u64>) -> Duration {
        Duration::from_secs(self.in_range(key, value, range, "s"))
    }

    fn non_empty(&mut self, key: &str, value: &str) {
        if value.trim().is_empty() {
            self.error(key, "must not be empty");
        }
    }
}

pub(crate) fn validate(
    raw: RawConfig,
    file: &Path,
) -> Result<(Config, Vec<Warning>), Vec<ConfigError>> {
    let mut r = Report {
        file,
        errors: Vec::new(),
        warnings: Vec::new(),
    };

    let homeserver = homeserver(&mut r, raw.homeserver);
    let appservice = appservice(&mut r, raw.appservice);
    let database = database(&mut r, raw.database);
    let floor = floor(&mut r, raw.floor);
    let archive = archive(&mut r, raw.archive);
    let logging = logging(&mut r, raw.logging);
    let status = status(&mut r, raw.status);
    let live = live(&mut r, raw.live, homeserver.as_ref().map(|h| &h.url));
    let http = http(&mut r, raw.http);
    let encryption = encryption(&mut r, raw.encryption);

    let mut endpoints = Endpoints::default();
    for (name, m) in raw.mumble {
        endpoint(
            &mut r,
            &mut endpoints,
            EndpointKind::Mumble,
            name,
            |r, key| mumble(r, key, m).map(EndpointSpec::Mumble),
        );
    }
    let mut brokers = MqttClaims::default();
    for (name, m) in raw.mqtt {
        endpoint(
            &mut r,
            &mut endpoints,
            EndpointKind::Mqtt,
            name,
            |r, key| mqtt(r, key, m, &mut brokers).map(EndpointSpec::Mqtt),
        );
    }
    let mut claims = HashMap::new();
    for (name, radio_raw) in raw.radio {
        endpoint(
            &mut r,
            &mut endpoints,
            EndpointKind::Radio,
            name,
            |r, key| {
                let radio = radio(r, key, radio_raw)?;
                claim_resources(r, key, &radio, &mut claims);
                if let Some(floor) = &floor {
                    if radio.tx_timeout < floor.max_talk {
                        r.warn(
                            format!("{key}.tx_timeout_s"),
                            format!(
                                "{} s is shorter than floor.max_talk_s ({} s): long transmissions \
                             will be cut off on the radio before the floor ends them",
                                radio.tx_timeout.as_secs(),
                                floor.max_talk.as_secs()
                            ),
                        );
                    }
                }
                Some(EndpointSpec::Radio(radio))
            },
        );
    }

    for (name, raw) in raw.svxreflector {
        endpoint(
            &mut r,
            &mut endpoints,
            EndpointKind::SvxReflector,
            name,
            |r, key| svxreflector(r, key, raw).map(EndpointSpec::SvxReflector),
        );
    }

    let channels = channels(&mut r, raw.channel, &endpoints);

    match (
        homeserver, appservice, database, floor, archive, logging, status, live, http, encryption,
    ) {
        (
            Some(homeserver),
            Some(appservice),
            Some(database),
            Some(floor),
            Some(archive),
            Some(logging),
            Some(status),
            Some(live),
            Some(http),
            Some(encryption),
        ) if r.errors.is_empty() => {
            let config = Config {
                homeserver,
                appservice,
                database,
                floor,
                archive,
                logging,
                status,
                live,
                http,
                encryption,
                channels,
                endpoints: endpoints.valid,
            };
            Ok((config, r.warnings))
        }
        _ => {
            if r.errors.is_empty() {
                // A section came back empty without saying why: a validator bug, but
                // the user still deserves an answer rather than a panic.
                r.errors.push(ConfigError {
                    file: file.to_owned(),
                    key: None,
                    reason: "the configuration could not be validated (internal error)".into(),
                });
            }
            Err(r.errors)
        }
    }
}

fn http_url(key: &str, s: &str) -> Result<Url, String> {
    let url = Url::parse(s).map_err(|e| format!("{s:?} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{s:?}: the scheme must be http or https, not {:?}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{s:?} has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("{key} must not contain credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{s:?} must not have a query or fragment"));
    }
    Ok(url)
}

fn homeserver(r: &mut Report, raw: RawHomeserver) -> Option<HomeserverConfig> {
    let url = r.check("homeserver.url", http_url("homeserver.url", &raw.url));
    let domain = r.check(
        "homeserver.domain",
        check_server_name(&raw.domain).map(|()| raw.domain.clone()),
    );
    Some(HomeserverConfig {
        url: url?,
        domain: domain?,
    })
}

/// Localparts of new Matrix user IDs: lowercase letters, digits and `._=-/+`.
fn check_localpart(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._=-/+".contains(*c)))
    {
        Some(c) => Err(format!(
            "{s:?} contains {c:?}; a Matrix localpart may only contain a-z, 0-9 and ._=-/+"
        )),
        None => Ok(()),
    }
}

fn appservice(r: &mut Report, raw: RawAppservice) -> Option<AppserviceConfig> {
    let listen = r.check(
        "appservice.listen",
        raw.listen.parse::<SocketAddr>().map_err(|_| {
            format!(
                "{:?} is not a socket address: expected IP:port, e.g. \"127.0.0.1:29333\"",
                raw.listen
            )
        }),
    );
    let url = match (&raw.url, listen) {
        (Some(url), _) => r.check("appservice.url", http_url("appservice.url", url)),
        (None, Some(listen)) => {
            if listen.ip().is_unspecified() {
                r.warn(
                    "appservice.listen",
                    format!(
                        "{listen} listens on every address; set appservice.url to the \
                         address the homeserver should use (the registration says http://{listen})"
                    ),
                );
            }
            r.check(
                "appservice.listen",
                Url::parse(&format!("http://{listen}")).map_err(|e| e.to_string()),
            )
        }
        (None, None) => None,
    };

    if raw.id.trim().is_empty() || raw.id.chars().any(char::is_whitespace) {
        r.error(
            "appservice.id",
            "must be non-empty and contain no whitespace",
        );
    }
    for (key, token) in [
        ("appservice.as_token", &raw.as_token),
        ("appservice.hs_token", &raw.hs_token),
    ] {
        if token.is_empty() {
            r.error(
                key,
                "is missing or empty: set a long random value (e.g. `openssl rand -hex 32`)",
            );
        } else if token
            .expose()
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            r.error(key, "must not contain whitespace or control characters");
        }
    }
    if !raw.as_token.is_empty() && raw.as_token == raw.hs_token {
        r.error(
            "appservice.hs_token",
            "must differ from as_token: with equal tokens anyone who learns one can \
             impersonate both the homeserver and the bridge",
        );
    }
    if let Err(reason) = check_localpart(&raw.bot_localpart) {
        r.error("appservice.bot_localpart", reason);
    }
    match check_localpart(&raw.puppet_prefix) {
        // An empty prefix would claim every user ID on the homeserver.
        Err(_) if raw.puppet_prefix.is_empty() => r.error(
            "appservice.puppet_prefix",
            "must not be empty: the bridge would claim every user on the homeserver",
        ),
        Err(reason) => r.error("appservice.puppet_prefix", reason),
        Ok(()) => {}
    }

    Some(AppserviceConfig {
        listen: listen?,
        url: url?,
        id: raw.id,
        as_token: raw.as_token,
        hs_token: raw.hs_token,
        bot_localpart: raw.bot_localpart,
        puppet_prefix: raw.puppet_prefix,
    })
}

fn database(r: &mut Report, raw: RawDatabase) -> Option<DatabaseConfig> {
    let ok = ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| raw.url.starts_with(p));
    if !ok {
        r.error(
            "database.url",
            format!(
                "{:?} is neither a sqlite: nor a postgres:// URL",
                redact_url(&raw.url)
            ),
        );
        return None;
    }
    Some(DatabaseConfig { url: raw.url })
}

/// Database URLs may carry a password; errors show the URL without it.
fn redact_url(s: &str) -> String {
    match Url::parse(s) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        _ => s.to_owned(),
    }
}

fn floor(r: &mut Report, raw: RawFloor) -> Option<FloorConfig> {
    let max_talk = r.secs("floor.max_talk_s", raw.max_talk_s, 1..=3600);
    let idle_release = r.millis("floor.idle_release_ms", raw.idle_release_ms, 100..=60_000);
    let hang = r.millis("floor.hang_ms", raw.hang_ms, 0..=10_000);
    let queue_max = if raw.queue {
        r.in_range("floor.queue_max", raw.queue_max, 1..=1000, "requests")
    } else {
        raw.queue_max.min(1000)
    };
    Some(FloorConfig {
        max_talk,
        idle_release,
        hang,
        queue: raw.queue,
        queue_max: usize::try_from(queue_max).ok()?,
    })
}

fn archive(r: &mut Report, raw: RawArchive) -> Option<ArchiveConfig> {
    if raw.spool_dir.as_os_str().is_empty() {
        r.error("archive.spool_dir", "must not be empty");
    }
    let min_archive = r.millis("archive.min_archive_ms", raw.min_archive_ms, 0..=10_000);
    let waveform = r.check(
        "archive.waveform",
        match raw.waveform.as_str() {
            "decoded" => Ok(WaveformSource::Decoded),
            "estimated" => Ok(WaveformSource::Estimated),
            other => Err(format!(
                "\"{other}\" is not a waveform source: expected \"decoded\" or \"estimated\""
            )),
        },
    );
    Some(ArchiveConfig {
        spool_dir: raw.spool_dir,
        min_archive,
        waveform: waveform?,
    })
}

fn logging(r: &mut Report, raw: RawLogging) -> Option<LoggingConfig> {
    r.check(
        "logging.level",
        tracing_subscriber::EnvFilter::try_new(&raw.level)
            .map(|_| LoggingConfig {
                level: raw.level.clone(),
            })
            .map_err(|e| {
                format!(
                    "{:?} is not a log filter (e.g. \"info\" or \"walkie_bridge=debug,info\"): {e}",
                    raw.level
                )
            }),
    )
}

fn status(r: &mut Report, raw: RawStatus) -> Option<StatusConfig> {
    let listen = raw.listen.trim();
    if listen.is_empty() {
        return Some(StatusConfig { listen: None });
    }
    let addr = r.check(
        "status.listen",
        listen.parse::<SocketAddr>().map_err(|e| {
            format!(
                "{listen:?} is not an IP:port (e.g. \"127.0.0.1:29334\"), or \"\" for none: {e}"
            )
        }),
    )?;
    if !addr.ip().is_loopback() {
        r.warn(
            "status.listen",
            format!(
                "{addr} is reachable from other machines: /status and /metrics need no login \
                 and show who talks when; put them behind a firewall or a proxy"
            ),
        );
    }
    Some(StatusConfig { listen: Some(addr) })
}

/// Both URLs default to `homeserver.url`; without a valid one there is nothing to
/// default to, and that error is already reported.
fn live(r: &mut Report, raw: RawLive, homeserver: Option<&Url>) -> Option<LiveConfig> {
    let limits = live_limits(r, &raw);
    let mut trusted_proxies = Vec::new();
    for proxy in &raw.trusted_proxies {
        match proxy.trim().parse::<std::net::IpAddr>() {
            Ok(address) => trusted_proxies.push(address),
            Err(_) => r.error(
                "live.trusted_proxies",
                format!("{proxy:?} is not an IP address (like \"127.0.0.1\" or \"::1\")"),
            ),
        }
    }
    let mut url = |key: &str, value: Option<String>| match value {
        Some(s) => r.check(key, http_url(key, &s)),
        None => homeserver.cloned(),
    };
    let homeserver_url = url("live.homeserver_url", raw.homeserver_url);
    let openid_url = url("live.openid_url", raw.openid_url);
    let max_clients = r.in_range("live.max_clients", raw.max_clients, 1..=10_000, "clients");
    Some(LiveConfig {
        enabled: raw.enabled,
        homeserver_url: homeserver_url?,
        openid_url: openid_url?,
        max_clients: usize::try_from(max_clients).ok()?,
        limits: limits?,
        trusted_proxies,
    })
}

fn http(r: &mut Report, raw: RawHttp) -> Option<HttpConfig> {
    let connections = |r: &mut Report, key: &str, value: u64| {
        usize::try_from(r.in_range(key, value, 1..=1_000_000, "connections")).ok()
    };
    let header_timeout = r.secs("http.header_timeout_s", raw.header_timeout_s, 1..=300);
    let max_connections = connections(r, "http.max_connections", raw.max_connections);
    let max_connections_per_ip =
        connections(r, "http.max_connections_per_ip", raw.max_connections_per_ip);
    let homeserver_connections =
        connections(r, "http.homeserver_connections", raw.homeserver_connections);
    let mut homeserver_addresses = Vec::new();
    for (i, address) in raw.homeserver_addresses.iter().enumerate() {
        match address.trim().parse::<std::net::IpAddr>() {
            Ok(address) => homeserver_addresses.push(address),
            Err(_) => r.error(
                format!("http.homeserver_addresses[{i}]"),
                format!(
                    "{address:?} is not an IP address (like \"127.0.0.1\" or \"::1\"); \
                     host names are not looked up, but homeserver.url's is, at start"
                ),
            ),
        }
    }
    Some(HttpConfig {
        header_timeout,
        max_connections: max_connections?,
        max_connections_per_ip: max_connections_per_ip?,
        homeserver_addresses,
        homeserver_connections: homeserver_connections?,
    })
}

fn encryption(r: &mut Report, raw: RawEncryption) -> Option<EncryptionConfig> {
    if raw.store_dir.as_os_str().is_empty() {
        r.error("encryption.store_dir", "must not be empty");
    }
    let passphrase = match raw.passphrase_file {
        None => None,
        Some(path) => passphrase(r, &path),
    };
    Some(EncryptionConfig {
        store_dir: raw.store_dir,
        passphrase,
    })
}

/// Reads `encryption.passphrase_file` now, so a missing or empty file stops the
/// start rather than the first encrypted room. One trailing newline (what an
/// editor or `echo` leaves) is not part of the passphrase.
fn passphrase(r: &mut Report, path: &Path) -> Option<Secret> {
    const KEY: &str = "encryption.passphrase_file";
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            r.error(KEY, format!("cannot read {}: {e}", path.display()));
            return None;
        }
    };
    let text = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if text.trim().is_empty() {
        r.error(KEY, format!("{} is empty", path.display()));
        return None;
    }
    if text.chars().count() < 16 {
        r.warn(
            KEY,
            format!(
                "the passphrase in {} has fewer than 16 characters",
                path.display()
            ),
        );
    }
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                r.warn(
                    KEY,
                    format!(
                        "{} can be read by other users (mode {:o}); chmod 600 it",
                        path.display(),
                        meta.permissions().mode() & 0o777
                    ),
                );
            }
        }
    }
    Some(Secret::new(text))
}

fn live_limits(r: &mut Report, raw: &RawLive) -> Option<LiveLimits> {
    let connections = |r: &mut Report, key: &str, value: u64| {
        usize::try_from(r.in_range(key, value, 1..=1_000_000, "connections")).ok()
    };
    let count = |r: &mut Report, key: &str, value: u64, unit: &str| {
        u32::try_from(r.in_range(key, value, 1..=1_000_000, unit)).ok()
    };
    let max_connections = connections(r, "live.max_connections", raw.max_connections);
    let max_connections_per_ip =
        connections(r, "live.max_connections_per_ip", raw.max_connections_per_ip);
    let logon_timeout = r.secs("live.logon_timeout_s", raw.logon_timeout_s, 1..=300);
    let ping_interval = r.secs("live.ping_interval_s", raw.ping_interval_s, 1..=300);
    let idle_timeout = r.secs("live.idle_timeout_s", raw.idle_timeout_s, 2..=3600);
    if idle_timeout <= ping_interval {
        r.error(
            "live.idle_timeout_s",
            format!(
                "must be longer than live.ping_interval_s ({} s): a client answers pings",
                ping_interval.as_secs()
            ),
        );
    }
    Some(LiveLimits {
        max_connections: max_connections?,
        max_connections_per_ip: max_connections_per_ip?,
        logon_timeout,
        ping_interval,
        idle_timeout,
        max_failed_logons: count(r, "live.max_failed_logons", raw.max_failed_logons, "logons")?,
        max_failed_logons_per_ip: count(
            r,
            "live.max_failed_logons_per_ip",
            raw.max_failed_logons_per_ip,
            "logons",
        )?,
        max_presses_per_minute: count(
            r,
            "live.max_presses_per_minute",
            raw.max_presses_per_minute,
            "presses",
        )?,
    })
}

fn endpoint(
    r: &mut Report,
    endpoints: &mut Endpoints,
    kind: EndpointKind,
    name: String,
    build: impl FnOnce(&mut Report, &str) -> Option<EndpointSpec>,
) {
    let key = format!("{kind}.{name}");
    if let Err(reason) = check_endpoint_name(&name) {
        r.error(&key, reason);
        return;
    }
    let id = EndpointId::new(kind, name);
    endpoints.declared.insert(id.clone());
    if let Some(spec) = build(r, &key) {
        endpoints.valid.insert(id, spec);
    }
}

/// The reflector refuses a login frame over 64 bytes, which leaves 38 for the
/// callsign (docs/protocols/svxreflector.md §1.2).
const SVX_CALLSIGN_MAX: usize = 38;

fn svxreflector(r: &mut Report, key: &str, raw: RawSvxReflector) -> Option<SvxReflectorConfig> {
    let server = r.check(
        format!("{key}.server"),
        raw.server
            .parse::<HostPort>()
            .map_err(|e| format!("{e}; expected host:port, e.g. \"reflector.example.org:5300\"")),
    );
    r.non_empty(&format!("{key}.callsign"), &raw.callsign);
    if raw.callsign.len() > SVX_CALLSIGN_MAX {
        r.error(
            format!("{key}.callsign"),
            format!("is longer than the reflector's limit of {SVX_CALLSIGN_MAX} bytes"),
        );
    }
    if raw.auth_key.is_empty() {
        r.error(
            format!("{key}.auth_key"),
            "is empty: the key the reflector's sysop gave for this callsign",
        );
    }
    if raw.talkgroup == Some(0) {
        r.error(
            format!("{key}.talkgroup"),
            "0 is no talkgroup on a reflector (nothing is heard there); remove the key for a \
             reflector without talkgroups",
        );
    }
    let (transmit_allow, transmit_min_power_level) =
        transmit_permissions(r, key, &raw.transmit_allow, raw.transmit_min_power_level);
    Some(SvxReflectorConfig {
        server: server?,
        callsign: raw.callsign,
        auth_key: raw.auth_key,
        talkgroup: raw.talkgroup,
        transmit_allow: transmit_allow?,
        transmit_min_power_level,
    })
}

/// `transmit_allow` and `transmit_min_power_level`, as a radio and a reflector
/// node have them. `None` allow list: an entry was reported.
fn transmit_permissions(
    r: &mut Report,
    key: &str,
    allow: &[String],
    min_power_level: Option<i64>,
) -> (Option<Vec<TransmitAllow>>, Option<i64>) {
    let transmit_allow: Vec<Option<TransmitAllow>> = allow
        .iter()
        .enumerate()
        .map(|(i, g)| r.check(format!("{key}.transmit_allow[{i}]"), g.parse()))
        .collect();
    // Matrix power levels are JSON integers within ±(2^53 - 1).
    const MAX_POWER: i64 = (1 << 53) - 1;
    if let Some(level) = min_power_level {
        if !(-MAX_POWER..=MAX_POWER).contains(&level) {
            r.error(
                format!("{key}.transmit_min_power_level"),
                format!("{level} is outside the range Matrix power levels can take"),
            );
        }
    }
    (
        transmit_allow.into_iter().collect::<Option<_>>(),
        min_power_level,
    )
}

fn mumble(r: &mut Report, key: &str, raw: RawMumble) -> Option<MumbleConfig> {
    let server = r.check(
        format!("{key}.server"),
        raw.server
            .parse::<HostPort>()
            .map_err(|e| format!("{e}; expected host:port, e.g. \"mumble.example.org:64738\"")),
    );
    r.non_empty(&format!("{key}.channel"), &raw.channel);
    r.non_empty(&format!("{key}.username"), &raw.username);
    if raw.password.as_ref().is_some_and(|p| p.is_empty()) {
        r.error(
            format!("{key}.password"),
            "is empty: remove the key if the server needs no password",
        );
    }
    match (&raw.client_cert, &raw.client_key) {
        (Some(_), None) => r.error(
            format!("{key}.client_key"),
            "is required when client_cert is set",
        ),
        (None, Some(_)) => r.error(
            format!("{key}.client_cert"),
            "is required when client_key is set",
        ),
        _ => {}
    }
    Some(MumbleConfig {
        server: server?,
        channel: raw.channel,
        username: raw.username,
        password: raw.password,
        client_cert: raw.client_cert,
        client_key: raw.client_key,
        accept_invalid_cert: raw.accept_invalid_cert,
        announce_talker: raw.announce_talker,
    })
}

/// What MQTT endpoints claim on their brokers, to catch two that would fight.
#[derive(Default)]
struct MqttClaims {
    /// (broker, client id) → endpoint key
    client_ids: HashMap<(String, u16, String), String>,
    /// (broker, prefix) → endpoint key
    prefixes: HashMap<(String, u16, String), String>,
}

fn broker(s: &str) -> Result<Broker, String> {
    let url = Url::parse(s).map_err(|e| {
        format!("{s:?} is not a URL ({e}); expected e.g. \"mqtt://broker.example.org:1883\"")
    })?;
    let tls = match url.scheme() {
        "mqtt" => false,
        "mqtts" => true,
        other => {
            return Err(format!(
                "{s:?}: the scheme must be mqtt:// or mqtts://, not {other}://"
            ))
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain credentials: use the username and password keys".into());
    }
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.trim_start_matches('[').trim_end_matches(']'),
        _ => return Err(format!("{s:?} has no host")),
    };
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "{s:?}: a broker URL has no path, query or fragment (the topic prefix is `prefix`)"
        ));
    }
    let port = match url.port() {
        Some(0) => return Err(format!("{s:?}: port 0 is not a port")),
        Some(p) => p,
        None if tls => 8883,
        None => 1883,
    };
    Ok(Broker {
        tls,
        host: host.to_owned(),
        port,
    })
}

fn check_topic_prefix(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("must not be empty".into());
    }
    if p.contains(['+', '#', '\0']) {
        return Err(format!(
            "{p:?} contains an MQTT wildcard (+ or #) or NUL; a prefix is a plain topic"
        ));
    }
    if p.starts_with('/') || p.ends_with('/') {
        return Err(format!("{p:?} must not start or end with '/'"));
    }
    if p.starts_with('$') {
        return Err(format!(
            "{p:?}: topics starting with '$' belong to the broker"
        ));
    }
    Ok(())
}

fn mqtt(r: &mut Report, key: &str, raw: RawMqtt, claims: &mut MqttClaims) -> Option<MqttConfig> {
    let broker = r.check(format!("{key}.broker"), broker(&raw.broker));
    if raw.username.as_deref().is_some_and(|u| u.is_empty()) {
        r.error(
            format!("{key}.username"),
            "is empty: remove the key for an anonymous connection",
        );
    }
    if raw.password.is_some() && raw.username.is_none() {
        r.error(
            format!("{key}.password"),
            "is set without a username: MQTT sends a password only with a username",
        );
    }
    if let (Some(b), Some(_)) = (&broker, &raw.ca_file) {
        if !b.tls {
            r.warn(
                format!("{key}.ca_file"),
                "has no effect: the broker URL is mqtt:// (use mqtts:// for TLS)",
            );
        }
    }
    if let Some(id) = &raw.client_id {
        if id.is_empty() || id.len() > 65_535 {
            r.error(format!("{key}.client_id"), "must be 1 to 65535 bytes long");
        }
    }
    let keep_alive = r.secs(&format!("{key}.keep_alive_s"), raw.keep_alive_s, 5..=65_535);
    let prefix_ok = r
        .check(format!("{key}.prefix"), check_topic_prefix(&raw.prefix))
        .is_some();

    if let Some(b) = &broker {
        if let Some(id) = &raw.client_id {
            let slot = (b.host.clone(), b.port, id.clone());
            if let Some(other) = claims.client_ids.get(&slot) {
                r.error(
                    format!("{key}.client_id"),
                    format!(
                        "{id:?} is already used by {other} on the same broker; the broker \
                         would disconnect one whenever the other connects"
                    ),
                );
            } else {
                claims.client_ids.insert(slot, key.to_owned());
            }
        }
        if prefix_ok {
            let slot = (b.host.clone(), b.port, raw.prefix.clone());
            if let Some(other) = claims.prefixes.get(&slot) {
                r.error(
                    format!("{key}.prefix"),
                    format!(
                        "{:?} is already used by {other} on the same broker; their topics \
                         would mix",
                        raw.prefix
                    ),
                );
            } else {
                claims.prefixes.insert(slot, key.to_owned());
            }
        }
    }

    let max_priority = match &raw.max_priority {
        Some(p) => r.check(format!("{key}.max_priority"), priority(p)),
        None => Some(Priority::Normal),
    };
    let mut device_max_priority = BTreeMap::new();
    for (device, p) in &raw.device_max_priority {
        let key = format!("{key}.device_max_priority.{device}");
        if let Some(p) = r.check(&key, priority(p)) {
            if r.check(&key, check_device_id(device)).is_some() {
                device_max_priority.insert(device.clone(), p);
            }
        }
    }

    Some(MqttConfig {
        max_priority: max_priority?,
        device_max_priority,
        broker: broker?,
        username: raw.username,
        password: raw.password,
        ca_file: raw.ca_file,
        client_id: raw.client_id,
        keep_alive,
        prefix: raw.prefix,
        payload: raw.payload,
        ha_discovery: raw.ha_discovery,
        encoder: encoder_settings(r, key, raw.opus_bitrate_kbps, raw.opus_complexity),
    })
}

/// `opus_bitrate_kbps` and `opus_complexity` of an endpoint that encodes audio
/// itself; the defaults were chosen by measurement (docs/bench/codec-quality.md).
fn encoder_settings(
    r: &mut Report,
    key: &str,
    bitrate_kbps: Option<i64>,
    complexity: Option<i64>,
) -> EncoderSettings {
    let mut settings = EncoderSettings::default();
    if let Some(kbps) = bitrate_kbps {
        if (6..=510).contains(&kbps) {
            settings.bitrate = (kbps * 1000) as i32;
        } else {
            r.error(
                format!("{key}.opus_bitrate_kbps"),
                format!("{kbps} is not a bitrate Opus can do: 6 to 510 (kbit/s)"),
            );
        }
    }
    if let Some(c) = complexity {
        if (0..=10).contains(&c) {
            settings.complexity = c as i32;
        } else {
            r.error(
                format!("{key}.opus_complexity"),
                format!("{c} is not an Opus complexity: 0 (cheapest) to 10 (best)"),
            );
        }
    }
    settings
}

fn priority(s: &str) -> Result<Priority, String> {
    match s {
        "normal" => Ok(Priority::Normal),
        "high" => Ok(Priority::High),
        "emergency" => Ok(Priority::Emergency),
        other => Err(format!(
            "{other:?} is not a priority: expected \"normal\", \"high\" or \"emergency\""
        )),
    }
}

/// As the MQTT topic scheme allows (bridges/mqtt/README.md, "Topics").
fn check_device_id(s: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a device id: 1 to 64 characters of A-Z a-z 0-9 - _ ."
        ))
    }
}

/// Characters that have an International Morse Code representation.
fn check_callsign(s: &str) -> Result<String, String> {
    let upper = s.to_ascii_uppercase();
    if !(3..=16).contains(&upper.len()) {
        return Err(format!("{s:?} must be 3 to 16 characters long"));
    }
    match upper
        .chars()
        .find(|c| !(c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '/' || *c == '-'))
    {
        Some(c) => Err(format!(
            "{s:?} contains {c:?}, which has no Morse code (use A-Z, 0-9, / and -)"
        )),
        None => Ok(upper),
    }
}

fn radio(r: &mut Report, key: &str, raw: RawRadio) -> Option<RadioConfig> {
    let encoder = encoder_settings(r, key, raw.opus_bitrate_kbps, raw.opus_complexity);
    let serial_users: Vec<String> = [
        raw.ptt
            .uses_serial_line()
            .then(|| format!("ptt = {:?}", raw.ptt.as_str())),
        raw.cos
            .uses_serial_line()
            .then(|| format!("cos = \"{}\"", raw.cos)),
    ]
    .into_iter()
    .flatten()
    .collect();
    match &raw.port {
        None if !serial_users.is_empty() => r.error(
            format!("{key}.port"),
            format!(
                "is required when {}: the serial device, e.g. \"/dev/ttyUSB0\"",
                serial_users.join(" and ")
            ),
        ),
        Some(p) if p.as_os_str().is_empty() => r.error(format!("{key}.port"), "must not be empty"),
        Some(_) if serial_users.is_empty() => r.warn(
            format!("{key}.port"),
            "is not used: neither ptt nor cos uses a serial line",
        ),
        _ => {}
    }

    let rig_users: Vec<&str> = [
        (raw.ptt == Ptt::Rigctld).then_some("ptt = \"rigctld\""),
        (raw.cos == Cos::Rigctld).then_some("cos = \"rigctld\""),
    ]
    .into_iter()
    .flatten()
    .collect();
    // `Err(())`: already reported; the radio is invalid but checking goes on.
    let rigctld: Result<Option<HostPort>, ()> = match (&raw.rigctld, rig_users.is_empty()) {
        (None, false) => {
            r.error(
                format!("{key}.rigctld"),
                format!(
                    "is required when {}: the address of hamlib's rigctld, e.g. \"127.0.0.1:4532\"",
                    rig_users.join(" and ")
                ),
            );
            Err(())
        }
        (Some(_), true) => {
            r.error(
                format!("{key}.rigctld"),
                "is set but neither ptt nor cos is \"rigctld\"",
            );
            Err(())
        }
        (Some(addr), false) => r
            .check(
                format!("{key}.rigctld"),
                addr.parse::<HostPort>()
                    .map_err(|e| format!("{e}; expected e.g. \"127.0.0.1:4532\"")),
            )
            .map(Some)
            .ok_or(()),
        (None, true) => Ok(None),
    };
    if raw.ptt_invert && !raw.ptt.uses_serial_line() {
        r.warn(
            format!("{key}.ptt_invert"),
            format!("has no effect with ptt = {:?}", raw.ptt.as_str()),
        );
    }
    r.non_empty(&format!("{key}.audio_in"), &raw.audio_in);
    r.non_empty(&format!("{key}.audio_out"), &raw.audio_out);

    let tx_delay = r.millis(&format!("{key}.tx_delay_ms"), raw.tx_delay_ms, 0..=2_000);
    let ptt_hang = r.millis(&format!("{key}.ptt_hang_ms"), raw.ptt_hang_ms, 0..=5_000);
    let tx_timeout = r.secs(&format!("{key}.tx_timeout_s"), raw.tx_timeout_s, 1..=3_600);
    if !(raw.vox_threshold_dbfs.is_finite() && (-100.0..=0.0).contains(&raw.vox_threshold_dbfs)) {
        r.error(
            format!("{key}.vox_threshold_dbfs"),
            format!(
                "{} dBFS is out of range: expected -100..=0",
                raw.vox_threshold_dbfs
            ),
        );
    }
    let vox_attack = r.millis(
        &format!("{key}.vox_attack_ms"),
        raw.vox_attack_ms,
        0..=5_000,
    );
    let vox_hang = r.millis(&format!("{key}.vox_hang_ms"), raw.vox_hang_ms, 0..=30_000);
    let callsign: Result<Option<String>, ()> = match &raw.callsign {
        Some(c) => r
            .check(format!("{key}.callsign"), check_callsign(c))
            .map(Some)
            .ok_or(()),
        None => Ok(None),
    };
    let id_interval = r.secs(
        &format!("{key}.id_interval_s"),
        raw.id_interval_s,
        60..=3_600,
    );
    if !(5..=60).contains(&raw.id_wpm) {
        r.error(
            format!("{key}.id_wpm"),
            format!("{} wpm is out of range: expected 5..=60", raw.id_wpm),
        );
    }
    if !(200..=3_000).contains(&raw.id_tone_hz) {
        r.error(
            format!("{key}.id_tone_hz"),
            format!("{} Hz is out of range: expected 200..=3000", raw.id_tone_hz),
        );
    }
    let rx_mute_after_tx = r.millis(
        &format!("{key}.rx_mute_after_tx_ms"),
        raw.rx_mute_after_tx_ms,
        0..=10_000,
    );
    let (transmit_allow, transmit_min_power_level) =
        transmit_permissions(r, key, &raw.transmit_allow, raw.transmit_min_power_level);

    Some(RadioConfig {
        port: raw.port,
        ptt: raw.ptt,
        ptt_invert: raw.ptt_invert,
        rigctld: rigctld.ok()?,
        cos: raw.cos,
        audio_in: raw.audio_in,
        audio_out: raw.audio_out,
        tx_delay,
        ptt_hang,
        tx_timeout,
        vox: VoxConfig {
            threshold_dbfs: raw.vox_threshold_dbfs,
            attack: vox_attack,
            hang: vox_hang,
        },
        callsign: callsign.ok()?,
        id_interval,
        id_wpm: raw.id_wpm,
        id_tone_hz: raw.id_tone_hz,
        rx_mute_after_tx,
        transmit_allow: transmit_allow?,
        transmit_min_power_level,
        encoder,
    })
}

/// The identity two claims are compared by: the device a `/dev/serial/by-id` link
/// points to, and an ALSA card without the `plug` conversion layer in front of it.
fn resource_identity(res: &Resource) -> (u8, String) {
    match res {
        Resource::SerialPort(p) => (
            0,
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| PathBuf::from(p))
                .display()
                .to_string(),
        ),
        Resource::AudioIn(d) => (1, d.strip_prefix("plug").unwrap_or(d).to_owned()),
        Resource::AudioOut(d) => (2, d.strip_prefix("plug").unwrap_or(d).to_owned()),
        Resource::Rigctld(hp) => (3, hp.to_string()),
    }
}

fn claim_resources(
    r: &mut Report,
    key: &str,
    radio: &RadioConfig,
    claims: &mut HashMap<(u8, String), String>,
) {
    for res in radio.resources() {
        let (sub, what) = match &res {
            Resource::SerialPort(p) => {
                ("port", format!("serial port {:?}", p.display().to_string()))
            }
            Resource::AudioIn(d) => ("audio_in", format!("sound card {d:?} (capture)")),
            Resource::AudioOut(d) => ("audio_out", format!("sound card {d:?} (playback)")),
            Resource::Rigctld(hp) => ("rigctld", format!("rigctld at {hp}")),
        };
        let id = resource_identity(&res);
        match claims.get(&id) {
            Some(other) => r.error(
                format!("{key}.{sub}"),
                format!("{what} is already used by {other}; two radios cannot share it"),
            ),
            None => {
                claims.insert(id, key.to_owned());
            }
        }
    }
}

fn channels(r: &mut Report, raw: Vec<RawChannel>, endpoints: &Endpoints) -> Vec<ChannelConfig> {
    if raw.is_empty() {
        r.warn(
            "channel",
            "no [[channel]] is configured: the bridge has nothing to bridge",
        );
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut rooms: HashMap<String, usize> = HashMap::new();
    let mut users: HashMap<EndpointId, (usize, String)> = HashMap::new();
    let mut out = Vec::new();

    for (i, ch) in raw.into_iter().enumerate() {
        let key = format!("channel[{i}]");
        if ch.name.trim().is_empty() || ch.name.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            r.error(
                format!("{key}.name"),
                format!(
                    "{:?}: a channel name must be non-empty and contain no whitespace",
                    ch.name
                ),
            );
        } else if let Some(first) = names.get(&ch.name) {
            r.error(
                format!("{key}.name"),
                format!(
                    "duplicate channel name {:?}: channel[{first}] has it already",
                    ch.name
                ),
            );
        } else {
            names.insert(ch.name.clone(), i);
        }

        let room = r.check(format!("{key}.room"), ch.room.parse::<RoomRef>());
        if room.is_some() {
            if let Some(first) = rooms.get(&ch.room) {
                r.error(
                    format!("{key}.room"),
                    format!(
                        "room {:?} is already bridged by channel[{first}]; one room has one floor",
                        ch.room
                    ),
                );
            } else {
                rooms.insert(ch.room.clone(), i);
            }
        }

        if ch.endpoints.is_empty() {
            r.warn(
                format!("{key}.endpoints"),
                format!(
                    "channel {:?} has no endpoints: only Matrix users can talk on it",
                    ch.name
                ),
            );
        }
        let mut ids = Vec::new();
        for (j, e) in ch.endpoints.iter().enumerate() {
            let ekey = format!("{key}.endpoints[{j}]");
            let Some(id) = r.check(&ekey, e.parse::<EndpointId>()) else {
                continue;
            };
            if !endpoints.declared.contains(&id) {
                r.error(&ekey, format!("no endpoint \"{id}\" is configured"));
                continue;
            }
            match users.get(&id) {
                Some((other, _)) if *other == i => {
                    r.error(&ekey, format!("endpoint \"{id}\" is listed twice"));
                }
                Some((other, other_name)) => r.error(
                    &ekey,
                    format!(
                        "endpoint \"{id}\" is already used by channel {other_name:?} \
                         (channel[{other}]): one endpoint connection carries one floor"
                    ),
                ),
                None => {
                    users.insert(id.clone(), (i, ch.name.clone()));
                    ids.push(id);
                }
            }
        }
        if let Some(room) = room {
            out.push(ChannelConfig {
                name: ch.name,
                room,
                endpoints: ids,
            });
        }
    }

    for id in endpoints.valid.keys() {
        if !users.contains_key(id) {
            r.warn(
                id.to_string(),
                "is not used by any channel; it will not be started",
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Config, EndpointSpec};
    use walkie_endpoint::audio::EncoderSettings;

    const BASE: &str = r#"
[homeserver]
url = "https://matrix.example.org"
domain = "example.org"

[appservice]
listen = "[::1]:29333"
id = "walkie"
as_token = "a"
hs_token = "b"
bot_localpart = "walkie"
puppet_prefix = "walkie_"
"#;

    fn errors(extra: &str) -> Vec<String> {
        let text = format!("{BASE}{extra}");
        match Config::from_toml_str(&text, "config/example.toml", [("", ""); 0]) {
            Ok(_) => Vec::new(),
            Err(e) => e.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn display_names_file_key_and_reason() {
        let errs = errors(
            "[[channel]]\nname = \"ops\"\nroom = \"#ops:example.org\"\nendpoints = [\"mqtt.lobby\"]\n",
        );
        assert_eq!(
            errs,
            ["config/example.toml: channel[0].endpoints[0]: no endpoint \"mqtt.lobby\" is configured"]
        );
    }

    #[test]
    fn an_invalid_endpoint_is_not_also_reported_as_missing() {
        let errs = errors(
            "[[channel]]\nname = \"ops\"\nroom = \"#ops:example.org\"\nendpoints = [\"mumble.ops\"]\n\
             [mumble.ops]\nserver = \"nohost\"\nchannel = \"Ops\"\nusername = \"w\"\n",
        );
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].contains("mumble.ops.server"), "{errs:?}");
    }

    #[test]
    fn registration_url_follows_listen_with_ipv6() {
        let text = format!("{BASE}[[channel]]\nname = \"x\"\nroom = \"!r\"\n");
        let (config, warnings) = Config::from_toml_str(&text, "t.toml", [("", ""); 0]).unwrap();
        assert_eq!(config.appservice.url.as_str(), "http://[::1]:29333/");
        // The channel without endpoints is legal, but worth a word.
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].key, "channel[0].endpoints");
    }

    #[test]
    fn opus_encoder_settings_are_checked_and_default_to_the_measured_choice() {
        let endpoints = |extra: &str| {
            format!(
                "[[channel]]\nname = \"x\"\nroom = \"!r\"\nendpoints = [\"radio.r\", \"mqtt.m\"]\n\
                 [radio.r]\nptt = \"rigctld\"\nrigctld = \"127.0.0.1:4532\"\n{extra}\n\
                 [mqtt.m]\nbroker = \"mqtt://127.0.0.1\"\nprefix = \"walkie/m\"\npayload = \"pcm16\"\n{extra}\n"
            )
        };
        let errs = errors(&endpoints("opus_bitrate_kbps = 4\nopus_complexity = 11"));
        assert_eq!(errs.len(), 4, "{errs:?}");
        assert!(errs
            .iter()
            .any(|e| e.contains("radio.r.opus_bitrate_kbps: 4 is not a bitrate")));
        assert!(errs
            .iter()
            .any(|e| e.contains("mqtt.m.opus_complexity: 11 is not an Opus complexity")));

        let text = format!(
            "{BASE}{}",
            endpoints("opus_bitrate_kbps = 16\nopus_complexity = 2")
        );
        let (config, _) = Config::from_toml_str(&text, "t.toml", [("", ""); 0]).unwrap();
        let chosen = EncoderSettings {
            bitrate: 16_000,
            complexity: 2,
            ..EncoderSettings::default()
        };
        for endpoint in config.endpoints.values() {
            match endpoint {
                EndpointSpec::Radio(r) => assert_eq!(r.encoder, chosen),
                EndpointSpec::Mqtt(m) => assert_eq!(m.encoder, chosen),
                EndpointSpec::Mumble(_) | EndpointSpec::SvxReflector(_) => {
                    unreachable!("only radios and MQTT endpoints configured")
                }
            }
        }
        let text = format!("{BASE}{}", endpoints(""));
        let (config, _) = Config::from_toml_str(&text, "t.toml", [("", ""); 0]).unwrap();
        assert!(config.endpoints.values().all(|e| match e {
            EndpointSpec::Radio(r) => r.encoder == EncoderSettings::default(),
            EndpointSpec::Mqtt(m) => m.encoder == EncoderSettings::default(),
            EndpointSpec::Mumble(_) | EndpointSpec::SvxReflector(_) => false,
        }));
    }

    #[test]
    fn rigctld_is_required_exactly_when_used() {
        let radio = |extra: &str| {
            errors(&format!(
                "[[channel]]\nname = \"x\"\nroom = \"!r\"\nendpoints = [\"radio.r\"]\n\
                 [radio.r]\n{extra}\n"
            ))
        };
        assert!(radio("ptt = \"rigctld\"\nrigctld = \"127.0.0.1:4532\"").is_empty());
        assert!(
            radio("ptt = \"none\"\ncos = \"rigctld\"\nrigctld = \"localhost:4532\"").is_empty()
        );
        assert!(radio("ptt = \"none\"\ncos = \"rigctld\"")[0]
            .contains("radio.r.rigctld: is required when cos"));
        assert!(radio("port = \"/dev/x\"\nrigctld = \"localhost:4532\"")[0]
            .contains("neither ptt nor cos"));
        assert!(radio("ptt = \"dtr\"")[0].contains("radio.r.port: is required when ptt = \"dtr\""));
    }

    #[test]
    fn mqtt_endpoints_on_one_broker_must_not_collide() {
        let errs = errors(
            "[mqtt.a]\nbroker = \"mqtt://b\"\nprefix = \"p\"\nclient_id = \"c\"\n\
             [mqtt.b]\nbroker = \"mqtt://b:1883\"\nprefix = \"p\"\nclient_id = \"c\"\n",
        );
        assert!(
            errs.iter().any(|e| e.contains("mqtt.b.client_id")),
            "{errs:?}"
        );
        assert!(errs.iter().any(|e| e.contains("mqtt.b.prefix")), "{errs:?}");
    }

    #[test]
    fn bad_prefixes_and_brokers() {
        for (extra, expect) in [
            ("broker = \"mqtt://b\"\nprefix = \"a/#\"", "wildcard"),
            (
                "broker = \"mqtt://b\"\nprefix = \"/a\"",
                "must not start or end",
            ),
            ("broker = \"mqtt://u:p@b\"\nprefix = \"a\"", "credentials"),
            (
                "broker = \"tcp://b\"\nprefix = \"a\"",
                "mqtt:// or mqtts://",
            ),
            (
                "broker = \"mqtts://b\"\nprefix = \"a\"\nkeep_alive_s = 1",
                "keep_alive_s",
            ),
        ] {
            let errs = errors(&format!("[mqtt.a]\n{extra}\n"));
            assert!(errs.iter().any(|e| e.contains(expect)), "{extra}: {errs:?}");
        }
    }

    fn encryption(extra: &str) -> Result<super::EncryptionConfig, Vec<String>> {
        let text =
            format!("{BASE}[[channel]]\nname = \"x\"\nroom = \"!r\"\n[encryption]\n{extra}\n");
        Config::from_toml_str(&text, "t.toml", [("", ""); 0])
            .map(|(config, _)| config.encryption)
            .map_err(|e| e.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn the_crypto_store_defaults_to_the_state_directory_without_a_passphrase() {
        let config = encryption("").unwrap();
        assert_eq!(
            config.store_dir,
            std::path::Path::new(super::super::STATE_DIR).join("crypto")
        );
        assert!(config.passphrase.is_none());
        let errs = encryption("store_dir = \"\"").unwrap_err();
        assert_eq!(errs, ["t.toml: encryption.store_dir: must not be empty"]);
    }

    #[test]
    fn the_passphrase_file_is_read_at_start() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passphrase");
        std::fs::write(&file, "correct horse battery staple\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let line = format!("passphrase_file = \"{}\"", file.display());
        let config = encryption(&line).unwrap();
        let passphrase = config.passphrase.expect("a passphrase");
        // The newline an editor leaves is not part of it.
        assert_eq!(passphrase.expose(), "correct horse battery staple");

        std::fs::write(&file, "\n").unwrap();
        let errs = encryption(&line).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("t.toml: encryption.passphrase_file: ")
                && errs[0].ends_with("is empty"),
            "{errs:?}"
        );

        let missing = format!(
            "passphrase_file = \"{}\"",
            dir.path().join("nope").display()
        );
        let errs = encryption(&missing).unwrap_err();
        assert!(
            errs[0].contains("encryption.passphrase_file: cannot read"),
            "{errs:?}"
        );
    }

    #[test]
    fn a_passphrase_file_others_can_read_is_worth_a_warning() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passphrase");
        std::fs::write(&file, "correct horse battery staple").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = format!(
            "{BASE}[[channel]]\nname = \"x\"\nroom = \"!r\"\nendpoints = []\n[encryption]\npassphrase_file = \"{}\"\n",
            file.display()
        );
        let (_, warnings) = Config::from_toml_str(&text, "t.toml", [("", ""); 0]).unwrap();
        assert!(
            warnings
                .iter()
                .any(|w| w.key == "encryption.passphrase_file" && w.message.contains("chmod 600")),
            "{warnings:?}"
        );
    }
}
