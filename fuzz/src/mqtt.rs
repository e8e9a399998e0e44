//! MQTT intercom messages: topic, JSON `start`, and the sequence-numbered
//! audio frames in both payload codecs.

use walkie_endpoint::audio::OpusDecoder;
use walkie_mqtt::topics::{DeviceTopic, Inbound, Topics};
use walkie_mqtt::transcode::{PcmToOpus, PCM16_FRAME_BYTES};
use walkie_mqtt::wire::{parse_audio, DeviceStart, SeqTracker};

/// Target `mqtt_payload`: `topic NUL payload`, as one PUBLISH from the broker,
/// followed by further `NUL payload`s on the same device (a talk's frames).
/// Everything the endpoint does with a message short of the hub: topic
/// parsing, `start` JSON, sequence checks, pcm16 transcoding and, for Opus
/// payloads, the decode the hub's transcoding path would run.
pub fn mqtt_payload(data: &[u8]) {
    let topics = Topics::new("walkie/lobby", "homeassistant");
    let mut parts = data.split(|&b| b == 0);
    let topic = String::from_utf8_lossy(parts.next().unwrap_or_default());
    let parsed = topics.parse(&topic);
    let mut seq = SeqTracker::default();
    let mut pcm: Option<PcmToOpus> = None;
    let mut opus: Option<OpusDecoder> = None;
    for payload in parts {
        // Every payload kind, whatever the topic said, so that the corpus
        // need not find a valid topic first to reach the payload parsers.
        let _ = DeviceStart::parse(payload);
        let Ok((n, audio)) = parse_audio(payload) else {
            continue;
        };
        assert!(!audio.is_empty());
        let _ = seq.check(n);
        if audio.len() == PCM16_FRAME_BYTES {
            if pcm.is_none() {
                pcm = PcmToOpus::new().ok();
            }
            if let Some(pcm) = pcm.as_mut() {
                let packets = pcm.push(audio).expect("a whole pcm16 frame transcodes");
                assert!(packets.len() <= 2);
            }
        } else {
            if opus.is_none() {
                opus = OpusDecoder::new().ok();
            }
            if let Some(decoder) = opus.as_mut() {
                let _ = decoder.decode(audio);
            }
        }
    }
    if let Some(pcm) = pcm.as_mut() {
        pcm.finish().expect("pcm16 tail transcodes");
    }
    if let Ok(Inbound::Device { device, topic }) = parsed {
        assert!(walkie_mqtt::topics::valid_device(&device));
        assert_eq!(
            topics.parse(&topics.device(&device, topic)),
            Ok(Inbound::Device {
                device: device.clone(),
                topic
            })
        );
        let _ = matches!(topic, DeviceTopic::Start);
    }
}
