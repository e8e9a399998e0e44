//! A small Matrix client-server API client for tests (JSON over reqwest).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, Url};
use serde_json::{json, Value};

use crate::{random_string, Error, Result};

/// Longest a single `/sync` long-poll waits on the server.
const SYNC_POLL: Duration = Duration::from_secs(10);
/// Events received by `/sync` but not yet returned by `sync_until`, at most.
const PENDING_MAX: usize = 10_000;
/// Timeline events per room asked for in each `/sync`.
const SYNC_FILTER: &str = r#"{"room":{"timeline":{"limit":100}}}"#;

/// Which part of a `/sync` answer an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncEventKind {
    /// `rooms.join.*.timeline` or `rooms.leave.*.timeline`.
    Timeline,
    /// `rooms.join.*.state` (state before the timeline, e.g. after a gap).
    State,
    /// `rooms.join.*.ephemeral` (typing, receipts).
    Ephemeral,
    /// `rooms.invite.*.invite_state` (the invite and stripped room state).
    Invite,
}

/// One event seen by [`MatrixClient::sync_until`].
#[derive(Debug, Clone, PartialEq)]
pub struct SyncEvent {
    pub room_id: String,
    pub kind: SyncEventKind,
    pub event: Value,
}

impl SyncEvent {
    /// `type` of the event ("" when missing).
    pub fn event_type(&self) -> &str {
        self.event["type"].as_str().unwrap_or("")
    }

    /// `sender` of the event ("" for ephemeral events, which have none).
    pub fn sender(&self) -> &str {
        self.event["sender"].as_str().unwrap_or("")
    }

    /// `event_id` of the event, if it has one.
    pub fn event_id(&self) -> Option<&str> {
        self.event["event_id"].as_str()
    }

    /// `state_key` of the event, if it is a state event.
    pub fn state_key(&self) -> Option<&str> {
        self.event["state_key"].as_str()
    }

    /// `content` of the event.
    pub fn content(&self) -> &Value {
        &self.event["content"]
    }

    /// `content.body`, if present.
    pub fn body(&self) -> Option<&str> {
        self.event["content"]["body"].as_str()
    }
}

/// `preset` of a new room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preset {
    /// `private_chat`: invite only.
    #[default]
    Private,
    /// `public_chat`: anyone may join.
    Public,
    /// `trusted_private_chat`: invitees get the creator's power.
    TrustedPrivate,
}

impl Preset {
    fn as_str(self) -> &'static str {
        match self {
            Preset::Private => "private_chat",
            Preset::Public => "public_chat",
            Preset::TrustedPrivate => "trusted_private_chat",
        }
    }
}

/// Options of [`MatrixClient::create_room`]; build with the chained setters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CreateRoom {
    pub name: Option<String>,
    /// Local part of an alias to publish (`ops` gives `#ops:server`).
    pub alias_localpart: Option<String>,
    pub invite: Vec<String>,
    pub preset: Preset,
    /// Merged by the server into the default `m.room.power_levels` content. In room
    /// version 12 (the default) the creator must not appear in `users`.
    pub power_level_overrides: Option<Value>,
    /// Extra state events: `(type, state_key, content)`.
    pub initial_state: Vec<(String, String, Value)>,
    pub room_version: Option<String>,
    pub topic: Option<String>,
}

impl CreateRoom {
    pub fn new() -> CreateRoom {
        CreateRoom::default()
    }

    pub fn name(mut self, name: impl Into<String>) -> CreateRoom {
        self.name = Some(name.into());
        self
    }

    pub fn alias(mut self, localpart: impl Into<String>) -> CreateRoom {
        self.alias_localpart = Some(localpart.into());
        self
    }

    pub fn invite(mut self, user_id: impl Into<String>) -> CreateRoom {
        self.invite.push(user_id.into());
        self
    }

    pub fn preset(mut self, preset: Preset) -> CreateRoom {
        self.preset = preset;
        self
    }

