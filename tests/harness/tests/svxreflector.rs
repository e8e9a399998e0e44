//! The harness's SvxReflectors: Debian 12's 19.09 and Debian 13's 24.02 start on
//! a free port, say which version they are, stop, come back on the same port, and
//! survive a SIGKILL and restart. (A node's login on both:
//! bridges/svxreflector/tests/login.rs.)

use std::net::{Ipv4Addr, TcpStream};
use std::time::Duration;

use walkie_harness::{SvxReflector, SvxReflectorVersion};

fn accepts(port: u16) -> bool {
    TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(500),
    )
    .is_ok()
}

async fn starts_stops_and_comes_back(version: SvxReflectorVersion) {
    let mut reflector = SvxReflector::builder(version)
        .node("N0CALL", "a shared key")
        .start()
        .await
        .unwrap_or_else(|e| panic!("{} starts: {e}", version.label()));
    let port = reflector.port();
    assert!(accepts(port));
    let log = reflector.log_tail(20);
    assert!(log.contains(version.banner()), "{log}");

    reflector.stop().await.expect("stop");
    assert!(!reflector.is_running());
    assert!(!accepts(port), "nothing listens while it is stopped");
    reflector.start_again().await.expect("start again");
    assert_eq!(reflector.port(), port);
    assert!(accepts(port));

    reflector.kill().expect("kill");
    reflector.start_again().await.expect("start after SIGKILL");
    assert!(accepts(port));
}

#[tokio::test]
async fn svxreflector_19_09_starts_stops_and_comes_back() {
    starts_stops_and_comes_back(SvxReflectorVersion::V19_09).await;
}

#[tokio::test]
async fn svxreflector_24_02_starts_stops_and_comes_back() {
    starts_stops_and_comes_back(SvxReflectorVersion::V24_02).await;
}
