//! From a configured endpoint to a running one: one explicit match, no registry.

use std::time::Duration;

use walkie_endpoint::{Endpoint, EndpointId};
use walkie_mumble::{ConnectConfig, MumbleEndpoint, MumbleEndpointConfig, TransportMode};

use crate::config::{self, EndpointSpec, FloorConfig};

/// How long a Mumble login (TLS, authenticate, join) may take.
const MUMBLE_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// A busy Mumble user is told who holds the floor at most this often.
const MUMBLE_BUSY_NOTICE: Duration = Duration::from_secs(10);
/// Longest pause between reconnection attempts (issue #4: back within 35 s).
const RECONNECT_CAP: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
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
        EndpointSpec::Mqtt(_) => Err(BuildError::NotBuilt {
            id: id.clone(),
            what: "MQTT",
            issue: "issue #5",
        }),
        EndpointSpec::Radio(_) => Err(BuildError::NotBuilt {
            id: id.clone(),
            what: "radio",
            issue: "issue #6",
        }),
    }
}
