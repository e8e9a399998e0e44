//! The SvxReflector endpoint: the bridge is a node on a reflector, and one
//! talkgroup of it is the channel.
//!
//! Up: the talkgroup's talker (the reflector names them in `TalkerStart`) is a
//! talk on the hub, "SM0ABC (SvxReflector)", their Opus packets passed through
//! untouched; the talk ends on `TalkerStop`, on the reflector's end of stream, on
//! silence or on a lost connection. Down: the floor holder's frames go to the
//! talkgroup as the bridge's node, unchanged, and a flush ends them.
//!
//! One talker on both sides. The reflector's lock is first come, first served by
//! the first audio packet, and its decision is on the air at every node of the
//! network at once; the channel's floor is the bridge's own. So:
//! - a talkgroup that is busy is never transmitted into: the holder's transmission
//!   is declined here ("SM0ABC is talking on the network"), so they are told;
//! - when the reflector hands the talkgroup to another node while the bridge was
//!   starting to send (a collision), the network's talker wins on every side: its
//!   talk pre-empts the channel's floor (as an emergency talk does), because no
//!   one can take a transmission back from a hundred repeaters;
//! - `transmit_allow` is asked before anything is sent, as for a radio: the node
//!   transmits under the operator's callsign.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use walkie_endpoint::{
    AudioFrame, Downlink, Endpoint, EndpointError, EndpointFuture, EndpointId, FloorEvent,
    HubClosed, HubLink, Priority, StreamKey, TalkKind, Talker, TransmitPolicy, TxId,
};

use crate::connection::{ConnectConfig, Connection, ConnectionHandle, Event};

const FIRST_RETRY: Duration = Duration::from_secs(1);
/// How often a silent network talk is looked for.
const SILENCE_CHECK: Duration = Duration::from_millis(100);
/// The suffix that shows where a talker is: "SM0ABC (SvxReflector)".
const SYSTEM_LABEL: &str = "SvxReflector";
/// The reflector names a talker over TCP and sends their audio over UDP, and
/// the first packets often arrive before the name. They wait this long for it;
/// then the talk starts unnamed (24.02 names nobody to a node that selects a
/// talkgroup mid-talk).
const NAME_WAIT: Duration = Duration::from_millis(300);
/// At most this many packets wait for a name (1 s of audio).
const NAME_WAIT_PACKETS: usize = 50;

/// What a `[svxreflector.NAME]` section becomes, in this crate's words.
#[derive(Debug, Clone)]
pub struct SvxReflectorEndpointConfig {
    pub connect: ConnectConfig,
    /// No audio from the network's talker for this long ends their talk (a lost
    /// stop; the reflector itself waits 3–5 s).
    pub idle_release: Duration,
    /// Longest wait between reconnection attempts.
    pub reconnect_cap: Duration,
    /// The wait after an error only the operator can fix (a refused login, a
    /// protocol or codec this bridge does not speak): no retrying at full speed.
    pub refused_retry: Duration,
}

pub struct SvxReflectorEndpoint {
    id: EndpointId,
    config: SvxReflectorEndpointConfig,
    policy: Arc<dyn TransmitPolicy>,
}

impl SvxReflectorEndpoint {
    pub fn new(
        id: EndpointId,
        config: SvxReflectorEndpointConfig,
        policy: Arc<dyn TransmitPolicy>,
    ) -> Self {
        Self { id, config, policy }
    }
}

impl Endpoint for SvxReflectorEndpoint {
    fn id(&self) -> &EndpointId {
        &self.id
    }

    fn run(self: Box<Self>, link: HubLink, shutdown: CancellationToken) -> EndpointFuture {
        Box::pin(async move {
            let mut node = Node {
                config: self.config,
                policy: self.policy,
                link,
                network: None,
                sending: None,
                unnamed: Vec::new(),
                unnamed_since: None,
                next_stream: 0,
            };
            node.run(shutdown).await;
            Ok::<(), EndpointError>(())
        })
    }
}

/// The network's talker, as a talk on the hub.
struct NetworkTalk {
    callsign: String,
    stream: StreamKey,
    frames: u32,
    last_heard: Instant,
}

/// The channel's transmission the node is sending into the talkgroup.
struct Sending {
    tx: TxId,
    /// The reflector named us the talker: our audio is on the air.
    on_air: bool,
    /// Not carried here (refused, or the talkgroup was busy); its frames are dropped.
    declined: bool,
}

struct Node {
    config: SvxReflectorEndpointConfig,
    policy: Arc<dyn TransmitPolicy>,
    link: HubLink,
    network: Option<NetworkTalk>,
    sending: Option<Sending>,
    /// Audio from the network before its talker was named (see [`NAME_WAIT`]).
    unnamed: Vec<Bytes>,
    unnamed_since: Option<Instant>,
    next_stream: u64,
}

enum Ended {
    Shutdown,
    HubGone,
    Lost(String),
}

