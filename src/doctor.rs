//! `walkie-bridge doctor`: checks a setup in the order it depends on itself and
//! prints one line per check, ✓ or ✗ and, for ✗, what to do. Read-only: it
//! joins no room and sends nothing anyone sees (a reflector login is a login).
//!
//! Done so far (issue 19, item 2): the homeserver, the `as_token`, the
//! homeserver's registration and its way back to the bridge (appservice ping),
//! each channel's room and the bot's powers there, each Mumble server (login,
//! channel, may speak), each MQTT broker's login, each SvxReflector login,
//! each radio's PTT (unkeyed and read back). Not yet: the sound card at its
//! rate, the service user's groups.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EndpointSpec, RoomRef, Secret};
use crate::matrix::client::Homeserver;
use crate::matrix::room_setup::missing_powers;

/// How long one network check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// One check's outcome: what was found, or what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass(String),
    Fail { found: String, fix: String },
}

/// One printed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub outcome: Outcome,
}

impl Check {
    fn pass(name: impl Into<String>, found: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Pass(found.into()),
        }
    }

    fn fail(name: impl Into<String>, found: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            outcome: Outcome::Fail {
                found: found.into(),
                fix: fix.into(),
            },
        }
    }

    pub fn passed(&self) -> bool {
        matches!(self.outcome, Outcome::Pass(_))
    }

    /// `✓ name: found` or `✗ name: found\n    → fix`.
    pub fn line(&self) -> String {
        match &self.outcome {
            Outcome::Pass(found) => format!("✓ {}: {found}", self.name),
            Outcome::Fail { found, fix } => format!("✗ {}: {found}\n    → {fix}", self.name),
        }
    }
}

/// Runs every check after the config's, calling `report` with each as it ends.
/// Later checks that need an earlier one (rooms need the `as_token`) are
/// skipped when it failed: their failure would only repeat it.
pub async fn run(config: &Config, mut report: impl FnMut(&Check)) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut add = |check: Check, checks: &mut Vec<Check>| {
        report(&check);
        checks.push(check);
    };
    let homeserver = match Homeserver::new(
        config.homeserver.url.clone(),
        config.appservice.as_token.clone(),
    ) {
        Ok(homeserver) => homeserver,
        Err(error) => {
            add(
                Check::fail("homeserver", error.to_string(), "check homeserver.url"),
                &mut checks,
            );
            return checks;
        }
    };
    let reachable = homeserver_check(config).await;
    let reached = reachable.passed();
    add(reachable, &mut checks);
    if !reached {
        return checks;
    }
    let token = token_check(config, &homeserver).await;
    let accepted = token.passed();
    add(token, &mut checks);
    if accepted {
        add(ping_check(config, &homeserver).await, &mut checks);
        for channel in &config.channels {
            add(
                room_check(config, &homeserver, &channel.room).await,
                &mut checks,
            );
        }
    }
    // A reflector refuses a second login of a callsign that is logged in: with
    // the bridge running, its own /status says how its node is doing.
    let running = tokio::net::TcpListener::bind(config.appservice.listen)
        .await
        .is_err();
    for (id, spec) in &config.endpoints {
        let check = match spec {
            EndpointSpec::SvxReflector(svx) if running => {
                status_check(config, &id.to_string(), &svx.server.to_string()).await
            }
            EndpointSpec::SvxReflector(svx) => svxreflector_check(&id.to_string(), svx).await,
            EndpointSpec::Mqtt(mqtt) => mqtt_check(config, id, mqtt).await,
            // The server would refuse the bot's name twice.
            EndpointSpec::Mumble(mumble) if running => {
                status_check(config, &id.to_string(), &mumble.server.to_string()).await
            }
            EndpointSpec::Mumble(mumble) => mumble_check(config, id, mumble).await,
            // Never touch a radio the running bridge may be transmitting on.
            EndpointSpec::Radio(radio) if running => {
                let what = radio
                    .port
                    .as_ref()
                    .map_or_else(|| format!("{:?}", radio.ptt), |p| p.display().to_string());
                status_check(config, &id.to_string(), &what).await
            }
            EndpointSpec::Radio(radio) => {
                let id = id.to_string();
                if let Some(port) = &radio.port {
                    add(port_access_check(&id, port), &mut checks);
                }
                add(sound_card_check(&id, radio).await, &mut checks);
                radio_check(&id, radio).await
            }
        };
        add(check, &mut checks);
    }
    checks
}

