//! Running as a service: systemd notification, metrics, the status pages and the
//! channel set that a SIGHUP reload changes.

pub mod channels;
pub mod http_listener;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod status;

use crate::hub::HubObserver;
use walkie_endpoint::ConnectionState;

/// One line for `systemctl status` and `/status`: every channel's floor and how
/// many endpoints are connected, e.g.
/// `ops: alice (Mumble) talking; lobby: idle | 3/4 endpoints connected`.
pub fn summary(channels: &[HubObserver]) -> String {
    if channels.is_empty() {
        return "no channel bridged".to_owned();
    }
    let mut total = 0;
    let mut connected = 0;
    let floors: Vec<String> = channels
        .iter()
        .map(|hub| {
            for endpoint in &hub.endpoints {
                total += 1;
                if endpoint.health.state() == ConnectionState::Connected {
                    connected += 1;
                }
            }
            match &hub.status.borrow().holder {
                Some(holder) => format!("{}: {} talking", hub.channel, holder.talker),
                None => format!("{}: idle", hub.channel),
            }
        })
        .collect();
    format!(
        "{} | {connected}/{total} endpoints connected",
        floors.join("; ")
    )
}
