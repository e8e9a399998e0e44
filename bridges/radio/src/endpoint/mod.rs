//! The radio as a channel endpoint: what the channel says goes out over the air
//! (key → tx delay → audio → hang → unkey, through the [`TxRunner`]), what the
//! radio receives comes in as a talk (COS or VOX opens it, its end closes it).
//!
//! Safety first, in this order: the PTT is driven unkeyed when it opens; a talker
//! the [`TransmitPolicy`] refuses never keys the radio; a sound card that vanishes
//! unkeys before anything else happens; the transmit thread owns every timer that
//! ends a transmission (hang, `tx_timeout`, the stall watchdog), so a stuck task
//! here cannot hold the key down.

mod card_sink;

pub use card_sink::{CardSink, MorseId, PlaybackSlot, ID_LEVEL_DBFS};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use walkie_endpoint::audio::{EncoderSettings, OpusEncoder};
use walkie_endpoint::{
    AudioFrame, Capabilities, Downlink, Endpoint, EndpointError, EndpointFuture, EndpointId,
    FloorEvent, HubClosed, HubLink, Priority, StreamKey, TalkKind, Talker, TransmitPolicy, TxId,
};

use crate::audio::{Capture, CaptureEvent, PlaybackEvent, SoundCard, FRAME_SAMPLES};
use crate::hardware::{HardwareError, RadioHardware};
use crate::rx::{RxDetector, RxEvent, SquelchError, POLL_INTERVAL};
use crate::tx::{TxCommand, TxController, TxRunner, TxSettings};

/// How often missing hardware (PTT port, rigctld, sound card) is tried again.
pub const RETRY_INTERVAL: Duration = Duration::from_secs(2);
/// This many driver errors in a row (failed PTT calls, or failed reads of the
/// COS line, polled every 10 ms) mean the serial port is gone — a USB adapter
/// pulled out: it is closed and reopened every [`RETRY_INTERVAL`].
pub const PORT_LOST_AFTER: u32 = 3;
/// Received audio held while the floor request is answered; a grant normally
/// comes within microseconds, a queue position may take longer.
const MAX_HELD_FRAMES: usize = 50;

/// Opens the radio's PTT and receive detector; called again after a failure.
pub type HardwareOpener = Box<dyn FnMut() -> Result<RadioHardware, HardwareError> + Send>;

#[derive(Debug, Clone)]
pub struct MorseSettings {
    pub callsign: String,
    pub wpm: u32,
    pub tone_hz: u32,
}

#[derive(Debug, Clone)]
pub struct RadioSettings {
    /// `uhf` of `radio.uhf`: names the PTT in logs and the safety registry.
    pub name: String,
    pub tx: TxSettings,
    pub rx_mute_after_tx: Duration,
    pub morse: Option<MorseSettings>,
    /// Who the channel hears when this radio receives.
    pub talker: Talker,
    /// Received audio from before the detector opened that is sent ahead of the
    /// talk, so the first syllable is not lost to the VOX attack time.
    pub pre_roll: Duration,
    pub retry: Duration,
    /// How received audio is encoded to Opus.
    pub encoder: EncoderSettings,
}

pub struct RadioEndpoint {
    id: EndpointId,
    settings: RadioSettings,
    open_hardware: HardwareOpener,
    card: Arc<dyn SoundCard>,
    policy: Arc<dyn TransmitPolicy>,
}

impl RadioEndpoint {
    pub fn new(
        id: EndpointId,
        settings: RadioSettings,
        open_hardware: HardwareOpener,
        card: Arc<dyn SoundCard>,
        policy: Arc<dyn TransmitPolicy>,
    ) -> Self {
        Self {
            id,
            settings,
            open_hardware,
            card,
            policy,
        }
    }
}

impl Endpoint for RadioEndpoint {
    fn id(&self) -> &EndpointId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            needs_pcm: true,
            listen_only: false,
        }
    }

    fn run(self: Box<Self>, link: HubLink, shutdown: CancellationToken) -> EndpointFuture {
        Box::pin(async move {
            let mut radio = Radio::new(*self, link);
            let result = radio.serve(&shutdown).await;
            radio.stop().await;
            result
        })
    }
}

/// The radio's own talk: what it receives, on its way to the channel.
struct OwnTalk {
    stream: StreamKey,
    state: OwnState,
    seq: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OwnState {
    /// Asked for the floor; received audio is held.
    Requested,
    Granted(TxId),
    /// Denied, or ended by the hub (max talk time, revoked): audio is dropped
    /// until the signal ends.
    Refused,
}

struct Radio {
    id: EndpointId,
    settings: RadioSettings,
    open_hardware: Option<HardwareOpener>,
    card: Arc<dyn SoundCard>,
    policy: Arc<dyn TransmitPolicy>,
    link: HubLink,

