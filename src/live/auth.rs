//! Who may log on to a live channel: the owner of a valid Matrix OpenID token who is
//! joined to the channel's room and opted in (MSC4002) — or opts in now.
//!
//! The OpenID token proves the user, not the device: `device_id` is the client's
//! word, used only as the key of its opt-in (as a Matrix client's own device ID
//! would be). The token is checked with the homeserver that issued it, through
//! `/_matrix/federation/v1/openid/userinfo`; only the bridge's own homeserver is
//! asked, so users of other homeservers are refused with a reason rather than
//! sent through federation discovery.
//!
//! The token travels in the userinfo URL's query, so no error that names the URL
//! is ever logged or answered (`reqwest::Error::without_url`).
//!
//! A homeserver answers an expired token as it answers one it never issued
//! (Synapse: `M_UNKNOWN_TOKEN` for both). To tell the person which it is, the
//! bridge remembers the tokens it saw accepted, as keyed hashes (never the
//! tokens): a remembered token the homeserver now refuses has expired (or was
//! revoked); any other one it does not know.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ruma::{OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::Value;
use tracing::{debug, warn};
use url::Url;

use super::limits::{clip, CLIP};
use super::protocol::{ErrorCode, Logon, MAX_LISTEN_S};
use crate::matrix::{Homeserver, MatrixError};
use crate::store::Store;

/// A userinfo check may take this long before the logon is refused as
/// "homeserver unavailable": a person is waiting at the button.
const USERINFO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest device ID taken; Matrix's are ten letters, Element's a few more.
const MAX_DEVICE_ID: usize = 255;
/// Accepted tokens remembered (to call them expired later), and for how long:
/// Synapse's last an hour.
const REMEMBERED_TOKENS: usize = 4096;
const REMEMBER_TOKENS_FOR: Duration = Duration::from_secs(2 * 3600);

/// A logon that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: OwnedUserId,
    pub device_id: String,
    /// From the user's room membership, else the user ID.
    pub display_name: String,
    /// Set when this logon opted the device in with an expiry.
    pub listening_until: Option<SystemTime>,
}

/// Why a logon was refused; `message` is for the person at the page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Checks logons against the homeserver and the store. Shared by every live
/// channel (in an `Arc`).
#[derive(Debug)]
pub struct Authenticator {
    http: reqwest::Client,
    userinfo: Url,
    homeserver: Homeserver,
    store: Store,
    bot: OwnedUserId,
    domain: String,
    seen: SeenTokens,
}

/// Keyed hashes of tokens the homeserver accepted, with when it last did. The
/// key is random per process, so the hashes say nothing outside it.
#[derive(Debug, Default)]
struct SeenTokens {
    key: RandomState,
    accepted: Mutex<HashMap<u64, SystemTime>>,
}

impl SeenTokens {
    fn accepted(&self, token: &str, now: SystemTime) {
        let hash = self.key.hash_one(token);
        let mut accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        if accepted.len() >= REMEMBERED_TOKENS {
            accepted.retain(|_, at| {
                now.duration_since(*at)
                    .is_ok_and(|age| age < REMEMBER_TOKENS_FOR)
            });
        }
        if accepted.len() >= REMEMBERED_TOKENS {
            // All recent: forget the oldest rather than grow.
            if let Some(oldest) = accepted.iter().min_by_key(|(_, at)| **at).map(|(h, _)| *h) {
                accepted.remove(&oldest);
            }
        }
        accepted.insert(hash, now);
    }

    /// When the homeserver last accepted `token`, if this bridge saw it.
    fn last_accepted(&self, token: &str) -> Option<SystemTime> {
        let hash = self.key.hash_one(token);
        let accepted = self.accepted.lock().unwrap_or_else(|e| e.into_inner());
        accepted.get(&hash).copied()
    }
}

#[derive(Deserialize)]
struct UserInfo {
    sub: String,
}