/// The bot logs in to the Mumble server as the bridge would (its configured or
/// kept certificate), finds its channel, and may speak there.
async fn mumble_check(
    config: &Config,
    id: &crate::config::EndpointId,
    mumble: &crate::config::MumbleConfig,
) -> Check {
    let name = format!("{id} {}", mumble.server);
    let identity = if mumble.client_cert.is_none() {
        kept_identity(config, id).await
    } else {
        None
    };
    let mut connect = crate::endpoints::mumble_connect_config(mumble, identity);
    connect.timeout = CHECK_TIMEOUT;
    let certificate = match (&connect.client_cert, &connect.identity) {
        (Some(_), _) => "its configured certificate".to_owned(),
        (None, Some(identity)) => format!(
            "its kept certificate {}",
            identity.cert_hash().unwrap_or_default()
        ),
        (None, None) => "no certificate yet (the bridge makes one on its first start)".to_owned(),
    };
    match walkie_mumble::Connection::connect(connect).await {
        Ok((handle, _events)) => {
            let me = handle.user(handle.our_session());
            let registered = me
                .as_ref()
                .and_then(|u| u.user_id)
                .map_or("not registered".to_owned(), |id| {
                    format!("registered user {id}")
                });
            let blocked = me.as_ref().is_some_and(|u| u.suppressed || u.server_muted);
            let version = handle
                .server_version()
                .map(|v| format!("{}.{}.{}", v.major, v.minor, v.patch))
                .unwrap_or_else(|| "?".into());
            handle.disconnect().await;
            if blocked {
                Check::fail(
                    name,
                    format!("logged in to {}, but the bot may not speak there", mumble.channel),
                    "give the bot (or everyone) the Speak permission in that channel's ACL, or unmute it",
                )
            } else {
                Check::pass(
                    name,
                    format!(
                        "logged in as {} ({registered}, {certificate}) to Mumble {version}, in {}, may speak",
                        mumble.username, mumble.channel
                    ),
                )
            }
        }
        Err(error) => Check::fail(
            name,
            error.to_string(),
            "check server, channel, username and password (a name registered by certificate \
             needs the bot's certificate: client_cert, or the one the bridge keeps)",
        ),
    }
}

/// The radio's PTT opens and reads back unkeyed (what `walkie-bridge unkey`
/// does: it drives the line unkeyed, which is where it must be anyway).
async fn radio_check(id: &str, radio: &crate::config::RadioConfig) -> Check {
    let ptt = match crate::radio_cli::ptt_config(radio) {
        Ok(ptt) => ptt,
        Err(error) => return Check::fail(id, error.to_string(), "check ptt, port and rigctld"),
    };
    let name = match (&radio.port, &radio.rigctld) {
        (_, Some(rigctld)) if radio.ptt == crate::config::Ptt::Rigctld => {
            format!("{id} rigctld {rigctld}")
        }
        (Some(port), _) => format!("{id} {}", port.display()),
        _ => id.to_owned(),
    };
    let unkeyed = tokio::task::spawn_blocking(move || walkie_radio::ptt::force_unkey(&ptt)).await;
    match unkeyed {
        Ok(Ok(report)) => match report.read_back_keyed {
            Some(false) => Check::pass(name, format!("PTT ({}) opens and reads unkeyed", report.ptt)),
            None => Check::pass(name, format!("PTT ({}): nothing to read back", report.ptt)),
            Some(true) => Check::fail(
                name,
                format!("PTT ({}) still reads KEYED after unkeying", report.ptt),
                "check ptt_invert and the interface's wiring; switch the radio off until fixed",
            ),
        },
        Ok(Err(error)) => Check::fail(
            name,
            error.to_string(),
            "check that the port exists (walkie-bridge devices) and that the service user may open \
             it (group dialout), or that rigctld runs at that address",
        ),
        Err(error) => Check::fail(name, format!("the check failed: {error}"), "run it again"),
    }
}

/// The user the packaged service runs as (systemd/walkie-bridge.service).
const SERVICE_USER: &str = "walkie-bridge";

