//! The bridge's client of the homeserver: the client-server API, called with the
//! appservice's `as_token`, as the bot or — with `?user_id=` — as one of its puppets.
//!
//! Requests are written out per endpoint rather than through ruma's generic
//! `OutgoingRequest` machinery: the bridge needs about a dozen endpoints, several
//! with appservice-only query parameters (`user_id`, upload `filename`) and one
//! streamed, size-capped download, and a thin function per endpoint keeps each of
//! those visible. Identifiers and event contents are ruma types throughout.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use reqwest::{Method, StatusCode};
use ruma::api::auth_scheme::{AuthScheme, SendAccessToken};
use ruma::api::path_builder::VersionHistory;
use ruma::api::{
    AppserviceUserIdentity, IncomingResponse, OutgoingRequest, OutgoingRequestAppserviceExt,
    SupportedVersions,
};
use ruma::{DeviceId, OwnedEventId, OwnedMxcUri, OwnedRoomId, RoomAliasId, RoomId, UserId};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use url::Url;

use crate::config::Secret;

/// How long one request may take before it counts as a transport failure. Uploads of
/// a 60 s voice message are ~200 kB: this is generous even on a slow link.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MatrixError {
    /// The homeserver answered with a Matrix error.
    #[error("{what}: the homeserver answered {status} {errcode}: {message}")]
    Api {
        what: String,
        status: StatusCode,
        errcode: String,
        message: String,
    },
    /// The homeserver could not be reached or the connection broke.
    #[error("{what}: cannot reach the homeserver: {source}")]
    Transport {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    /// The homeserver answered something that is not what the spec says.
    #[error("{what}: unexpected answer from the homeserver: {reason}")]
    BadResponse { what: String, reason: String },
    /// A download was larger than the caller allows.
    #[error("{what}: larger than the {limit} bytes allowed")]
    TooLarge { what: String, limit: usize },
}

impl MatrixError {
    /// Worth trying again later: the homeserver is down, overloaded or rate limiting.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Transport { .. } => true,
            Self::Api { status, .. } => {
                status.is_server_error() || *status == StatusCode::TOO_MANY_REQUESTS
            }
            Self::BadResponse { .. } | Self::TooLarge { .. } => false,
        }
    }

    pub fn errcode(&self) -> Option<&str> {
        match self {
            Self::Api { errcode, .. } => Some(errcode),
            _ => None,
        }
    }
}

/// The homeserver as the appservice sees it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Homeserver {
    http: reqwest::Client,
    base: Url,
    as_token: Secret,
    /// What ruma's request builders choose paths by ([`Self::send_as`]).
    versions: SupportedVersions,
}

/// The Matrix version ruma's requests are built for: v1.11 gives the `/v3/`
/// client paths (and authenticated media), which every homeserver the bridge
/// supports serves.
const SPEC_VERSION: &str = "v1.11";

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errcode: String,
    #[serde(default)]
    error: String,
}

/// A homeserver's error answer as a [`MatrixError::Api`].
fn api_error(what: &str, status: StatusCode, body: &[u8]) -> MatrixError {
    let error: ErrorBody = serde_json::from_slice(body).unwrap_or(ErrorBody {
        errcode: String::new(),
        error: String::from_utf8_lossy(body).chars().take(200).collect(),
    });
    MatrixError::Api {
        what: what.to_owned(),
        status,
        errcode: error.errcode,
        message: error.error,
    }
}

