//! The accept loop of the listener on `appservice.listen`, which serves the
//! homeserver's transactions and the live page to anyone who reaches it (issue
//! 13.3).
//!
//! `axum::serve` sets no timers and takes every connection, so sockets that never
//! send a request, heads sent a byte at a time and idle keep-alive connections
//! could take every file descriptor — and then the homeserver's transactions
//! were refused and recordings could not be written. Here:
//!
//! - every request head must arrive within [`HttpConfig::header_timeout`] of
//!   the connection starting to wait for it (hyper's header timer starts when the
//!   connection opens and again after each answer), so it is the idle timeout of
//!   a keep-alive connection as well;
//! - connections are admitted before anything is read from them: at most
//!   `max_connections` in all and `max_connections_per_ip` per address; over a
//!   cap the new socket is closed at once (not the oldest idle one: the deadline
//!   frees places within seconds anyway, and refusing costs nothing to decide);
//! - the homeserver's addresses have a pool of their own
//!   (`homeserver_connections`), which nobody else can fill, so its transactions
//!   get through whatever others hold;
//! - a connection leaves its pool when it is upgraded to a WebSocket; the live
//!   limits count it from then on.
//!
//! At shutdown, connections that have not sent a byte are closed at once;
//! requests in flight are answered (the appservice's own stop token cuts a
//! transaction short), and a head still arriving gets until its deadline.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::Service as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use url::Url;

use crate::config::HttpConfig;
use crate::live::limits::subscriber;

/// Accept errors other than a peer's (out of descriptors, mostly) are logged at
/// most this often.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Refused connections are warned about at most this often (each one is
/// counted, and logged at debug level).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// A start-up does not wait longer for the homeserver's name to resolve.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The limits of one listener, and who the homeserver is.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    config: HttpConfig,
    homeserver: HashSet<IpAddr>,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self::new(&HttpConfig::default())
    }
}

impl ListenerLimits {
    pub fn new(config: &HttpConfig) -> Self {
        Self {
            homeserver: config
                .homeserver_addresses
                .iter()
                .map(|a| a.to_canonical())
                .collect(),
            config: config.clone(),
        }
    }

    /// Adds the addresses the host of `url` (`homeserver.url`) resolves to now:
    /// the homeserver calls from there unless a proxy stands between. A name
    /// that does not resolve is logged and skipped.
    pub async fn with_homeserver_url(mut self, url: &Url) -> Self {
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return self;
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let lookup = tokio::time::timeout(LOOKUP_TIMEOUT, tokio::net::lookup_host((host, port)));
        let error = match lookup.await {
            Ok(Ok(addresses)) => {
                for address in addresses {
                    self.homeserver.insert(address.ip().to_canonical());
                }
                return self;
            }
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {LOOKUP_TIMEOUT:?}"),
        };
        warn!(
            %host, %error,
            "cannot resolve homeserver.url: only http.homeserver_addresses have the \
             homeserver's reserved connections"
        );
        self
    }

    pub fn homeserver_addresses(&self) -> impl Iterator<Item = &IpAddr> {
        self.homeserver.iter()
    }
}

/// Serves `router` on `listener` until `stop` completes, then lets requests in
/// flight finish. Every request carries `ConnectInfo<SocketAddr>`, the peer.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ListenerLimits,
    stop: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.config.header_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let admission = Arc::new(Admission::new(limits));
    let shutdown = CancellationToken::new();
    let connections = TaskTracker::new();
    let mut stop = std::pin::pin!(stop);
    let mut accept_errors = AcceptErrors::default();
    let mut refusals = Throttle::default();
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_errors.handle(error).await;
                    continue;
                }
            },
        };
        let permit = match admission.admit(peer.ip()) {
            Ok(permit) => permit,
            Err(refused) => {
                // Dropping the stream closes the socket at once.
                report_refusal(&mut refusals, peer, refused);
                continue;
            }
        };
        // Without TCP_NODELAY a small message written right after another (a
        // live-talk answer, then its floor event) waits for the peer's delayed
        // ACK: 40 ms on Linux.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "cannot set TCP_NODELAY");
        }
        connections.spawn(connection(
            stream,
            peer,
            router.clone(),
            Arc::clone(&builder),
            permit,
            shutdown.clone(),
        ));
    }
    drop(listener);
    shutdown.cancel();
    connections.close();
    connections.wait().await;
    Ok(())
}

