//! The running bridge. Channel hubs, endpoints and the Matrix side are being built
//! in their own issues; until they land, `run` refuses to start instead of
//! pretending to bridge.

use tokio_util::sync::CancellationToken;

use crate::config::{Config, EndpointKind};

/// Runs the bridge until `shutdown` is cancelled or a fatal error occurs.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Nothing runs yet that could observe a shutdown.
    let _ = shutdown;
    let mut missing: Vec<String> = config
        .endpoints
        .iter()
        .map(|(id, spec)| {
            let what = match spec.kind() {
                EndpointKind::Mumble => "the Mumble endpoint is not built yet (issue #4)",
                EndpointKind::Mqtt => "the MQTT endpoint is not built yet (issue #5)",
                EndpointKind::Radio => "the radio endpoint is not built yet (issue #6)",
            };
            format!("endpoint {id}: {what}")
        })
        .collect();
    missing.push("the Matrix appservice is not built yet (issue #3)".into());
    anyhow::bail!(
        "walkie-bridge cannot run this configuration yet:\n  {}",
        missing.join("\n  ")
    )
}