    runner: Option<TxRunner>,
    keyed: Arc<AtomicBool>,
    /// PTT calls that failed in a row, counted by the transmit thread.
    ptt_faults: Arc<AtomicU32>,
    rx: Option<RxDetector>,
    /// Failed polls of the receive detector in a row.
    rx_errors: u32,
    hardware_retry: Option<Instant>,
    hardware_failures: u32,

    capture: Option<Capture>,
    playback: PlaybackSlot,
    playback_events: Option<mpsc::Receiver<PlaybackEvent>>,
    card_retry: Option<Instant>,
    card_failures: u32,

    /// The channel's transmission the radio carries.
    carrying: Option<TxId>,
    /// Last state told to the receive gate.
    transmitting: bool,
    own: Option<OwnTalk>,
    next_stream: u64,
    held: VecDeque<Vec<i16>>,
    pre_roll: VecDeque<Vec<i16>>,
    encoder: Option<OpusEncoder>,
}

impl Radio {
    fn new(endpoint: RadioEndpoint, link: HubLink) -> Self {
        let now = Instant::now();
        Self {
            id: endpoint.id,
            settings: endpoint.settings,
            open_hardware: Some(endpoint.open_hardware),
            card: endpoint.card,
            policy: endpoint.policy,
            link,
            runner: None,
            keyed: Arc::new(AtomicBool::new(false)),
            ptt_faults: Arc::default(),
            rx: None,
            rx_errors: 0,
            hardware_retry: Some(now),
            hardware_failures: 0,
            capture: None,
            playback: PlaybackSlot::default(),
            playback_events: None,
            card_retry: Some(now),
            card_failures: 0,
            carrying: None,
            transmitting: false,
            own: None,
            next_stream: 1,
            held: VecDeque::new(),
            pre_roll: VecDeque::new(),
            encoder: None,
        }
    }