impl Authenticator {
    /// `openid_base` is where the homeserver serves the federation OpenID
    /// endpoint (usually its client URL).
    pub fn new(
        openid_base: &Url,
        homeserver: Homeserver,
        store: Store,
        bot: OwnedUserId,
        domain: String,
    ) -> Result<Self, reqwest::Error> {
        let mut userinfo = openid_base.clone();
        if let Ok(mut path) = userinfo.path_segments_mut() {
            path.pop_if_empty()
                .extend(["_matrix", "federation", "v1", "openid", "userinfo"]);
        }
        let http = reqwest::Client::builder()
            .timeout(USERINFO_TIMEOUT)
            .user_agent(concat!("walkie-bridge/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            userinfo,
            homeserver,
            store,
            bot,
            domain,
            seen: SeenTokens::default(),
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs every check of a logon to `room`, in the order that refuses the
    /// cheapest way first, and opts the device in when the logon asks to listen.
    pub async fn logon(
        &self,
        room: &RoomId,
        logon: &Logon,
        now: SystemTime,
    ) -> Result<Identity, Refusal> {
        let user_id = crate::matrix::ids::parse_user_id(&logon.user_id).map_err(|e| {
            Refusal::new(
                ErrorCode::BadRequest,
                format!(
                    "{:?} is not a Matrix user ID: {e}",
                    clip(&logon.user_id, CLIP)
                ),
            )
        })?;
        let device_id = logon.device_id.trim();
        if device_id.is_empty()
            || device_id.len() > MAX_DEVICE_ID
            || device_id.chars().any(char::is_control)
        {
            return Err(Refusal::new(
                ErrorCode::BadRequest,
                "device_id must be the client's Matrix device ID (1 to 255 printable characters)",
            ));
        }
        let listening_until = match (logon.listen, logon.listen_for_s) {
            (true, Some(seconds)) if seconds == 0 || seconds > MAX_LISTEN_S => {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    format!("listen_for_s must be 1..={MAX_LISTEN_S}; leave it out to listen until you opt out"),
                ))
            }
            (true, Some(seconds)) => Some(now + Duration::from_secs(seconds)),
            _ => None,
        };
        if user_id.server_name().as_str() != self.domain {
            return Err(Refusal::new(
                ErrorCode::ForeignUser,
                format!(
                    "this bridge checks OpenID tokens with {} only; {user_id} belongs to another homeserver",
                    self.domain
                ),
            ));
        }
        if logon.openid_token.is_empty() {
            return Err(Refusal::new(
                ErrorCode::InvalidToken,
                "openid_token is empty; request one with POST /_matrix/client/v3/user/{userId}/openid/request_token",
            ));
        }

        let owner = self.token_owner(&logon.openid_token, now).await?;
        if owner != user_id.as_str() {
            return Err(Refusal::new(
                ErrorCode::TokenMismatch,
                format!("the OpenID token belongs to {owner}, not to {user_id}"),
            ));
        }

        let display_name = self.membership(room, &user_id).await?;

        let store_failed = |e: crate::store::StoreError| {
            warn!(error = %e, "cannot read or write opt-ins for a live logon");
            Refusal::new(
                ErrorCode::Internal,
                "the bridge could not check your opt-in (database error); try again",
            )
        };
        if logon.listen {
            self.store
                .set_opt_in(user_id.as_str(), Some(device_id), listening_until)
                .await
                .map_err(store_failed)?;
        } else if self
            .store
            .opted_in(user_id.as_str(), Some(device_id), now)
            .await
            .map_err(store_failed)?
            .is_none()
        {
            return Err(Refusal::new(
                ErrorCode::NotOptedIn,
                "you have not opted in to this walkie-talkie channel: log on with \"listen\": true \
                 or say `!wt on` in the room",
            ));
        }
        Ok(Identity {
            user_id,
            device_id: device_id.to_owned(),
            display_name,
            listening_until,
        })
    }

    /// Whether `user` (on `device`) may still transmit at `now`: `!wt off` after
    /// the logon takes effect at the next press.
    pub async fn may_transmit(
        &self,
        user: &UserId,
        device: &str,
        now: SystemTime,
    ) -> Result<bool, crate::store::StoreError> {
        Ok(self
            .store
            .opted_in(user.as_str(), Some(device), now)
            .await?
            .is_some())
    }

    /// Whether `user` (on `device`) may talk in `room` now: still joined, still
    /// opted in. Asked at every press; `Err` says why not, for the page.
    pub async fn may_talk(
        &self,
        room: &RoomId,
        user: &UserId,
        device: &str,
        now: SystemTime,
    ) -> Result<(), String> {
        self.membership(room, user).await.map_err(|r| r.message)?;
        match self.may_transmit(user, device, now).await {
            Ok(true) => Ok(()),
            Ok(false) => Err("not opted in: log on again with listen, or say `!wt on`".into()),
            Err(error) => {
                warn!(%error, "cannot check a live client's opt-in");
                Err("the bridge could not check your opt-in (database error)".into())
            }
        }
    }

    /// The user the homeserver issued `token` to.
    async fn token_owner(&self, token: &str, now: SystemTime) -> Result<String, Refusal> {
        // `why` never holds the URL: the token is in its query.
        let unavailable = |why: String| {
            warn!(%why, "cannot check an OpenID token");
            Refusal::new(
                ErrorCode::HomeserverUnavailable,
                format!(
                    "the bridge could not check your token with the homeserver ({why}); try again"
                ),
            )
        };
        let response = self
            .http
            .get(self.userinfo.clone())
            .query(&[("access_token", token)])
            .send()
            .await
            .map_err(|e| unavailable(transport_error(e)))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| unavailable(transport_error(e)))?;
        if status.is_success() {
            let info: UserInfo = serde_json::from_slice(&body)
                .map_err(|e| unavailable(format!("unexpected userinfo answer: {e}")))?;
            self.seen.accepted(token, now);
            return Ok(info.sub);
        }
        let errcode = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("errcode")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        debug!(%status, %errcode, "homeserver refused an OpenID token");
        match (status.as_u16(), errcode.as_str()) {
            (401, _) | (403, _) | (_, "M_UNKNOWN_TOKEN") => Err(self.refused_token(token, now)),
            (404, _) => Err(unavailable(
                "the homeserver does not serve /_matrix/federation/v1/openid/userinfo at live.openid_url"
                    .into(),
            )),
            _ => Err(unavailable(format!("HTTP {status} {errcode}"))),
        }
    }

