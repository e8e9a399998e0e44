//! The MQTT endpoint: one broker connection carries a channel's floor both ways.
//!
//! Up: each device's talk (`in/{device}/start`, `audio`, `end`) becomes a stream
//! on the hub, ended by `end`, by silence (`idle_release`) or by the broker
//! connection dropping. Down: while another endpoint holds the floor its frames
//! go out on `out/audio` between an `out/start` and an `out/end`. The floor
//! state is kept retained on `{prefix}/floor`; availability is the retained
//! `{prefix}/status` with a last will.
//!
//! rumqttc's event loop runs in a task of its own that only polls and forwards,
//! because `EventLoop::poll` is not cancel-safe and must not sit in a `select!`
//! next to the hub link. It reconnects by being polled again, after a backoff.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use rumqttc::{
    AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use walkie_endpoint::audio::{frames_of, OpusEncoder};
use walkie_endpoint::{
    AudioFrame, Capabilities, DownFrame, Downlink, Endpoint, EndpointError, EndpointFuture,
    EndpointId, FloorEvent, HubClosed, HubLink, Priority, StreamKey, TalkKind, Talker, TxId,
};

use crate::config::{MqttEndpointConfig, PayloadCodec};
use crate::discovery;
use crate::error::{InputError, MqttError};
use crate::topics::{DeviceTopic, Inbound, Topics};
use crate::transcode::{
    test_tone_16k, test_tone_48k, PcmToOpus, PcmToPcm16, PCM16_FRAME_BYTES, PCM16_FRAME_SAMPLES,
};
use crate::wire::{
    deny_reason, frame_audio, parse_audio, priority_name, release_reason, to_json, DeviceStart,
    FloorAnswer, FloorState, OutEnd, OutStart, SeqTracker, SeqVerdict, REASON_PRIORITY_TOO_HIGH,
    REASON_RECONNECTED,
};

const FIRST_RETRY: Duration = Duration::from_millis(250);
/// How often silent device talks are looked for.
const IDLE_CHECK: Duration = Duration::from_millis(100);
/// Requests rumqttc may hold for the event loop: a few seconds of audio, so a
/// moment of broker back-pressure drops nothing, while a dead connection cannot
/// pile up more than that (publishing stops while disconnected).
const REQUEST_CAPACITY: usize = 1024;
const MAX_PACKET: usize = 64 * 1024;
const MAX_INFLIGHT: u16 = 32;
/// How long a clean shutdown waits for `offline` to reach the broker.
const GOODBYE: Duration = Duration::from_secs(2);
const TONE_MS: u32 = 2000;
/// Audio without a `start` this soon after the device's `end` is a straggler,
/// not a new talk.
const STRAY_AFTER_END: Duration = Duration::from_millis(500);
const TONE_STREAM: StreamKey = StreamKey(u64::MAX);
const TONE_TALKER: &str = "test tone";
const ONLINE: &str = "online";
const OFFLINE: &str = "offline";