    async fn serve(&mut self, shutdown: &CancellationToken) -> Result<(), EndpointError> {
        self.retry_due().await?;
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                down = self.link.recv() => match down {
                    Ok(down) => self.on_hub(down).await,
                    Err(HubClosed) => return Ok(()),
                },
                event = next_capture(&mut self.capture) => match event {
                    Some(CaptureEvent::Frame(pcm)) => self.on_captured(pcm).await,
                    Some(CaptureEvent::Disconnected(why)) => self.card_lost(&why).await,
                    None => self.card_lost("capture stream ended").await,
                },
                event = next_playback_event(&mut self.playback_events) => match event {
                    Some(PlaybackEvent::Disconnected(why)) => self.card_lost(&why).await,
                    None => self.card_lost("playback stream ended").await,
                },
                _ = poll.tick() => {
                    self.poll_receive().await;
                    self.retry_due().await?;
                }
            }
        }
    }

    /// Unkeys (and waits until the transmit thread has), then ends our talk.
    async fn stop(&mut self) {
        if let Some(runner) = self.runner.take() {
            // Joining waits for the final unkey, which may take a rigctld round trip.
            let _ = tokio::task::spawn_blocking(move || runner.shutdown()).await;
        }
        self.end_own_talk().await;
        self.capture = None;
        self.playback.put(None);
        info!("radio endpoint stopped; PTT unkeyed");
    }

    // ---- the channel → the air ----

    async fn on_hub(&mut self, down: Downlink) {
        match down {
            Downlink::Floor(event) => self.on_floor(event).await,
            Downlink::Audio(frame) => {
                if self.carrying != Some(frame.tx) {
                    return;
                }
                // A late frame carries no PCM: its slot was already concealed.
                if let (Some(pcm), Some(runner)) = (frame.frame.pcm, &self.runner) {
                    runner.send(TxCommand::Audio(pcm.to_vec()));
                }
            }
        }
    }

    async fn on_floor(&mut self, event: FloorEvent) {
        match event {
            FloorEvent::Taken {
                tx, talker, source, ..
            } => self.taken(tx, &talker, &source).await,
            FloorEvent::Released { tx, reason } => {
                if self.carrying == Some(tx) {
                    self.carrying = None;
                    if let Some(runner) = &self.runner {
                        runner.send(TxCommand::FloorReleased);
                    }
                    debug!(%tx, %reason, "transmission over; unkeying after the hang");
                }
                if let Some(own) = self.own.as_mut() {
                    if own.state == OwnState::Granted(tx) {
                        info!(%tx, %reason, "the channel ended the radio's talk");
                        own.state = OwnState::Refused;
                    }
                }
            }
            FloorEvent::Granted { stream, tx } => {
                if let Some(own) = self.own.as_mut().filter(|own| own.stream == stream) {
                    own.state = OwnState::Granted(tx);
                    let held: Vec<Vec<i16>> = self.held.drain(..).collect();
                    for pcm in held {
                        self.send_received(pcm);
                    }
                }
            }
            FloorEvent::Denied {
                stream,
                reason,
                holder,
            } => {
                if let Some(own) = self.own.as_mut().filter(|own| own.stream == stream) {
                    info!(%reason, holder = ?holder.map(|h| h.display_name), "the radio's talk was refused");
                    own.state = OwnState::Refused;
                    self.held.clear();
                }
            }
            FloorEvent::Queued { stream, position } => {
                debug!(%stream, position, "the radio's talk waits for the floor");
            }
            FloorEvent::Declined { tx, by, reason, .. } => {
                info!(%tx, endpoint = %by, %reason, "another endpoint does not carry the radio's talk");
            }
            FloorEvent::Idle => {}
        }
    }

    /// Someone else holds the floor: key up for them, unless they may not use
    /// this radio or the radio cannot transmit right now.
    async fn taken(&mut self, tx: TxId, talker: &Talker, source: &EndpointId) {
        let refusal = if self.runner.is_none() {
            Some("the radio's PTT is not available".to_owned())
        } else if self.playback.is_empty() {
            Some("the radio's sound card is not available".to_owned())
        } else {
            self.policy.check(talker, source).await.err()
        };
        if let Some(reason) = refusal {
            info!(%tx, talker = %talker, %source, %reason, "not transmitting this talker");
            metrics::counter!("walkie_radio_declined_total", "endpoint" => self.id.to_string())
                .increment(1);
            let _ = self.link.decline(tx, reason).await;
            return;
        }
        info!(%tx, talker = %talker, %source, "transmitting");
        self.carrying = Some(tx);
        self.set_transmitting(true).await;
        if let Some(runner) = &self.runner {
            runner.send(TxCommand::FloorTakenByOther);
        }
    }

    // ---- the air → the channel ----

    async fn on_captured(&mut self, pcm: Vec<i16>) {
        let now = Instant::now().into_std();
        if let Some(rx) = self.rx.as_mut() {
            rx.feed_audio(&pcm, now);
        }
        // VOX decides on this very frame: poll before routing it.
        self.poll_receive().await;
        match self.own.as_ref().map(|own| own.state) {
            Some(OwnState::Granted(_)) => self.send_received(pcm),
            Some(OwnState::Requested) => {
                if self.held.len() < MAX_HELD_FRAMES {
                    self.held.push_back(pcm);
                }
            }
            Some(OwnState::Refused) => {}
            None => {
                let keep = self.settings.pre_roll.as_millis() as usize / 20;
                if keep > 0 {
                    self.pre_roll.push_back(pcm);
                    while self.pre_roll.len() > keep {
                        self.pre_roll.pop_front();
                    }
                }
            }
        }
    }

    fn send_received(&mut self, pcm: Vec<i16>) {
        let Some(own) = self.own.as_mut() else {
            return;
        };
        if pcm.len() != FRAME_SAMPLES {
            return;
        }
        let encoder = match self.encoder.as_mut() {
            Some(encoder) => encoder,
            None => match OpusEncoder::with_settings(
                walkie_endpoint::audio::SAMPLE_RATE,
                &self.settings.encoder,
            ) {
                Ok(encoder) => self.encoder.insert(encoder),
                Err(error) => {
                    error!(%error, "cannot create an Opus encoder; received audio is lost");
                    return;
                }
            },
        };
        match encoder.encode(&pcm) {
            Ok(opus) => {
                let frame = AudioFrame::opus(own.seq, opus);
                own.seq = own.seq.wrapping_add(1);
                let _ = self.link.audio(own.stream, frame);
            }
            Err(error) => warn!(%error, "cannot encode received audio"),
        }
    }

    async fn poll_receive(&mut self) {
        let faults = self.ptt_faults.load(Ordering::Acquire);
        if self.runner.is_some() && faults >= PORT_LOST_AFTER {
            self.hardware_lost(format!("{faults} PTT commands failed in a row"))
                .await;
            return;
        }
        let keyed = self.keyed.load(Ordering::Acquire);
        self.set_transmitting(keyed || self.carrying.is_some())
            .await;
        let Some(rx) = self.rx.as_mut() else {
            return;
        };
        match rx.poll(Instant::now().into_std()) {
            Ok(event) => {
                self.rx_errors = 0;
                match event {
                    Some(RxEvent::Started) => self.start_own_talk().await,
                    Some(RxEvent::Ended) => self.end_own_talk().await,
                    None => {}
                }
            }
            Err(error) => {
                self.rx_errors += 1;
                if self.rx_errors == 1 {
                    warn!(%error, "receive detection failed; treating the channel as quiet");
                    self.end_own_talk().await;
                }
                // A status line that cannot be read is a port that is gone
                // (rigctld errors are rigctld's: its detector reconnects itself).
                if matches!(error, SquelchError::Line { .. }) && self.rx_errors >= PORT_LOST_AFTER {
                    self.hardware_lost(format!("receive detection: {error}"))
                        .await;
                }
            }
        }
    }

    async fn set_transmitting(&mut self, transmitting: bool) {
        if transmitting == self.transmitting {
            return;
        }
        self.transmitting = transmitting;
        let now = Instant::now().into_std();
        let ended = self
            .rx
            .as_mut()
            .and_then(|rx| rx.set_transmitting(transmitting, now));
        if ended == Some(RxEvent::Ended) {
            self.end_own_talk().await;
        }
    }

    async fn start_own_talk(&mut self) {
        if self.own.is_some() {
            return;
        }
        let stream = StreamKey(self.next_stream);
        self.next_stream += 1;
        info!(%stream, "receiving");
        self.own = Some(OwnTalk {
            stream,
            state: OwnState::Requested,
            seq: 0,
        });
        self.held = self.pre_roll.drain(..).collect();
        if let Some(encoder) = self.encoder.as_mut() {
            let _ = encoder.reset();
        }
        let talker = self.settings.talker.clone();
        let _ = self
            .link
            .talk_start(stream, talker, Priority::Normal, TalkKind::Live)
            .await;
    }

    async fn end_own_talk(&mut self) {
        self.held.clear();
        if let Some(own) = self.own.take() {
            info!(stream = %own.stream, frames = own.seq, "reception ended");
            let _ = self.link.talk_end(own.stream).await;
        }
    }

    // ---- hardware coming and going ----

    /// The card vanished: unkey first, then everything else.
    async fn card_lost(&mut self, why: &str) {
        if let Some(runner) = &self.runner {
            runner.send(TxCommand::Unkey);
        }
        error!(reason = %why, retry_every = ?self.settings.retry, "sound card lost; radio unkeyed, retrying");
        self.link
            .report_disconnected(format!("sound card lost: {why}"));
        metrics::counter!("walkie_radio_card_lost_total", "endpoint" => self.id.to_string())
            .increment(1);
        self.capture = None;
        self.playback_events = None;
        self.playback.put(None);
        self.end_own_talk().await;
        self.card_retry = Some(Instant::now() + self.settings.retry);
        self.card_failures = 0;
    }

    /// The PTT / COS port keeps failing (a USB adapter pulled out): tell the
    /// talker the radio no longer carries them, unkey as far as the port still
    /// lets us, close it (the transmit thread ends, its retries with it) and
    /// reopen it every `retry` like a port that was never there. The line is
    /// driven unkeyed again the moment it reopens.
    async fn hardware_lost(&mut self, why: String) {
        error!(reason = %why, retry_every = ?self.settings.retry, "radio PTT / receive detection port lost; closing it and reopening");
        metrics::counter!("walkie_radio_port_lost_total", "endpoint" => self.id.to_string())
            .increment(1);
        self.link
            .report_disconnected(format!("PTT / receive detection port lost: {why}"));
        if let Some(tx) = self.carrying.take() {
            let _ = self
                .link
                .decline(tx, format!("the radio's PTT port was lost ({why})"))
                .await;
        }
        if let Some(runner) = self.runner.take() {
            runner.send(TxCommand::Unkey);
            // Joining waits for the final unkey attempt, bounded by the driver.
            let _ = tokio::task::spawn_blocking(move || runner.shutdown()).await;
        }
        self.rx = None;
        self.rx_errors = 0;
        self.keyed = Arc::new(AtomicBool::new(false));
        self.ptt_faults = Arc::default();
        self.end_own_talk().await;
        // The loss was logged above: reopening failures are debug from here on.
        self.hardware_failures = 1;
        self.hardware_retry = Some(Instant::now() + self.settings.retry);
    }

    /// Connected, for `/status` and metrics, once both the PTT side and the sound
    /// card are open.
    fn report_if_ready(&self) {
        if self.runner.is_some() && self.capture.is_some() {
            self.link.report_connected();
        }
    }

    async fn retry_due(&mut self) -> Result<(), EndpointError> {
        let now = Instant::now();
        if self.hardware_retry.is_some_and(|at| at <= now) {
            self.open_hardware().await?;
        }
        if self.card_retry.is_some_and(|at| at <= now) {
            self.open_card().await;
        }
        Ok(())
    }

    async fn open_hardware(&mut self) -> Result<(), EndpointError> {
        let Some(mut opener) = self.open_hardware.take() else {
            return Ok(());
        };
        let name = self.settings.name.clone();
        let tx = self.settings.tx;
        let morse = self.settings.morse.clone();
        let card_slot = self.playback.clone();
        let opened = tokio::task::spawn_blocking(move || {
            let result = opener().map_err(|e| e.to_string()).and_then(|hardware| {
                let RadioHardware { ptt, squelch } = hardware;
                let mut controller =
                    TxController::new(&name, tx, ptt, Box::new(CardSink::new(card_slot)))
                        .map_err(|e| e.to_string())?;
                if let Some(morse) = morse {
                    let id = MorseId::new(&morse.callsign, morse.wpm, morse.tone_hz)
                        .map_err(|e| e.to_string())?;
                    controller = controller.with_id_source(Box::new(id));
                }
                let keyed = controller.keyed_flag();
                let faults = controller.fault_counter();
                Ok((TxRunner::spawn(controller), keyed, faults, squelch))
            });
            (opener, result)
        })
        .await
        .map_err(|e| EndpointError::Fatal(format!("radio hardware task failed: {e}")))?;
        let (opener, result) = opened;
        self.open_hardware = Some(opener);
        match result {
            Ok((runner, keyed, faults, squelch)) => {
                if self.hardware_failures > 0 {
                    info!(
                        attempts = self.hardware_failures + 1,
                        "radio PTT and receive detection are back"
                    );
                } else {
                    info!("radio PTT ready (unkeyed) and receive detection running");
                }
                self.runner = Some(runner);
                self.keyed = keyed;
                self.ptt_faults = faults;
                self.rx = Some(RxDetector::new(squelch, self.settings.rx_mute_after_tx));
                self.rx_errors = 0;
                self.transmitting = false;
                self.hardware_retry = None;
                self.hardware_failures = 0;
                self.report_if_ready();
            }
            Err(reason) => {
                self.link
                    .report_disconnected(format!("PTT / receive detection: {reason}"));
                self.hardware_failures += 1;
                if self.hardware_failures == 1 {
                    error!(%reason, retry_every = ?self.settings.retry, "cannot open the radio's PTT / receive detection; retrying");
                } else {
                    debug!(%reason, attempt = self.hardware_failures, "radio hardware still unavailable");
                }
                self.hardware_retry = Some(Instant::now() + self.settings.retry);
            }
        }
        Ok(())
    }

    async fn open_card(&mut self) {
        let card = Arc::clone(&self.card);
        let opened = tokio::task::spawn_blocking(move || {
            let capture = card.open_capture()?;
            let playback = card.open_playback()?;
            Ok::<_, crate::audio::SoundCardError>((capture, playback))
        })
        .await;
        let result = match opened {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(join) => Err(join.to_string()),
        };
        match result {
            Ok((capture, mut playback)) => {
                let (_, placeholder) = mpsc::channel(1);
                self.playback_events = Some(std::mem::replace(&mut playback.events, placeholder));
                info!(
                    capture_rate = capture.format.rate,
                    playback_rate = playback.format().rate,
                    "sound card open"
                );
                self.capture = Some(capture);
                self.playback.put(Some(playback));
                self.card_retry = None;
                self.card_failures = 0;
                self.report_if_ready();
            }
            Err(reason) => {
                self.link
                    .report_disconnected(format!("sound card: {reason}"));
                self.card_failures += 1;
                if self.card_failures == 1 {
                    error!(%reason, retry_every = ?self.settings.retry, "sound card unavailable; retrying");
                } else {
                    debug!(%reason, attempt = self.card_failures, "sound card still unavailable");
                }
                self.card_retry = Some(Instant::now() + self.settings.retry);
            }
        }
    }
}

async fn next_capture(capture: &mut Option<Capture>) -> Option<CaptureEvent> {
    match capture {
        Some(capture) => capture.events.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_playback_event(
    events: &mut Option<mpsc::Receiver<PlaybackEvent>>,
) -> Option<PlaybackEvent> {
    match events {
        Some(events) => events.recv().await,
        None => std::future::pending().await,
    }
}
