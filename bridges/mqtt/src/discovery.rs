//! Home Assistant MQTT discovery: one device per bridge endpoint with a
//! `binary_sensor` (transmitting), a `sensor` (current talker) and a `button`
//! (test tone), all read from or written to the documented topics, so Home
//! Assistant needs nothing but these retained configs.

use serde_json::{json, Value};

use crate::topics::Topics;

/// The payload Home Assistant's button publishes on `{prefix}/ha/test_tone`.
pub const PRESS: &str = "PRESS";

/// A stable id for Home Assistant (`walkie/lobby` → `walkie_lobby`).
pub fn object_base(prefix: &str) -> String {
    prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// `(topic, config)` for every entity; published retained.
pub fn configs(topics: &Topics, endpoint: &str) -> Vec<(String, Value)> {
    let prefix = topics.prefix();
    let base = object_base(prefix);
    let device = json!({
        "identifiers": [format!("walkie_bridge_{base}")],
        "name": format!("Walkie {endpoint}"),
        "manufacturer": "walkie-bridge",
        "model": "MQTT intercom endpoint",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let common = |name: &str, id: &str| {
        json!({
            "name": name,
            "unique_id": format!("{base}_{id}"),
            "object_id": format!("{base}_{id}"),
            "availability_topic": topics.status(),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device.clone(),
        })
    };
    let mut transmitting = common("Transmitting", "transmitting");
    merge(
        &mut transmitting,
        json!({
            "state_topic": topics.floor(),
            "value_template": "{{ 'ON' if value_json.state == 'taken' else 'OFF' }}",
            "payload_on": "ON",
            "payload_off": "OFF",
            "device_class": "sound",
        }),
    );
    let mut talker = common("Talker", "talker");
    merge(
        &mut talker,
        json!({
            "state_topic": topics.floor(),
            "value_template": "{{ value_json.talker if value_json.state == 'taken' else 'none' }}",
            "icon": "mdi:account-voice",
        }),
    );
    let mut button = common("Send test tone", "test_tone");
    merge(
        &mut button,
        json!({
            "command_topic": topics.test_tone(),
            "payload_press": PRESS,
            "icon": "mdi:sine-wave",
        }),
    );
    vec![
        (
            topics.ha_config("binary_sensor", &format!("{base}_transmitting")),
            transmitting,
        ),
        (
            topics.ha_config("sensor", &format!("{base}_talker")),
            talker,
        ),
        (
            topics.ha_config("button", &format!("{base}_test_tone")),
            button,
        ),
    ]
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        into.extend(from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_entities_with_unique_ids_and_availability() {
        let topics = Topics::new("walkie/lobby", "homeassistant");
        let configs = configs(&topics, "mqtt.lobby");
        let components: Vec<&str> = configs
            .iter()
            .map(|(t, _)| t.split('/').nth(1).unwrap())
            .collect();
        assert_eq!(components, ["binary_sensor", "sensor", "button"]);
        let mut ids = Vec::new();
        for (topic, config) in &configs {
            assert!(topic.starts_with("homeassistant/") && topic.ends_with("/config"));
            // Round-trip through text: what HA receives must parse.
            let text = serde_json::to_string(config).unwrap();
            let config: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(config["availability_topic"], "walkie/lobby/status");
            assert_eq!(
                config["device"]["identifiers"][0],
                "walkie_bridge_walkie_lobby"
            );
            ids.push(config["unique_id"].as_str().unwrap().to_owned());
        }
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3);
        assert_eq!(configs[0].1["state_topic"], "walkie/lobby/floor");
        assert_eq!(configs[2].1["command_topic"], "walkie/lobby/ha/test_tone");
    }
}