/// The serial port exists and the service's user may open it for writing (PTT
/// lines are set through a write open). Judged from the port's owner, group and
/// mode against the `walkie-bridge` user's groups — the unit adds `dialout` and
/// `audio`, so those count too — or, where that user does not exist (run from
/// source), against whoever runs the doctor.
fn port_access_check(id: &str, port: &std::path::Path) -> Check {
    use std::os::unix::fs::MetadataExt as _;
    let name = format!("{id} {}", port.display());
    let meta = match std::fs::metadata(port) {
        Ok(meta) => meta,
        Err(error) => {
            return Check::fail(
                name,
                format!("{error}"),
                "plug the interface in; `walkie-bridge devices` lists the ports, \
                 /dev/serial/by-id names survive replugging",
            )
        }
    };
    let Some((who, uid, groups)) = service_user().or_else(current_user) else {
        return Check::pass(name, "exists (no user to check its access for)");
    };
    let mode = meta.mode();
    let writable = uid == 0
        || (meta.uid() == uid && mode & 0o200 != 0)
        || (groups.contains(&meta.gid()) && mode & 0o020 != 0)
        || mode & 0o002 != 0;
    if writable {
        Check::pass(name, format!("{who} may open it"))
    } else {
        Check::fail(
            name,
            format!(
                "{who} may not open it (owner {}, group {}, mode {:o})",
                meta.uid(),
                meta.gid(),
                mode & 0o777
            ),
            format!("add {who} to the port's group (usually dialout): usermod -aG dialout {who}"),
        )
    }
}

/// The service user's name, uid and groups (with the unit's supplementary
/// `dialout` and `audio`), if that user exists here.
fn service_user() -> Option<(String, u32, Vec<u32>)> {
    let user = nix_user(SERVICE_USER)?;
    let mut groups = user_groups(SERVICE_USER, user.1);
    groups.extend(["dialout", "audio"].iter().filter_map(|g| group_id(g)));
    Some((SERVICE_USER.to_owned(), user.0, groups))
}

fn current_user() -> Option<(String, u32, Vec<u32>)> {
    // SAFETY: getuid/getgid/getgroups only read the process's credentials.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut groups = vec![gid];
    let mut list = vec![0 as libc::gid_t; 256];
    // SAFETY: `list` has room for 256 ids, as passed.
    let n = unsafe { libc::getgroups(256, list.as_mut_ptr()) };
    if n > 0 {
        groups.extend(&list[..n as usize]);
    }
    Some(("this user".to_owned(), uid, groups))
}

/// (uid, primary gid) of `name`.
fn nix_user(name: &str) -> Option<(u32, u32)> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or null; it is
    // read at once, before any other passwd call.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: not null, so it points at a valid passwd record.
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

fn user_groups(name: &str, primary: u32) -> Vec<u32> {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return vec![primary];
    };
    let mut count: libc::c_int = 256;
    let mut list = vec![0 as libc::gid_t; 256];
    // SAFETY: `list` holds `count` ids; getgrouplist writes at most that many.
    let n = unsafe { libc::getgrouplist(cname.as_ptr(), primary, list.as_mut_ptr(), &mut count) };
    if n < 0 {
        return vec![primary];
    }
    list.truncate(count.max(0) as usize);
    list
}

