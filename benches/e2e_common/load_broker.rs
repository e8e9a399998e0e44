//! The passthrough ceiling's traffic source (issue #16 item 3): the bench itself
//! is the MQTT server the bridge's endpoints connect to, and every device. At a
//! few thousand streams mosquitto and one rumqttc client per side saturate the
//! bench's core long before the bridge's (each frame is a publish in, a relay, a
//! publish out and a relay), so the ceiling would be theirs. Here a device frame
//! is one pre-framed PUBLISH written straight to the bridge endpoint's socket,
//! and the bridge's `out/audio` PUBLISH is read straight off its socket: no relay
//! on either side. MQTT 3.1.1 as rumqttc speaks it (CONNECT, SUBSCRIBE, PUBLISH
//! at QoS 0/1, PINGREQ), with rumqttc's own packet codec; no retained messages,
//! no sessions, no wildcards beyond what the bridge's filters need.
//!
//! Channel `s{i}`: the bridge's endpoint `s{i}i` subscribes `s{i}i/in/+/…` (the
//! device side); `s{i}o` publishes `s{i}o/out/audio` (the listener side).
//! Latency of a frame = its arrival from `s{i}o` − the moment it was written to
//! `s{i}i`: the bridge plus two loopback TCP hops.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rumqttc::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, QoS, SubAck, SubscribeReasonCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use super::{diff_ms, seq_of, TxFrames};

const MAX_PACKET: usize = 64 * 1024;

type Writer = Arc<tokio::sync::Mutex<OwnedWriteHalf>>;

#[derive(Default)]
struct Track {
    granted: bool,
    sent_at: Vec<Option<Instant>>,
    out_at: Vec<Option<Instant>>,
}

#[derive(Default)]
struct Registry {
    /// Channel index → the bridge connection subscribed to its device topics.
    inputs: HashMap<usize, Writer>,
    /// Channel index → the bridge's output endpoint has subscribed (connected).
    outputs: HashSet<usize>,
    tracks: HashMap<usize, Track>,
}

pub struct LoadBroker {
    port: u16,
    registry: Arc<Mutex<Registry>>,
    changed: Arc<Notify>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for LoadBroker {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl LoadBroker {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let registry = Arc::new(Mutex::new(Registry::default()));
        let changed = Arc::new(Notify::new());
        let (r, c) = (registry.clone(), changed.clone());
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let _ = socket.set_nodelay(true);
                tokio::spawn(serve(socket, r.clone(), c.clone()));
            }
        });
        Self {
            port,
            registry,
            changed,
            accept,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Forgets every connection and track (between steps: a new bridge).
    pub fn reset(&self) {
        *self.registry.lock().expect("registry") = Registry::default();
    }

    /// Waits until channels `0..n` have both endpoints subscribed; false on timeout.
    pub async fn wait_connected(&self, n: usize, limit: Duration) -> bool {
        self.wait(limit, |r| {
            (0..n).all(|i| r.inputs.contains_key(&i) && r.outputs.contains(&i))
        })
        .await
    }

    /// Waits until channels `0..n` have their floors granted; false on timeout.
    pub async fn wait_granted(&self, n: usize, limit: Duration) -> bool {
        self.wait(limit, |r| {
            (0..n).all(|i| r.tracks.get(&i).is_some_and(|t| t.granted))
        })
        .await
    }

    async fn wait(&self, limit: Duration, done: impl Fn(&Registry) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if done(&self.registry.lock().expect("registry")) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done(&self.registry.lock().expect("registry"));
            }
        }
    }

    /// Waits until the last frame of every talk of channels `0..n` came out (or
    /// `limit` passed: a lost last frame is counted by `harvest`).
    pub async fn wait_delivered(&self, n: usize, limit: Duration) -> bool {
        self.wait(limit, |r| {
            (0..n).all(|i| {
                r.tracks
                    .get(&i)
                    .is_some_and(|t| t.out_at.last().is_some_and(Option::is_some))
            })
        })
        .await
    }

    fn input(&self, i: usize) -> Option<Writer> {
        self.registry
            .lock()
            .expect("registry")
            .inputs
            .get(&i)
            .cloned()
    }

    /// Channel `i`'s device asks for the floor; `frames` will follow.
    pub async fn start_talk(&self, i: usize, frames: usize) {
        {
            let mut registry = self.registry.lock().expect("registry");
            let track = registry.tracks.entry(i).or_default();
            *track = Track {
                granted: false,
                sent_at: vec![None; frames],
                out_at: vec![None; frames],
            };
        }
        let start = Publish::new(
            format!("s{i}i/in/dev/start"),
            QoS::AtMostOnce,
            r#"{"talker":"bench"}"#,
        );
        self.send(i, &Packet::Publish(start)).await;
    }

    pub async fn end_talk(&self, i: usize) {
        let end = Publish::new(format!("s{i}i/in/dev/end"), QoS::AtMostOnce, "");
        self.send(i, &Packet::Publish(end)).await;
    }

    /// One audio frame of channel `i`'s device, stamped as it is written.
    pub async fn frame(&self, i: usize, seq: u32, audio: &[u8]) {
        let mut payload = seq.to_be_bytes().to_vec();
        payload.extend_from_slice(audio);
        let publish = Publish::new(format!("s{i}i/in/dev/audio"), QoS::AtMostOnce, payload);
        let Some(writer) = self.input(i) else { return };
        let mut bytes = BytesMut::with_capacity(audio.len() + 32);
        if Packet::Publish(publish)
            .write(&mut bytes, MAX_PACKET)
            .is_err()
        {
            return;
        }
        let mut socket = writer.lock().await;
        let now = Instant::now();
        if socket.write_all(&bytes).await.is_ok() {
            let mut registry = self.registry.lock().expect("registry");
            if let Some(slot) = registry
                .tracks
                .get_mut(&i)
                .and_then(|t| t.sent_at.get_mut(seq as usize))
            {
                *slot = Some(now);
            }
        }
    }

    async fn send(&self, i: usize, packet: &Packet) {
        let Some(writer) = self.input(i) else { return };
        let mut bytes = BytesMut::new();
        if packet.write(&mut bytes, MAX_PACKET).is_ok() {
            let _ = writer.lock().await.write_all(&bytes).await;
        }
    }

    /// Channel `i`'s frames `0..sent`: latency of each that came out, and how
    /// many never did.
    pub fn harvest(&self, i: usize, sent: usize) -> TxFrames {
        let registry = self.registry.lock().expect("registry");
        let mut frames = TxFrames {
            sent,
            ..TxFrames::default()
        };
        let Some(track) = registry.tracks.get(&i) else {
            frames.lost = sent;
            return frames;
        };
        for seq in 0..sent {
            match (track.sent_at.get(seq), track.out_at.get(seq)) {
                (Some(Some(inp)), Some(Some(out))) => frames.latencies.push(diff_ms(*out, *inp)),
                _ => frames.lost += 1,
            }
        }
        frames
    }
}

