//! The topic scheme (README.md, "Topics"). One place builds and parses topic
//! names, so the documented contract and the code cannot drift apart.

use crate::error::InputError;

/// Longest device id accepted; it ends up in puppet names and log lines.
pub const MAX_DEVICE_LEN: usize = 64;

/// What a device publishes about its own talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTopic {
    Start,
    Audio,
    End,
}

/// A message the bridge subscribed to, by what it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    Device {
        device: String,
        topic: DeviceTopic,
    },
    /// Home Assistant's button: transmit a test tone.
    TestTone,
    /// Home Assistant (re)started and wants discovery configs again.
    HaStatus,
}

#[derive(Debug, Clone)]
pub struct Topics {
    prefix: String,
    ha_prefix: String,
}

impl Topics {
    pub fn new(prefix: &str, ha_prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
            ha_prefix: ha_prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn status(&self) -> String {
        format!("{}/status", self.prefix)
    }

    pub fn floor(&self) -> String {
        format!("{}/floor", self.prefix)
    }

    pub fn out_start(&self) -> String {
        format!("{}/out/start", self.prefix)
    }

    pub fn out_audio(&self) -> String {
        format!("{}/out/audio", self.prefix)
    }

    pub fn out_end(&self) -> String {
        format!("{}/out/end", self.prefix)
    }

    /// The bridge's answers to one device about its own requests.
    pub fn device_floor(&self, device: &str) -> String {
        format!("{}/in/{device}/floor", self.prefix)
    }

    pub fn device(&self, device: &str, topic: DeviceTopic) -> String {
        let last = match topic {
            DeviceTopic::Start => "start",
            DeviceTopic::Audio => "audio",
            DeviceTopic::End => "end",
        };
        format!("{}/in/{device}/{last}", self.prefix)
    }

    pub fn test_tone(&self) -> String {
        format!("{}/ha/test_tone", self.prefix)
    }

    pub fn ha_status(&self) -> String {
        format!("{}/status", self.ha_prefix)
    }

    pub fn ha_config(&self, component: &str, object_id: &str) -> String {
        format!("{}/{component}/{object_id}/config", self.ha_prefix)
    }

    /// What to subscribe to, with the QoS of each filter: control at 1, audio at 0.
    /// Three filters rather than `in/+/+`, so the bridge never hears its own
    /// answers on `in/{device}/floor`.
    pub fn subscriptions(&self, ha_discovery: bool) -> Vec<(String, u8)> {
        let mut subs = vec![
            (format!("{}/in/+/start", self.prefix), 1),
            (format!("{}/in/+/audio", self.prefix), 0),
            (format!("{}/in/+/end", self.prefix), 1),
        ];
        if ha_discovery {
            subs.push((self.test_tone(), 1));
            subs.push((self.ha_status(), 1));
        }
        subs
    }

    pub fn parse(&self, topic: &str) -> Result<Inbound, InputError> {
        if topic == self.test_tone() {
            return Ok(Inbound::TestTone);
        }
        if topic == self.ha_status() {
            return Ok(Inbound::HaStatus);
        }
        let rest = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|r| r.strip_prefix("/in/"))
            .ok_or(InputError::UnknownTopic)?;
        let (device, last) = rest.split_once('/').ok_or(InputError::UnknownTopic)?;
        let topic = match last {
            "start" => DeviceTopic::Start,
            "audio" => DeviceTopic::Audio,
            "end" => DeviceTopic::End,
            _ => return Err(InputError::UnknownTopic),
        };
        if !valid_device(device) {
            return Err(InputError::BadDevice);
        }
        Ok(Inbound::Device {
            device: device.to_owned(),
            topic,
        })
    }
}

/// Letters, digits, `-`, `_` and `.`: safe in a topic level, a puppet's Matrix
/// localpart and a Home Assistant id, and easy to type into firmware.
pub fn valid_device(device: &str) -> bool {
    !device.is_empty()
        && device.len() <= MAX_DEVICE_LEN
        && device
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics::new("walkie/lobby", "homeassistant")
    }

    #[test]
    fn device_topics_round_trip() {
        let t = topics();
        for kind in [DeviceTopic::Start, DeviceTopic::Audio, DeviceTopic::End] {
            let name = t.device("door-1", kind);
            assert_eq!(
                t.parse(&name),
                Ok(Inbound::Device {
                    device: "door-1".into(),
                    topic: kind
                })
            );
        }
        assert_eq!(
            t.device("door", DeviceTopic::Audio),
            "walkie/lobby/in/door/audio"
        );
        assert_eq!(t.device_floor("door"), "walkie/lobby/in/door/floor");
    }

    #[test]
    fn foreign_and_malformed_topics_are_refused() {
        let t = topics();
        for bad in [
            "walkie/lobby/in/door/floor",
            "walkie/lobby/in/door",
            "walkie/lobby/in/door/audio/x",
            "walkie/lobbyx/in/door/audio",
            "walkie/other/in/door/audio",
            "walkie/lobby/out/audio",
            "walkie/lobby/status",
            "",
        ] {
            assert!(t.parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            t.parse("walkie/lobby/in/d%C3%B6r/audio"),
            Err(InputError::BadDevice)
        );
        assert_eq!(
            t.parse("walkie/lobby/in//audio"),
            Err(InputError::BadDevice)
        );
        let long = format!("walkie/lobby/in/{}/audio", "a".repeat(65));
        assert_eq!(t.parse(&long), Err(InputError::BadDevice));
    }

    #[test]
    fn home_assistant_topics_are_recognised() {
        let t = topics();
        assert_eq!(t.parse("homeassistant/status"), Ok(Inbound::HaStatus));
        assert_eq!(t.parse("walkie/lobby/ha/test_tone"), Ok(Inbound::TestTone));
        assert_eq!(
            t.ha_config("button", "walkie_lobby_test_tone"),
            "homeassistant/button/walkie_lobby_test_tone/config"
        );
    }

    #[test]
    fn subscriptions_keep_audio_at_qos_0_and_control_at_qos_1() {
        let subs = topics().subscriptions(true);
        for (filter, qos) in &subs {
            let expected = if filter.ends_with("/audio") { 0 } else { 1 };
            assert_eq!(*qos, expected, "{filter}");
        }
        assert!(!subs.iter().any(|(f, _)| f.ends_with("/floor")));
        assert_eq!(topics().subscriptions(false).len(), 3);
    }
}
