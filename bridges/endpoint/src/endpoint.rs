//! The seam between a channel hub and an external system.
//!
//! An endpoint is a task: it owns its connection and its reconnect loop, reports
//! talks upward through a [`HubLink`] and hears floor events and the floor holder's
//! audio back on the same link. It never sees another endpoint.

use crate::floor::{FloorEvent, Priority, TalkKind};
use crate::frame::{AudioFrame, DownFrame};
use crate::health::{ConnectionState, EndpointHealth};
use crate::ids::{EndpointId, StreamKey, Talker};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::lossy_queue;
use tokio_util::sync::CancellationToken;

/// What an endpoint says to its hub. `stream` separates simultaneous talkers on
/// one endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum Uplink {
    TalkStart {
        stream: StreamKey,
        /// Boxed: a talker is 104 bytes and starts are rare, while every uplink
        /// slot is the size of the largest variant (the hub's inbox allocates 32
        /// slots up front per channel, idle or not).
        talker: Box<Talker>,
        priority: Priority,
        kind: TalkKind,
    },
    Audio {
        stream: StreamKey,
        frame: AudioFrame,
    },
    TalkEnd {
        stream: StreamKey,
    },
    /// This endpoint will not carry transmission `tx`; `reason` is for the talker.
    Decline {
        tx: crate::ids::TxId,
        reason: String,
    },
}

/// What an endpoint hears from its hub.
#[derive(Debug, Clone, PartialEq)]
pub enum Downlink {
    Floor(FloorEvent),
    Audio(DownFrame),
}

/// Declared by an endpoint so the hub can serve it without knowing its system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// The endpoint wants decoded 48 kHz PCM with each frame (radio, pcm16 MQTT).
    pub needs_pcm: bool,
    /// The endpoint never talks (the recorder).
    pub listen_only: bool,
}