impl Node {
    async fn run(&mut self, shutdown: CancellationToken) {
        let mut retry = FIRST_RETRY;
        loop {
            let connect = Connection::connect(&self.config.connect);
            let connected = tokio::select! {
                _ = shutdown.cancelled() => return,
                connected = connect => connected,
            };
            let pause = match connected {
                Ok((handle, events)) => {
                    retry = FIRST_RETRY;
                    let info = handle.info().clone();
                    self.link.report_connected();
                    self.link
                        .report_warning(self.talkgroup_warning(info.protocol));
                    metrics::counter!("walkie_svxreflector_connects_total").increment(1);
                    info!(
                        reflector = %format!("{}:{}", self.config.connect.host, self.config.connect.port),
                        callsign = %self.config.connect.callsign,
                        protocol = info.protocol,
                        talkgroup = ?self.config.connect.talkgroup,
                        nodes = info.nodes.len(),
                        "logged in to the reflector"
                    );
                    let ended = self.serve(&handle, events, &shutdown).await;
                    self.end_network_talk().await;
                    self.sending = None;
                    handle.disconnect();
                    match ended {
                        Ended::Shutdown | Ended::HubGone => return,
                        Ended::Lost(reason) => {
                            warn!(%reason, retry_in = ?retry, "reflector connection lost; reconnecting");
                            self.link.report_disconnected(reason);
                            metrics::counter!("walkie_svxreflector_disconnects_total").increment(1);
                            retry
                        }
                    }
                }
                Err(error) if error.needs_operator() => {
                    let pause = self.config.refused_retry;
                    warn!(%error, retry_in = ?pause, "reflector login refused");
                    self.link.report_disconnected(error.to_string());
                    pause
                }
                Err(error) => {
                    warn!(%error, retry_in = ?retry, "cannot log in to the reflector");
                    self.link.report_disconnected(error.to_string());
                    retry
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                gone = self.follow_hub_for(pause) => if gone.is_err() { return },
            }
            retry = (retry * 2).min(self.config.reconnect_cap);
        }
    }

    /// On a protocol-1 reflector (19.09) the configured talkgroup means nothing:
    /// every node hears every talk. The operator should know.
    fn talkgroup_warning(&self, protocol: u16) -> Option<String> {
        let talkgroup = self.config.connect.talkgroup?;
        (protocol < 2).then(|| {
            format!(
                "the reflector speaks protocol 1 (no talkgroups): talkgroup {talkgroup} is \
                 ignored and the channel carries every talk on the reflector"
            )
        })
    }

    /// While disconnected: the floor still changes; nothing is sent anywhere.
    async fn follow_hub_for(&mut self, pause: Duration) -> Result<(), HubClosed> {
        let deadline = tokio::time::sleep(pause);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return Ok(()),
                down = self.link.recv() => if let Downlink::Floor(FloorEvent::Released { tx, .. }) = down? {
                    if self.sending.as_ref().is_some_and(|s| s.tx == tx) {
                        self.sending = None;
                    }
                },
            }
        }
    }

    async fn serve(
        &mut self,
        handle: &ConnectionHandle,
        mut events: tokio::sync::mpsc::Receiver<Event>,
        shutdown: &CancellationToken,
    ) -> Ended {
        let mut silence = tokio::time::interval(SILENCE_CHECK);
        loop {
            let step = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ended::Shutdown,
                event = events.recv() => match event {
                    Some(Event::Disconnected { reason }) => return Ended::Lost(reason),
                    None => return Ended::Lost("the session task ended".into()),
                    Some(event) => self.on_reflector(handle, event).await,
                },
                down = self.link.recv() => match down {
                    Ok(down) => self.on_hub(handle, down).await,
                    Err(HubClosed) => return Ended::HubGone,
                },
                _ = silence.tick() => match self.start_unnamed_talk(handle).await {
                    Ok(()) => self.end_silent_talk().await,
                    Err(closed) => Err(closed),
                },
            };
            if step.is_err() {
                return Ended::HubGone;
            }
        }
    }

    async fn on_reflector(
        &mut self,
        handle: &ConnectionHandle,
        event: Event,
    ) -> Result<(), HubClosed> {
        match event {
            Event::TalkerStart { callsign } if callsign == self.config.connect.callsign => {
                if let Some(sending) = self.sending.as_mut() {
                    sending.on_air = true;
                }
            }
            Event::TalkerStart { callsign } => self.network_talker(handle, callsign).await?,
            Event::TalkerStop { callsign } => {
                if self
                    .network
                    .as_ref()
                    .is_some_and(|t| t.callsign == callsign)
                {
                    self.end_network_talk().await;
                }
            }
            Event::Audio(opus) => {
                if self.network.is_some() {
                    self.pass_up(opus)?;
                } else if self.unnamed.len() < NAME_WAIT_PACKETS {
                    self.unnamed_since.get_or_insert_with(Instant::now);
                    self.unnamed.push(opus);
                }
            }
            Event::Flush => self.end_network_talk().await,
            Event::Disconnected { .. } => {}
        }
        Ok(())
    }

    /// Another node has the talkgroup: its talk starts here, ahead of anyone
    /// (see the module's note on collisions); a transmission of ours that was
    /// starting is not on the air and is declined.
    async fn network_talker(
        &mut self,
        handle: &ConnectionHandle,
        callsign: String,
    ) -> Result<(), HubClosed> {
        if self
            .network
            .as_ref()
            .is_some_and(|t| t.callsign == callsign)
        {
            return Ok(());
        }
        // What came before the name is the start of this talk.
        let waiting = std::mem::take(&mut self.unnamed);
        self.end_network_talk().await;
        if let Some(sending) = self.sending.as_mut().filter(|s| !s.declined) {
            sending.declined = true;
            let tx = sending.tx;
            info!(%callsign, %tx, "the reflector gave the talkgroup to another node");
            handle.flush().await;
            self.link
                .decline(tx, format!("{callsign} is talking on the network"))
                .await?;
        }
        self.next_stream += 1;
        let stream = StreamKey(self.next_stream);
        // Callsigns are case-insensitive: the stable name (puppets, transmit_allow)
        // is lower case, what people see is the reflector's spelling.
        let talker = Talker::new(
            callsign.to_ascii_lowercase(),
            format!("{callsign} ({SYSTEM_LABEL})"),
        );
        self.link
            .talk_start(stream, talker, Priority::Emergency, TalkKind::Live)
            .await?;
        self.network = Some(NetworkTalk {
            callsign,
            stream,
            frames: 0,
            last_heard: Instant::now(),
        });
        for opus in waiting {
            self.pass_up(opus)?;
        }
        Ok(())
    }

    /// One packet of the network's talk, to the hub.
    fn pass_up(&mut self, opus: Bytes) -> Result<(), HubClosed> {
        if let Some(talk) = self.network.as_mut() {
            talk.last_heard = Instant::now();
            let frame = AudioFrame::opus(talk.frames, opus);
            talk.frames = talk.frames.wrapping_add(1);
            self.link.audio(talk.stream, frame)?;
        }
        Ok(())
    }

    /// Audio that waited [`NAME_WAIT`] for its talker's name starts a talk
    /// named after the talkgroup.
    async fn start_unnamed_talk(&mut self, handle: &ConnectionHandle) -> Result<(), HubClosed> {
        let waited = self
            .unnamed_since
            .is_some_and(|since| since.elapsed() >= NAME_WAIT);
        if !waited || self.network.is_some() {
            return Ok(());
        }
        let name = match self.config.connect.talkgroup {
            Some(tg) => format!("TG {tg}"),
            None => "the network".to_owned(),
        };
        self.network_talker(handle, name).await
    }

    async fn end_network_talk(&mut self) {
        self.unnamed.clear();
        self.unnamed_since = None;
        if let Some(talk) = self.network.take() {
            debug!(callsign = %talk.callsign, frames = talk.frames, "network talk ended");
            let _ = self.link.talk_end(talk.stream).await;
        }
    }

    async fn end_silent_talk(&mut self) -> Result<(), HubClosed> {
        let silent = self
            .network
            .as_ref()
            .is_some_and(|t| t.last_heard.elapsed() >= self.config.idle_release);
        if silent {
            self.end_network_talk().await;
        }
        Ok(())
    }

    async fn on_hub(&mut self, handle: &ConnectionHandle, down: Downlink) -> Result<(), HubClosed> {
        match down {
            Downlink::Floor(FloorEvent::Taken {
                tx, talker, source, ..
            }) => self.start_sending(tx, &talker, &source).await?,
            Downlink::Floor(FloorEvent::Released { tx, .. }) => {
                if let Some(sending) = self.sending.take_if(|s| s.tx == tx) {
                    if !sending.declined {
                        handle.flush().await;
                    }
                }
            }
            Downlink::Floor(FloorEvent::Denied { stream, holder, .. }) => {
                // Only an emergency talk holds the floor against the network's
                // talker: the channel does not hear them meanwhile.
                if let Some(talk) = self.network.as_ref().filter(|t| t.stream == stream) {
                    info!(callsign = %talk.callsign, holder = ?holder.map(|h| h.display_name), "network talk not heard on the channel");
                }
            }
            Downlink::Floor(_) => {}
            Downlink::Audio(frame) => {
                let carried = self
                    .sending
                    .as_ref()
                    .is_some_and(|s| s.tx == frame.tx && !s.declined);
                if carried && !handle.send_audio(frame.frame.opus) {
                    debug!("reflector session queue full; frame dropped");
                }
            }
        }
        Ok(())
    }

    /// The floor went to someone on another endpoint: their audio goes to the
    /// talkgroup unless it is busy or the policy refuses them.
    async fn start_sending(
        &mut self,
        tx: TxId,
        talker: &Talker,
        source: &EndpointId,
    ) -> Result<(), HubClosed> {
        let refusal = if let Some(network) = self.network.as_ref() {
            Some(format!("{} is talking on the network", network.callsign))
        } else {
            self.policy.check(talker, source).await.err()
        };
        let declined = refusal.is_some();
        if let Some(reason) = refusal {
            info!(%tx, talker = %talker.display_name, %reason, "not sent to the reflector");
            self.link.decline(tx, reason).await?;
        }
        self.sending = Some(Sending {
            tx,
            on_air: false,
            declined,
        });
        Ok(())
    }
}
