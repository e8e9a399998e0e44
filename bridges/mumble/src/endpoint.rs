//! The Mumble endpoint: one bot connection carries a channel's floor both ways.
//!
//! Up: each Mumble user's Opus stream becomes a talk on the hub (talker = user
//! name), ended by the terminator flag, by silence (`idle_release`), by the user
//! leaving, or by the connection dropping. Down: while another endpoint holds the
//! floor the bot sends its frames unchanged and ends with a terminator. A Mumble
//! user who talks while the floor is taken hears, by private text message, who
//! holds it (at most once per `busy_notice_interval`).
//!
//! The endpoint owns its connection and reconnects with exponential backoff; the
//! hub never learns that a Mumble server exists.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use walkie_endpoint::audio::packet_samples;
use walkie_endpoint::{
    AudioFrame, DenyReason, Downlink, Endpoint, EndpointError, EndpointFuture, EndpointId,
    FloorEvent, HubClosed, HubLink, Identity, Priority, StreamKey, TalkKind, Talker, TxId,
};

use crate::connection::{ConnectConfig, Connection, ConnectionHandle, Event};
use crate::state::Session;

/// Mumble counts voice sequence numbers in 10 ms units.
const SEQ_UNIT_SAMPLES: usize = 480;
/// How often silent talks are looked for.
const SILENCE_CHECK: Duration = Duration::from_millis(100);
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// What a `[mumble.NAME]` section becomes, in this crate's own words (the daemon
/// translates its config; this crate does not know the daemon).
#[derive(Debug, Clone)]
pub struct MumbleEndpointConfig {
    pub connect: ConnectConfig,
    /// Show the current talker in the bot's comment.
    pub announce_talker: bool,
    /// No voice from a user for this long ends their talk (lost terminator).
    pub idle_release: Duration,
    /// A busy user is told who holds the floor at most this often.
    pub busy_notice_interval: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_cap: Duration,
}

pub struct MumbleEndpoint {
    id: EndpointId,
    config: MumbleEndpointConfig,
}

impl MumbleEndpoint {
    pub fn new(id: EndpointId, config: MumbleEndpointConfig) -> Self {
        Self { id, config }
    }
}

/// Who vouches for a Mumble user: the server, for a registered user (their
/// name is then their registered name); nobody for a guest, whose name is
/// whatever their client sent. A certificate hash is known either way when the
/// client showed one, and the TLS handshake proved they hold its key.
fn identity_of(handle: &ConnectionHandle, session: Session) -> Identity {
    let Some(user) = handle.user(session) else {
        return Identity::Unverified { certificate: None };
    };
    let certificate = user
        .cert_hash
        .filter(|h| !h.is_empty())
        .map(|h| h.to_ascii_lowercase());
    match user.user_id {
        Some(user_id) => Identity::Registered {
            user_id,
            certificate,
        },
        None => Identity::Unverified { certificate },
    }
}

/// Mumble renders text messages and comments as HTML: a name from another
/// system ("<a href=…>" as a Matrix display name) must arrive as text.
pub fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

impl Endpoint for MumbleEndpoint {
    fn id(&self) -> &EndpointId {
        &self.id
    }

    fn run(self: Box<Self>, link: HubLink, shutdown: CancellationToken) -> EndpointFuture {
        Box::pin(async move {
            let mut session = Bridge::new(self.config, link);
            session.run(shutdown).await
        })
    }
}

/// One Mumble user talking, as a stream on the hub.
struct Talk {
    stream: StreamKey,
    first_seq: u64,
    last_heard: Instant,
}

struct Bridge {
    config: MumbleEndpointConfig,
    link: HubLink,
    talks: HashMap<Session, Talk>,
    names: HashMap<Session, String>,
    /// The other side's transmission the bot is sending into Mumble.
    sending: Option<TxId>,
    /// Who holds the floor, for busy notices.
    holder: Option<Talker>,
    busy_notified: HashMap<Session, Instant>,
}