    pub fn power_levels(mut self, overrides: Value) -> CreateRoom {
        self.power_level_overrides = Some(overrides);
        self
    }

    pub fn initial_state(
        mut self,
        event_type: impl Into<String>,
        state_key: impl Into<String>,
        content: Value,
    ) -> CreateRoom {
        self.initial_state
            .push((event_type.into(), state_key.into(), content));
        self
    }

    pub fn room_version(mut self, version: impl Into<String>) -> CreateRoom {
        self.room_version = Some(version.into());
        self
    }

    pub fn topic(mut self, topic: impl Into<String>) -> CreateRoom {
        self.topic = Some(topic.into());
        self
    }

    fn body(&self) -> Value {
        let mut body = json!({
            "preset": self.preset.as_str(),
            "invite": self.invite,
        });
        if self.preset == Preset::Public {
            body["visibility"] = "public".into();
        }
        if let Some(name) = &self.name {
            body["name"] = name.as_str().into();
        }
        if let Some(alias) = &self.alias_localpart {
            body["room_alias_name"] = alias.as_str().into();
        }
        if let Some(topic) = &self.topic {
            body["topic"] = topic.as_str().into();
        }
        if let Some(overrides) = &self.power_level_overrides {
            body["power_level_content_override"] = overrides.clone();
        }
        if let Some(version) = &self.room_version {
            body["room_version"] = version.as_str().into();
        }
        if !self.initial_state.is_empty() {
            body["initial_state"] = self
                .initial_state
                .iter()
                .map(|(event_type, state_key, content)| {
                    json!({"type": event_type, "state_key": state_key, "content": content})
                })
                .collect();
        }
        body
    }
}

/// Answer of `/openid/request_token`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct OpenIdToken {
    pub access_token: String,
    pub token_type: String,
    pub matrix_server_name: String,
    pub expires_in: u64,
}

/// Answer of `/account/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Whoami {
    pub user_id: String,
    #[serde(default)]
    pub device_id: Option<String>,
    #[serde(default)]
    pub is_guest: bool,
}

#[derive(Debug, Default)]
struct SyncState {
    since: Option<String>,
    pending: VecDeque<SyncEvent>,
}

/// A Matrix client for one access token. Clones share the `/sync` position.
#[derive(Debug, Clone)]
pub struct MatrixClient {
    http: reqwest::Client,
    base: Url,
    access_token: String,
    /// Appservice identity assertion (`?user_id=`), for clients with an `as_token`.
    assert_user_id: Option<String>,
    txn_prefix: String,
    txn_counter: Arc<AtomicU64>,
    sync: Arc<tokio::sync::Mutex<SyncState>>,
}

impl MatrixClient {
    /// A client for the homeserver at `base_url` using `access_token` (empty: send
    /// no `Authorization` header).
    pub fn new(base_url: impl AsRef<str>, access_token: impl Into<String>) -> MatrixClient {
        let base = Url::parse(base_url.as_ref()).expect("homeserver URL parses");
        MatrixClient {
            http: reqwest::Client::builder()
                .no_proxy()
                .build()
                .expect("building an HTTP client"),
            base,
            access_token: access_token.into(),
            assert_user_id: None,
            txn_prefix: random_string(12),
            txn_counter: Arc::new(AtomicU64::new(0)),
            sync: Arc::default(),
        }
    }

    /// An appservice client: `as_token` as access token, acting as `user_id` (sent
    /// as `?user_id=` on every request); `None` acts as the appservice's sender.
    pub fn appservice(
        base_url: impl AsRef<str>,
        as_token: impl Into<String>,
        user_id: Option<&str>,
    ) -> MatrixClient {
        let mut client = MatrixClient::new(base_url, as_token);
        client.assert_user_id = user_id.map(str::to_string);
        client
    }