impl Homeserver {
    pub fn new(base: Url, as_token: Secret) -> Result<Self, MatrixError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("walkie-bridge/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| MatrixError::Transport {
                what: "building the HTTP client".into(),
                source,
            })?;
        Ok(Self {
            http,
            base,
            as_token,
            versions: SupportedVersions::from_parts(&[SPEC_VERSION.to_owned()], &BTreeMap::new()),
        })
    }

    pub fn base_url(&self) -> &Url {
        &self.base
    }

    /// `segments` are path segments (percent-encoded here), `as_user` masquerades.
    fn url(&self, segments: &[&str], as_user: Option<&UserId>) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty();
            path.extend(segments);
        }
        if let Some(user) = as_user {
            url.query_pairs_mut().append_pair("user_id", user.as_str());
        }
        url
    }

    async fn call<T: DeserializeOwned>(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<T, MatrixError> {
        let body = self.call_raw(what, request).await?;
        serde_json::from_slice(&body).map_err(|e| MatrixError::BadResponse {
            what: what.to_owned(),
            reason: e.to_string(),
        })
    }

    async fn call_raw(
        &self,
        what: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Bytes, MatrixError> {
        let transport = |source| MatrixError::Transport {
            what: what.to_owned(),
            source,
        };
        let response = request
            .bearer_auth(self.as_token.expose())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if status.is_success() {
            return Ok(body);
        }
        Err(api_error(what, status, &body))
    }

    /// Sends a request built from ruma's endpoint types as `user`, and when given
    /// as its `device` (identity assertion, `?user_id=…&device_id=…`). The crypto
    /// machines speak in these types, so their bodies are not written out here.
    ///
    /// `device_id` is the spec's name and the only one Synapse 1.163 reads
    /// (`synapse/api/auth/base.py`, `get_appservice_user`); MSC3202's unstable
    /// `org.matrix.msc3202.device_id` goes along for homeservers that know only
    /// that one. `user` is always sent, even for the registration's own
    /// `sender_localpart` user: Synapse fails (500) a `device_id` without it.
    pub async fn send_as<R>(
        &self,
        what: &str,
        request: R,
        user: &UserId,
        device: Option<&DeviceId>,
    ) -> Result<R::IncomingResponse, MatrixError>
    where
        R: OutgoingRequest<PathBuilder = VersionHistory>,
        for<'a> R::Authentication: AuthScheme<Input<'a> = SendAccessToken<'a>>,
    {
        let bad = |reason: String| MatrixError::BadResponse {
            what: what.to_owned(),
            reason,
        };
        let transport = |source| MatrixError::Transport {
            what: what.to_owned(),
            source,
        };
        let mut identity = AppserviceUserIdentity::new(user);
        identity.device_id = device;
        let request = request
            .try_into_http_request_with_identity::<Vec<u8>>(
                self.base.as_str().trim_end_matches('/'),
                SendAccessToken::Appservice(self.as_token.expose()),
                identity,
                Cow::Borrowed(&self.versions),
            )
            .map_err(|e| bad(format!("cannot build the request: {e}")))?;
        let mut request =
            reqwest::Request::try_from(request.map(reqwest::Body::from)).map_err(transport)?;
        if let Some(device) = device {
            request
                .url_mut()
                .query_pairs_mut()
                .append_pair("org.matrix.msc3202.device_id", device.as_str());
        }
        let response = self.http.execute(request).await.map_err(transport)?;
        let status = response.status();
        let body = response.bytes().await.map_err(transport)?;
        if !status.is_success() {
            return Err(api_error(what, status, &body));
        }
        let response = ruma::exports::http::Response::builder()
            .status(status.as_u16())
            .body(body)
            .map_err(|e| bad(e.to_string()))?;
        R::IncomingResponse::try_from_http_response(response).map_err(|e| bad(e.to_string()))
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        self.http.request(method, url)
    }

    /// Checks that the homeserver accepts our `as_token` (and can reach us back, when
    /// it supports the appservice ping).
    pub async fn whoami(&self, as_user: Option<&UserId>) -> Result<String, MatrixError> {
        #[derive(Deserialize)]
        struct WhoAmI {
            user_id: String,
        }
        let url = self.url(&["_matrix", "client", "v3", "account", "whoami"], as_user);
        let who: WhoAmI = self.call("whoami", self.request(Method::GET, url)).await?;
        Ok(who.user_id)
    }

    /// Registers a user in the appservice's namespace. An existing user is fine.
    pub async fn register(&self, localpart: &str) -> Result<(), MatrixError> {
        let url = self.url(&["_matrix", "client", "v3", "register"], None);
        let body = json!({
            "type": "m.login.application_service",
            "username": localpart,
            "inhibit_login": true,
        });
        match self
            .call::<Value>(
                &format!("registering {localpart}"),
                self.request(Method::POST, url).json(&body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn set_display_name(&self, user: &UserId, name: &str) -> Result<(), MatrixError> {
        let url = self.url(
            &[
                "_matrix",
                "client",
                "v3",
                "profile",
                user.as_str(),
                "displayname",
            ],
            Some(user),
        );
        self.call::<Value>(
            &format!("setting the display name of {user}"),
            self.request(Method::PUT, url)
                .json(&json!({ "displayname": name })),
        )
        .await
        .map(drop)
    }

    pub async fn resolve_alias(&self, alias: &RoomAliasId) -> Result<OwnedRoomId, MatrixError> {
        #[derive(Deserialize)]
        struct Resolved {
            room_id: OwnedRoomId,
        }
        let url = self.url(
            &[
                "_matrix",
                "client",
                "v3",
                "directory",
                "room",
                alias.as_str(),
            ],
            None,
        );
        let resolved: Resolved = self
            .call(
                &format!("resolving {alias}"),
                self.request(Method::GET, url),
            )
            .await?;
        Ok(resolved.room_id)
    }

    /// Joins `room` (an ID or alias) as `user`; returns the room ID.
    pub async fn join(&self, room: &str, user: &UserId) -> Result<OwnedRoomId, MatrixError> {
        #[derive(Deserialize)]
        struct Joined {
            room_id: OwnedRoomId,
        }
        let url = self.url(&["_matrix", "client", "v3", "join", room], Some(user));
        let joined: Joined = self
            .call(
                &format!("joining {room} as {user}"),
                self.request(Method::POST, url).json(&json!({})),
            )
            .await?;
        Ok(joined.room_id)
    }

    pub async fn invite(
        &self,
        room: &RoomId,
        user: &UserId,
        inviter: &UserId,
    ) -> Result<(), MatrixError> {
        let url = self.url(
            &["_matrix", "client", "v3", "rooms", room.as_str(), "invite"],
            Some(inviter),
        );
        self.call::<Value>(
            &format!("inviting {user} to {room}"),
            self.request(Method::POST, url)
                .json(&json!({ "user_id": user })),
        )
        .await
        .map(drop)
    }

    /// Shows or hides `user` as typing in `room`.
    pub async fn typing(
        &self,
        room: &RoomId,
        user: &UserId,
        typing: bool,
        timeout: Duration,
    ) -> Result<(), MatrixError> {
        let url = self.url(
            &[
                "_matrix",
                "client",
                "v3",
                "rooms",
                room.as_str(),
                "typing",
                user.as_str(),
            ],
            Some(user),
        );
        let body = if typing {
            json!({ "typing": true, "timeout": timeout.as_millis() as u64 })
        } else {
            json!({ "typing": false })
        };
        self.call::<Value>(
            &format!("typing notice of {user}"),
            self.request(Method::PUT, url).json(&body),
        )
        .await
        .map(drop)
    }

    /// The content of a state event, or `None` when the room has none.
    pub async fn state(
        &self,
        room: &RoomId,
        event_type: &str,
        state_key: &str,
        as_user: &UserId,
    ) -> Result<Option<Value>, MatrixError> {
        let url = self.url(
            &[
                "_matrix",
                "client",
                "v3",
                "rooms",
                room.as_str(),
                "state",
                event_type,
                state_key,
            ],
            Some(as_user),
        );
        match self
            .call(
                &format!("reading {event_type} in {room}"),
                self.request(Method::GET, url),
            )
            .await
        {
            Ok(content) => Ok(Some(content)),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every state event of `room`, as the homeserver sends them.
    pub async fn room_state(
        &self,
        room: &RoomId,
        as_user: &UserId,
    ) -> Result<Vec<Value>, MatrixError> {
        let url = self.url(
            &["_matrix", "client", "v3", "rooms", room.as_str(), "state"],
            Some(as_user),
        );
        self.call(
            &format!("reading the state of {room}"),
            self.request(Method::GET, url),
        )
        .await
    }

    pub async fn send_state(
        &self,
        room: &RoomId,
        event_type: &str,
        state_key: &str,
        content: &Value,
        as_user: &UserId,
    ) -> Result<OwnedEventId, MatrixError> {
        self.put_event(room, ["state", event_type, state_key], content, as_user)
            .await
    }

    /// Sends a room event. The homeserver deduplicates on (sender, `txn_id`), so a
    /// retry with the same `txn_id` cannot post twice.
    pub async fn send(
        &self,
        room: &RoomId,
        event_type: &str,
        txn_id: &str,
        content: &Value,
        as_user: &UserId,
    ) -> Result<OwnedEventId, MatrixError> {
        self.put_event(room, ["send", event_type, txn_id], content, as_user)
            .await
    }

    /// `PUT /rooms/{room}/{kind}/{type}/{key}`: state events and timeline events
    /// differ only in these three path segments.
    async fn put_event(
        &self,
        room: &RoomId,
        [kind, event_type, key]: [&str; 3],
        content: &Value,
        as_user: &UserId,
    ) -> Result<OwnedEventId, MatrixError> {
        #[derive(Deserialize)]
        struct Sent {
            event_id: OwnedEventId,
        }
        let url = self.url(
            &[
                "_matrix",
                "client",
                "v3",
                "rooms",
                room.as_str(),
                kind,
                event_type,
                key,
            ],
            Some(as_user),
        );
        let sent: Sent = self
            .call(
                &format!("sending {event_type} to {room}"),
                self.request(Method::PUT, url).json(content),
            )
            .await?;
        Ok(sent.event_id)
    }

    /// Uploads to the media repository as `as_user`; returns the `mxc://` URI.
    pub async fn upload(
        &self,
        data: Vec<u8>,
        content_type: &str,
        filename: &str,
        as_user: &UserId,
    ) -> Result<OwnedMxcUri, MatrixError> {
        #[derive(Deserialize)]
        struct Uploaded {
            content_uri: OwnedMxcUri,
        }
        let mut url = self.url(&["_matrix", "media", "v3", "upload"], Some(as_user));
        url.query_pairs_mut().append_pair("filename", filename);
        let uploaded: Uploaded = self
            .call(
                &format!("uploading {filename}"),
                self.request(Method::POST, url)
                    .header(reqwest::header::CONTENT_TYPE, content_type)
                    .body(data),
            )
            .await?;
        Ok(uploaded.content_uri)
    }

    /// Downloads media through the authenticated media API, refusing anything larger
    /// than `limit` bytes without reading it all.
    pub async fn download(&self, mxc: &str, limit: usize) -> Result<Vec<u8>, MatrixError> {
        let what = format!("downloading {mxc}");
        let (server, media_id) = mxc
            .strip_prefix("mxc://")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| MatrixError::BadResponse {
                what: what.clone(),
                reason: "not an mxc:// URI".into(),
            })?;
        let url = self.url(
            &[
                "_matrix", "client", "v1", "media", "download", server, media_id,
            ],
            None,
        );
        let transport = |source| MatrixError::Transport {
            what: what.clone(),
            source,
        };
        let mut response = self
            .request(Method::GET, url)
            .bearer_auth(self.as_token.expose())
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.map_err(transport)?;
            let error: ErrorBody = serde_json::from_slice(&body).unwrap_or(ErrorBody {
                errcode: String::new(),
                error: String::new(),
            });
            return Err(MatrixError::Api {
                what,
                status,
                errcode: error.errcode,
                message: error.error,
            });
        }
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(MatrixError::TooLarge { what, limit });
        }
        let mut data = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if data.len() + chunk.len() > limit {
                return Err(MatrixError::TooLarge { what, limit });
            }
            data.extend_from_slice(&chunk);
        }
        Ok(data)
    }

    /// Asks the homeserver to call our `/_matrix/app/v1/ping`: proves both
    /// directions work (MSC2659, in the spec since v1.7).
    pub async fn ping(&self, appservice_id: &str) -> Result<Duration, MatrixError> {
        #[derive(Deserialize)]
        struct Pong {
            duration_ms: u64,
        }
        let url = self.url(
            &[
                "_matrix",
                "client",
                "v1",
                "appservice",
                appservice_id,
                "ping",
            ],
            None,
        );
        let pong: Pong = self
            .call(
                "pinging the appservice through the homeserver",
                self.request(Method::POST, url).json(&json!({})),
            )
            .await?;
        Ok(Duration::from_millis(pong.duration_ms))
    }
}