/// Counted always; warned about once a minute, else logged at debug level.
fn report_refusal(throttle: &mut Throttle, peer: SocketAddr, refused: Refused) {
    let reason = refused.as_str();
    if let Some(suppressed) = throttle.pass(REFUSAL_LOG_INTERVAL) {
        warn!(
            %peer, reason, suppressed,
            "HTTP connection refused: the listener's limits ([http]) are reached"
        );
    } else {
        debug!(%peer, reason, "HTTP connection refused");
    }
    metrics::counter!("walkie_http_connections_refused_total", "reason" => reason).increment(1);
}

/// One connection, until it closes, is upgraded, or (at shutdown) has answered
/// the request in flight.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Arc<http1::Builder>,
    permit: Permit,
    shutdown: CancellationToken,
) {
    let router = TowerToHyperService::new(router);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        router.call(request)
    });
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    // Upgraded (the WebSocket lives on in its own task) or closed: either way
    // this connection no longer counts here.
    drop(permit);
    if let Err(error) = result {
        if error.is_timeout() {
            debug!(%peer, "HTTP connection closed: no request head within the deadline");
            metrics::counter!("walkie_http_header_timeouts_total").increment(1);
        } else {
            debug!(%peer, %error, "HTTP connection ended with an error");
        }
    }
}

