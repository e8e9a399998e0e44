//! From a configured endpoint to a running one: one explicit match, no registry.

use std::sync::Arc;
use std::time::Duration;

use walkie_endpoint::audio::VoxConfig;
use walkie_endpoint::{Endpoint, EndpointId, Talker};
use walkie_mqtt::{MqttEndpoint, MqttEndpointConfig, PayloadCodec};
use walkie_mumble::{ConnectConfig, MumbleEndpoint, MumbleEndpointConfig, TransportMode};

use walkie_radio::audio::CpalSoundCard;
use walkie_radio::rx::{ModemLine, StatusLine, DEFAULT_DEBOUNCE};
use walkie_radio::tx::{TxSettings, STALL_WATCHDOG};
use walkie_radio::{CosSettings, MorseSettings, RadioEndpoint, RadioSettings};
use walkie_svxreflector::{SvxReflectorEndpoint, SvxReflectorEndpointConfig};

use crate::config::{self, Cos, CosLine, EndpointSpec, FloorConfig, Payload, RadioConfig};
use crate::mumble_identity::MumbleIdentities;
use crate::transmit_policy::{RadioTransmitPolicy, RoomPowerLevels};

/// How long a Mumble login (TLS, authenticate, join) may take.
const MUMBLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A busy Mumble user is told who holds the floor at most this often.
const MUMBLE_BUSY_NOTICE: Duration = Duration::from_secs(10);
/// Longest pause between reconnection attempts (issue #4: back within 35 s).
const RECONNECT_CAP: Duration = Duration::from_secs(30);
/// After a reflector refused the login or speaks another protocol or codec: a
/// config or sysop matter, so no hammering; the status page says what to fix.
const SVX_REFUSED_RETRY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("endpoint {id}: {source}")]
    Mqtt {
        id: config::EndpointId,
        #[source]
        source: walkie_mqtt::MqttError,
    },
    #[error("endpoint {id}: {source}")]
    Ptt {
        id: config::EndpointId,
        #[source]
        source: walkie_radio::PttError,
    },
}

/// What endpoints of one channel share beyond their own section.
pub struct ChannelContext<'a> {
    pub floor: &'a FloorConfig,
    /// The channel room's power levels, for radios' `transmit_min_power_level`.
    pub power_levels: Arc<RoomPowerLevels>,
    /// The generated certificates of Mumble bots that are given none.
    pub mumble_identities: &'a MumbleIdentities,
}

/// The login of a Mumble bot as its section configures it. `identity` (the
/// certificate the bridge generated and kept) is used only when the section
/// names no certificate of its own.
pub fn mumble_connect_config(
    mumble: &config::MumbleConfig,
    identity: Option<walkie_mumble::ClientIdentity>,
) -> ConnectConfig {
    let mut connect = ConnectConfig::new(
        mumble.server.to_string(),
        mumble.username.clone(),
        mumble.channel.clone(),
    );
    connect.password = mumble.password.as_ref().map(|p| p.expose().to_owned());
    connect.client_cert = match (&mumble.client_cert, &mumble.client_key) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (Some(both), None) => Some((both.clone(), both.clone())),
        _ => None,
    };
    if connect.client_cert.is_none() {
        connect.identity = identity;
    }
    connect.accept_invalid_cert = mumble.accept_invalid_cert;
    connect
}

/// The login of a reflector node as its section configures it.
pub fn svxreflector_connect_config(
    svx: &config::SvxReflectorConfig,
) -> walkie_svxreflector::ConnectConfig {
    walkie_svxreflector::ConnectConfig {
        host: svx.server.host.clone(),
        port: svx.server.port,
        callsign: svx.callsign.clone(),
        auth_key: svx.auth_key.expose().to_owned(),
        talkgroup: svx.talkgroup,
    }
}

/// Builds the endpoint `id` of kind `spec`; `floor` supplies the timing an endpoint
/// shares with the arbiter (a talk that goes silent ends after `idle_release`).
pub fn build(
    id: &config::EndpointId,
    spec: &EndpointSpec,
    channel: &ChannelContext<'_>,
) -> Result<Box<dyn Endpoint>, BuildError> {
    let floor = channel.floor;
    let hub_id = EndpointId::new(id.to_string());
    match spec {
        EndpointSpec::Mumble(mumble) => {
            let mut connect =
                mumble_connect_config(mumble, channel.mumble_identities.get(id).cloned());
            connect.transport = TransportMode::Auto;
            connect.timeout = MUMBLE_CONNECT_TIMEOUT;
            Ok(Box::new(MumbleEndpoint::new(
                hub_id,
                MumbleEndpointConfig {
                    connect,
                    announce_talker: mumble.announce_talker,
                    idle_release: floor.idle_release,
                    busy_notice_interval: MUMBLE_BUSY_NOTICE,
                    reconnect_cap: RECONNECT_CAP,
                },
            )))
        }
        EndpointSpec::Mqtt(mqtt) => Ok(Box::new(mqtt_endpoint(id, mqtt, floor)?)),
        EndpointSpec::Radio(radio) => build_radio(id, hub_id, radio, channel),
        EndpointSpec::SvxReflector(svx) => {
            // The node transmits under the operator's callsign: who may be heard
            // on the network is decided as for a radio.
            let policy = Arc::new(RadioTransmitPolicy::new(
                hub_id.to_string(),
                svx.transmit_allow.clone(),
                svx.transmit_min_power_level,
                Arc::clone(&channel.power_levels),
            ));
            let connect = svxreflector_connect_config(svx);
            Ok(Box::new(SvxReflectorEndpoint::new(
                hub_id,
                SvxReflectorEndpointConfig {
                    connect,
                    idle_release: floor.idle_release,
                    reconnect_cap: RECONNECT_CAP,
                    refused_retry: SVX_REFUSED_RETRY,
                },
                policy,
            )))
        }
    }
}

