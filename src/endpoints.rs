//! From a configured endpoint to a running one: one explicit match, no registry.

use std::time::Duration;

use walkie_endpoint::{Endpoint, EndpointId};
use walkie_mqtt::{MqttEndpoint, MqttEndpointConfig, PayloadCodec};
use walkie_mumble::{ConnectConfig, MumbleEndpoint, MumbleEndpointConfig, TransportMode};

use crate::config::{self, EndpointSpec, FloorConfig, Payload};

/// How long a Mumble login (TLS, authenticate, join) may take.
const MUMBLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A busy Mumble user is told who holds the floor at most this often.
const MUMBLE_BUSY_NOTICE: Duration = Duration::from_secs(10);
/// Longest pause between reconnection attempts (issue #4: back within 35 s).
const RECONNECT_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("endpoint {id}: {source}")]
    Mqtt {
        id: config::EndpointId,
        #[source]
        source: walkie_mqtt::MqttError,
    },
    #[error("endpoint {id}: the {what} endpoint is not built yet ({issue})")]
    NotBuilt {
        id: config::EndpointId,
        what: &'static str,
        issue: &'static str,
    },
}

/// Builds the endpoint `id` of kind `spec`; `floor` supplies the timing an endpoint
/// shares with the arbiter (a talk that goes silent ends after `idle_release`).
pub fn build(
    id: &config::EndpointId,
    spec: &EndpointSpec,
    floor: &FloorConfig,
) -> Result<Box<dyn Endpoint>, BuildError> {
    let hub_id = EndpointId::new(id.to_string());
    match spec {
        EndpointSpec::Mumble(mumble) => {
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
            connect.accept_invalid_cert = mumble.accept_invalid_cert;
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
        EndpointSpec::Mqtt(mqtt) => {
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
            settings.idle_release = floor.idle_release;
            settings.reconnect_cap = RECONNECT_CAP;
            let endpoint =
                MqttEndpoint::new(hub_id, settings).map_err(|source| BuildError::Mqtt {
                    id: id.clone(),
                    source,
                })?;
            Ok(Box::new(endpoint))
        }
        EndpointSpec::Radio(_) => Err(BuildError::NotBuilt {
            id: id.clone(),
            what: "radio",
            issue: "issue #6",
        }),
    }
}