fn group_id(name: &str) -> Option<u32> {
    let cname = std::ffi::CString::new(name).ok()?;
    // SAFETY: as getpwnam above.
    let entry = unsafe { libc::getgrnam(cname.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: not null, so it points at a valid group record.
    Some(unsafe { (*entry).gr_gid })
}

/// The radio's sound card opens for capture and playback, and at what rate.
async fn sound_card_check(id: &str, radio: &crate::config::RadioConfig) -> Check {
    use walkie_radio::audio::SoundCard as _;
    let name = if radio.audio_in == radio.audio_out {
        format!("{id} sound card {}", radio.audio_in)
    } else {
        format!("{id} sound cards {} / {}", radio.audio_in, radio.audio_out)
    };
    let card =
        walkie_radio::audio::CpalSoundCard::new(radio.audio_in.clone(), radio.audio_out.clone());
    let opened = tokio::task::spawn_blocking(move || {
        let capture = card.open_capture()?;
        let playback = card.open_playback()?;
        Ok::<_, walkie_radio::audio::SoundCardError>((capture.format, playback.format()))
    })
    .await;
    match opened {
        Ok(Ok((capture, playback))) => Check::pass(
            name,
            format!(
                "capture at {} Hz ({} ch), playback at {} Hz ({} ch)",
                capture.rate, capture.channels, playback.rate, playback.channels
            ),
        ),
        Ok(Err(error)) => Check::fail(
            name,
            error.to_string(),
            "check the names with `walkie-bridge devices`, that nothing else holds the card, \
             and that the service user is in the audio group",
        ),
        Err(error) => Check::fail(name, format!("the check failed: {error}"), "run it again"),
    }
}

/// The certificate the bridge made for this Mumble bot and keeps in its
/// database, read without creating anything: none when there is no database yet.
async fn kept_identity(
    config: &Config,
    id: &crate::config::EndpointId,
) -> Option<walkie_mumble::ClientIdentity> {
    let url = &config.database.url;
    if let Some(path) = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
    {
        let path = path.split('?').next().unwrap_or(path);
        if !std::path::Path::new(path).exists() {
            return None;
        }
    }
    let store = crate::store::Store::connect(url).await.ok()?;
    let (cert_pem, key_pem) = store.mumble_identity(&id.to_string()).await.ok()??;
    Some(walkie_mumble::ClientIdentity { cert_pem, key_pem })
}

/// The broker takes the endpoint's login (under a client id of doctor's own,
/// so a running bridge's session is left alone).
async fn mqtt_check(
    config: &Config,
    id: &crate::config::EndpointId,
    mqtt: &crate::config::MqttConfig,
) -> Check {
    let name = format!("{id} {}:{}", mqtt.broker.host, mqtt.broker.port);
    let endpoint = match crate::endpoints::mqtt_endpoint(id, mqtt, &config.floor) {
        Ok(endpoint) => endpoint,
        Err(error) => return Check::fail(name, error.to_string(), "check ca_file"),
    };
    match endpoint.check_login(CHECK_TIMEOUT).await {
        Ok(()) => Check::pass(
            name,
            match &mqtt.username {
                Some(user) => format!("the broker accepts the login as {user}"),
                None => "the broker accepts an anonymous login".to_owned(),
            },
        ),
        Err(error) => Check::fail(
            name,
            error,
            "check broker, username and password (and ca_file for mqtts://) against the broker's \
             configuration",
        ),
    }
}

/// How the running bridge's endpoint `id` is doing, from its `/status`: a
/// reflector or a Mumble server would refuse a second login of the same node
/// or bot while the bridge is logged in.
async fn status_check(config: &Config, id: &str, server: &str) -> Check {
    let name = format!("{id} {server}");
    let Some(listen) = config.status.listen else {
        return Check::fail(
            name,
            "not checked: the bridge is running (its node is logged in, and a second login \
             would be refused) and status.listen is off",
            "stop the bridge and run doctor again, or set status.listen",
        );
    };
    let answer = reqwest::Client::new()
        .get(format!("http://{listen}/status"))
        .timeout(CHECK_TIMEOUT)
        .send()
        .await;
    let status: Option<serde_json::Value> = match answer {
        Ok(answer) => answer.json().await.ok(),
        Err(_) => None,
    };
    let endpoint = status.as_ref().and_then(|status| {
        status["channels"]
            .as_array()?
            .iter()
            .filter_map(|c| c["endpoints"].as_array())
            .flatten()
            .find(|e| e["id"] == id)
            .cloned()
    });
    match endpoint {
        Some(e) if e["state"] == "connected" => {
            let warning = e["warning"]
                .as_str()
                .map(|w| format!(" (warning: {w})"))
                .unwrap_or_default();
            Check::pass(name, format!("the running bridge is connected{warning}"))
        }
        Some(e) => Check::fail(
            name,
            format!(
                "the running bridge's endpoint is {}: {}",
                e["state"].as_str().unwrap_or("?"),
                e["reason"].as_str().unwrap_or("no reason given")
            ),
            "the reason says what to fix; stop the bridge and run doctor again for a full check",
        ),
        None => Check::fail(
            name,
            format!("the running bridge's /status on {listen} does not show it"),
            "is the running bridge the one this config describes?",
        ),
    }
}

/// The homeserver answers `/_matrix/client/versions`; its software and version
/// when it says (`/_matrix/federation/v1/version`, often not on the client port).
async fn homeserver_check(config: &Config) -> Check {
    let name = format!("homeserver {}", config.homeserver.url);
    let http = reqwest::Client::builder()
        .timeout(CHECK_TIMEOUT)
        .build()
        .unwrap_or_default();
    let url = |path: &str| config.homeserver.url.join(path);
    let Ok(versions_url) = url("_matrix/client/versions") else {
        return Check::fail(name, "not a base URL", "check homeserver.url");
    };
    let answer = match http.get(versions_url).send().await {
        Ok(answer) => answer,
        Err(error) => {
            return Check::fail(
                name,
                format!("unreachable: {error}"),
                "check homeserver.url and that the homeserver runs and listens there",
            )
        }
    };
    #[derive(serde::Deserialize)]
    struct Versions {
        versions: Vec<String>,
    }
    let versions = match answer.json::<Versions>().await {
        Ok(versions) => versions.versions,
        Err(error) => {
            return Check::fail(
                name,
                format!("answers, but not as a Matrix homeserver: {error}"),
                "homeserver.url must be the client-server API's base URL",
            )
        }
    };
    let mut found = format!(
        "reachable, Matrix {}",
        versions.last().map_or("(no version)", String::as_str)
    );
    #[derive(serde::Deserialize)]
    struct Server {
        server: ServerVersion,
    }
    #[derive(serde::Deserialize)]
    struct ServerVersion {
        name: String,
        version: String,
    }
    if let Ok(server_url) = url("_matrix/federation/v1/version") {
        if let Ok(answer) = http.get(server_url).send().await {
            if let Ok(server) = answer.json::<Server>().await {
                let _ = write!(found, ", {} {}", server.server.name, server.server.version);
            }
        }
    }
    Check::pass(name, found)
}

/// The homeserver takes the `as_token` and says the bot is who it is.
async fn token_check(config: &Config, homeserver: &Homeserver) -> Check {
    let bot = format!(
        "@{}:{}",
        config.appservice.bot_localpart, config.homeserver.domain
    );
    match tokio::time::timeout(CHECK_TIMEOUT, homeserver.whoami(None)).await {
        Ok(Ok(user)) if user == bot => Check::pass("as_token", format!("accepted: the bot is {user}")),
        Ok(Ok(user)) => Check::fail(
            "as_token",
            format!("accepted, but the homeserver says it is {user}, not {bot}"),
            "appservice.bot_localpart and homeserver.domain must match the registration the homeserver loaded",
        ),
        Ok(Err(error)) => Check::fail(
            "as_token",
            format!("refused: {error}"),
            "the homeserver does not have this registration: run `walkie-bridge generate-registration`, \
             add the file to the homeserver's app_service_config_files and restart it",
        ),
        Err(_) => Check::fail("as_token", "no answer in time", "check the homeserver's load and logs"),
    }
}

/// The homeserver calls the bridge back with the right `hs_token` (appservice
/// ping). When the bridge is not running, a stand-in listens on
/// `appservice.listen` for the ping alone.
async fn ping_check(config: &Config, homeserver: &Homeserver) -> Check {
    let name = format!("appservice {}", config.appservice.url);
    let stop = CancellationToken::new();
    let stand_in = stand_in(
        config.appservice.listen,
        config.appservice.hs_token.clone(),
        stop.clone(),
    )
    .await;
    let pinged = tokio::time::timeout(CHECK_TIMEOUT, homeserver.ping(&config.appservice.id)).await;
    stop.cancel();
    let answered_by = if stand_in {
        "doctor's stand-in listener"
    } else {
        "the running bridge"
    };
    match pinged {
        Ok(Ok(took)) => Check::pass(
            name,
            format!(
                "the homeserver reached {answered_by} with the right hs_token in {} ms",
                took.as_millis()
            ),
        ),
        Ok(Err(error)) => {
            let text = error.to_string();
            let fix = match error.errcode() {
                Some("M_CONNECTION_FAILED") | Some("M_CONNECTION_TIMEOUT") => format!(
                    "the homeserver cannot connect to {}: set appservice.url (the registration's url) to an \
                     address the homeserver can reach, and appservice.listen to where the bridge listens",
                    config.appservice.url
                ),
                Some("M_BAD_STATUS") => "the bridge refused the homeserver's hs_token: the registration the \
                     homeserver loaded has another hs_token; regenerate it with `walkie-bridge \
                     generate-registration`"
                    .to_owned(),
                _ => "the homeserver does not know this appservice id, or is older than Matrix v1.7: \
                      check appservice.id against the registration's id"
                    .to_owned(),
            };
            Check::fail(name, text, fix)
        }
        Err(_) => Check::fail(name, "no answer in time", "check the homeserver's logs"),
    }
}

/// Listens on `listen` and answers the appservice ping (checking the
/// `hs_token`) until `stop`; `false` when something (the bridge) already
/// listens there.
async fn stand_in(listen: SocketAddr, hs_token: Secret, stop: CancellationToken) -> bool {
    let Ok(listener) = tokio::net::TcpListener::bind(listen).await else {
        return false;
    };
    let router = Router::new().route(
        "/_matrix/app/v1/ping",
        post(move |headers: HeaderMap| {
            let expected = format!("Bearer {}", hs_token.expose());
            async move {
                let given = headers
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok());
                if given == Some(expected.as_str()) {
                    (StatusCode::OK, "{}")
                } else {
                    (StatusCode::FORBIDDEN, r#"{"errcode":"M_FORBIDDEN"}"#)
                }
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    true
}

/// The room resolves, the bot is in it, and its power levels let the bot send
/// the floor state and invite the puppets.
async fn room_check(config: &Config, homeserver: &Homeserver, room: &RoomRef) -> Check {
    let name = format!("room {room}");
    let bot_id = format!(
        "@{}:{}",
        config.appservice.bot_localpart, config.homeserver.domain
    );
    let Ok(bot) = ruma::UserId::parse(&bot_id) else {
        return Check::fail(
            name,
            format!("{bot_id} is not a user id"),
            "check appservice.bot_localpart",
        );
    };
    let room_id = match room {
        RoomRef::Id(id) => match ruma::RoomId::parse(id) {
            Ok(id) => id,
            Err(error) => return Check::fail(name, error.to_string(), "check the channel's room"),
        },
        RoomRef::Alias(alias) => {
            let Ok(parsed) = ruma::RoomAliasId::parse(alias) else {
                return Check::fail(name, "not a room alias", "check the channel's room");
            };
            match homeserver.resolve_alias(&parsed).await {
                Ok(id) => id,
                Err(error) => {
                    return Check::fail(
                        name,
                        format!("does not resolve: {error}"),
                        "create the room with this alias, or point the channel at an existing one",
                    )
                }
            }
        }
    };
    match homeserver.room_state(&room_id, &bot).await {
        Ok(state) => {
            let missing = missing_powers(&state, &bot);
            if missing.is_empty() {
                Check::pass(
                    name,
                    format!("{room_id}: {bot} is in it and may do what it needs"),
                )
            } else {
                Check::fail(
                    name,
                    format!("{room_id}: {}", missing.join("; ")),
                    "raise the bot's power level in the room's settings",
                )
            }
        }
        Err(error) => Check::fail(
            name,
            format!("{room_id}: the bot cannot read it ({error})"),
            format!("invite {bot} to the room (the bridge joins it when it starts)"),
        ),
    }
}

/// The node logs in to the reflector with its callsign and key.
async fn svxreflector_check(id: &str, svx: &crate::config::SvxReflectorConfig) -> Check {
    let config = crate::endpoints::svxreflector_connect_config(svx);
    let name = format!("{id} {}", svx.server);
    match tokio::time::timeout(
        CHECK_TIMEOUT,
        walkie_svxreflector::Connection::connect(&config),
    )
    .await
    {
        Ok(Ok((handle, _events))) => {
            let info = handle.info();
            let talkgroups = match (info.protocol, svx.talkgroup) {
                (2, Some(tg)) => format!(", talkgroup {tg}"),
                (_, Some(tg)) => format!(" (no talkgroups there: talkgroup {tg} is ignored)"),
                _ => String::new(),
            };
            handle.disconnect();
            Check::pass(
                name,
                format!(
                    "logged in as {} with protocol {}{talkgroups}, {} nodes on the reflector",
                    svx.callsign,
                    info.protocol,
                    info.nodes.len()
                ),
            )
        }
        Ok(Err(error)) => {
            let fix = if error.needs_operator() {
                "ask the reflector's sysop for the node's callsign and key (and CODECS=OPUS)"
            } else {
                "check server (host:port), and that TCP and UDP to that port get through"
            };
            Check::fail(name, error.to_string(), fix)
        }
        Err(_) => Check::fail(
            name,
            "no answer in time",
            "check server (host:port) and the network",
        ),
    }
}
