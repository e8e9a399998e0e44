//! A radio endpoint on a channel hub, with the two parts no CI machine has: a
//! sound card and an RTS/CTS modem line. Both are fakes behind the very traits
//! the real drivers implement (`SoundCard`, `ModemLines`, `ModemStatus`); the
//! real ALSA path is covered by bridges/radio/tests/audio_alsa.rs, the real
//! rigctld PTT by bridges/radio/tests/ptt_rigctld.rs.
//!
//! The card runs on a real-time clock like a USB interface would: every 20 ms
//! the capture side hands over what the test put in its "air" queue (silence
//! when empty), and the playback side takes 20 ms from the endpoint's queue,
//! recording each period with its time.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use walkie_bridge::hub::{ChannelHub, FloorSettings, HubStats};
use walkie_endpoint::audio::{OpusDecoder, OpusEncoder, FRAME_SAMPLES};
use walkie_endpoint::{
    AudioFrame, Capabilities, Downlink, Endpoint, EndpointId, FloorEvent, HubLink, Priority,
    StreamKey, TalkKind, Talker, TransmitPolicy, TxId,
};
use walkie_radio::audio::{
    Capture, CaptureEvent, DeviceDirection, Playback, SoundCard, SoundCardError, StreamFormat,
};
use walkie_radio::ptt::{FakeModemLines, Line, PttLines, SerialLinePtt};
use walkie_radio::rx::{FakeModemStatus, LineSquelch, ModemLine, StatusLine};
use walkie_radio::tx::TxSettings;
use walkie_radio::{RadioEndpoint, RadioHardware, RadioSettings};

pub const PERIOD: Duration = Duration::from_millis(20);
/// Bound on waiting for anything; turns a hang into a failure.
pub const WAIT: Duration = Duration::from_secs(10);

/// What the fake card did and what it is told.
#[derive(Default)]
pub struct CardState {
    /// Audio "on the air" that the radio receives, 48 kHz.
    pub air: Mutex<VecDeque<i16>>,
    /// Each playback period: when, and the 960 samples played.
    pub played: Mutex<Vec<(Instant, Vec<i16>)>>,
    pub unplugged: AtomicBool,
    /// Every open attempt (capture and playback are opened together).
    pub open_attempts: Mutex<Vec<Instant>>,
}

impl CardState {
    pub fn receive(&self, pcm: &[i16]) {
        lock(&self.air).extend(pcm.iter().copied());
    }

    pub fn air_is_empty(&self) -> bool {
        lock(&self.air).is_empty()
    }

    /// Everything played so far, back to back, with the time of each period.
    pub fn played(&self) -> Vec<(Instant, Vec<i16>)> {
        lock(&self.played).clone()
    }

    pub fn attempts(&self) -> Vec<Instant> {
        lock(&self.open_attempts).clone()
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Default)]
pub struct PacedCard(pub Arc<CardState>);

struct StopOnDrop(Arc<AtomicBool>);
impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

const FORMAT: StreamFormat = StreamFormat {
    rate: 48_000,
    channels: 1,
};

impl PacedCard {
    fn refuse_if_unplugged(&self, direction: DeviceDirection) -> Result<(), SoundCardError> {
        if self.0.unplugged.load(Ordering::Acquire) {
            return Err(SoundCardError::Device {
                name: "test-card".into(),
                direction,
                message: "no such device (unplugged)".into(),
            });
        }
        Ok(())
    }
}

impl SoundCard for PacedCard {
    fn open_capture(&self) -> Result<Capture, SoundCardError> {
        lock(&self.0.open_attempts).push(Instant::now());
        self.refuse_if_unplugged(DeviceDirection::Capture)?;
        let (tx, rx) = mpsc::channel(100);
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::clone(&self.0);
        let stopped = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut next = Instant::now() + PERIOD;
            while !stopped.load(Ordering::Acquire) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += PERIOD;
                if state.unplugged.load(Ordering::Acquire) {
                    let _ = tx.blocking_send(CaptureEvent::Disconnected("USB unplugged".into()));
                    return;
                }
                let frame: Vec<i16> = {
                    let mut air = lock(&state.air);
                    let n = air.len().min(FRAME_SAMPLES);
                    let mut frame: Vec<i16> = air.drain(..n).collect();
                    frame.resize(FRAME_SAMPLES, 0);
                    frame
                };
                if tx.blocking_send(CaptureEvent::Frame(frame)).is_err() {
                    return;
                }
            }
        });
        Ok(Capture::from_source(rx, FORMAT, Box::new(StopOnDrop(stop))))
    }

    fn open_playback(&self) -> Result<Playback, SoundCardError> {
        self.refuse_if_unplugged(DeviceDirection::Playback)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (playback, driver) = Playback::driven(FORMAT, Box::new(StopOnDrop(Arc::clone(&stop))))?;
        let state = Arc::clone(&self.0);
        std::thread::spawn(move || {
            let mut next = Instant::now() + PERIOD;
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
                next += PERIOD;
                if state.unplugged.load(Ordering::Acquire) {
                    driver.disconnect("USB unplugged");
                    return;
                }
                let mut period = vec![0i16; FRAME_SAMPLES];
                driver.pull(&mut period);
                lock(&state.played).push((Instant::now(), period));
            }
        });
        Ok(playback)
    }
}

