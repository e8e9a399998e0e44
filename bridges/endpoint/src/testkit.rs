//! Test support (feature `testkit`): an endpoint whose hub link is handed to the
//! test, so a test can talk and listen on a channel of a running daemon exactly
//! as a real endpoint does, through the same trait and the same link.

use crate::endpoint::{Capabilities, Endpoint, EndpointFuture, HubLink};
use crate::ids::EndpointId;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

pub struct TestEndpoint {
    id: EndpointId,
    capabilities: Capabilities,
    link: oneshot::Sender<HubLink>,
}

/// The test's side: yields the link once the daemon has started the endpoint.
pub struct TestEndpointHandle {
    link: oneshot::Receiver<HubLink>,
}

impl TestEndpoint {
    pub fn new(id: EndpointId, capabilities: Capabilities) -> (Self, TestEndpointHandle) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                id,
                capabilities,
                link: tx,
            },
            TestEndpointHandle { link: rx },
        )
    }
}

impl TestEndpointHandle {
    /// Waits until the daemon runs the endpoint; `None` if it never will.
    pub async fn link(self) -> Option<HubLink> {
        self.link.await.ok()
    }
}

impl Endpoint for TestEndpoint {
    fn id(&self) -> &EndpointId {
        &self.id
    }

    fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    fn run(self: Box<Self>, link: HubLink, shutdown: CancellationToken) -> EndpointFuture {
        Box::pin(async move {
            // The test owns the link from here on; dropping it detaches the endpoint.
            let _ = self.link.send(link);
            shutdown.cancelled().await;
            Ok(())
        })
    }
}