    /// Why the homeserver refused `token`: expired when this bridge saw it
    /// accepted before, else unknown.
    fn refused_token(&self, token: &str, now: SystemTime) -> Refusal {
        match self.seen.last_accepted(token) {
            Some(at) => {
                let ago = now.duration_since(at).map_or(0, |d| d.as_secs() / 60);
                Refusal::new(
                    ErrorCode::TokenExpired,
                    format!(
                        "this OpenID token has expired (the homeserver accepted it {ago} min ago \
                         and no longer does; they last an hour); request a new one"
                    ),
                )
            }
            None => Refusal::new(
                ErrorCode::InvalidToken,
                "the homeserver does not know this OpenID token: it never issued it, or so long \
                 ago that it is gone; request a new one",
            ),
        }
    }

    /// The user's display name when joined to `room`, else a refusal.
    async fn membership(&self, room: &RoomId, user: &UserId) -> Result<String, Refusal> {
        let content = match self
            .homeserver
            .state(room, "m.room.member", user.as_str(), &self.bot)
            .await
        {
            Ok(content) => content,
            Err(MatrixError::Api { errcode, .. }) if errcode == "M_FORBIDDEN" => {
                return Err(Refusal::new(
                    ErrorCode::ChannelUnavailable,
                    "the bridge cannot see this room's members (is its bot still in the room?)",
                ))
            }
            Err(e) => {
                warn!(error = %e, "cannot read a room membership for a live logon");
                return Err(Refusal::new(
                    ErrorCode::HomeserverUnavailable,
                    "the bridge could not check your room membership; try again",
                ));
            }
        };
        let joined = content
            .as_ref()
            .and_then(|c| c.get("membership"))
            .and_then(Value::as_str)
            == Some("join");
        if !joined {
            return Err(Refusal::new(
                ErrorCode::NotMember,
                format!("{user} is not joined to the channel's room {room}; join it first"),
            ));
        }
        Ok(content
            .as_ref()
            .and_then(|c| c.get("displayname"))
            .and_then(Value::as_str)
            .filter(|name| !name.trim().is_empty())
            .map_or_else(|| user.to_string(), str::to_owned))
    }
}

/// A request's failure without its URL (which holds the token), for the log and
/// for the person at the page.
fn transport_error(error: reqwest::Error) -> String {
    let error = error.without_url();
    // reqwest's own text is "error sending request": the cause says what failed.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Unix milliseconds, for the logon answer.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