/// `s{N}i/…` or `s{N}o/…` → (N, 'i' or 'o', the rest).
fn channel_of(topic: &str) -> Option<(usize, char, &str)> {
    let (prefix, rest) = topic.split_once('/')?;
    let number = prefix.strip_prefix('s')?;
    let side = number.chars().last()?;
    let index = number[..number.len() - 1].parse().ok()?;
    Some((index, side, rest))
}

/// One connection from the bridge, for its life.
async fn serve(socket: TcpStream, registry: Arc<Mutex<Registry>>, changed: Arc<Notify>) {
    let (mut read, write) = socket.into_split();
    let writer: Writer = Arc::new(tokio::sync::Mutex::new(write));
    let mut buffer = BytesMut::with_capacity(4096);
    let mut out = BytesMut::new();
    loop {
        let packet = match Packet::read(&mut buffer, MAX_PACKET) {
            Ok(packet) => packet,
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                match read.read_buf(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
            Err(_) => return,
        };
        let arrived = Instant::now();
        let answer = match packet {
            Packet::Connect(_) => Some(Packet::ConnAck(ConnAck::new(
                ConnectReturnCode::Success,
                false,
            ))),
            Packet::Subscribe(subscribe) => {
                for filter in &subscribe.filters {
                    if let Some((i, side, _)) = channel_of(&filter.path) {
                        let mut registry = registry.lock().expect("registry");
                        match side {
                            'i' => {
                                registry.inputs.insert(i, writer.clone());
                            }
                            'o' => {
                                registry.outputs.insert(i);
                            }
                            _ => {}
                        }
                    }
                }
                changed.notify_waiters();
                let codes = subscribe
                    .filters
                    .iter()
                    .map(|f| SubscribeReasonCode::Success(f.qos))
                    .collect();
                Some(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
            }
            Packet::Publish(publish) => {
                on_publish(&publish, arrived, &registry, &changed);
                (publish.qos == QoS::AtLeastOnce).then(|| Packet::PubAck(PubAck::new(publish.pkid)))
            }
            Packet::PingReq => Some(Packet::PingResp),
            Packet::Disconnect => return,
            _ => None,
        };
        if let Some(answer) = answer {
            out.clear();
            if answer.write(&mut out, MAX_PACKET).is_ok()
                && writer.lock().await.write_all(&out).await.is_err()
            {
                return;
            }
        }
    }
}

fn on_publish(publish: &Publish, arrived: Instant, registry: &Mutex<Registry>, changed: &Notify) {
    let Some((i, side, rest)) = channel_of(&publish.topic) else {
        return;
    };
    match (side, rest) {
        ('o', "out/audio") => {
            let Some(seq) = seq_of(&publish.payload) else {
                return;
            };
            let last = {
                let mut registry = registry.lock().expect("registry");
                let Some(track) = registry.tracks.get_mut(&i) else {
                    return;
                };
                if let Some(slot) = track.out_at.get_mut(seq as usize) {
                    slot.get_or_insert(arrived);
                }
                seq as usize + 1 == track.out_at.len()
            };
            if last {
                changed.notify_waiters();
            }
        }
        ('i', "in/dev/floor") if publish.payload.windows(9).any(|w| w == b"\"granted\"") => {
            if let Some(track) = registry.lock().expect("registry").tracks.get_mut(&i) {
                track.granted = true;
            }
            changed.notify_waiters();
        }
        _ => {}
    }
}