/// At most one log line per interval, saying how many were left out.
#[derive(Default)]
struct Throttle {
    logged: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(left out since the last line)` when a line may be logged now.
    fn pass(&mut self, interval: Duration) -> Option<u64> {
        let now = Instant::now();
        if self
            .logged
            .is_none_or(|at| now.duration_since(at) >= interval)
        {
            self.logged = Some(now);
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[derive(Default)]
struct AcceptErrors(Throttle);

impl AcceptErrors {
    /// A peer that gave up before its connection was taken is its business;
    /// anything else (out of descriptors, mostly) is logged, rate-limited, and
    /// the loop pauses so that it does not spin while nothing can be accepted.
    async fn handle(&mut self, error: io::Error) {
        if matches!(
            error.kind(),
            io::ErrorKind::ConnectionRefused
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
        ) {
            return;
        }
        metrics::counter!("walkie_http_accept_errors_total").increment(1);
        if let Some(suppressed) = self.0.pass(ACCEPT_ERROR_LOG_INTERVAL) {
            error!(%error, suppressed, "cannot accept HTTP connections");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Why a connection was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// `http.max_connections` from others than the homeserver already.
    Full,
    /// `http.max_connections_per_ip` from this address already.
    PerAddress,
    /// `http.homeserver_connections` from the homeserver already.
    HomeserverFull,
}

impl Refused {
    fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::PerAddress => "per_ip",
            Self::HomeserverFull => "homeserver_full",
        }
    }
}

/// The open connections of one listener, by pool and address.
struct Admission {
    limits: ListenerLimits,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    others: usize,
    homeserver: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Counts {
    fn gauge(&self) {
        metrics::gauge!("walkie_http_connections").set(self.others as f64);
        metrics::gauge!("walkie_http_homeserver_connections").set(self.homeserver as f64);
    }
}

/// Whose place a connection holds.
enum Place {
    Homeserver,
    Other(IpAddr),
}

/// One admitted connection; dropping it frees its place.
struct Permit {
    admission: Arc<Admission>,
    place: Place,
}

impl Admission {
    fn new(limits: ListenerLimits) -> Self {
        info!(
            max_connections = limits.config.max_connections,
            max_connections_per_ip = limits.config.max_connections_per_ip,
            homeserver_connections = limits.config.homeserver_connections,
            homeserver_addresses = ?limits.homeserver,
            header_timeout = ?limits.config.header_timeout,
            "HTTP connection limits"
        );
        Self {
            limits,
            counts: Mutex::new(Counts::default()),
        }
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refused> {
        let config = &self.limits.config;
        let mut counts = self.counts();
        let place = if self.limits.homeserver.contains(&peer.to_canonical()) {
            if counts.homeserver >= config.homeserver_connections {
                return Err(Refused::HomeserverFull);
            }
            counts.homeserver += 1;
            Place::Homeserver
        } else {
            let address = subscriber(peer);
            let from_address = counts.per_address.get(&address).copied().unwrap_or(0);
            if from_address >= config.max_connections_per_ip {
                return Err(Refused::PerAddress);
            }
            if counts.others >= config.max_connections {
                return Err(Refused::Full);
            }
            counts.others += 1;
            *counts.per_address.entry(address).or_default() += 1;
            Place::Other(address)
        };
        counts.gauge();
        Ok(Permit {
            admission: Arc::clone(self),
            place,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        match self.place {
            Place::Homeserver => counts.homeserver = counts.homeserver.saturating_sub(1),
            Place::Other(address) => {
                counts.others = counts.others.saturating_sub(1);
                if let Some(n) = counts.per_address.get_mut(&address) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.per_address.remove(&address);
                    }
                }
            }
        }
        counts.gauge();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max: usize, per_ip: usize, homeserver: usize) -> Arc<Admission> {
        let config = HttpConfig {
            max_connections: max,
            max_connections_per_ip: per_ip,
            homeserver_connections: homeserver,
            ..HttpConfig::default()
        };
        Arc::new(Admission::new(ListenerLimits::new(&config)))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("an address")
    }

    #[test]
    fn others_cannot_take_the_homeserver_s_places() {
        let admission = admission(2, 1, 1);
        let a = admission.admit(ip("192.0.2.1")).expect("first");
        let _b = admission.admit(ip("192.0.2.2")).expect("second");
        assert_eq!(admission.admit(ip("192.0.2.3")).err(), Some(Refused::Full));
        let hs = admission.admit(ip("127.0.0.1")).expect("the homeserver's");
        assert_eq!(
            admission.admit(ip("::1")).err(),
            Some(Refused::HomeserverFull)
        );
        drop(a);
        drop(hs);
        assert!(admission.admit(ip("192.0.2.3")).is_ok());
        assert!(admission.admit(ip("::ffff:127.0.0.1")).is_ok());
    }

    #[tokio::test]
    async fn the_addresses_of_homeserver_url_are_the_homeserver_s() {
        let config = HttpConfig {
            homeserver_addresses: vec![ip("192.0.2.9")],
            ..HttpConfig::default()
        };
        for (url, added) in [
            ("http://127.0.0.2:8008/", ip("127.0.0.2")),
            ("https://[::1]/", ip("::1")),
        ] {
            let url: Url = url.parse().expect("a URL");
            let limits = ListenerLimits::new(&config).with_homeserver_url(&url).await;
            let mut addresses: Vec<IpAddr> = limits.homeserver_addresses().copied().collect();
            addresses.sort();
            let mut expected = vec![ip("192.0.2.9"), added];
            expected.sort();
            assert_eq!(addresses, expected, "{url}");
        }
    }

    #[test]
    fn an_address_and_its_ipv6_network_count_as_one() {
        let admission = admission(10, 2, 1);
        let _a = admission.admit(ip("2001:db8::1")).expect("first");
        let _b = admission.admit(ip("2001:db8::2")).expect("second");
        assert_eq!(
            admission.admit(ip("2001:db8::ffff")).err(),
            Some(Refused::PerAddress)
        );
        assert!(admission.admit(ip("2001:db8:0:1::1")).is_ok());
    }
}