    /// The homeserver base URL.
    pub fn base_url(&self) -> &Url {
        &self.base
    }

    pub fn access_token(&self) -> &str {
        &self.access_token
    }

    /// `GET /_matrix/client/v3/account/whoami`.
    pub async fn whoami(&self) -> Result<Whoami> {
        let answer = self
            .call(
                Method::GET,
                &["_matrix", "client", "v3", "account", "whoami"],
                None,
            )
            .await?;
        parse(answer, "whoami")
    }

    /// `GET /_matrix/client/versions` (no authentication needed).
    pub async fn versions(&self) -> Result<Value> {
        self.call(Method::GET, &["_matrix", "client", "versions"], None)
            .await
    }

    /// Creates a room; returns its room ID.
    pub async fn create_room(&self, options: &CreateRoom) -> Result<String> {
        let answer = self
            .call(
                Method::POST,
                &["_matrix", "client", "v3", "createRoom"],
                Some(&options.body()),
            )
            .await?;
        string_field(&answer, "room_id", "createRoom")
    }

    /// Joins a room by ID or alias; returns the room ID.
    pub async fn join(&self, room_id_or_alias: &str) -> Result<String> {
        let answer = self
            .call(
                Method::POST,
                &["_matrix", "client", "v3", "join", room_id_or_alias],
                Some(&json!({})),
            )
            .await?;
        string_field(&answer, "room_id", "join")
    }

    /// Leaves a room.
    pub async fn leave(&self, room_id: &str) -> Result<()> {
        self.call(
            Method::POST,
            &["_matrix", "client", "v3", "rooms", room_id, "leave"],
            Some(&json!({})),
        )
        .await
        .map(drop)
    }

    /// Invites `user_id` to a room.
    pub async fn invite(&self, room_id: &str, user_id: &str) -> Result<()> {
        self.call(
            Method::POST,
            &["_matrix", "client", "v3", "rooms", room_id, "invite"],
            Some(&json!({"user_id": user_id})),
        )
        .await
        .map(drop)
    }

    /// Resolves `#alias:server` to a room ID.
    pub async fn resolve_alias(&self, alias: &str) -> Result<String> {
        let answer = self
            .call(
                Method::GET,
                &["_matrix", "client", "v3", "directory", "room", alias],
                None,
            )
            .await?;
        string_field(&answer, "room_id", "resolve alias")
    }

    /// Sends an `m.text` message; returns the event ID.
    pub async fn send_text(&self, room_id: &str, body: &str) -> Result<String> {
        self.send_event(
            room_id,
            "m.room.message",
            &json!({"msgtype": "m.text", "body": body}),
        )
        .await
    }

    /// Sends a message event with a fresh transaction ID; returns the event ID.
    pub async fn send_event(
        &self,
        room_id: &str,
        event_type: &str,
        content: &Value,
    ) -> Result<String> {
        let txn = format!(
            "walkie-harness-{}-{}",
            self.txn_prefix,
            self.txn_counter.fetch_add(1, Ordering::Relaxed)
        );
        let answer = self
            .call(
                Method::PUT,
                &[
                    "_matrix", "client", "v3", "rooms", room_id, "send", event_type, &txn,
                ],
                Some(content),
            )
            .await?;
        string_field(&answer, "event_id", "send event")
    }

    /// One event as the server stores it (`GET /rooms/{roomId}/event/{eventId}`): for
    /// an encrypted event, the `m.room.encrypted` ciphertext.
    pub async fn get_event(&self, room_id: &str, event_id: &str) -> Result<Value> {
        self.call(
            Method::GET,
            &[
                "_matrix", "client", "v3", "rooms", room_id, "event", event_id,
            ],
            None,
        )
        .await
    }

