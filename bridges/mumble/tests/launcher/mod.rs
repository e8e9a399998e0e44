//! The Mumble servers these tests run against, from the project's harness
//! (tests/harness): Debian 12's murmurd 1.3.4 and Debian 13's mumble-server 1.5.

#![allow(dead_code)]

pub use walkie_harness::MumbleServer;
use walkie_harness::Murmur;

pub struct Murmurd {
    inner: Murmur,
}

impl Murmurd {
    pub async fn start(server: MumbleServer) -> Murmurd {
        let inner = Murmur::builder()
            .server(server)
            // Room for the bursts of the transport tests.
            .config("bandwidth", "558000")
            .welcome("walkie test")
            .start()
            .await
            .unwrap_or_else(|e| panic!("{} does not start: {e}", server.label()));
        Murmurd { inner }
    }

    pub fn kind(&self) -> MumbleServer {
        self.inner.server()
    }

    /// `host:port`.
    pub fn server(&self) -> String {
        self.inner.address()
    }

    pub fn log(&self) -> String {
        self.inner.log_tail(200)
    }
}