/// A channel hub with a talker endpoint, a listener endpoint and the radio.
pub struct Rig {
    pub talker: HubLink,
    pub listener: HubLink,
    pub lines: FakeModemLines,
    pub cos: FakeModemStatus,
    pub card: Arc<CardState>,
    /// Every attempt to open the PTT and receive detection: when, and whether it worked.
    pub ptt_opens: Arc<Mutex<Vec<(Instant, bool)>>>,
    pub stats: Arc<HubStats>,
    /// The connection state the radio reports (`/status`).
    pub health: Arc<walkie_endpoint::EndpointHealth>,
    shutdown: CancellationToken,
    radio_stop: CancellationToken,
    hub: tokio::task::JoinHandle<()>,
    radio: tokio::task::JoinHandle<()>,
}

pub fn radio_settings(tx: TxSettings) -> RadioSettings {
    RadioSettings {
        name: "test-uhf".into(),
        tx,
        rx_mute_after_tx: Duration::from_millis(500),
        morse: None,
        talker: Talker::new("uhf", "uhf (Radio)"),
        pre_roll: Duration::ZERO,
        retry: Duration::from_secs(2),
        encoder: walkie_endpoint::audio::EncoderSettings::default(),
    }
}

pub fn tx_settings() -> TxSettings {
    TxSettings {
        tx_delay: Duration::from_millis(150),
        ptt_hang: Duration::from_millis(200),
        tx_timeout: Duration::from_secs(180),
        ..TxSettings::default()
    }
}

pub fn floor() -> FloorSettings {
    FloorSettings {
        hang: Duration::ZERO,
        ..FloorSettings::default()
    }
}

impl Rig {
    pub fn start(settings: RadioSettings, policy: Arc<dyn TransmitPolicy>) -> Self {
        let mut hub = ChannelHub::new("radio-test", floor());
        let talker = hub
            .attach(EndpointId::new("test.talkers"), Capabilities::default())
            .expect("attach talker");
        let listener = hub
            .attach(EndpointId::new("test.listener"), Capabilities::default())
            .expect("attach listener");
        let lines = FakeModemLines::new();
        let cos = FakeModemStatus::new();
        let card = PacedCard::default();
        let (ptt_lines, cos_lines) = (lines.clone(), cos.clone());
        let ptt_opens: Arc<Mutex<Vec<(Instant, bool)>>> = Arc::default();
        let opens = Arc::clone(&ptt_opens);
        let opener = Box::new(move || {
            let ptt = SerialLinePtt::new(ptt_lines.clone(), PttLines::Rts, false);
            lock(&opens).push((Instant::now(), ptt.is_ok()));
            Ok(RadioHardware {
                ptt: Box::new(ptt?),
                squelch: Box::new(LineSquelch::new(
                    cos_lines.clone(),
                    StatusLine {
                        line: ModemLine::Cts,
                        inverted: false,
                    },
                    Duration::from_millis(30),
                )),
            })
        });
        let radio = Box::new(RadioEndpoint::new(
            EndpointId::new("radio.uhf"),
            settings,
            opener,
            Arc::new(card.clone()),
            policy,
        ));
        let link = hub
            .attach(radio.id().clone(), radio.capabilities())
            .expect("attach radio");
        let stats = hub.stats();
        let health = link.health();
        let shutdown = CancellationToken::new();
        let radio_stop = CancellationToken::new();
        let hub = tokio::spawn(hub.run(shutdown.clone()));
        let stop = radio_stop.clone();
        let radio = tokio::spawn(async move {
            radio
                .run(link, stop)
                .await
                .expect("radio endpoint ends cleanly");
        });
        Self {
            talker,
            listener,
            lines,
            cos,
            card: card.0,
            ptt_opens,
            stats,
            health,
            shutdown,
            radio_stop,
            hub,
            radio,
        }
    }

