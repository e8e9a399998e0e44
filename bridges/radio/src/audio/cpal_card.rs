//! [`SoundCard`] on cpal's ALSA host.

use super::frames::{mono_from_interleaved, Framer, PlayQueue};
use super::{
    Capture, CaptureEvent, Playback, PlaybackEvent, SoundCard, SoundCardError, StreamFormat,
    DEFAULT_CAPTURE_QUEUE_FRAMES, DEFAULT_PLAYBACK_QUEUE_SAMPLES, FRAME_SAMPLES, SAMPLE_RATE,
};
use cpal::traits::{DeviceTrait, HostTrait, StreamTrait};
use cpal::{SampleFormat, SizedSample};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use walkie_endpoint::audio::Resampler;

/// Capture or playback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceDirection {
    /// Audio from the radio's receiver.
    Capture,
    /// Audio to the radio's transmitter.
    Playback,
}

impl std::fmt::Display for DeviceDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceDirection::Capture => "capture",
            DeviceDirection::Playback => "playback",
        })
    }
}

/// The ALSA host. On Linux cpal's default host is ALSA anyway; asking for it
/// by id keeps a PulseAudio/PipeWire/JACK feature of cpal (if ever enabled)
/// from silently changing what device names mean.
fn alsa_host() -> Result<cpal::Host, String> {
    cpal::host_from_id(cpal::HostId::Alsa).map_err(|e| e.to_string())
}