/// Something only one endpoint may own; claims are checked at start-up.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    SerialPort(PathBuf),
    SoundCard(String),
    Listen(std::net::SocketAddr),
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The endpoint cannot go on and retrying will not help (bad credentials,
    /// a device that does not exist). The message is for the operator.
    #[error("{0}")]
    Fatal(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type EndpointFuture = Pin<Box<dyn Future<Output = Result<(), EndpointError>> + Send>>;

/// One trait for every external system. `run` returns when `shutdown` fires (after
/// leaving its system in a safe state) or when it fails for good; reconnecting is
/// the endpoint's own business inside `run`.
pub trait Endpoint: Send + 'static {
    fn id(&self) -> &EndpointId;

    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    fn resources(&self) -> Vec<Resource> {
        Vec::new()
    }

    fn run(self: Box<Self>, link: HubLink, shutdown: CancellationToken) -> EndpointFuture;
}

/// The hub is gone (shutting down); the endpoint should wind down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the channel hub has stopped")]
pub struct HubClosed;

/// Counts what a slow or overeager endpoint lost, so it shows in logs and metrics
/// instead of vanishing silently.
#[derive(Debug, Default)]
pub struct LinkCounters {
    /// Uplink audio frames dropped because the hub's inbox was full.
    pub uplink_dropped: AtomicU64,
    /// Downlink audio frames skipped because this endpoint fell behind.
    pub downlink_lagged: AtomicU64,
}

/// An endpoint's end of its connection to the channel hub.
///
/// Control goes both ways without loss (down on an unbounded [`lossy_queue`],
/// which allocates only while events wait); audio upward is `try_send` (a full
/// hub inbox drops the frame rather than stall the endpoint's receive loop) and
/// audio downward is a bounded ring: a slow endpoint loses its oldest frames.
#[derive(Debug)]
pub struct HubLink {
    id: EndpointId,
    uplink: mpsc::Sender<(EndpointId, Uplink)>,
    gone: mpsc::UnboundedSender<EndpointId>,
    control: lossy_queue::Receiver<Ordered<FloorEvent>>,
    audio: lossy_queue::Receiver<Ordered<DownFrame>>,
    /// Taken off a channel but not yet handed out, because the other channel
    /// had something the hub sent earlier.
    next_control: Option<Ordered<FloorEvent>>,
    next_audio: Option<Ordered<DownFrame>>,
    counters: Arc<LinkCounters>,
    health: Arc<EndpointHealth>,
    /// Resolved once: recorded for every downlink frame.
    latency: metrics::Histogram,
}

/// A downlink message stamped with the hub's send order. Control and audio travel
/// on two channels (one lossless, one a lossy ring), and the stamp lets the link
/// hand them out in exactly the order the hub sent them: a `Released` never
/// overtakes the last frames of its transmission, a `Taken` never lags its first.
#[derive(Debug, Clone)]
pub struct Ordered<T> {
    pub order: u64,
    pub message: T,
    /// When the hub took the message in: for audio, the link records how long the
    /// frame spent in the bridge until its endpoint took it
    /// (`walkie_added_latency_seconds`).
    pub since: std::time::Instant,
}

impl HubLink {
    /// Used by the hub when it attaches an endpoint.
    pub fn new(
        id: EndpointId,
        uplink: mpsc::Sender<(EndpointId, Uplink)>,
        gone: mpsc::UnboundedSender<EndpointId>,
        control: lossy_queue::Receiver<Ordered<FloorEvent>>,
        audio: lossy_queue::Receiver<Ordered<DownFrame>>,
    ) -> Self {
        let id_label = id.to_string();
        Self {
            id,
            uplink,
            gone,
            control,
            audio,
            next_control: None,
            next_audio: None,
            counters: Arc::default(),
            health: Arc::default(),
            latency: metrics::histogram!("walkie_added_latency_seconds", "endpoint" => id_label),
        }
    }

    pub fn id(&self) -> &EndpointId {
        &self.id
    }

    pub fn counters(&self) -> Arc<LinkCounters> {
        Arc::clone(&self.counters)
    }

    /// Takes over the connection state and counters of an earlier link of the
    /// same endpoint (a restart after a panic), so `/status` keeps one row for it.
    pub fn continuing(mut self, health: Arc<EndpointHealth>, counters: Arc<LinkCounters>) -> Self {
        self.health = health;
        self.counters = counters;
        self
    }

    /// Whether this endpoint wants the channel's audio now (it does at first). An
    /// endpoint with nobody to pass audio to (a live page no browser has open)
    /// says no, and the hub stops queueing frames for it; floor events still come.
    pub fn set_audio_wanted(&mut self, wanted: bool) {
        self.audio.set_wanted(wanted);
        if !wanted {
            self.next_audio = None;
        }
    }

    /// The connection state this endpoint reports, for the daemon to read.
    pub fn health(&self) -> Arc<EndpointHealth> {
        Arc::clone(&self.health)
    }

    /// The endpoint is connected to its external system (logged in, subscribed).
    pub fn report_connected(&self) {
        self.health.set(ConnectionState::Connected, None);
    }

    /// Something the operator must fix although the endpoint works (shown on
    /// the status page until cleared with `None`).
    pub fn report_warning(&self, warning: Option<String>) {
        self.health.set_warning(warning);
    }

    /// The endpoint lost (or could not make) its connection and is retrying;
    /// `reason` is for the operator's status page.
    pub fn report_disconnected(&self, reason: impl Into<String>) {
        self.health
            .set(ConnectionState::Disconnected, Some(reason.into()));
    }

    pub async fn talk_start(
        &self,
        stream: StreamKey,
        talker: Talker,
        priority: Priority,
        kind: TalkKind,
    ) -> Result<(), HubClosed> {
        self.send(Uplink::TalkStart {
            stream,
            talker: Box::new(talker),
            priority,
            kind,
        })
        .await
    }

    pub async fn talk_end(&self, stream: StreamKey) -> Result<(), HubClosed> {
        self.send(Uplink::TalkEnd { stream }).await
    }

    /// Says that this endpoint will not carry `tx` (and why, in words for the
    /// talker). The hub passes it to the holder's endpoint; the floor is unchanged.
    pub async fn decline(
        &self,
        tx: crate::ids::TxId,
        reason: impl Into<String>,
    ) -> Result<(), HubClosed> {
        self.send(Uplink::Decline {
            tx,
            reason: reason.into(),
        })
        .await
    }

    /// Never waits: audio that cannot be taken now is worthless later.
    pub fn audio(&self, stream: StreamKey, frame: AudioFrame) -> Result<(), HubClosed> {
        match self
            .uplink
            .try_send((self.id.clone(), Uplink::Audio { stream, frame }))
        {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.counters.uplink_dropped.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(HubClosed),
        }
    }

    async fn send(&self, message: Uplink) -> Result<(), HubClosed> {
        self.uplink
            .send((self.id.clone(), message))
            .await
            .map_err(|_| HubClosed)
    }

    /// The next thing the hub has for this endpoint, in the order the hub sent it.
    /// Cancel-safe: nothing taken off a channel is lost if the future is dropped.
    pub async fn recv(&mut self) -> Result<Downlink, HubClosed> {
        loop {
            self.fill_ready();
            // Whatever the hub sent before a waiting message is already on its
            // channel (the hub sends from one task), so a lone waiting message
            // cannot be overtaken by anything still to come.
            let control_first = match (&self.next_control, &self.next_audio) {
                (Some(control), Some(audio)) => Some(control.order < audio.order),
                (Some(_), None) => Some(true),
                (None, Some(_)) => Some(false),
                (None, None) => None,
            };
            match control_first {
                Some(true) => {
                    if let Some(event) = self.next_control.take() {
                        return Ok(Downlink::Floor(event.message));
                    }
                }
                Some(false) => {
                    if let Some(frame) = self.next_audio.take() {
                        self.latency.record(frame.since.elapsed().as_secs_f64());
                        return Ok(Downlink::Audio(frame.message));
                    }
                }
                None => {}
            }
            tokio::select! {
                event = self.control.recv() => match event {
                    Ok(event) => self.next_control = Some(event),
                    // Closed; an unbounded queue never lags.
                    Err(_) => return Err(HubClosed),
                },
                frame = self.audio.recv() => match frame {
                    Ok(frame) => self.next_audio = Some(frame),
                    Err(lossy_queue::RecvError::Lagged(skipped)) => self.lagged(skipped),
                    Err(lossy_queue::RecvError::Closed) => return Err(HubClosed),
                },
            }
        }
    }

    /// Takes whatever is already waiting on either channel, without waiting.
    fn fill_ready(&mut self) {
        if self.next_control.is_none() {
            self.next_control = self.control.try_recv().ok();
        }
        while self.next_audio.is_none() {
            match self.audio.try_recv() {
                Ok(frame) => self.next_audio = Some(frame),
                Err(lossy_queue::TryRecvError::Lagged(skipped)) => self.lagged(skipped),
                Err(_) => break,
            }
        }
    }

    fn lagged(&mut self, skipped: u64) {
        self.counters
            .downlink_lagged
            .fetch_add(skipped, Ordering::Relaxed);
        tracing::debug!(endpoint = %self.id, skipped, "fell behind; oldest audio frames dropped");
    }
}

impl Drop for HubLink {
    /// Tells the hub this endpoint is gone, so a floor it held is released at once
    /// rather than after the idle timeout. Unbounded so it cannot fail for space.
    fn drop(&mut self) {
        // Closed first: the hub tells a link that is gone from a successor
        // attached under the same id by whether its control channel is closed.
        self.control.close();
        let _ = self.gone.send(self.id.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot of the hub's inbox is this size, and tokio's `mpsc` allocates
    /// 32 slots when a channel is made, idle or not: what is large and rare (the
    /// talker of a `TalkStart`) is boxed so that every channel does not pay for it.
    #[test]
    fn an_uplink_message_is_small() {
        let size = std::mem::size_of::<(EndpointId, Uplink)>();
        assert!(size <= 88, "(EndpointId, Uplink) is {size} bytes");
    }
}