    /// Waits until the radio reports `state`.
    pub async fn wait_health(&self, state: walkie_endpoint::ConnectionState) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.health.state() != state {
            assert!(
                Instant::now() < deadline,
                "radio reports {} (reason {:?}), not {state}",
                self.health.state(),
                self.health.reason()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The RTS level changes so far, from the first write on.
    pub fn rts(&self) -> Vec<(Instant, bool)> {
        let mut out: Vec<(Instant, bool)> = Vec::new();
        for e in self.lines.events().iter().filter(|e| e.line == Line::Rts) {
            if out.last().map(|(_, l)| *l) != Some(e.level) {
                out.push((e.at, e.level));
            }
        }
        out
    }

    pub fn keyed(&self) -> bool {
        self.rts().last().is_some_and(|(_, level)| *level)
    }

    /// Waits until RTS has gone to `level` at a change numbered `from` or later
    /// (an index into [`Self::rts`]), and returns that change's index and time.
    /// Unlike [`Self::wait_rts`] it sees a change that was quickly followed by
    /// another one before the poll came round.
    pub async fn wait_rts_change(&self, from: usize, level: bool) -> (usize, Instant) {
        let deadline = Instant::now() + WAIT;
        loop {
            let rts = self.rts();
            if let Some((i, (at, _))) = rts
                .iter()
                .enumerate()
                .skip(from)
                .find(|(_, (_, l))| *l == level)
            {
                return (i, *at);
            }
            assert!(
                Instant::now() < deadline,
                "RTS never went {level} after change {from}: {rts:?}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until the radio's RTS is at `level` (the fake line has no way to
    /// notify, so it is checked every millisecond) and returns when it got there.
    pub async fn wait_rts(&self, level: bool) -> Instant {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some((at, l)) = self.rts().last() {
                if *l == level {
                    return *at;
                }
            }
            assert!(
                Instant::now() < deadline,
                "RTS never went {level}: {:?}",
                self.rts()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until the card has been opened `n` times (attempts, failed or not).
    pub async fn wait_open_attempts(&self, n: usize) -> Vec<Instant> {
        let deadline = Instant::now() + WAIT;
        loop {
            let attempts = self.card.attempts();
            if attempts.len() >= n {
                return attempts;
            }
            assert!(
                Instant::now() < deadline,
                "only {} card opens",
                attempts.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until the PTT side has been opened `n` times (attempts, failed or not).
    pub async fn wait_ptt_opens(&self, n: usize) -> Vec<(Instant, bool)> {
        let deadline = Instant::now() + WAIT;
        loop {
            let opens = lock(&self.ptt_opens).clone();
            if opens.len() >= n {
                return opens;
            }
            assert!(
                Instant::now() < deadline,
                "only {} PTT opens: {opens:?}",
                opens.len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub async fn stop(self) -> Arc<CardState> {
        self.radio_stop.cancel();
        tokio::time::timeout(WAIT, self.radio)
            .await
            .expect("radio endpoint stops")
            .expect("radio endpoint did not panic");
        self.shutdown.cancel();
        let _ = tokio::time::timeout(WAIT, self.hub).await;
        self.card
    }
}

pub async fn next(link: &mut HubLink) -> Downlink {
    tokio::time::timeout(WAIT, link.recv())
        .await
        .unwrap_or_else(|_| panic!("{} heard nothing within {WAIT:?}", link.id()))
        .expect("hub running")
}

pub async fn next_floor(link: &mut HubLink) -> FloorEvent {
    loop {
        if let Downlink::Floor(event) = next(link).await {
            return event;
        }
    }
}

/// `name` on the talker endpoint takes the floor; returns the transmission.
pub async fn take(link: &mut HubLink, stream: u64, name: &str) -> TxId {
    link.talk_start(
        StreamKey(stream),
        Talker::new(name, format!("{name} (Test)")),
        Priority::Normal,
        TalkKind::Live,
    )
    .await
    .expect("hub running");
    loop {
        match next_floor(link).await {
            FloorEvent::Granted { tx, .. } => return tx,
            // The end of this endpoint's previous talk.
            FloorEvent::Released { .. } | FloorEvent::Idle => {}
            other => panic!("{name} expected a grant, got {other:?}"),
        }
    }
}

/// Sends `pcm` as Opus frames in real time on `stream`, as a live talker does.
pub async fn talk(link: &HubLink, stream: u64, pcm: &[i16]) {
    let mut encoder = OpusEncoder::new().expect("encoder");
    let mut tick = tokio::time::interval(PERIOD);
    for (seq, frame) in pcm.chunks(FRAME_SAMPLES).enumerate() {
        let mut frame = frame.to_vec();
        frame.resize(FRAME_SAMPLES, 0);
        tick.tick().await;
        let opus = encoder.encode(&frame).expect("encode");
        link.audio(StreamKey(stream), AudioFrame::opus(seq as u32, opus))
            .expect("hub running");
    }
}

/// Decodes every audio frame `link` hears until transmission `tx` is released.
pub async fn hear_until_released(link: &mut HubLink, tx: TxId) -> Vec<i16> {
    let mut decoder = OpusDecoder::new().expect("decoder");
    let mut out = Vec::new();
    loop {
        match next(link).await {
            Downlink::Audio(frame) if frame.tx == tx => {
                out.extend(decoder.decode(&frame.frame.opus).expect("decode"));
            }
            Downlink::Floor(FloorEvent::Released { tx: released, .. }) if released == tx => {
                return out;
            }
            _ => {}
        }
    }
}