/// The first line of a device's description ("USB Audio CODEC, USB Audio").
fn description_of(device: &cpal::Device) -> String {
    device
        .description()
        .map(|d| d.name().lines().next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn id_of(device: &cpal::Device) -> String {
    device
        .id()
        .map(|id| id.id().to_owned())
        .unwrap_or_else(|_| device.to_string())
}

/// Finds the ALSA device the config names.
///
/// In order: `"default"` is ALSA's default PCM; then the name as an ALSA PCM
/// id as `aplay -L` lists it or as the card/device pair (`hw:1,0`,
/// `plughw:CARD=Device,DEV=0`, `sysdefault:CARD=Device`, a PCM of your
/// asoundrc that has a `hint` section); then, case-insensitively, a piece of
/// the card's description (`"USB Audio CODEC"`), preferring the `plughw:`
/// device (which converts rate and format) when the card has several.
pub fn find_device(name: &str, direction: DeviceDirection) -> Result<cpal::Device, SoundCardError> {
    let device_err = |message: String| SoundCardError::Device {
        name: name.to_owned(),
        direction,
        message,
    };
    let host = alsa_host().map_err(device_err)?;
    if name.trim().is_empty() || name == "default" {
        let d = match direction {
            DeviceDirection::Capture => host.default_input_device(),
            DeviceDirection::Playback => host.default_output_device(),
        };
        return d.ok_or_else(|| device_err("ALSA has no default device".into()));
    }
    let id = cpal::DeviceId::new(cpal::HostId::Alsa, name);
    if let Some(d) = host.device_by_id(&id) {
        return Ok(d);
    }
    let devices: Vec<cpal::Device> = host
        .devices()
        .map_err(|e| device_err(format!("listing devices: {e}")))?
        .collect();
    if let Some(d) = devices.iter().find(|d| id_of(d) == name) {
        return Ok(d.clone());
    }
    let needle = name.to_lowercase();
    let mut matches: Vec<&cpal::Device> = devices
        .iter()
        .filter(|d| description_of(d).to_lowercase().contains(&needle))
        .collect();
    if matches.len() > 1 {
        let plug: Vec<&cpal::Device> = matches
            .iter()
            .copied()
            .filter(|d| id_of(d).starts_with("plughw:"))
            .collect();
        if plug.len() == 1 {
            matches = plug;
        }
    }
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(SoundCardError::NotFound {
            name: name.to_owned(),
            direction,
            available: devices.iter().map(id_of).collect::<Vec<_>>().join(", "),
        }),
        many => Err(SoundCardError::Ambiguous {
            name: name.to_owned(),
            direction,
            matches: many.iter().map(|d| id_of(d)).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// Sample formats in order of preference: i16 is what the bridge uses, so
/// no conversion; the others are what USB and onboard codecs offer.
const FORMATS: [SampleFormat; 5] = [
    SampleFormat::I16,
    SampleFormat::F32,
    SampleFormat::I32,
    SampleFormat::U16,
    SampleFormat::U8,
];

/// The stream configuration: the device's default (native) rate unless
/// `rate` overrides it, the preferred sample format and the fewest channels
/// the device offers at that rate.
fn choose_config(
    device: &cpal::Device,
    direction: DeviceDirection,
    rate: Option<u32>,
) -> Result<(cpal::StreamConfig, SampleFormat), String> {
    let (default, ranges): (
        cpal::SupportedStreamConfig,
        Vec<cpal::SupportedStreamConfigRange>,
    ) = match direction {
        DeviceDirection::Capture => (
            device.default_input_config().map_err(|e| e.to_string())?,
            device
                .supported_input_configs()
                .map_err(|e| e.to_string())?
                .collect(),
        ),
        DeviceDirection::Playback => (
            device.default_output_config().map_err(|e| e.to_string())?,
            device
                .supported_output_configs()
                .map_err(|e| e.to_string())?
                .collect(),
        ),
    };
    let rate = rate.unwrap_or(default.sample_rate());
    let best = ranges
        .iter()
        .filter(|r| r.min_sample_rate() <= rate && rate <= r.max_sample_rate())
        .filter_map(|r| {
            let pref = FORMATS.iter().position(|f| *f == r.sample_format())?;
            Some((pref, r.channels(), r))
        })
        .min_by_key(|(pref, channels, _)| (*pref, *channels));
    let Some((_, channels, range)) = best else {
        return Err(format!(
            "no supported i16/f32/i32/u16/u8 configuration at {rate} Hz"
        ));
    };
    Ok((
        cpal::StreamConfig {
            channels,
            sample_rate: rate,
            buffer_size: cpal::BufferSize::Default,
        },
        range.sample_format(),
    ))
}

/// Stops the stream when dropped: the stream lives on its own thread (cpal
/// streams need not be `Send`), which drops it when this guard goes.
struct StreamGuard {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // Joining makes "dropped" mean "device closed": a reopen right
            // after cannot find the device still busy.
            let _ = t.join();
        }
    }
}

/// Runs `build` on a fresh thread that keeps the stream until the guard drops.
fn spawn_stream<F>(
    name: &str,
    direction: DeviceDirection,
    build: F,
) -> Result<(StreamGuard, StreamFormat), SoundCardError>
where
    F: FnOnce() -> Result<(cpal::Stream, StreamFormat), SoundCardError> + Send + 'static,
{
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let card = name.to_owned();
    let thread = std::thread::Builder::new()
        .name(format!("radio-{direction}"))
        .spawn(move || match build() {
            Ok((stream, format)) => match stream.play() {
                Ok(()) => {
                    let _ = ready_tx.send(Ok(format));
                    // Blocks until the guard drops the sender.
                    let _ = stop_rx.recv();
                    drop(stream);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(SoundCardError::Device {
                        name: card,
                        direction,
                        message: e.to_string(),
                    }));
                }
            },
            // Already names the card and the direction: passed on as it is.
            Err(e) => {
                let _ = ready_tx.send(Err(e));
            }
        })
        .map_err(|e| SoundCardError::Device {
            name: name.to_owned(),
            direction,
            message: format!("cannot start audio thread: {e}"),
        })?;
    let guard = StreamGuard {
        stop: Some(stop_tx),
        thread: Some(thread),
    };
    match ready_rx.recv() {
        Ok(Ok(format)) => Ok((guard, format)),
        Ok(Err(error)) => Err(error),
        Err(_) => Err(SoundCardError::Device {
            name: name.to_owned(),
            direction,
            message: "audio thread ended while opening".into(),
        }),
    }
}

/// Whether a cpal stream error means the device is gone (rather than a
/// glitch such as an xrun, which ALSA recovers from).
fn is_disconnect(e: &cpal::Error) -> bool {
    matches!(
        e.kind(),
        cpal::ErrorKind::DeviceNotAvailable | cpal::ErrorKind::StreamInvalidated
    )
}

/// A sound card by ALSA device name, through cpal.
#[derive(Debug, Clone)]
pub struct CpalSoundCard {
    audio_in: String,
    audio_out: String,
    rate: Option<u32>,
    capture_queue_frames: usize,
}

impl CpalSoundCard {
    /// Capture from `audio_in`, play to `audio_out` (the `audio_in`/`audio_out` settings).
    pub fn new(audio_in: impl Into<String>, audio_out: impl Into<String>) -> Self {
        Self {
            audio_in: audio_in.into(),
            audio_out: audio_out.into(),
            rate: None,
            capture_queue_frames: DEFAULT_CAPTURE_QUEUE_FRAMES,
        }
    }

    /// Opens the device at `rate` instead of its default rate.
    pub fn with_rate(mut self, rate: Option<u32>) -> Self {
        self.rate = rate;
        self
    }

    /// How many captured frames may wait for the consumer before new ones are dropped.
    pub fn with_capture_queue(mut self, frames: usize) -> Self {
        self.capture_queue_frames = frames.max(1);
        self
    }
}

fn build_capture<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    tx: mpsc::Sender<CaptureEvent>,
    dropped: Arc<AtomicU64>,
    name: String,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + Send + 'static,
    i16: cpal::FromSample<T>,
{
    let channels = usize::from(config.channels);
    let rate = config.sample_rate;
    let mut resampler = Resampler::new(rate, SAMPLE_RATE).map_err(|e| {
        cpal::Error::with_message(cpal::ErrorKind::UnsupportedConfig, e.to_string())
    })?;
    let mut framer = Framer::new(FRAME_SAMPLES);
    let err_tx = tx.clone();
    let gone = Arc::new(AtomicBool::new(false));
    let gone_cb = gone.clone();
    device.build_input_stream::<T, _, _>(
        *config,
        move |data: &[T], _| {
            if gone_cb.load(Ordering::Acquire) {
                return;
            }
            let interleaved: Vec<i16> = data.iter().map(|s| s.to_sample::<i16>()).collect();
            let mono = mono_from_interleaved(&interleaved, channels);
            let out = match resampler.process(&mono) {
                Ok(out) => out,
                Err(e) => {
                    tracing::error!(device = %name, "capture resampling failed: {e}");
                    return;
                }
            };
            framer.push(&out, |frame| {
                if tx.try_send(CaptureEvent::Frame(frame)).is_err() {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
            });
        },
        move |e| {
            if is_disconnect(&e) {
                if !gone.swap(true, Ordering::AcqRel) {
                    let _ = err_tx.try_send(CaptureEvent::Disconnected(e.to_string()));
                }
            } else {
                tracing::warn!("sound card capture: {e}");
            }
        },
        None,
    )
}

fn build_playback<T>(
    device: &cpal::Device,
    config: &cpal::StreamConfig,
    queue: Arc<PlayQueue>,
    played: watch::Sender<u64>,
    events: mpsc::Sender<PlaybackEvent>,
) -> Result<cpal::Stream, cpal::Error>
where
    T: SizedSample + cpal::FromSample<i16> + Send + 'static,
{
    let channels = usize::from(config.channels).max(1);
    let mut mono: Vec<i16> = Vec::new();
    let gone = Arc::new(AtomicBool::new(false));
    device.build_output_stream::<T, _, _>(
        *config,
        move |data: &mut [T], _| {
            let frames = data.len() / channels;
            mono.resize(frames, 0);
            let total = queue.pop_into(&mut mono);
            for (out, &s) in data.chunks_exact_mut(channels).zip(mono.iter()) {
                out.fill(T::from_sample(s));
            }
            played.send_replace(total);
        },
        move |e| {
            if is_disconnect(&e) {
                if !gone.swap(true, Ordering::AcqRel) {
                    let _ = events.try_send(PlaybackEvent::Disconnected(e.to_string()));
                }
            } else {
                tracing::warn!("sound card playback: {e}");
            }
        },
        None,
    )
}

impl SoundCard for CpalSoundCard {
    fn open_capture(&self) -> Result<Capture, SoundCardError> {
        let (tx, rx) = mpsc::channel(self.capture_queue_frames);
        let dropped = Arc::new(AtomicU64::new(0));
        let name = self.audio_in.clone();
        let rate = self.rate;
        let dropped_cb = dropped.clone();
        let (guard, format) = spawn_stream(&name.clone(), DeviceDirection::Capture, move || {
            let dir = DeviceDirection::Capture;
            let err = |message: String| SoundCardError::Device {
                name: name.clone(),
                direction: dir,
                message,
            };
            let device = find_device(&name, dir)?;
            let (config, fmt) = choose_config(&device, dir, rate).map_err(err)?;
            let n = name.clone();
            let stream = match fmt {
                SampleFormat::I16 => build_capture::<i16>(&device, &config, tx, dropped_cb, n),
                SampleFormat::F32 => build_capture::<f32>(&device, &config, tx, dropped_cb, n),
                SampleFormat::I32 => build_capture::<i32>(&device, &config, tx, dropped_cb, n),
                SampleFormat::U16 => build_capture::<u16>(&device, &config, tx, dropped_cb, n),
                SampleFormat::U8 => build_capture::<u8>(&device, &config, tx, dropped_cb, n),
                other => return Err(err(format!("sample format {other} not supported"))),
            }
            .map_err(|e| err(e.to_string()))?;
            Ok((
                stream,
                StreamFormat {
                    rate: config.sample_rate,
                    channels: config.channels,
                },
            ))
        })?;
        tracing::info!(
            device = %self.audio_in, rate = format.rate, channels = format.channels,
            "sound card capture open"
        );
        Ok(Capture {
            events: rx,
            format,
            dropped,
            _guard: Box::new(guard),
        })
    }

    fn open_playback(&self) -> Result<Playback, SoundCardError> {
        let queue = Arc::new(PlayQueue::default());
        let (played_tx, played_rx) = watch::channel(0u64);
        let (ev_tx, ev_rx) = mpsc::channel(4);
        let name = self.audio_out.clone();
        let rate = self.rate;
        let q = queue.clone();
        let (guard, format) = spawn_stream(&name.clone(), DeviceDirection::Playback, move || {
            let dir = DeviceDirection::Playback;
            let err = |message: String| SoundCardError::Device {
                name: name.clone(),
                direction: dir,
                message,
            };
            let device = find_device(&name, dir)?;
            let (config, fmt) = choose_config(&device, dir, rate).map_err(err)?;
            let stream = match fmt {
                SampleFormat::I16 => build_playback::<i16>(&device, &config, q, played_tx, ev_tx),
                SampleFormat::F32 => build_playback::<f32>(&device, &config, q, played_tx, ev_tx),
                SampleFormat::I32 => build_playback::<i32>(&device, &config, q, played_tx, ev_tx),
                SampleFormat::U16 => build_playback::<u16>(&device, &config, q, played_tx, ev_tx),
                SampleFormat::U8 => build_playback::<u8>(&device, &config, q, played_tx, ev_tx),
                other => return Err(err(format!("sample format {other} not supported"))),
            }
            .map_err(|e| err(e.to_string()))?;
            Ok((
                stream,
                StreamFormat {
                    rate: config.sample_rate,
                    channels: config.channels,
                },
            ))
        })?;
        tracing::info!(
            device = %self.audio_out, rate = format.rate, channels = format.channels,
            "sound card playback open"
        );
        let max_queue = (DEFAULT_PLAYBACK_QUEUE_SAMPLES as u64 * u64::from(format.rate)
            / u64::from(SAMPLE_RATE)) as usize;
        Ok(Playback {
            format,
            resampler: Resampler::new(SAMPLE_RATE, format.rate)?,
            queue,
            played: played_rx,
            events: ev_rx,
            max_queue,
            _guard: Box::new(guard),
        })
    }
}