enum Ended {
    Shutdown,
    HubGone,
    Disconnected(String),
}

impl Bridge {
    fn new(config: MumbleEndpointConfig, link: HubLink) -> Self {
        Self {
            config,
            link,
            talks: HashMap::new(),
            names: HashMap::new(),
            sending: None,
            holder: None,
            busy_notified: HashMap::new(),
        }
    }

    async fn run(&mut self, shutdown: CancellationToken) -> Result<(), EndpointError> {
        let mut retry = FIRST_RETRY;
        loop {
            let connect = Connection::connect(self.config.connect.clone());
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                connected = connect => connected,
            };
            let ended = match connected {
                Ok((handle, events)) => {
                    retry = FIRST_RETRY;
                    self.link.report_connected();
                    // A new connection tells its own (a VoiceBlocked event).
                    self.link.report_warning(None);
                    metrics::counter!("walkie_mumble_connects_total").increment(1);
                    info!(server = %self.config.connect.server, channel = %self.config.connect.channel, "connected to Mumble");
                    let ended = self.serve(&handle, events, &shutdown).await;
                    self.end_all_talks().await;
                    if matches!(ended, Ended::Shutdown | Ended::HubGone) {
                        handle.disconnect().await;
                    }
                    ended
                }
                Err(error) => Ended::Disconnected(error.to_string()),
            };
            match ended {
                Ended::Shutdown | Ended::HubGone => return Ok(()),
                Ended::Disconnected(reason) => {
                    self.link.report_disconnected(reason.clone());
                    metrics::counter!("walkie_mumble_disconnects_total").increment(1);
                    warn!(%reason, retry_in = ?retry, "Mumble connection lost; reconnecting");
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                // While disconnected the hub may still talk to us; keep its state
                // current so the bot knows the floor when it is back.
                _ = self.drain_hub_for(retry) => {}
            }
            retry = (retry * 2).min(self.config.reconnect_cap);
        }
    }