pub struct MqttEndpoint {
    id: EndpointId,
    config: MqttEndpointConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl MqttEndpoint {
    /// Checks the config and loads the CA file now, so a bad config fails at
    /// start-up rather than in a reconnect loop.
    pub fn new(id: EndpointId, config: MqttEndpointConfig) -> Result<Self, MqttError> {
        config.validate()?;
        let tls = if config.tls {
            Some(crate::tls::client_config(config.ca_file.as_deref())?)
        } else {
            None
        };
        Ok(Self { id, config, tls })
    }

    /// Logs in once as this endpoint would — same broker, credentials and TLS —
    /// and disconnects: `Ok` with nothing to say, or the broker's refusal or the
    /// connection error in words. Under the client id `{client_id}-doctor`, with a
    /// clean session and no will, so a running bridge's own session (same id: the
    /// broker would drop it) and its retained `offline` are left alone.
    pub async fn check_login(&self, timeout: Duration) -> Result<(), String> {
        let c = &self.config;
        let mut options =
            MqttOptions::new(format!("{}-doctor", c.client_id), c.host.clone(), c.port);
        options.set_keep_alive(c.keep_alive).set_clean_session(true);
        self.login(&mut options);
        let (client, mut events) = rumqttc::AsyncClient::new(options, 4);
        let answer = tokio::time::timeout(timeout, async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => continue,
                    Err(rumqttc::ConnectionError::ConnectionRefused(code)) => {
                        return Err(format!("the broker refused the login: {code:?}"))
                    }
                    Err(error) => return Err(error.to_string()),
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")));
        let _ = client.try_disconnect();
        answer
    }

    /// The credentials and TLS of the configured login, on `options`.
    fn login(&self, options: &mut MqttOptions) {
        let c = &self.config;
        if let Some(user) = &c.username {
            let password = c.password.as_ref().map_or("", |p| p.expose());
            options.set_credentials(user.clone(), password.to_owned());
        }
        if let Some(tls) = &self.tls {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::clone(tls),
            )));
        }
    }

    /// The broker connection, not yet polled.
    fn client(&self, topics: &Topics) -> (AsyncClient, EventLoop) {
        let (client, mut eventloop) = AsyncClient::new(self.options(topics), REQUEST_CAPACITY);
        // Audio is a small QoS 0 publish every 20 ms that the broker never
        // answers: with Nagle's algorithm each one waits for the ACK of the
        // previous, which the broker delays by up to 40 ms (the e2e bench saw
        // p99 ≈ 45 ms on one idle stream, and 44 ms to a device's grant).
        let mut network = eventloop.network_options();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        // rumqttc makes room for 100 events up front (14.8 KiB per connection,
        // the largest item of an idle endpoint's heap). It is not a bound: the
        // queue grows when it needs to, and between two polls it holds only
        // the packets of one read (at most 10) and the requests sent since.
        eventloop.state.events = std::collections::VecDeque::new();
        (client, eventloop)
    }

    fn options(&self, topics: &Topics) -> MqttOptions {
        let c = &self.config;
        let mut options = MqttOptions::new(c.client_id.clone(), c.host.clone(), c.port);
        options
            .set_keep_alive(c.keep_alive)
            // A persistent session: QoS 1 control sent to us while we reconnect
            // is kept by the broker.
            .set_clean_session(false)
            .set_request_channel_capacity(REQUEST_CAPACITY)
            // QoS 1 goes out a few times per transmission (start, floor, end), so
            // 32 unacknowledged is plenty; rumqttc keeps a slot per possible one
            // for the connection's life (100 by default: 6 KiB per endpoint).
            .set_inflight(MAX_INFLIGHT)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_last_will(LastWill::new(
                topics.status(),
                OFFLINE,
                QoS::AtLeastOnce,
                true,
            ));
        self.login(&mut options);
        options
    }
}

impl Endpoint for MqttEndpoint {
    fn id(&self) -> &EndpointId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_pcm: self.config.payload == PayloadCodec::Pcm16,
            listen_only: false,
        }
    }

    fn run(self: Box<Self>, link: HubLink, shutdown: CancellationToken) -> EndpointFuture {
        // Set up here and boxed, not inside the future: the task lives as long as
        // the channel, and an `async` block keeps every local it ever had (the
        // 784-byte event loop after it moved to the poller, the hub link twice)
        // for good — 4.3 KiB per idle endpoint, now 1.8 (issue 16).
        let topics = Topics::new(&self.config.prefix, &self.config.ha_discovery_prefix);
        let (client, eventloop) = self.client(&topics);
        let eventloop = Box::new(eventloop);
        let reconnect_cap = self.config.reconnect_cap;
        let bridge = ToneSource::shared(self.config.payload).map(|tone_source| {
            Box::new(Bridge {
                id: self.id,
                config: self.config,
                topics,
                link,
                client,
                connected: false,
                talks: HashMap::new(),
                next_stream: 0,
                floor: FloorState::Idle,
                holder: None,
                outgoing: None,
                pending_ends: Vec::new(),
                tone_source,
                packet_scratch: Vec::new(),
                payload_scratch: Vec::new(),
                tone: None,
                recently_ended: HashMap::new(),
            })
        });
        Box::pin(async move {
            let mut bridge = bridge.map_err(|e| EndpointError::Fatal(format!("test tone: {e}")))?;
            let (events_tx, events) = mpsc::channel(256);
            let poller = AbortOnDrop(tokio::spawn(poll_broker(
                eventloop,
                events_tx,
                reconnect_cap,
            )));
            bridge.serve(events, &shutdown).await;
            bridge.goodbye().await;
            let mut poller = poller;
            let _ = tokio::time::timeout(GOODBYE, &mut poller.0).await;
            Ok(())
        })
    }
}

/// Aborts the task when dropped: if the endpoint's future is dropped (task
/// aborted), the broker connection dies with it and the broker sends the will.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

enum FromBroker {
    Connected,
    Lost(String),
    Message(Publish),
}