    /// Sends to-device messages (`PUT /sendToDevice/{eventType}/{txnId}`);
    /// `messages` is `{user_id: {device_id or "*": content}}`.
    pub async fn send_to_device(&self, event_type: &str, messages: &Value) -> Result<()> {
        let txn = format!(
            "walkie-harness-{}-{}",
            self.txn_prefix,
            self.txn_counter.fetch_add(1, Ordering::Relaxed)
        );
        self.call(
            Method::PUT,
            &["_matrix", "client", "v3", "sendToDevice", event_type, &txn],
            Some(&json!({ "messages": messages })),
        )
        .await?;
        Ok(())
    }

    /// Sets a state event; returns the event ID.
    pub async fn send_state(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
        content: &Value,
    ) -> Result<String> {
        let answer = self
            .call(
                Method::PUT,
                &[
                    "_matrix", "client", "v3", "rooms", room_id, "state", event_type, state_key,
                ],
                Some(content),
            )
            .await?;
        string_field(&answer, "event_id", "send state")
    }

    /// The content of a state event, `None` when the room has none (404 `M_NOT_FOUND`).
    pub async fn get_state(
        &self,
        room_id: &str,
        event_type: &str,
        state_key: &str,
    ) -> Result<Option<Value>> {
        match self
            .call(
                Method::GET,
                &[
                    "_matrix", "client", "v3", "rooms", room_id, "state", event_type, state_key,
                ],
                None,
            )
            .await
        {
            Ok(content) => Ok(Some(content)),
            Err(error) if error.status() == Some(404) && error.errcode() == Some("M_NOT_FOUND") => {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// The user IDs of the room's joined members.
    pub async fn joined_members(&self, room_id: &str) -> Result<Vec<String>> {
        let answer = self
            .call(
                Method::GET,
                &[
                    "_matrix",
                    "client",
                    "v3",
                    "rooms",
                    room_id,
                    "joined_members",
                ],
                None,
            )
            .await?;
        let joined = answer["joined"]
            .as_object()
            .ok_or_else(|| Error::Unexpected {
                what: "joined_members".into(),
                body: answer.to_string(),
            })?;
        Ok(joined.keys().cloned().collect())
    }

    /// A user's display name (`None` when unset).
    pub async fn displayname(&self, user_id: &str) -> Result<Option<String>> {
        let answer = self
            .call(
                Method::GET,
                &["_matrix", "client", "v3", "profile", user_id],
                None,
            )
            .await?;
        Ok(answer["displayname"].as_str().map(str::to_string))
    }

    /// The last `limit` events of a room's timeline, newest first
    /// (`/messages?dir=b`).
    pub async fn room_messages(&self, room_id: &str, limit: u32) -> Result<Vec<Value>> {
        let mut url = self.url(&["_matrix", "client", "v3", "rooms", room_id, "messages"]);
        url.query_pairs_mut()
            .append_pair("dir", "b")
            .append_pair("limit", &limit.to_string());
        let answer = self.call_url(Method::GET, url, None).await?;
        match answer["chunk"].as_array() {
            Some(chunk) => Ok(chunk.clone()),
            None => Err(Error::Unexpected {
                what: "messages".into(),
                body: answer.to_string(),
            }),
        }
    }

    /// Uploads media (`POST /_matrix/media/v3/upload`); returns the `mxc://` URI.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        content_type: &str,
        filename: &str,
    ) -> Result<String> {
        let mut url = self.url(&["_matrix", "media", "v3", "upload"]);
        url.query_pairs_mut().append_pair("filename", filename);
        let path = url.path().to_string();
        let request = self
            .authorised(self.http.post(url))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes);
        let answer = self.execute(request, "POST", &path).await?;
        let answer = json_or_error(answer, "POST", &path).await?;
        string_field(&answer, "content_uri", "upload")
    }

    /// Downloads media through the authenticated
    /// `/_matrix/client/v1/media/download/{server}/{mediaId}`.
    pub async fn download(&self, mxc: &str) -> Result<Vec<u8>> {
        let (server, media_id) = mxc
            .strip_prefix("mxc://")
            .and_then(|rest| rest.split_once('/'))
            .ok_or_else(|| Error::Unexpected {
                what: "download: not an mxc:// URI".into(),
                body: mxc.to_string(),
            })?;
        let url = self.url(&[
            "_matrix", "client", "v1", "media", "download", server, media_id,
        ]);
        let path = url.path().to_string();
        let answer = self
            .execute(self.authorised(self.http.get(url)), "GET", &path)
            .await?;
        if !answer.status().is_success() {
            return Err(matrix_error(answer, "GET", &path).await);
        }
        let bytes = answer.bytes().await.map_err(|source| Error::Http {
            method: "GET".into(),
            path,
            source,
        })?;
        Ok(bytes.to_vec())
    }

    /// Uploads Ogg Opus bytes and sends them as a voice message: `m.audio` with
    /// `info` (mimetype, duration, size), `org.matrix.msc1767.audio` (duration,
    /// waveform) and `org.matrix.msc3245.voice`. Returns the event ID.
    pub async fn send_voice_message(
        &self,
        room_id: &str,
        ogg_bytes: Vec<u8>,
        duration_ms: u64,
    ) -> Result<String> {
        let size = ogg_bytes.len();
        let mxc = self
            .upload(ogg_bytes, "audio/ogg", "voice-message.ogg")
            .await?;
        let waveform = vec![512; 100];
        let content = json!({
            "msgtype": "m.audio",
            "body": "Voice message",
            "url": mxc,
            "info": {"mimetype": "audio/ogg", "duration": duration_ms, "size": size},
            "org.matrix.msc1767.audio": {"duration": duration_ms, "waveform": waveform},
            "org.matrix.msc3245.voice": {},
        });
        self.send_event(room_id, "m.room.message", &content).await
    }

    /// Requests an OpenID token for this user
    /// (`POST /_matrix/client/v3/user/{userId}/openid/request_token`).
    pub async fn openid_token(&self) -> Result<OpenIdToken> {
        let user_id = match &self.assert_user_id {
            Some(user_id) => user_id.clone(),
            None => self.whoami().await?.user_id,
        };
        let answer = self
            .call(
                Method::POST,
                &[
                    "_matrix",
                    "client",
                    "v3",
                    "user",
                    &user_id,
                    "openid",
                    "request_token",
                ],
                Some(&json!({})),
            )
            .await?;
        parse(answer, "openid request_token")
    }

    /// Long-polls `/sync` until an event for which `predicate` holds arrives, and
    /// returns it.
    ///
    /// Every event the client sees (timeline, state, ephemeral, invites) is offered
    /// to `predicate` once per call, in order; events that did not match are kept and
    /// offered again to later calls, so two awaited events that arrive in the same
    /// `/sync` batch are both found. The first call starts with an initial sync (the
    /// recent timeline of every room), so events sent before the call are found too.
    pub async fn sync_until<F>(&self, mut predicate: F, timeout: Duration) -> Result<SyncEvent>
    where
        F: FnMut(&SyncEvent) -> bool,
    {
        let deadline = Instant::now() + timeout;
        let mut state = self.sync.lock().await;
        let mut offered = 0;
        loop {
            if let Some(index) = state.pending.iter().skip(offered).position(&mut predicate) {
                let index = offered + index;
                return Ok(state.pending.remove(index).expect("index in range"));
            }
            offered = state.pending.len();
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                let seen: Vec<String> = state
                    .pending
                    .iter()
                    .rev()
                    .take(20)
                    .map(|e| {
                        format!(
                            "{:?} {} {} {}",
                            e.kind,
                            e.room_id,
                            e.event_type(),
                            e.sender()
                        )
                    })
                    .collect();
                return Err(Error::Timeout {
                    what: format!(
                        "a matching sync event (latest unmatched, newest first: [{}])",
                        seen.join("; ")
                    ),
                    after: timeout,
                });
            }
            let poll = if state.since.is_some() {
                remaining.min(SYNC_POLL)
            } else {
                Duration::ZERO
            };
            let mut url = self.url(&["_matrix", "client", "v3", "sync"]);
            {
                let mut query = url.query_pairs_mut();
                query
                    .append_pair("timeout", &poll.as_millis().to_string())
                    .append_pair("filter", SYNC_FILTER);
                if let Some(since) = &state.since {
                    query.append_pair("since", since);
                }
            }
            let path = url.path().to_string();
            let request = self
                .authorised(self.http.get(url))
                .timeout(poll + Duration::from_secs(30));
            let answer = self.execute(request, "GET", &path).await?;
            let answer = json_or_error(answer, "GET", &path).await?;
            collect_sync_events(&answer, &mut state.pending);
            let dropped = state.pending.len().saturating_sub(PENDING_MAX);
            if dropped > 0 {
                state.pending.drain(..dropped);
                offered = offered.saturating_sub(dropped);
            }
            state.since = Some(string_field(&answer, "next_batch", "sync")?);
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("homeserver URL can have a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn authorised(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        // An empty token means "no authentication" (e.g. for /versions).
        let request = if self.access_token.is_empty() {
            request
        } else {
            request.bearer_auth(&self.access_token)
        };
        match &self.assert_user_id {
            Some(user_id) => request.query(&[("user_id", user_id)]),
            None => request,
        }
    }

    async fn call(&self, method: Method, segments: &[&str], body: Option<&Value>) -> Result<Value> {
        self.call_url(method, self.url(segments), body).await
    }

    async fn call_url(&self, method: Method, url: Url, body: Option<&Value>) -> Result<Value> {
        let path = url.path().to_string();
        let method_name = method.to_string();
        let mut request = self.authorised(self.http.request(method, url));
        if let Some(body) = body {
            request = request.json(body);
        }
        let answer = self.execute(request, &method_name, &path).await?;
        json_or_error(answer, &method_name, &path).await
    }

    /// Sends a request, retrying while the server answers 429 (bounded).
    async fn execute(
        &self,
        request: reqwest::RequestBuilder,
        method: &str,
        path: &str,
    ) -> Result<reqwest::Response> {
        let transport = |source| Error::Http {
            method: method.into(),
            path: path.into(),
            source,
        };
        for _ in 0..5 {
            let Some(attempt) = request.try_clone() else {
                break;
            };
            let answer = attempt.send().await.map_err(transport)?;
            if answer.status() != StatusCode::TOO_MANY_REQUESTS {
                return Ok(answer);
            }
            let body: Value = answer.json().await.unwrap_or_default();
            let wait = body["retry_after_ms"].as_u64().unwrap_or(500).min(5_000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        request.send().await.map_err(transport)
    }
}

fn collect_sync_events(answer: &Value, pending: &mut VecDeque<SyncEvent>) {
    let mut push = |room_id: &str, kind, events: &Value| {
        for event in events.as_array().into_iter().flatten() {
            pending.push_back(SyncEvent {
                room_id: room_id.to_string(),
                kind,
                event: event.clone(),
            });
        }
    };
    let rooms = &answer["rooms"];
    for (room_id, room) in rooms["invite"].as_object().into_iter().flatten() {
        push(
            room_id,
            SyncEventKind::Invite,
            &room["invite_state"]["events"],
        );
    }
    for (room_id, room) in rooms["join"].as_object().into_iter().flatten() {
        push(room_id, SyncEventKind::State, &room["state"]["events"]);
        push(
            room_id,
            SyncEventKind::Timeline,
            &room["timeline"]["events"],
        );
        push(
            room_id,
            SyncEventKind::Ephemeral,
            &room["ephemeral"]["events"],
        );
    }
    for (room_id, room) in rooms["leave"].as_object().into_iter().flatten() {
        push(
            room_id,
            SyncEventKind::Timeline,
            &room["timeline"]["events"],
        );
    }
}

/// The JSON body of a success, or an [`Error::Matrix`] carrying status and errcode.
pub(crate) async fn json_or_error(
    answer: reqwest::Response,
    method: &str,
    path: &str,
) -> Result<Value> {
    if !answer.status().is_success() {
        return Err(matrix_error(answer, method, path).await);
    }
    answer.json().await.map_err(|source| Error::Http {
        method: method.into(),
        path: path.into(),
        source,
    })
}

async fn matrix_error(answer: reqwest::Response, method: &str, path: &str) -> Error {
    let status = answer.status().as_u16();
    let text = answer.text().await.unwrap_or_default();
    let body: Value = serde_json::from_str(&text).unwrap_or_default();
    Error::Matrix {
        method: method.into(),
        path: path.into(),
        status,
        errcode: body["errcode"].as_str().map(str::to_string),
        message: body["error"].as_str().map(str::to_string).unwrap_or(text),
    }
}

fn string_field(answer: &Value, field: &str, what: &str) -> Result<String> {
    answer[field]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| Error::Unexpected {
            what: format!("{what}: no string {field:?}"),
            body: answer.to_string(),
        })
}

fn parse<T: serde::de::DeserializeOwned>(answer: Value, what: &str) -> Result<T> {
    serde_json::from_value(answer.clone()).map_err(|_| Error::Unexpected {
        what: what.into(),
        body: answer.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        let client = MatrixClient::new("http://127.0.0.1:1", "token");
        let url = client.url(&[
            "_matrix",
            "client",
            "v3",
            "directory",
            "room",
            "#ops:walkie.test",
        ]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:1/_matrix/client/v3/directory/room/%23ops:walkie.test"
        );
        let url = client.url(&["rooms", "!a/b:x", "state", "m.room.name", ""]);
        assert_eq!(url.path(), "/rooms/!a%2Fb:x/state/m.room.name/");
    }

    #[test]
    fn sync_events_are_collected_in_order() {
        let answer = json!({"rooms": {
            "invite": {"!i:x": {"invite_state": {"events": [{"type": "m.room.member"}]}}},
            "join": {"!j:x": {
                "state": {"events": [{"type": "s"}]},
                "timeline": {"events": [{"type": "t1"}, {"type": "t2"}]},
                "ephemeral": {"events": [{"type": "m.typing"}]},
            }},
        }});
        let mut pending = VecDeque::new();
        collect_sync_events(&answer, &mut pending);
        let seen: Vec<(SyncEventKind, &str)> =
            pending.iter().map(|e| (e.kind, e.event_type())).collect();
        assert_eq!(
            seen,
            vec![
                (SyncEventKind::Invite, "m.room.member"),
                (SyncEventKind::State, "s"),
                (SyncEventKind::Timeline, "t1"),
                (SyncEventKind::Timeline, "t2"),
                (SyncEventKind::Ephemeral, "m.typing"),
            ]
        );
    }

    #[test]
    fn create_room_body_carries_the_options() {
        let body = CreateRoom::new()
            .name("Ops")
            .alias("ops")
            .invite("@b:x")
            .preset(Preset::Public)
            .power_levels(json!({"events": {"org.matrix.msc4002.floor": 50}}))
            .initial_state("m.room.topic", "", json!({"topic": "t"}))
            .body();
        assert_eq!(body["name"], "Ops");
        assert_eq!(body["room_alias_name"], "ops");
        assert_eq!(body["invite"], json!(["@b:x"]));
        assert_eq!(body["preset"], "public_chat");
        assert_eq!(body["visibility"], "public");
        assert_eq!(
            body["power_level_content_override"]["events"]["org.matrix.msc4002.floor"],
            50
        );
        assert_eq!(body["initial_state"][0]["type"], "m.room.topic");
    }
}