    /// Follows the floor while there is no Mumble connection to act on it.
    async fn drain_hub_for(&mut self, pause: Duration) {
        let deadline = tokio::time::sleep(pause);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                down = self.link.recv() => match down {
                    Ok(Downlink::Floor(event)) => self.track_floor(&event),
                    Ok(Downlink::Audio(_)) => {}
                    Err(HubClosed) => return,
                },
            }
        }
    }

    fn track_floor(&mut self, event: &FloorEvent) {
        match event {
            FloorEvent::Taken { tx, talker, .. } => {
                self.holder = Some(talker.clone());
                self.sending = Some(*tx);
            }
            FloorEvent::Released { tx, .. } => {
                if self.sending == Some(*tx) {
                    self.sending = None;
                }
                self.holder = None;
            }
            FloorEvent::Idle => {
                self.holder = None;
                self.sending = None;
            }
            _ => {}
        }
    }

    async fn serve(
        &mut self,
        handle: &ConnectionHandle,
        mut events: tokio::sync::mpsc::Receiver<Event>,
        shutdown: &CancellationToken,
    ) -> Ended {
        for user in handle.users() {
            self.names.insert(user.session, user.name);
        }
        let mut silence = tokio::time::interval(SILENCE_CHECK);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ended::Shutdown,
                down = self.link.recv() => match down {
                    Ok(down) => self.on_hub(handle, down).await,
                    Err(HubClosed) => return Ended::HubGone,
                },
                event = events.recv() => match event {
                    Some(Event::Disconnected { reason }) => return Ended::Disconnected(reason.to_string()),
                    None => return Ended::Disconnected("connection task ended".into()),
                    Some(event) => {
                        if self.on_mumble(handle, event).await.is_err() {
                            return Ended::HubGone;
                        }
                    }
                },
                _ = silence.tick() => {
                    if self.end_silent_talks().await.is_err() {
                        return Ended::HubGone;
                    }
                }
            }
        }
    }

    async fn on_hub(&mut self, handle: &ConnectionHandle, down: Downlink) {
        match down {
            Downlink::Floor(event) => {
                match &event {
                    FloorEvent::Taken { talker, .. } if self.config.announce_talker => {
                        let talker = html_escape(&talker.display_name);
                        let _ = handle.set_comment(&format!("Talking: {talker}")).await;
                    }
                    FloorEvent::Released { tx, .. } if self.sending == Some(*tx) => {
                        // An empty packet with the terminator flag: clients stop
                        // showing the bot as talking at once.
                        if let Err(error) = handle.send_voice(&[], true).await {
                            debug!(%error, "terminator not sent");
                        }
                        if self.config.announce_talker {
                            let _ = handle.set_comment("").await;
                        }
                    }
                    FloorEvent::Denied {
                        stream,
                        reason,
                        holder,
                    } => {
                        self.refused(handle, *stream, *reason, holder.as_ref())
                            .await;
                    }
                    FloorEvent::Granted { stream, .. } => {
                        // One of our own users holds the floor: the hub tells other
                        // endpoints `Taken`, us only `Granted`; busy notices need the name.
                        let name = self
                            .talks
                            .iter()
                            .find(|(_, t)| t.stream == *stream)
                            .and_then(|(session, _)| self.names.get(session));
                        if let Some(name) = name {
                            self.holder =
                                Some(Talker::new(name.clone(), format!("{name} (Mumble)")));
                        }
                    }
                    FloorEvent::Declined {
                        stream, by, reason, ..
                    } => {
                        self.declined(handle, *stream, by, reason).await;
                    }
                    FloorEvent::Queued { stream, .. } => {
                        // A live talk cannot wait: whoever talks over the floor
                        // holder is not heard, and is told so.
                        let holder = self.holder.clone();
                        self.refused(handle, *stream, DenyReason::Busy, holder.as_ref())
                            .await;
                    }
                    _ => {}
                }
                self.track_floor(&event);
            }
            Downlink::Audio(frame) => {
                if self.sending == Some(frame.tx) {
                    if let Err(error) = handle.send_voice(&frame.frame.opus, false).await {
                        debug!(%error, "voice frame not sent");
                    }
                }
            }
        }
    }

    async fn refused(
        &mut self,
        handle: &ConnectionHandle,
        stream: StreamKey,
        reason: DenyReason,
        holder: Option<&Talker>,
    ) {
        let Some(session) = self.session_of(stream) else {
            return;
        };
        let now = Instant::now();
        let recently = self
            .busy_notified
            .get(&session)
            .is_some_and(|at| now.duration_since(*at) < self.config.busy_notice_interval);
        if recently {
            return;
        }
        self.busy_notified.insert(session, now);
        let text = match (reason, holder) {
            (DenyReason::Busy, Some(holder)) => format!(
                "You are not heard: {} is talking. Wait until they are done.",
                html_escape(&holder.display_name)
            ),
            (reason, _) => format!("You are not heard: {reason}."),
        };
        if let Err(error) = handle.send_text_to_user(session, &text).await {
            debug!(%error, "busy notice not sent");
        }
    }

    /// The Mumble user whose talk is `stream`.
    fn session_of(&self, stream: StreamKey) -> Option<Session> {
        self.talks
            .iter()
            .find(|(_, t)| t.stream == stream)
            .map(|(session, _)| *session)
    }

    /// Another endpoint (a radio) will not carry this user's talk: they are heard
    /// everywhere else, and told once per talk why not there.
    async fn declined(
        &mut self,
        handle: &ConnectionHandle,
        stream: StreamKey,
        by: &EndpointId,
        reason: &str,
    ) {
        let Some(session) = self.session_of(stream) else {
            return;
        };
        // The reason names people (a Matrix user, a device label): text, not HTML.
        let text = format!(
            "You are not transmitted on {}: {}.",
            html_escape(by.as_str()),
            html_escape(reason)
        );
        if let Err(error) = handle.send_text_to_user(session, &text).await {
            debug!(%error, "decline notice not sent");
        }
    }

    async fn on_mumble(
        &mut self,
        handle: &ConnectionHandle,
        event: Event,
    ) -> Result<(), HubClosed> {
        match event {
            Event::Voice {
                session,
                name,
                seq,
                opus,
                terminator,
                ..
            } => {
                self.names.insert(session, name.clone());
                if !self.talks.contains_key(&session) {
                    if opus.is_empty() && terminator {
                        return Ok(());
                    }
                    let stream = StreamKey(u64::from(session.0));
                    let talker = Talker::new(name.clone(), format!("{name} (Mumble)"))
                        .with_identity(identity_of(handle, session));
                    self.link
                        .talk_start(stream, talker, Priority::Normal, TalkKind::Live)
                        .await?;
                    self.talks.insert(
                        session,
                        Talk {
                            stream,
                            first_seq: seq,
                            last_heard: Instant::now(),
                        },
                    );
                }
                if let Some(talk) = self.talks.get_mut(&session) {
                    talk.last_heard = Instant::now();
                    if !opus.is_empty() {
                        // Mumble counts in 10 ms units; the hub counts frames.
                        let units = packet_samples(&opus)
                            .map_or(2, |samples| (samples / SEQ_UNIT_SAMPLES).max(1));
                        let index = seq.saturating_sub(talk.first_seq) / units as u64;
                        self.link
                            .audio(talk.stream, AudioFrame::opus(index as u32, opus))?;
                    }
                    if terminator {
                        let stream = talk.stream;
                        self.talks.remove(&session);
                        self.link.talk_end(stream).await?;
                    }
                }
            }
            Event::UserLeft { session, .. } => {
                self.names.remove(&session);
                self.busy_notified.remove(&session);
                if let Some(talk) = self.talks.remove(&session) {
                    self.link.talk_end(talk.stream).await?;
                }
            }
            Event::UserMoved { session, .. } => {
                // Moved out of our channel mid-talk: that talk is over.
                if let Some(talk) = self.talks.remove(&session) {
                    self.link.talk_end(talk.stream).await?;
                }
            }
            Event::UserJoined { session, name, .. } => {
                self.names.insert(session, name);
            }
            // The operator must see it: the channel's talk reaches nobody there.
            Event::VoiceBlocked { reason } => self.link.report_warning(reason),
            Event::TextMessage { .. } | Event::Disconnected { .. } => {}
        }
        Ok(())
    }

    async fn end_silent_talks(&mut self) -> Result<(), HubClosed> {
        let now = Instant::now();
        let silent: Vec<Session> = self
            .talks
            .iter()
            .filter(|(_, t)| now.duration_since(t.last_heard) >= self.config.idle_release)
            .map(|(s, _)| *s)
            .collect();
        for session in silent {
            if let Some(talk) = self.talks.remove(&session) {
                debug!(session = session.0, "talk ended by silence");
                self.link.talk_end(talk.stream).await?;
            }
        }
        Ok(())
    }

    /// The connection is gone: every talk through it ends here, so the hub releases
    /// the floor now and the recording is archived up to the cut.
    async fn end_all_talks(&mut self) {
        for (_, talk) in self.talks.drain() {
            let _ = self.link.talk_end(talk.stream).await;
        }
        self.sending = None;
    }
}

#[cfg(test)]
mod tests {
    use super::html_escape;

    #[test]
    fn names_are_escaped_for_mumbles_html() {
        assert_eq!(
            html_escape(r#"<a href="x">O'Brien & co</a>"#),
            "&lt;a href=&quot;x&quot;&gt;O&#39;Brien &amp; co&lt;/a&gt;"
        );
        assert_eq!(html_escape("alice (Mumble)"), "alice (Mumble)");
    }
}