/// The event loop comes boxed: an `async fn` keeps its arguments beside the
/// locals they move into, and this task lives as long as the channel.
async fn poll_broker(
    mut eventloop: Box<EventLoop>,
    events: mpsc::Sender<FromBroker>,
    cap: Duration,
) {
    let mut retry = FIRST_RETRY;
    let mut closing = false;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                retry = FIRST_RETRY;
                if events.send(FromBroker::Connected).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if events.send(FromBroker::Message(publish)).await.is_err() {
                    return;
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => closing = true,
            Ok(_) => {}
            Err(error) => {
                if closing {
                    return;
                }
                if events
                    .send(FromBroker::Lost(error.to_string()))
                    .await
                    .is_err()
                {
                    return;
                }
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(cap.max(FIRST_RETRY));
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TalkState {
    /// Sent to the hub; granted, queued or not yet answered.
    Requested,
    Granted(TxId),
    /// Denied, or released by the hub before the device said `end`: its audio
    /// is dropped here until the device starts a new talk.
    Refused,
}

/// One device talking, as a stream on the hub.
struct DeviceTalk {
    stream: StreamKey,
    state: TalkState,
    /// False for a start refused here (above `max_priority`): no stream to end.
    on_hub: bool,
    seq: SeqTracker,
    /// Hub sequence number of the next frame; lost device frames advance it too,
    /// so PCM consumers conceal them.
    next_seq: u32,
    pcm: Option<PcmToOpus>,
    last_heard: Instant,
    /// As shown on the channel ("Front door (Intercom)").
    display_name: String,
}

/// The channel's transmission going out on `out/…`.
struct Outgoing {
    tx: TxId,
    first_seq: Option<u32>,
    next_seq: u32,
    pcm: Option<PcmToPcm16>,
    /// `out/start` of a transmission that began while the broker was away,
    /// published once it is back.
    unannounced: Option<Vec<u8>>,
}

/// The test tone, encoded once: the hub gets Opus, the devices of this endpoint
/// (whom the hub never echoes our own talk to) hear it in their codec.
struct ToneSource {
    opus: Arc<[Bytes]>,
    pcm16: Arc<[Vec<u8>]>,
}

impl ToneSource {
    /// One copy per payload format for the whole process: every endpoint plays the
    /// same tone, and 2 s of it (64 KiB as pcm16) per configured endpoint would be
    /// most of what an idle endpoint costs.
    fn shared(codec: PayloadCodec) -> Result<Arc<Self>, walkie_endpoint::audio::AudioError> {
        static OPUS: OnceLock<Arc<ToneSource>> = OnceLock::new();
        static PCM16: OnceLock<Arc<ToneSource>> = OnceLock::new();
        let cell = match codec {
            PayloadCodec::Opus => &OPUS,
            PayloadCodec::Pcm16 => &PCM16,
        };
        if let Some(tone) = cell.get() {
            return Ok(Arc::clone(tone));
        }
        let tone = Arc::new(Self::new(codec)?);
        Ok(Arc::clone(cell.get_or_init(|| tone)))
    }

    fn new(codec: PayloadCodec) -> Result<Self, walkie_endpoint::audio::AudioError> {
        let mut encoder = OpusEncoder::new()?;
        let opus = frames_of(&test_tone_48k(TONE_MS))
            .map(|frame| encoder.encode(&frame))
            .collect::<Result<Vec<_>, _>>()?;
        let pcm16 = if codec == PayloadCodec::Pcm16 {
            test_tone_16k(TONE_MS)
                .chunks(PCM16_FRAME_SAMPLES)
                .map(|f| f.iter().flat_map(|s| s.to_le_bytes()).collect())
                .collect()
        } else {
            Vec::new()
        };
        Ok(Self {
            opus: opus.into(),
            pcm16: pcm16.into(),
        })
    }
}

struct Tone {
    tx: Option<TxId>,
    next: usize,
    ticker: Option<Interval>,
}

struct Bridge {
    id: EndpointId,
    config: MqttEndpointConfig,
    topics: Topics,
    link: HubLink,
    client: AsyncClient,
    connected: bool,
    talks: HashMap<String, DeviceTalk>,
    next_stream: u64,
    floor: FloorState,
    /// Who holds the floor, for deny and queue answers.
    holder: Option<String>,
    outgoing: Option<Outgoing>,
    /// Transmissions cut by a lost connection, to be ended once it is back.
    pending_ends: Vec<TxId>,
    tone_source: Arc<ToneSource>,
    /// Kept between frames so that transcoding and publishing do not allocate a
    /// list per frame.
    packet_scratch: Vec<Bytes>,
    payload_scratch: Vec<Vec<u8>>,
    tone: Option<Tone>,
    /// When each device last ended a talk: a stray audio frame right after its
    /// `end` must not start a new talk and hold the floor until the idle timeout.
    recently_ended: HashMap<String, Instant>,
}

fn dropped(reason: &'static str) {
    metrics::counter!("walkie_mqtt_dropped_total", "reason" => reason).increment(1);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn tone_tick(tone: &mut Option<Tone>) {
    match tone.as_mut().and_then(|t| t.ticker.as_mut()) {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

impl Bridge {
    async fn serve(
        &mut self,
        mut events: mpsc::Receiver<FromBroker>,
        shutdown: &CancellationToken,
    ) {
        let mut idle = tokio::time::interval(IDLE_CHECK);
        idle.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let result = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                event = events.recv() => match event {
                    Some(event) => self.on_broker(event).await,
                    None => {
                        warn!("MQTT event loop ended");
                        return;
                    }
                },
                down = self.link.recv() => match down {
                    Ok(down) => self.on_hub(down).await,
                    Err(HubClosed) => Err(HubClosed),
                },
                _ = idle.tick() => self.end_idle_talks().await,
                _ = tone_tick(&mut self.tone) => self.tone_frame().await,
            };
            if result.is_err() {
                return;
            }
        }
    }

    /// Leaves the broker tidy on a clean stop: talks ended, the floor shown
    /// idle, `offline` published (the will covers only unclean ends).
    async fn goodbye(&mut self) {
        self.end_all_talks().await;
        if let Some(out) = self.outgoing.take() {
            self.publish_end(out.tx, "shutdown");
        }
        self.set_floor(FloorState::Idle);
        self.publish(
            self.topics.status(),
            QoS::AtLeastOnce,
            true,
            OFFLINE.as_bytes().to_vec(),
        );
        if let Err(error) = self.client.try_disconnect() {
            debug!(%error, "MQTT disconnect not queued");
        }
    }

    fn publish(&self, topic: String, qos: QoS, retain: bool, payload: Vec<u8>) {
        if !self.connected {
            // Whatever matters is re-published on reconnect; anything else
            // (audio above all) would only arrive stale.
            dropped("offline");
            return;
        }
        if let Err(error) = self.client.try_publish(topic, qos, retain, payload) {
            dropped("client_full");
            debug!(%error, "MQTT publish dropped");
        }
    }

    fn answer(&self, device: &str, answer: &FloorAnswer) {
        self.publish(
            self.topics.device_floor(device),
            QoS::AtLeastOnce,
            false,
            to_json(answer),
        );
    }

    fn set_floor(&mut self, state: FloorState) {
        if self.floor != state {
            self.floor = state;
            self.publish(
                self.topics.floor(),
                QoS::AtLeastOnce,
                true,
                to_json(&self.floor),
            );
        }
    }

    fn publish_discovery(&self) {
        for (topic, config) in discovery::configs(&self.topics, self.id.as_str()) {
            self.publish(topic, QoS::AtLeastOnce, true, to_json(&config));
        }
    }

    fn publish_end(&self, tx: TxId, reason: &str) {
        let end = OutEnd {
            tx_id: tx.to_string(),
            reason: reason.to_owned(),
        };
        self.publish(
            self.topics.out_end(),
            QoS::AtLeastOnce,
            false,
            to_json(&end),
        );
    }

    async fn on_broker(&mut self, event: FromBroker) -> Result<(), HubClosed> {
        match event {
            FromBroker::Connected => {
                self.connected = true;
                self.link.report_connected();
                metrics::counter!("walkie_mqtt_connects_total").increment(1);
                info!(broker = %self.config.host, port = self.config.port, prefix = %self.config.prefix, "connected to MQTT broker");
                let subscriptions = self
                    .topics
                    .subscriptions(self.config.ha_discovery)
                    .into_iter()
                    .map(|(filter, qos)| {
                        let qos = if qos == 0 {
                            QoS::AtMostOnce
                        } else {
                            QoS::AtLeastOnce
                        };
                        rumqttc::SubscribeFilter::new(filter, qos)
                    });
                if let Err(error) = self.client.try_subscribe_many(subscriptions) {
                    warn!(%error, "MQTT subscribe not queued");
                }
                self.publish(
                    self.topics.status(),
                    QoS::AtLeastOnce,
                    true,
                    ONLINE.as_bytes().to_vec(),
                );
                self.publish(
                    self.topics.floor(),
                    QoS::AtLeastOnce,
                    true,
                    to_json(&self.floor),
                );
                if self.config.ha_discovery {
                    self.publish_discovery();
                }
                for tx in std::mem::take(&mut self.pending_ends) {
                    self.publish_end(tx, REASON_RECONNECTED);
                }
                if let Some(start) = self.outgoing.as_mut().and_then(|o| o.unannounced.take()) {
                    self.publish(self.topics.out_start(), QoS::AtLeastOnce, false, start);
                }
            }
            FromBroker::Lost(reason) => {
                self.link.report_disconnected(reason.clone());
                if self.connected {
                    self.connected = false;
                    metrics::counter!("walkie_mqtt_disconnects_total").increment(1);
                    warn!(%reason, "MQTT connection lost; reconnecting");
                    // No device can be heard now: end their talks, so the hub
                    // releases the floor and archives what was said up to the cut.
                    self.end_all_talks().await;
                    if let Some(out) = self.outgoing.take() {
                        self.pending_ends.push(out.tx);
                    }
                } else {
                    debug!(%reason, "MQTT broker still unreachable");
                }
            }
            FromBroker::Message(publish) => {
                if let Err(error) = self.on_message(&publish).await? {
                    dropped(error.label());
                    debug!(topic = %publish.topic, %error, "MQTT message dropped");
                }
            }
        }
        Ok(())
    }

    /// The outer error stops the endpoint; the inner one drops only this message.
    async fn on_message(&mut self, publish: &Publish) -> Result<Result<(), InputError>, HubClosed> {
        let inbound = match self.topics.parse(&publish.topic) {
            Ok(inbound) => inbound,
            Err(error) => return Ok(Err(error)),
        };
        match inbound {
            Inbound::Device { device, topic } => match topic {
                DeviceTopic::Start => match DeviceStart::parse(&publish.payload) {
                    Ok(start) => self.device_start(device, start).await?,
                    Err(error) => return Ok(Err(error)),
                },
                DeviceTopic::Audio => return self.device_audio(device, &publish.payload).await,
                DeviceTopic::End => self.device_end(&device, None).await?,
            },
            Inbound::HaStatus => {
                if publish.payload.as_ref() == ONLINE.as_bytes() {
                    debug!("Home Assistant is online; re-publishing discovery");
                    self.publish_discovery();
                }
            }
            Inbound::TestTone => self.start_tone().await?,
        }
        Ok(Ok(()))
    }

    async fn device_start(&mut self, device: String, start: DeviceStart) -> Result<(), HubClosed> {
        if let Some(talk) = self.talks.get_mut(&device) {
            if talk.state != TalkState::Refused {
                // A redelivered QoS 1 start, or a start after implicit audio.
                talk.last_heard = Instant::now();
                return Ok(());
            }
            self.device_end(&device, None).await?;
        }
        self.recently_ended.remove(&device);
        let priority = Priority::from(start.priority);
        let ceiling = self.max_priority(&device);
        if priority > ceiling {
            self.refuse_priority(device, priority, ceiling);
            return Ok(());
        }
        self.open_talk(device, start.talker, priority).await
    }

    /// The highest priority `device` may ask for.
    fn max_priority(&self, device: &str) -> Priority {
        self.config
            .device_max_priority
            .get(device)
            .copied()
            .unwrap_or(self.config.max_priority)
    }

    /// A start above the device's ceiling: denied with the reason, and its audio
    /// dropped until `end`, like any denied talk. The hub never hears of it.
    fn refuse_priority(&mut self, device: String, asked: Priority, ceiling: Priority) {
        warn!(%device, asked = priority_name(asked), max_priority = priority_name(ceiling),
              "start above max_priority denied");
        metrics::counter!("walkie_mqtt_priority_denied_total").increment(1);
        self.answer(
            &device,
            &FloorAnswer::Denied {
                reason: REASON_PRIORITY_TOO_HIGH.to_owned(),
                holder: None,
                max_priority: Some(priority_name(ceiling).to_owned()),
            },
        );
        let stream = StreamKey(self.next_stream);
        self.next_stream += 1;
        self.talks.insert(
            device.clone(),
            DeviceTalk {
                stream,
                state: TalkState::Refused,
                on_hub: false,
                seq: SeqTracker::default(),
                next_seq: 0,
                pcm: None,
                last_heard: Instant::now(),
                display_name: device,
            },
        );
    }

    async fn open_talk(
        &mut self,
        device: String,
        label: Option<String>,
        priority: Priority,
    ) -> Result<(), HubClosed> {
        let pcm = match self.config.payload {
            PayloadCodec::Opus => None,
            PayloadCodec::Pcm16 => match PcmToOpus::with_settings(&self.config.encoder) {
                Ok(pcm) => Some(pcm),
                Err(error) => {
                    warn!(%device, %error, "cannot set up pcm16 transcoding; talk ignored");
                    return Ok(());
                }
            },
        };
        let label: String = label
            .filter(|l| !l.trim().is_empty())
            .unwrap_or_else(|| device.clone())
            .chars()
            .take(64)
            .collect();
        // A device id is a label: the broker's ACL on the prefix vouches for the
        // endpoint as a whole, not for which device is which.
        let talker = Talker::unverified(device.clone(), format!("{label} (Intercom)"));
        let display_name = talker.display_name.clone();
        let stream = StreamKey(self.next_stream);
        self.next_stream += 1;
        debug!(%device, %stream, "device talk starts");
        self.link
            .talk_start(stream, talker, priority, TalkKind::Live)
            .await?;
        self.talks.insert(
            device,
            DeviceTalk {
                stream,
                state: TalkState::Requested,
                on_hub: true,
                seq: SeqTracker::default(),
                next_seq: 0,
                pcm,
                last_heard: Instant::now(),
                display_name,
            },
        );
        Ok(())
    }

    async fn device_audio(
        &mut self,
        device: String,
        payload: &[u8],
    ) -> Result<Result<(), InputError>, HubClosed> {
        let (seq, audio) = match parse_audio(payload) {
            Ok(parsed) => parsed,
            Err(error) => return Ok(Err(error)),
        };
        if self.config.payload == PayloadCodec::Pcm16 && audio.len() != PCM16_FRAME_BYTES {
            return Ok(Err(InputError::BadPcmSize(audio.len())));
        }
        if !self.talks.contains_key(&device) {
            if self
                .recently_ended
                .get(&device)
                .is_some_and(|at| at.elapsed() < STRAY_AFTER_END)
            {
                dropped("after_end");
                return Ok(Ok(()));
            }
            // Audio without a start is a talk too: a firmware that never sends
            // `start` still works, with its device id as the talker's name.
            self.open_talk(device.clone(), None, Priority::Normal)
                .await?;
        }
        let Some(talk) = self.talks.get_mut(&device) else {
            return Ok(Ok(()));
        };
        if talk.state == TalkState::Refused {
            // Still talking: the talk lasts until `end` or silence, so audio after
            // a denial or a revoke never opens a new one (README "Messages").
            talk.last_heard = Instant::now();
            dropped("refused");
            return Ok(Ok(()));
        }
        let lost = match talk.seq.check(seq) {
            SeqVerdict::Accept { lost } => lost,
            SeqVerdict::Duplicate => {
                dropped("duplicate");
                return Ok(Ok(()));
            }
            SeqVerdict::Late => {
                dropped("late");
                return Ok(Ok(()));
            }
        };
        if lost > 0 {
            metrics::counter!("walkie_mqtt_frames_lost_total").increment(u64::from(lost));
        }
        talk.last_heard = Instant::now();
        talk.next_seq = talk.next_seq.wrapping_add(lost);
        match talk.pcm.as_mut() {
            None => {
                let frame = AudioFrame::opus(talk.next_seq, Bytes::copy_from_slice(audio));
                talk.next_seq = talk.next_seq.wrapping_add(1);
                self.link.audio(talk.stream, frame)?;
            }
            Some(pcm) => {
                // Reused from frame to frame: transcoding allocates nothing per frame.
                let mut packets = std::mem::take(&mut self.packet_scratch);
                if let Err(error) = pcm.push_into(audio, &mut packets) {
                    warn!(%device, %error, "pcm16 frame not transcoded");
                }
                for packet in packets.drain(..) {
                    self.link
                        .audio(talk.stream, AudioFrame::opus(talk.next_seq, packet))?;
                    talk.next_seq = talk.next_seq.wrapping_add(1);
                }
                self.packet_scratch = packets;
            }
        }
        Ok(Ok(()))
    }

    /// Ends a device's talk; `released` is told to the device when the bridge
    /// ended it rather than the device.
    async fn device_end(&mut self, device: &str, released: Option<&str>) -> Result<(), HubClosed> {
        let Some(mut talk) = self.talks.remove(device) else {
            return Ok(());
        };
        self.recently_ended
            .insert(device.to_owned(), Instant::now());
        if talk.state != TalkState::Refused {
            if let Some(pcm) = talk.pcm.as_mut() {
                match pcm.finish() {
                    Ok(packets) => {
                        for packet in packets {
                            self.link
                                .audio(talk.stream, AudioFrame::opus(talk.next_seq, packet))?;
                            talk.next_seq = talk.next_seq.wrapping_add(1);
                        }
                    }
                    Err(error) => debug!(%device, %error, "pcm16 tail lost"),
                }
            }
            if let Some(reason) = released {
                self.answer(
                    device,
                    &FloorAnswer::Released {
                        reason: reason.to_owned(),
                    },
                );
            }
        }
        debug!(%device, stream = %talk.stream, "device talk ends");
        if !talk.on_hub {
            return Ok(());
        }
        self.link.talk_end(talk.stream).await
    }

    async fn end_idle_talks(&mut self) -> Result<(), HubClosed> {
        let now = Instant::now();
        let idle: Vec<String> = self
            .talks
            .iter()
            .filter(|(_, t)| now.duration_since(t.last_heard) >= self.config.idle_release)
            .map(|(d, _)| d.clone())
            .collect();
        for device in idle {
            debug!(%device, "device talk ended by silence");
            self.device_end(&device, Some("idle_timeout")).await?;
        }
        self.recently_ended
            .retain(|_, at| now.duration_since(*at) < STRAY_AFTER_END);
        Ok(())
    }

    async fn end_all_talks(&mut self) {
        let devices: Vec<String> = self.talks.keys().cloned().collect();
        for device in devices {
            if let Some(talk) = self.talks.remove(&device) {
                if talk.on_hub {
                    let _ = self.link.talk_end(talk.stream).await;
                }
            }
        }
        if let Some(tone) = self.tone.take() {
            if tone.tx.is_some() {
                let _ = self.link.talk_end(TONE_STREAM).await;
            }
        }
    }

    fn device_of(&self, stream: StreamKey) -> Option<String> {
        self.talks
            .iter()
            .find(|(_, t)| t.stream == stream)
            .map(|(d, _)| d.clone())
    }

    async fn on_hub(&mut self, down: Downlink) -> Result<(), HubClosed> {
        match down {
            Downlink::Floor(event) => self.on_floor(event).await,
            Downlink::Audio(frame) => {
                self.send_out(frame);
                Ok(())
            }
        }
    }

    async fn on_floor(&mut self, event: FloorEvent) -> Result<(), HubClosed> {
        match event {
            FloorEvent::Granted { stream, tx } => {
                if stream == TONE_STREAM {
                    return self.tone_granted(tx);
                }
                let Some(device) = self.device_of(stream) else {
                    return Ok(());
                };
                if let Some(talk) = self.talks.get_mut(&device) {
                    talk.state = TalkState::Granted(tx);
                }
                let talker = self
                    .talks
                    .get(&device)
                    .map_or_else(|| device.clone(), |t| t.display_name.clone());
                self.answer(
                    &device,
                    &FloorAnswer::Granted {
                        tx_id: tx.to_string(),
                    },
                );
                self.holder = Some(talker.clone());
                self.set_floor(FloorState::Taken {
                    talker,
                    source: self.id.to_string(),
                    tx_id: tx.to_string(),
                    since_ts: now_ms(),
                });
            }
            FloorEvent::Denied {
                stream,
                reason,
                holder,
            } => {
                if stream == TONE_STREAM {
                    self.tone = None;
                    return Ok(());
                }
                let Some(device) = self.device_of(stream) else {
                    return Ok(());
                };
                if let Some(talk) = self.talks.get_mut(&device) {
                    talk.state = TalkState::Refused;
                }
                let holder = holder
                    .map(|h| h.display_name)
                    .or_else(|| self.holder.clone());
                self.answer(
                    &device,
                    &FloorAnswer::Denied {
                        reason: deny_reason(reason).to_owned(),
                        holder,
                        max_priority: None,
                    },
                );
            }
            FloorEvent::Queued { stream, position } => {
                if let Some(device) = self.device_of(stream) {
                    self.answer(
                        &device,
                        &FloorAnswer::Queued {
                            position,
                            holder: self.holder.clone(),
                        },
                    );
                }
            }
            FloorEvent::Taken {
                tx, talker, source, ..
            } => {
                self.holder = Some(talker.display_name.clone());
                self.set_floor(FloorState::Taken {
                    talker: talker.display_name.clone(),
                    source: source.to_string(),
                    tx_id: tx.to_string(),
                    since_ts: now_ms(),
                });
                self.start_out(tx, &talker.display_name, source.as_str());
            }
            FloorEvent::Released { tx, reason } => {
                let reason = release_reason(reason);
                if self.outgoing.as_ref().is_some_and(|o| o.tx == tx) {
                    self.finish_out(reason);
                }
                if self.tone.as_ref().is_some_and(|t| t.tx == Some(tx)) {
                    self.tone = None;
                }
                let device = self
                    .talks
                    .iter()
                    .find(|(_, t)| t.state == TalkState::Granted(tx))
                    .map(|(d, _)| d.clone());
                if let Some(device) = device {
                    // Released by the hub (max talk time, pre-empted, idle):
                    // the device must let go before it can talk again.
                    if let Some(talk) = self.talks.get_mut(&device) {
                        talk.state = TalkState::Refused;
                    }
                    self.answer(
                        &device,
                        &FloorAnswer::Released {
                            reason: reason.to_owned(),
                        },
                    );
                }
                if matches!(&self.floor, FloorState::Taken { tx_id, .. } if *tx_id == tx.to_string())
                {
                    self.holder = None;
                    self.set_floor(FloorState::Idle);
                }
            }
            FloorEvent::Declined {
                stream, by, reason, ..
            } => {
                if let Some(device) = self.device_of(stream) {
                    self.answer(
                        &device,
                        &FloorAnswer::Declined {
                            endpoint: by.to_string(),
                            reason,
                        },
                    );
                }
            }
            FloorEvent::Idle => {
                self.holder = None;
                self.set_floor(FloorState::Idle);
            }
        }
        Ok(())
    }

    fn start_out(&mut self, tx: TxId, talker: &str, source: &str) {
        let pcm = match self.config.payload {
            PayloadCodec::Opus => None,
            PayloadCodec::Pcm16 => match PcmToPcm16::new() {
                Ok(pcm) => Some(pcm),
                Err(error) => {
                    warn!(%error, "cannot set up pcm16 transcoding; transmission not sent");
                    return;
                }
            },
        };
        let start = OutStart {
            tx_id: tx.to_string(),
            talker: talker.to_owned(),
            source: source.to_owned(),
            codec: self.config.payload.name().to_owned(),
            sample_rate: self.config.payload.sample_rate(),
            frame_ms: 20,
        };
        let start = to_json(&start);
        let unannounced = if self.connected {
            self.publish(self.topics.out_start(), QoS::AtLeastOnce, false, start);
            None
        } else {
            Some(start)
        };
        self.outgoing = Some(Outgoing {
            tx,
            first_seq: None,
            next_seq: 0,
            pcm,
            unannounced,
        });
    }

    fn send_out(&mut self, down: DownFrame) {
        let Some(out) = self.outgoing.as_mut() else {
            return;
        };
        if out.tx != down.tx {
            return;
        }
        // Reused from frame to frame; each payload itself is the one allocation a
        // frame costs here (rumqttc takes the payload by value).
        let mut payloads = std::mem::take(&mut self.payload_scratch);
        match out.pcm.as_mut() {
            None => {
                // Opus passes through with the talker's own numbering, so a
                // device sees the same gaps the hub saw.
                let first = *out.first_seq.get_or_insert(down.frame.seq);
                payloads.push(frame_audio(
                    down.frame.seq.wrapping_sub(first),
                    &down.frame.opus,
                ));
            }
            Some(pcm) => {
                let Some(samples) = down.frame.pcm.as_deref() else {
                    // Late: its slot was already concealed.
                    dropped("late_downlink");
                    self.payload_scratch = payloads;
                    return;
                };
                let next_seq = &mut out.next_seq;
                let framed = pcm.push_each(samples, |frame| {
                    payloads.push(frame_audio(*next_seq, frame));
                    *next_seq = next_seq.wrapping_add(1);
                });
                if let Err(error) = framed {
                    debug!(%error, "frame not transcoded to pcm16");
                }
            }
        }
        for payload in payloads.drain(..) {
            self.publish(self.topics.out_audio(), QoS::AtMostOnce, false, payload);
        }
        self.payload_scratch = payloads;
    }

    fn finish_out(&mut self, reason: &str) {
        let Some(mut out) = self.outgoing.take() else {
            return;
        };
        if let Some(pcm) = out.pcm.as_mut() {
            match pcm.finish() {
                Ok(frames) => {
                    for frame in frames {
                        let payload = frame_audio(out.next_seq, &frame);
                        out.next_seq = out.next_seq.wrapping_add(1);
                        self.publish(self.topics.out_audio(), QoS::AtMostOnce, false, payload);
                    }
                }
                Err(error) => debug!(%error, "pcm16 tail lost"),
            }
        }
        self.publish_end(out.tx, reason);
    }

    async fn start_tone(&mut self) -> Result<(), HubClosed> {
        if self.tone.is_some() {
            return Ok(());
        }
        info!("test tone requested");
        self.link
            .talk_start(
                TONE_STREAM,
                Talker::new(TONE_TALKER, TONE_TALKER),
                Priority::Normal,
                TalkKind::Live,
            )
            .await?;
        self.tone = Some(Tone {
            tx: None,
            next: 0,
            ticker: None,
        });
        Ok(())
    }

    fn tone_granted(&mut self, tx: TxId) -> Result<(), HubClosed> {
        let Some(tone) = self.tone.as_mut() else {
            return Ok(());
        };
        tone.tx = Some(tx);
        let mut ticker = tokio::time::interval(Duration::from_millis(20));
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tone.ticker = Some(ticker);
        self.holder = Some(TONE_TALKER.to_owned());
        self.set_floor(FloorState::Taken {
            talker: TONE_TALKER.to_owned(),
            source: self.id.to_string(),
            tx_id: tx.to_string(),
            since_ts: now_ms(),
        });
        let source = self.id.to_string();
        self.start_out(tx, TONE_TALKER, &source);
        Ok(())
    }

    async fn tone_frame(&mut self) -> Result<(), HubClosed> {
        let Some(tone) = self.tone.as_mut() else {
            return Ok(());
        };
        let Some(tx) = tone.tx else {
            return Ok(());
        };
        let index = tone.next;
        tone.next += 1;
        let Some(packet) = self.tone_source.opus.get(index).cloned() else {
            self.tone = None;
            self.finish_out("talker_done");
            return self.link.talk_end(TONE_STREAM).await;
        };
        self.link
            .audio(TONE_STREAM, AudioFrame::opus(index as u32, packet.clone()))?;
        if self.outgoing.as_ref().is_some_and(|o| o.tx == tx) {
            let payload = match self.config.payload {
                PayloadCodec::Opus => Some(frame_audio(index as u32, &packet)),
                PayloadCodec::Pcm16 => self
                    .tone_source
                    .pcm16
                    .get(index)
                    .map(|f| frame_audio(index as u32, f)),
            };
            if let Some(payload) = payload {
                self.publish(self.topics.out_audio(), QoS::AtMostOnce, false, payload);
            }
        }
        Ok(())
    }
}