/// A radio's receive detector, and how much audio before the detector opened
/// a transmission starts with (VOX opens `attack` after the voice began).
pub fn radio_cos_settings(radio: &RadioConfig) -> (CosSettings, Duration) {
    let vox = VoxConfig {
        threshold_dbfs: radio.vox.threshold_dbfs as f32,
        attack_ms: radio.vox.attack.as_millis() as u32,
        hang_ms: radio.vox.hang.as_millis() as u32,
    };
    match radio.cos {
        Cos::Vox => (
            CosSettings::Vox(vox),
            // The VOX opens `attack` after the voice began: send that much again.
            radio.vox.attack + Duration::from_millis(40),
        ),
        Cos::Rigctld => (
            CosSettings::Rigctld {
                addr: radio
                    .rigctld
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            },
            DEFAULT_DEBOUNCE,
        ),
        Cos::Line { line, active_low } => (
            CosSettings::Line(StatusLine {
                line: match line {
                    CosLine::Cts => ModemLine::Cts,
                    CosLine::Dsr => ModemLine::Dsr,
                    CosLine::Dcd => ModemLine::Dcd,
                },
                inverted: active_low,
            }),
            DEFAULT_DEBOUNCE,
        ),
    }
}

/// A radio's transmit timing as its section configures it.
pub fn radio_tx_settings(radio: &RadioConfig) -> TxSettings {
    TxSettings {
        tx_delay: radio.tx_delay,
        ptt_hang: radio.ptt_hang,
        tx_timeout: radio.tx_timeout,
        stall: STALL_WATCHDOG,
        id_interval: radio.callsign.as_ref().map(|_| radio.id_interval),
    }
}

fn build_radio(
    id: &config::EndpointId,
    hub_id: EndpointId,
    radio: &RadioConfig,
    channel: &ChannelContext<'_>,
) -> Result<Box<dyn Endpoint>, BuildError> {
    let ptt = crate::radio_cli::ptt_config(radio).map_err(|source| BuildError::Ptt {
        id: id.clone(),
        source,
    })?;
    let (cos, pre_roll) = radio_cos_settings(radio);
    let port = radio.port.as_ref().map(|p| p.display().to_string());
    let settings = RadioSettings {
        name: id.name.clone(),
        tx: radio_tx_settings(radio),
        rx_mute_after_tx: radio.rx_mute_after_tx,
        morse: radio.callsign.as_ref().map(|callsign| MorseSettings {
            callsign: callsign.clone(),
            wpm: radio.id_wpm,
            tone_hz: radio.id_tone_hz,
        }),
        talker: Talker::new(id.name.clone(), format!("{} (Radio)", id.name)),
        pre_roll,
        retry: walkie_radio::endpoint::RETRY_INTERVAL,
        encoder: radio.encoder,
    };
    let opener = Box::new(move || {
        walkie_radio::open_hardware(&ptt, port.as_deref(), &cos, DEFAULT_DEBOUNCE)
    });
    let card = Arc::new(CpalSoundCard::new(
        radio.audio_in.clone(),
        radio.audio_out.clone(),
    ));
    let policy = Arc::new(RadioTransmitPolicy::new(
        hub_id.to_string(),
        radio.transmit_allow.clone(),
        radio.transmit_min_power_level,
        Arc::clone(&channel.power_levels),
    ));
    Ok(Box::new(RadioEndpoint::new(
        hub_id, settings, opener, card, policy,
    )))
}

/// The MQTT endpoint of `[mqtt.NAME]` (also what `doctor` logs in with).
pub fn mqtt_endpoint(
    id: &config::EndpointId,
    mqtt: &config::MqttConfig,
    floor: &FloorConfig,
) -> Result<MqttEndpoint, BuildError> {
    let hub_id = EndpointId::new(id.to_string());
    let client_id = mqtt
        .client_id
        .clone()
        .unwrap_or_else(|| format!("walkie-bridge-{}", id.name));
    let mut settings = MqttEndpointConfig::new(
        mqtt.broker.host.clone(),
        mqtt.broker.port,
        mqtt.prefix.clone(),
        client_id,
    );
    settings.tls = mqtt.broker.tls;
    settings.ca_file = mqtt.ca_file.clone();
    settings.username = mqtt.username.clone();
    settings.password = mqtt
        .password
        .as_ref()
        .map(|p| walkie_mqtt::Secret::new(p.expose()));
    settings.keep_alive = mqtt.keep_alive;
    settings.payload = match mqtt.payload {
        Payload::Opus => PayloadCodec::Opus,
        Payload::Pcm16 => PayloadCodec::Pcm16,
    };
    settings.ha_discovery = mqtt.ha_discovery;
    settings.encoder = mqtt.encoder;
    settings.max_priority = mqtt.max_priority;
    settings.device_max_priority = mqtt
        .device_max_priority
        .iter()
        .map(|(device, p)| (device.clone(), *p))
        .collect();
    settings.idle_release = floor.idle_release;
    settings.reconnect_cap = RECONNECT_CAP;
    let endpoint = MqttEndpoint::new(hub_id, settings).map_err(|source| BuildError::Mqtt {
        id: id.clone(),
        source,
    })?;
    Ok(endpoint)
}
